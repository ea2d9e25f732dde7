//! The reference core: the server side of `docs/protocol.md` with real media.
//!
//! ```text
//! TCP :listen ── GET /ws (WebSocket, PalladaWSData) ── one session task per socket
//!            └── GET /, /callme.js                   ── the browser client page
//! UDP :media ── one socket, one webrtc-rs UDP mux ── every party's ICE-lite PeerConnection
//! per conference: one mixer task (jitter buffer, decode+PLC, N-1 mix, limiter, encode, 20 ms)
//! ```
//!
//! The registry of conferences and parties has one owner, a mutex held only for bookkeeping
//! (never across an await). Media work runs in the party's PeerConnection tasks and the
//! conference's mixer task. Bad input from a peer becomes a negative answer with its own code
//! (or an `EVT` of type `error` when no `seq` can be read); it never panics and never touches
//! another session.

pub mod config;
pub mod mixer;
pub mod party_media;
pub mod tls;
pub mod turn;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::peer_connection::certificate::RTCCertificate;

pub use config::{CoreConfig, TurnConfig};
use party_media::{MediaEnv, PartyMedia};

use crate::wire::{self, code, ConfId, PartyId};

/// The browser client: a page whose script performs the 19 steps.
const PAGE_HTML: &str = include_str!("web/index.html");
const PAGE_JS: &str = include_str!("web/callme.js");

/// A running core.
pub struct CoreHandle {
    /// `ws://IP:PORT/ws`.
    pub ws_url: String,
    /// `http://IP:PORT/`: the browser page.
    pub http_url: String,
    /// The UDP address all media uses.
    pub media_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Counts for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoreStats {
    pub sessions: usize,
    pub conferences: usize,
    pub parties: usize,
    pub parties_with_media: usize,
}

impl CoreHandle {
    pub fn stats(&self) -> CoreStats {
        self.shared.stats()
    }

    /// Stops accepting, closes every session (close code 1001) and every media session.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let medias: Vec<PartyMedia> = {
            let mut reg = self.shared.lock();
            let mut out = Vec::new();
            for conf in reg.confs.values_mut() {
                for p in conf.parties.values_mut() {
                    if let Some(m) = p.media.take_running() {
                        out.push(m);
                    }
                }
            }
            reg.confs.clear();
            out
        };
        for m in medias {
            m.close().await;
        }
        // Give session tasks a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a core: binds the TCP listener and the UDP media socket, then serves until stopped.
pub async fn start(config: CoreConfig) -> Result<CoreHandle, String> {
    let config = config.validate()?;
    tracing::info!(config = %config.redacted(), "starting the core");
    let listener = TcpListener::bind(config.listen).await.map_err(|e| format!("listen {}: {e}", config.listen))?;
    let udp = bind_media(config.media).map_err(|e| format!("media {}: {e}", config.media))?;
    let media_addr = udp.local_addr().map_err(|e| e.to_string())?;
    let mux = UDPMuxDefault::new(UDPMuxParams::new(udp));
    let certificate = RTCCertificate::from_key_pair(rcgen::KeyPair::generate().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let env = MediaEnv {
        mux,
        fingerprint: MediaEnv::fingerprint_of(&certificate),
        certificate,
        announce: config.announce.unwrap_or(media_addr.ip()),
        port: media_addr.port(),
        media_timeout: config.media_timeout(),
    };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = tls::acceptor(&config)?;
    let (ws, http) = if tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    let shared = Arc::new(Shared { config, env, tls, registry: Mutex::new(Registry::default()), next_session: AtomicU64::new(1) });
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
    Ok(CoreHandle { ws_url: format!("{ws}://{local}/ws"), http_url: format!("{http}://{local}/"), media_addr, shared, stop, task })
}

/// The shared media socket, with a receive buffer deep enough (4 MiB) that a burst of datagrams
/// (a flood of garbage, or many parties' packets at one tick) is not dropped by the kernel.
fn bind_media(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sessions = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                sessions.push(tokio::spawn(serve_connection(stream, peer, shared.clone(), stop.clone())));
                sessions.retain(|t: &JoinHandle<()>| !t.is_finished());
            }
        }
    }
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_millis(500), s).await;
    }
}

/// Routes a connection: a WebSocket upgrade on `/ws`, or a plain GET for the page.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let Some(mut stream) = tls::Conn::accept(stream, shared.tls.as_ref(), peer).await else { return };
    let mut head = [0u8; 2048];
    let n = match tokio::time::timeout(Duration::from_secs(5), stream.peek(&mut head)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    if text.contains("upgrade: websocket") {
        serve_websocket(stream, peer, shared, stop).await;
    } else {
        serve_page(stream, &path).await;
    }
}

async fn serve_page(mut stream: tls::Conn, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
    let (status, ctype, body) = match path.split('?').next().unwrap_or("/") {
        "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", PAGE_HTML),
        "/callme.js" => ("200 OK", "text/javascript; charset=utf-8", PAGE_JS),
        _ => ("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// State

struct Shared {
    config: CoreConfig,
    env: MediaEnv,
    tls: Option<tls::TlsAcceptor>,
    registry: Mutex<Registry>,
    next_session: AtomicU64,
}

#[derive(Default)]
struct Registry {
    confs: BTreeMap<ConfId, Conf>,
    by_scheme: HashMap<(u64, u64), ConfId>,
    sessions: HashMap<u64, mpsc::UnboundedSender<Message>>,
    next_conf: u64,
    next_party: u64,
    next_generation: u64,
}

struct Conf {
    id: ConfId,
    cluster: u64,
    scheme: u64,
    parties: BTreeMap<PartyId, PartyRec>,
    mixer: mpsc::Sender<mixer::Input>,
}

struct PartyRec {
    id: PartyId,
    index: u64,
    name: String,
    session: u64,
    media: MediaState,
}

enum MediaState {
    None,
    /// CALLME_S1 accepted; waiting for CALLME_S2.
    Offered {
        generation: u64,
    },
    Running {
        generation: u64,
        media: PartyMedia,
    },
}

impl MediaState {
    fn take_running(&mut self) -> Option<PartyMedia> {
        match std::mem::replace(self, MediaState::None) {
            MediaState::Running { media, .. } => Some(media),
            _ => None,
        }
    }
    fn generation(&self) -> Option<u64> {
        match self {
            MediaState::None => None,
            MediaState::Offered { generation } | MediaState::Running { generation, .. } => Some(*generation),
        }
    }
}

impl PartyRec {
    fn partydata(&self) -> Value {
        let state = if matches!(self.media, MediaState::Running { .. }) { 2 } else { 1 };
        json!({"PARTY_ID": self.id.0, "Index": self.index, "layer": 3, "State": state, "bMicOn": 1, "NAME": self.name})
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> CoreStats {
        let reg = self.lock();
        let parties = reg.confs.values().map(|c| c.parties.len()).sum();
        let parties_with_media =
            reg.confs.values().flat_map(|c| c.parties.values()).filter(|p| matches!(p.media, MediaState::Running { .. })).count();
        CoreStats { sessions: reg.sessions.len(), conferences: reg.confs.len(), parties, parties_with_media }
    }

    /// Sends `frame` to every session holding a party in `conf` except `except`.
    fn broadcast(reg: &Registry, conf: &Conf, except: u64, frame: &Value) {
        let mut told = Vec::new();
        for p in conf.parties.values() {
            if p.session != except && !told.contains(&p.session) {
                told.push(p.session);
                if let Some(tx) = reg.sessions.get(&p.session) {
                    let _ = tx.send(Message::text(frame.to_string()));
                }
            }
        }
    }

    /// The media of a party ended (reported by its supervisor): free it, tell its session.
    async fn media_ended(self: Arc<Self>, conf_id: ConfId, party: PartyId, generation: u64, reason: String) {
        let (media, tx, cluster) = {
            let mut reg = self.lock();
            let Some(conf) = reg.confs.get_mut(&conf_id) else { return };
            let cluster = conf.cluster;
            let Some(p) = conf.parties.get_mut(&party) else { return };
            if p.media.generation() != Some(generation) {
                return; // replaced meanwhile
            }
            let media = p.media.take_running();
            let session = p.session;
            let _ = conf.mixer.try_send(mixer::Input::Remove { party });
            (media, reg.sessions.get(&session).cloned(), cluster)
        };
        tracing::info!(%party, %reason, "media ended");
        if let Some(tx) = tx {
            let _ = tx.send(Message::text(disconnected(cluster, conf_id, party, &reason).to_string()));
        }
        if let Some(m) = media {
            m.close().await;
        }
    }

    /// Frees everything a session held (socket closed).
    async fn end_session(&self, session: u64) {
        let medias = {
            let mut reg = self.lock();
            reg.sessions.remove(&session);
            let mut medias = Vec::new();
            let mut empty = Vec::new();
            let conf_ids: Vec<ConfId> = reg.confs.keys().copied().collect();
            for id in conf_ids {
                let conf = reg.confs.get_mut(&id).expect("listed");
                let gone: Vec<PartyId> = conf.parties.values().filter(|p| p.session == session).map(|p| p.id).collect();
                if gone.is_empty() {
                    continue;
                }
                let mut del = Vec::new();
                for pid in gone {
                    let mut p = conf.parties.remove(&pid).expect("listed");
                    let _ = conf.mixer.try_send(mixer::Input::Remove { party: pid });
                    if let Some(m) = p.media.take_running() {
                        medias.push(m);
                    }
                    del.push(json!({"ID": pid.0, "index": p.index}));
                }
                let frame = conf_changed(conf, json!({"delParties": del}));
                let conf = &reg.confs[&id];
                Self::broadcast(&reg, conf, session, &frame);
                if conf.parties.is_empty() {
                    empty.push(id);
                }
            }
            for id in empty {
                if let Some(c) = reg.confs.remove(&id) {
                    reg.by_scheme.remove(&(c.cluster, c.scheme));
                }
            }
            medias
        };
        for m in medias {
            m.close().await;
        }
    }
}

fn disconnected(cluster: u64, conf: ConfId, party: PartyId, reason: &str) -> Value {
    json!({"EVT": {"obj": "conf", "evt": "webrtc", "evttype": "Disconnected",
        "result": {"ClusterID": cluster, "ID": conf.0, "PartyID": party.0, "reason": reason}}})
}

fn conf_changed(conf: &Conf, extra: Value) -> Value {
    let mut result = json!({"ClusterID": conf.cluster, "ID": conf.id.0});
    if let (Some(r), Value::Object(e)) = (result.as_object_mut(), extra) {
        r.extend(e);
    }
    json!({"EVT": {"obj": "conf", "evt": "changed", "result": result}})
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// A negative answer: code, class, text naming the field.
#[derive(Debug)]
struct Refuse {
    code: i64,
    class: &'static str,
    text: String,
}

fn refuse(code: i64, class: &'static str, text: impl Into<String>) -> Refuse {
    Refuse { code, class, text: text.into() }
}

/// A command as read from a frame (before its params are checked).
struct Cmd {
    cmd: String,
    seq: u64,
    obj: String,
    params: BTreeMap<String, String>,
}

async fn serve_websocket(stream: tls::Conn, peer: SocketAddr, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // The error type is tungstenite's handshake response; it is never built here.
    #[allow(clippy::result_large_err)]
    let accept_subprotocol = |req: &Request, mut resp: Response| {
        let offered = req.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
        if offered.split(',').any(|p| p.trim() == wire::SUBPROTOCOL) {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(wire::SUBPROTOCOL));
        }
        Ok(resp)
    };
    let mut ws_config = WebSocketConfig::default();
    // Frames above the limit are read (up to 1 MiB) and refused with code 101, not dropped.
    ws_config.max_message_size = Some(1 << 20);
    ws_config.max_frame_size = Some(1 << 20);
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, accept_subprotocol, Some(ws_config)).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, "WebSocket handshake failed: {e}");
            return;
        }
    };
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    shared.lock().sessions.insert(id, out_tx.clone());
    let (mut sink, mut source) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let timer_tx = out_tx.clone();
    let timer_ms = shared.config.timer_ms;
    let timer = tokio::spawn(async move {
        if timer_ms == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(timer_ms));
        tick.tick().await;
        loop {
            tick.tick().await;
            let frame = json!({"EVT": {"obj": "timer", "evt": "time", "result": {"t": unix_now()}}});
            if timer_tx.send(Message::text(frame.to_string())).is_err() {
                return;
            }
        }
    });

    let mut errors = 0u32;
    let close = |code: CloseCode, reason: &str| Message::Close(Some(CloseFrame { code, reason: reason.to_owned().into() }));
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => {
                let _ = out_tx.send(close(CloseCode::Away, "the core is stopping"));
                break;
            }
            m = source.next() => m,
        };
        let text = match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
        };
        let frames = handle_frame(&shared, id, &text).await;
        for f in frames {
            if is_negative(&f) {
                errors += 1;
            }
            let _ = out_tx.send(Message::text(f.to_string()));
        }
        if errors > shared.config.max_errors {
            let _ = out_tx.send(close(CloseCode::Policy, "too many bad frames"));
            break;
        }
    }
    timer.abort();
    shared.end_session(id).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

fn is_negative(frame: &Value) -> bool {
    frame.pointer("/ANSW/result/code").and_then(Value::as_i64).is_some_and(|c| c >= 100)
        || frame.pointer("/EVT/evt").and_then(Value::as_str) == Some("error")
}

/// An `EVT` of type `error`, for frames whose `seq` cannot be read.
fn error_event(code: i64, class: &str, text: &str) -> Value {
    json!({"EVT": {"obj": "session", "evt": "error", "result": {"code": code, "class": class, "text": text}}})
}

fn answer(c: &Cmd, result: Value) -> Value {
    json!({"ANSW": {"cmd": c.cmd, "seq": c.seq, "obj": c.obj, "result": result}})
}

fn negative(c: &Cmd, r: Refuse) -> Value {
    answer(c, json!({"code": r.code, "class": r.class, "text": r.text}))
}

/// Reads the framing; errors come back as the frame to send.
fn read_command(shared: &Shared, text: &str) -> Result<Cmd, Value> {
    if text.len() > shared.config.max_frame_bytes {
        let text = format!("frame of {} bytes is larger than the limit of {} bytes", text.len(), shared.config.max_frame_bytes);
        return Err(error_event(code::TOO_LARGE, "proto", &text));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| error_event(code::NOT_JSON, "proto", &format!("frame: not valid JSON ({e})")))?;
    let Value::Object(o) = v else {
        return Err(error_event(code::NOT_JSON, "proto", "frame: not a JSON object"));
    };
    let seq = match o.get("seq") {
        None => return Err(error_event(code::BAD_FRAME, "proto", "seq: missing")),
        Some(s) => wire::lenient_u64(s).ok_or_else(|| error_event(code::BAD_FRAME, "proto", "seq: not a non-negative integer"))?,
    };
    let cmd_name = o.get("cmd").and_then(Value::as_str).unwrap_or("").to_owned();
    let obj = o.get("obj").and_then(Value::as_str).unwrap_or("").to_owned();
    let mut cmd = Cmd { cmd: cmd_name, seq, obj, params: BTreeMap::new() };
    // With `seq` 0 no answer is wanted: the error goes out as an event instead.
    let fail = |c: &Cmd, code: i64, text: String| {
        Err(if c.seq > 0 { negative(c, refuse(code, "proto", text)) } else { error_event(code, "proto", &text) })
    };
    match o.get("cmd") {
        None => return fail(&cmd, code::BAD_FRAME, "cmd: missing".into()),
        Some(Value::String(_)) => {}
        Some(_) => return fail(&cmd, code::BAD_FRAME, "cmd: not a string".into()),
    }
    match o.get("obj") {
        None => return fail(&cmd, code::BAD_FRAME, "obj: missing".into()),
        Some(Value::String(_)) => {}
        Some(_) => return fail(&cmd, code::BAD_FRAME, "obj: not a string".into()),
    }
    match o.get("params") {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            for (k, v) in p {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return fail(&cmd, code::BAD_PARAM, format!("param {k}: not a string or number")),
                };
                cmd.params.insert(k.clone(), s);
            }
        }
        Some(_) => return fail(&cmd, code::BAD_FRAME, "params: not an object".into()),
    }
    Ok(cmd)
}

fn num_param(c: &Cmd, key: &str) -> Result<u64, Refuse> {
    let v = c.params.get(key).ok_or_else(|| refuse(code::BAD_PARAM, "proto", format!("param {key} is missing")))?;
    v.trim().parse::<u64>().map_err(|_| refuse(code::BAD_PARAM, "proto", format!("param {key} is {v:?}, not a non-negative integer")))
}

/// The frames one incoming frame leads to, in order.
async fn handle_frame(shared: &Arc<Shared>, session: u64, text: &str) -> Vec<Value> {
    let c = match read_command(shared, text) {
        Ok(c) => c,
        Err(frame) => return vec![frame],
    };
    let result = match (c.obj.as_str(), c.cmd.as_str()) {
        ("cd", "load") => cmd_load(shared, session, &c),
        ("cd", "loadlist") => cmd_loadlist(shared, &c),
        ("conf", "CALLME_S1") => cmd_s1(shared, session, &c).await,
        ("conf", "CALLME_S2") => cmd_s2(shared, session, &c).await,
        ("conf", "CALLME_BYE") => cmd_bye(shared, session, &c).await,
        ("cd" | "conf", other) => Err(refuse(code::UNKNOWN_CMD, "proto", format!("cmd: {other:?} is not a command of obj {:?}", c.obj))),
        (other, _) => Err(refuse(code::UNKNOWN_OBJ, "proto", format!("obj: {other:?} is not known (cd or conf)"))),
    };
    match result {
        Ok((result, events)) => {
            let mut frames = Vec::with_capacity(1 + events.len());
            if c.seq > 0 {
                frames.push(answer(&c, result));
            }
            frames.extend(events);
            frames
        }
        Err(r) if c.seq > 0 => vec![negative(&c, r)],
        Err(r) => vec![error_event(r.code, r.class, &r.text)],
    }
}

type Handled = Result<(Value, Vec<Value>), Refuse>;

fn cmd_load(shared: &Shared, session: u64, c: &Cmd) -> Handled {
    let cluster = num_param(c, "ClusterID")?;
    let scheme = num_param(c, "SchemeID")?;
    if scheme == 0 {
        return Err(refuse(code::BAD_PARAM, "proto", "param SchemeID is 0: conference numbers start at 1"));
    }
    let name = c.params.get("NAME").cloned().unwrap_or_default();
    let mut reg = shared.lock();
    let reg = &mut *reg;
    let (conf_id, created) = match reg.by_scheme.get(&(cluster, scheme)) {
        Some(id) => (*id, false),
        None => {
            reg.next_conf += 1;
            let id = ConfId(reg.next_conf);
            let (mixer_tx, mixer_rx) = mpsc::channel(4096);
            tokio::spawn(mixer::run(mixer_rx));
            reg.confs.insert(id, Conf { id, cluster, scheme, parties: BTreeMap::new(), mixer: mixer_tx });
            reg.by_scheme.insert((cluster, scheme), id);
            (id, true)
        }
    };
    let conf = reg.confs.get_mut(&conf_id).expect("just found or made");
    if let Some(p) = conf.parties.values().find(|p| p.session == session) {
        let result = json!({"code": code::LOAD_ALREADY_CONNECTED, "bControl": 0, "SVPartyID": p.id.0, "SVPartyIndex": p.index,
            "confdata": {"ClusterID": cluster, "ID": conf_id.0}, "parties": conf.parties.values().map(PartyRec::partydata).collect::<Vec<_>>()});
        return Ok((result, vec![]));
    }
    reg.next_party += 1;
    let party = PartyRec { id: PartyId(reg.next_party), index: conf.parties.len() as u64, name, session, media: MediaState::None };
    let added = party.partydata();
    let (pid, index) = (party.id, party.index);
    conf.parties.insert(pid, party);
    let conf = &reg.confs[&conf_id];
    Shared::broadcast(reg, conf, session, &conf_changed(conf, json!({"addParties": [added]})));
    let result = json!({"code": if created { code::OK } else { code::LOAD_CONNECTED }, "bControl": 0, "SVPartyID": pid.0, "SVPartyIndex": index,
        "confdata": {"ClusterID": cluster, "ID": conf_id.0}, "parties": conf.parties.values().map(PartyRec::partydata).collect::<Vec<_>>()});
    Ok((result, vec![]))
}

fn cmd_loadlist(shared: &Shared, c: &Cmd) -> Handled {
    let cluster = num_param(c, "ClusterID")?;
    let reg = shared.lock();
    let list: Vec<Value> = reg
        .confs
        .values()
        .filter(|conf| conf.cluster == cluster)
        .map(|conf| json!({"ClusterID": conf.cluster, "ID": conf.id.0, "SchemeID": conf.scheme, "parties": conf.parties.len()}))
        .collect();
    Ok((json!({"code": 0, "list": list}), vec![]))
}

/// Finds the party a CALLME command names and checks it is the session's own.
fn own_party<'a>(reg: &'a mut Registry, session: u64, c: &Cmd) -> Result<(&'a mut Conf, PartyId), Refuse> {
    num_param(c, "ClusterID")?;
    if !reg.confs.values().any(|conf| conf.parties.values().any(|p| p.session == session)) {
        return Err(refuse(code::NOT_AUTHORISED, "auth", "this session holds no party: send cd.load first"));
    }
    let conf_id = ConfId(num_param(c, "ID")?);
    let party = PartyId(num_param(c, "PartyID")?);
    let conf = reg
        .confs
        .get_mut(&conf_id)
        .ok_or_else(|| refuse(code::NO_CONFERENCE, "conf", format!("param ID: no running conference {conf_id}")))?;
    let p = conf
        .parties
        .get(&party)
        .ok_or_else(|| refuse(code::NO_PARTY, "conf", format!("param PartyID: no party {party} in conference {conf_id}")))?;
    if p.session != session {
        return Err(refuse(code::NOT_OWN_PARTY, "auth", format!("param PartyID: party {party} is not this session's own")));
    }
    Ok((conf, party))
}

async fn cmd_s1(shared: &Arc<Shared>, session: u64, c: &Cmd) -> Handled {
    let (old, conf_id, cluster, party) = {
        let mut reg = shared.lock();
        reg.next_generation += 1;
        let generation = reg.next_generation;
        let (conf, party) = own_party(&mut reg, session, c)?;
        let p = conf.parties.get_mut(&party).expect("checked");
        let old = p.media.take_running();
        p.media = MediaState::Offered { generation };
        if old.is_some() {
            let _ = conf.mixer.try_send(mixer::Input::Remove { party });
        }
        (old, conf.id, conf.cluster, party)
    };
    if let Some(old) = old {
        old.close().await; // a reconnect replaces the old media session
    }
    let (serveraddr, username, credential) = match (&shared.config.turn, &shared.config.stun) {
        (Some(t), _) => {
            let cred = turn::mint(&t.secret, &format!("party{party}"), unix_now(), t.ttl_secs);
            (t.url.clone(), cred.username, cred.credential)
        }
        (None, Some(stun)) => (stun.clone(), String::new(), String::new()),
        (None, None) => (String::new(), String::new(), String::new()),
    };
    let evt = json!({"EVT": {"obj": "conf", "evt": "webrtc", "evttype": "servdesc", "result": {"ClusterID": cluster, "ID": conf_id.0, "PartyID": party.0,
        "EvtData": {"serveraddr": serveraddr, "username": username, "credential": credential}}}});
    Ok((json!({"code": 0}), vec![evt]))
}

async fn cmd_s2(shared: &Arc<Shared>, session: u64, c: &Cmd) -> Handled {
    let (conf_id, cluster, party, generation, mixer_tx) = {
        let mut reg = shared.lock();
        let (conf, party) = own_party(&mut reg, session, c)?;
        let p = &conf.parties[&party];
        let MediaState::Offered { generation } = p.media else {
            return Err(refuse(code::S2_BEFORE_S1, "conf", format!("party {party} has no CALLME_S1 under way: send CALLME_S1 first")));
        };
        (conf.id, conf.cluster, party, generation, conf.mixer.clone())
    };
    let params = party_media::offer_from_params(&c.params).map_err(|e| refuse(e.code, "proto", e.text))?;
    let ended_shared = shared.clone();
    let ended = move |reason: String| {
        tokio::spawn(ended_shared.media_ended(conf_id, party, generation, reason));
    };
    let (media, ice) = PartyMedia::start(&shared.env, party, &params, mixer_tx, ended)
        .await
        .map_err(|e| refuse(code::MEDIA_FAILED, "media", format!("media for party {party} could not start: {e}")))?;
    // Install it unless the party left or was replaced meanwhile.
    let stale = {
        let mut reg = shared.lock();
        match reg.confs.get_mut(&conf_id).and_then(|c| c.parties.get_mut(&party)) {
            Some(p) if p.media.generation() == Some(generation) => {
                p.media = MediaState::Running { generation, media };
                None
            }
            _ => Some(media),
        }
    };
    if let Some(media) = stale {
        media.close().await;
        return Err(refuse(code::NO_PARTY, "conf", format!("party {party} left or reconnected during CALLME_S2")));
    }
    let env = &shared.env;
    let evt = json!({"EVT": {"obj": "conf", "evt": "webrtc", "evttype": "servufrag", "result": {"ClusterID": cluster, "ID": conf_id.0, "PartyID": party.0,
        "EvtData": {"ufrag": ice.ufrag, "pwd": ice.pwd, "fingerprint": ice.fingerprint, "port": env.port, "addr": env.announce.to_string()}}}});
    Ok((json!({"code": 0}), vec![evt]))
}

async fn cmd_bye(shared: &Arc<Shared>, session: u64, c: &Cmd) -> Handled {
    let media = {
        let mut reg = shared.lock();
        let (conf, party) = own_party(&mut reg, session, c)?;
        let p = conf.parties.get_mut(&party).expect("checked");
        let m = p.media.take_running();
        let _ = conf.mixer.try_send(mixer::Input::Remove { party });
        m
    };
    if let Some(m) = media {
        m.close().await;
    }
    Ok((json!({"code": 0}), vec![]))
}
