//! The shell around the registry: WebSocket sessions (bounded outbound queues, pings, idle and
//! handshake timeouts, RFC 6455 close codes), the `timer.time` clock, and the one place where
//! the registry's [`Effect`]s become frames, mixers and media.
//!
//! Locks: one mutex over [`State`], held only to call the registry and carry out its effects
//! (never across an await). Async work the effects lead to (starting or closing media) runs
//! after the lock is released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::tls::{Conn, TlsAcceptor};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::accounts::Credential;
use super::config::CoreConfig;
use super::mixer;
use super::party_media::{MediaEnv, PartyMedia};
use super::registry::{Effect, Registry, RegistryConfig, Secret, SessionId};
use crate::media::sdp::OfferFacts;
use crate::wire::{self, close, ConfId, PartyId, ServUfrag, TimerTime};

/// How long a closing session may take to put its close frame out before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The WebSocket layer's limit for one frame or message; frames above `max_frame_bytes` but
/// below this are read and refused with code 101, larger ones close the session with 1009.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// How often the registry's clock is told the time (kept parties expire at this granularity).
const TICK: Duration = Duration::from_millis(250);

/// What every session task shares.
pub(super) struct Shared {
    pub(super) config: CoreConfig,
    pub(super) env: MediaEnv,
    /// The TLS acceptor when `tls_cert` and `tls_key` are set.
    pub(super) tls: Option<TlsAcceptor>,
    state: Mutex<State>,
    next_session: AtomicU64,
    /// The registry's clock starts here (its milliseconds).
    epoch: Instant,
}

/// The registry and what the shell keeps beside it: each session's outbound queue, each
/// conference's mixer, each party's media.
struct State {
    registry: Registry,
    sessions: HashMap<SessionId, SessionTx>,
    mixers: HashMap<ConfId, mixer::Mixer>,
    medias: HashMap<PartyId, PartyMedia>,
}

/// The way into a session's writer.
#[derive(Clone)]
struct SessionTx {
    frames: mpsc::Sender<Message>,
    closing: Arc<watch::Sender<Option<CloseFrame>>>,
}

impl SessionTx {
    /// Decides the session's end: its writer stops sending frames and sends this close frame.
    /// The first decision wins.
    fn close(&self, code: u16, reason: &str) {
        let frame = close_frame(code, reason);
        self.closing.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(frame);
                true
            } else {
                false
            }
        });
    }

    /// Closes the session after the frames already queued (an answer before its close): the
    /// close goes through the queue; if it is not out within the close grace (a peer that does
    /// not read), the session is closed anyway.
    fn close_after_queued(&self, code: u16, reason: &str) {
        if self.frames.try_send(Message::Close(Some(close_frame(code, reason)))).is_err() {
            self.close(code, reason);
            return;
        }
        let me = self.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            me.close(code, &reason);
        });
    }

    /// Queues a frame; a full queue means the client does not read: the session is closed.
    fn push(&self, m: Message) {
        match self.frames.try_send(m) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!("outbound queue full: closing the session");
                self.close(close::POLICY, "outbound queue full: the client does not read");
            }
        }
    }
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame { code: CloseCode::from(code), reason: reason[..end].to_owned().into() }
}

/// Work the effects lead to, done after the lock is released.
enum Work {
    Close(PartyMedia),
    Start {
        conf: ConfId,
        party: PartyId,
        generation: u64,
        offer: OfferFacts,
        mixer: Option<mixer::Mixer>,
    },
    /// Forward the mixer's talking changes to the registry.
    Talking {
        conf: ConfId,
        changes: mpsc::UnboundedReceiver<mixer::TalkingChange>,
    },
    /// Check a password off the lock, after the throttle's delay.
    CheckLogin {
        session: SessionId,
        credential: Option<Credential>,
        password: Secret,
        delay_ms: u64,
    },
}

impl Shared {
    pub(super) fn new(config: CoreConfig, env: MediaEnv, tls: Option<TlsAcceptor>) -> Arc<Self> {
        let registry = Registry::new(RegistryConfig::from_core(&config));
        let state = State { registry, sessions: HashMap::new(), mixers: HashMap::new(), medias: HashMap::new() };
        Arc::new(Shared { config, env, tls, state: Mutex::new(state), next_session: AtomicU64::new(1), epoch: Instant::now() })
    }

    /// The registry's clock: milliseconds since the core started.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Calls the registry's tick every [`TICK`] (kept parties whose grace is over leave) until
    /// the core stops.
    pub(super) fn spawn_ticker(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = every.tick() => {}
                }
                let Some(shared) = shared.upgrade() else { return };
                let now = shared.now_ms();
                shared.drive(|r| r.handle_tick(now));
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn roster(&self, cluster: crate::wire::ClusterId, scheme: crate::wire::SchemeId) -> Vec<crate::wire::PartyData> {
        self.lock().registry.roster(cluster, scheme)
    }

    pub(super) fn stats(&self) -> super::CoreStats {
        let s = self.lock().registry.stats();
        super::CoreStats { sessions: s.sessions, conferences: s.conferences, parties: s.parties, parties_with_media: s.parties_with_media }
    }

    /// Calls the registry under the lock, carries out its effects, then starts the async work.
    fn drive(self: &Arc<Self>, f: impl FnOnce(&mut Registry) -> Vec<Effect>) {
        let work = {
            let mut st = self.lock();
            let effects = f(&mut st.registry);
            st.apply(effects)
        };
        self.run(work);
    }

    /// Starts the async work in tasks of its own: nothing waits for media here.
    fn run(self: &Arc<Self>, work: Vec<Work>) {
        for w in work {
            match w {
                Work::Close(m) => {
                    tokio::spawn(m.close());
                }
                Work::Start { conf, party, generation, offer, mixer } => {
                    tokio::spawn(
                        self.clone()
                            .start_media(conf, party, generation, offer, mixer)
                            .instrument(tracing::info_span!("party", %conf, id = %party)),
                    );
                }
                Work::Talking { conf, mut changes } => {
                    // Ends when the conference's mixer (the sender's owner) is gone.
                    let shared = Arc::downgrade(self);
                    tokio::spawn(async move {
                        while let Some(c) = changes.recv().await {
                            let Some(shared) = shared.upgrade() else { return };
                            shared.drive(|r| r.handle_talking(conf, c.party, c.talking));
                        }
                    });
                }
                Work::CheckLogin { session, credential, password, delay_ms } => {
                    let shared = self.clone();
                    tokio::spawn(
                        async move {
                            if delay_ms > 0 {
                                tracing::info!(delay_ms, "login throttled: failed logins from this address");
                                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            }
                            let ok = tokio::task::spawn_blocking(move || match credential {
                                Some(c) => c.verify(password.expose()),
                                None => Credential::verify_unknown(password.expose()),
                            })
                            .await
                            .unwrap_or(false);
                            shared.drive(|r| r.handle_login_checked(session, ok, unix_now()));
                        }
                        .in_current_span(),
                    );
                }
            }
        }
    }

    /// Each running conference's mixer figures.
    pub(super) fn mixer_stats(&self) -> Vec<(ConfId, mixer::MixerStats)> {
        self.lock().mixers.iter().map(|(c, m)| (*c, m.stats())).collect()
    }

    /// Starts a party's media and reports the outcome to the registry.
    async fn start_media(self: Arc<Self>, conf: ConfId, party: PartyId, generation: u64, offer: OfferFacts, mixer: Option<mixer::Mixer>) {
        let started = match mixer {
            None => Err("the conference ended".to_owned()),
            Some(mixer) => {
                let shared = self.clone();
                let ended = move |reason: String| shared.drive(|r| r.handle_media_ended(conf, party, generation, &reason));
                PartyMedia::start(&self.env, party, &offer, mixer, ended).await
            }
        };
        let (media, ufrag) = match started {
            Ok((media, ice)) => {
                let env = &self.env;
                let ufrag = ServUfrag {
                    ufrag: ice.ufrag,
                    pwd: ice.pwd,
                    fingerprint: ice.fingerprint,
                    port: env.port,
                    addr: Some(env.announce.to_string()),
                    candidates: Vec::new(),
                };
                (Some(media), Ok(ufrag))
            }
            Err(e) => (None, Err(e)),
        };
        let work = {
            let mut st = self.lock();
            let (keep, effects) = st.registry.handle_media_started(conf, party, generation, ufrag);
            let mut work = Vec::new();
            if let Some(media) = media {
                if keep {
                    if let Some(old) = st.medias.insert(party, media) {
                        work.push(Work::Close(old));
                    }
                } else {
                    work.push(Work::Close(media));
                }
            }
            work.extend(st.apply(effects));
            work
        };
        self.run(work);
    }

    /// Stops everything: the registry's shutdown, every media closed.
    pub(super) async fn shutdown(&self) {
        let medias: Vec<PartyMedia> = {
            let mut st = self.lock();
            let effects = st.registry.handle_shutdown();
            let _ = st.apply(effects);
            st.mixers.clear();
            st.medias.drain().map(|(_, m)| m).collect()
        };
        for m in medias {
            m.close().await;
        }
    }
}

impl State {
    /// The glue: every effect becomes frames, mixer inputs or media work. All mixer and media
    /// calls of the core are here and in [`Shared::start_media`].
    fn apply(&mut self, effects: Vec<Effect>) -> Vec<Work> {
        let mut work = Vec::new();
        for e in effects {
            match e {
                Effect::Send { session, frame } => {
                    if let Some(tx) = self.sessions.get(&session) {
                        tx.push(Message::text(frame.to_frame()));
                    }
                }
                Effect::Close { session, code, reason } => {
                    if let Some(tx) = self.sessions.get(&session) {
                        tx.close_after_queued(code, &reason);
                    }
                }
                Effect::ConferenceStarted { conf } => {
                    // Without a mixer (no thread could be started) the party's CALLME_S2 is
                    // refused with code 300 when it comes.
                    let (talking, changes) = mpsc::unbounded_channel();
                    let config = mixer::MixerConfig { name: format!("mixer-{conf}"), talking: Some(talking), ..Default::default() };
                    match mixer::Mixer::spawn(config) {
                        Ok(m) => {
                            self.mixers.insert(conf, m);
                            work.push(Work::Talking { conf, changes });
                        }
                        Err(e) => tracing::warn!(%conf, "the conference's mixer does not start: {e}"),
                    }
                }
                Effect::SetMic { conf, party, on } => {
                    if let Some(m) = self.mixers.get(&conf) {
                        m.set_mic(party, on);
                    }
                }
                Effect::CheckLogin { session, credential, password, delay_ms } => {
                    work.push(Work::CheckLogin { session, credential, password, delay_ms });
                }
                Effect::ConferenceEnded { conf } => {
                    self.mixers.remove(&conf);
                }
                Effect::StartMedia { conf, party, generation, offer } => {
                    work.push(Work::Start { conf, party, generation, offer, mixer: self.mixers.get(&conf).cloned() });
                }
                Effect::StopMedia { conf, party } => {
                    if let Some(m) = self.mixers.get(&conf) {
                        m.remove(party);
                    }
                    if let Some(m) = self.medias.remove(&party) {
                        work.push(Work::Close(m));
                    }
                }
            }
        }
        work
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The WebSocket configuration: buffers sized for small frames.
pub(super) fn ws_config(config: &CoreConfig) -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = config.ws_read_buffer_bytes;
    // Each frame is written at once; a peer that does not read fills the outbound queue, not
    // an ever-growing write buffer.
    c.write_buffer_size = 0;
    c.max_write_buffer_size = 2 * MAX_WS_MESSAGE;
    c.max_message_size = Some(MAX_WS_MESSAGE);
    c.max_frame_size = Some(MAX_WS_MESSAGE);
    c
}

/// The WebSocket handshake, echoing the sub-protocol when offered.
pub(super) async fn accept(stream: Conn, config: &CoreConfig) -> Result<WebSocketStream<Conn>, WsError> {
    // The error type is tungstenite's handshake response; it is never built here.
    #[allow(clippy::result_large_err)]
    let accept_subprotocol = |req: &Request, mut resp: Response| {
        let offered = req.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
        if offered.split(',').any(|p| p.trim() == wire::SUBPROTOCOL) {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(wire::SUBPROTOCOL));
        }
        Ok(resp)
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, accept_subprotocol, Some(ws_config(config))).await
}

/// The close code and reason for a frame the WebSocket layer refused.
fn close_for(e: &WsError) -> Option<(u16, String)> {
    match e {
        WsError::Utf8(_) => Some((close::INVALID_DATA, "a text frame is not valid UTF-8".into())),
        WsError::Capacity(c) => Some((close::TOO_BIG, format!("frame too large: {c}"))),
        WsError::Protocol(p) => Some((close::PROTOCOL_ERROR, format!("WebSocket protocol error: {p}"))),
        _ => None,
    }
}

/// One WebSocket session from open to close.
pub(super) async fn serve(ws: WebSocketStream<Conn>, peer: SocketAddr, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let id = SessionId(shared.next_session.fetch_add(1, Ordering::Relaxed));
    session(ws, id, peer, shared, stop).instrument(tracing::info_span!("session", %id, %peer)).await;
}

async fn session(ws: WebSocketStream<Conn>, id: SessionId, peer: SocketAddr, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let config = &shared.config;
    let (frames_tx, mut frames_rx) = mpsc::channel::<Message>(config.outbound_queue_frames.max(1));
    let (closing_tx, mut closing_rx) = watch::channel::<Option<CloseFrame>>(None);
    let tx = SessionTx { frames: frames_tx, closing: Arc::new(closing_tx) };
    let work = {
        let mut st = shared.lock();
        st.sessions.insert(id, tx.clone());
        let effects = st.registry.handle_session_opened(id, Some(peer.ip()));
        st.apply(effects)
    };
    shared.run(work);

    let (mut sink, mut source) = ws.split();
    let mut writer_closing = closing_rx.clone();
    let closing_by_queue = tx.closing.clone();
    let writer = tokio::spawn(
        async move {
            'frames: loop {
                tokio::select! {
                    biased;
                    _ = writer_closing.changed() => break,
                    m = frames_rx.recv() => {
                        let Some(m) = m else { break };
                        if let Message::Close(Some(f)) = m {
                            // A close queued behind frames: they are out, now the close.
                            closing_by_queue.send_if_modified(|c| c.is_none() && { *c = Some(f); true });
                            break;
                        }
                        tokio::select! {
                            biased;
                            // A frame half written stays in the WebSocket's buffer, ahead of the close frame.
                            _ = writer_closing.changed() => break 'frames,
                            sent = sink.send(m) => if sent.is_err() { return },
                        }
                    }
                }
            }
            let frame = writer_closing.borrow().clone();
            if let Some(f) = frame {
                tracing::info!(code = u16::from(f.code), reason = %f.reason, "closing the session");
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(f)))).await;
            }
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
        }
        .in_current_span(),
    );

    let ms = Duration::from_millis;
    let idle = (config.idle_timeout_ms > 0).then(|| ms(config.idle_timeout_ms));
    let mut ping = (config.ping_interval_ms > 0)
        .then(|| tokio::time::interval_at(Instant::now() + ms(config.ping_interval_ms), ms(config.ping_interval_ms)));
    let mut timer = (config.timer_ms > 0).then(|| tokio::time::interval_at(Instant::now() + ms(config.timer_ms), ms(config.timer_ms)));
    let mut heard = Instant::now();
    loop {
        let idle_deadline = idle.map(|d| heard + d);
        let msg = tokio::select! {
            _ = stop.changed() => {
                tx.close(close::GOING_AWAY, "the core is stopping");
                break;
            }
            _ = closing_rx.changed() => break,
            _ = sleep_until(idle_deadline) => {
                let reason = format!("idle: nothing received for {} ms, not even a pong", config.idle_timeout_ms);
                tracing::info!(%reason, "closing the session");
                tx.close(close::POLICY, &reason);
                break;
            }
            _ = tick(&mut ping) => {
                tx.push(Message::Ping(Default::default()));
                continue;
            }
            _ = tick(&mut timer) => {
                tx.push(Message::text(TimerTime { t: unix_now() }.to_event().to_frame()));
                continue;
            }
            m = source.next() => m,
        };
        heard = Instant::now();
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                match close_for(&e) {
                    Some((code, reason)) => {
                        tracing::info!(code, %reason, "bad WebSocket frame");
                        tx.close(code, &reason);
                    }
                    None => tracing::debug!(error = %e, "the socket failed"),
                }
                break;
            }
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
        };
        shared.drive(|r| r.handle_frame(id, &text, unix_now()));
    }

    let work = {
        let mut st = shared.lock();
        let effects = st.registry.handle_session_closed(id, shared.now_ms());
        let work = st.apply(effects);
        st.sessions.remove(&id);
        work
    };
    shared.run(work);
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), writer).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
