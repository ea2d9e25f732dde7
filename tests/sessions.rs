//! The WebSocket side of the reference core holds: bounded queues, a cap on sessions, timeouts
//! for unfinished upgrades and silent clients, RFC 6455 close codes for protocol violations,
//! and little memory per idle socket. Each test runs a core on loopback with short limits and
//! checks exact close codes and what another session still gets.

#![cfg(feature = "core")]

use std::time::Duration;

use callme::core::{self, CoreConfig, CoreHandle};
use callme::wire::{close, code, ConfChanged, Incoming};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The tests of this file measure memory and count sessions: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn quiet_config() -> CoreConfig {
    CoreConfig::loopback_ephemeral().with(|c| {
        c.timer_ms = 0;
        c.ping_interval_ms = 0;
        c.idle_timeout_ms = 0;
        // A session the core closes keeps its parties for a resume this long, then they leave.
        c.resume_grace_ms = 300;
    })
}

fn addr_of(core: &CoreHandle) -> String {
    core.ws_url.trim_start_matches("ws://").trim_end_matches("/ws").to_owned()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(core: &CoreHandle) -> Ws {
    tokio_tungstenite::connect_async(core.ws_url.as_str()).await.expect("the WebSocket opens").0
}

fn load_frame(seq: u64, scheme: u64, name: &str) -> String {
    format!(r#"{{"cmd":"load","seq":{seq},"obj":"cd","params":{{"ClusterID":"1","SchemeID":"{scheme}","NAME":"{name}"}}}}"#)
}

fn loadlist_frame(seq: u64) -> String {
    format!(r#"{{"cmd":"loadlist","seq":{seq},"obj":"cd","params":{{"ClusterID":"1"}}}}"#)
}

/// Reads until a text frame passes `want`; every frame on the way is passed over.
async fn ws_until(ws: &mut Ws, what: &str, want: impl Fn(&Incoming) -> bool) -> Incoming {
    for _ in 0..10_000 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap_or_else(|_| panic!("{what}: nothing within 10 s"));
        let m = m.unwrap_or_else(|| panic!("{what}: the socket closed")).unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Message::Text(t) = m {
            let frame = Incoming::parse(&t).expect("the core writes frames the SDK reads");
            if want(&frame) {
                return frame;
            }
        }
    }
    panic!("{what}: not among 10000 frames");
}

async fn ws_answer(ws: &mut Ws, frame: String, seq: u64) -> callme::wire::Answer {
    ws.send(Message::text(frame)).await.unwrap();
    match ws_until(ws, "the answer", |f| matches!(f, Incoming::Answer(a) if a.seq == seq)).await {
        Incoming::Answer(a) => a,
        Incoming::Event(_) => unreachable!(),
    }
}

/// Polls the core's stats until `ok`, at most 200 times 50 ms.
async fn eventually(core: &CoreHandle, what: &str, ok: impl Fn(core::CoreStats) -> bool) {
    for _ in 0..200 {
        if ok(core.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: stats are {:?}", core.stats());
}

// ---------------------------------------------------------------------------------------------
// A raw WebSocket client over TCP, for what tungstenite's client cannot be made to do.

async fn raw_connect(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "an over-long response head");
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// One frame as a client writes it: FIN, the opcode, the mask bit as asked, the payload.
fn raw_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads frames from the core until its close frame: the close code and reason. `None` if the
/// socket ends without one.
async fn raw_close(s: &mut TcpStream) -> Option<(u16, String)> {
    for _ in 0..100_000 {
        let mut h = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut h)).await.expect("a frame within 10 s").ok()?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        assert_eq!(h[1] & 0x80, 0, "the core does not mask");
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        if h[0] & 0x0f == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_does_not_read_is_closed_with_1008_and_another_session_is_served_throughout() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config().with(|c| {
        c.outbound_queue_frames = 16;
    }))
    .await
    .unwrap();
    let mut other = ws_connect(&core).await;
    let a = ws_answer(&mut other, load_frame(1, 5, "reader"), 1).await;
    assert_eq!(a.code, code::OK);

    // The stalled client: a tiny receive buffer, and it never reads. It loads, then sends
    // loadlist after loadlist; every answer queues up at the core.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr_of(&core).parse().unwrap()).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(core.ws_url.as_str(), stream).await.unwrap();
    let flood = tokio::spawn(async move {
        stalled.send(Message::text(load_frame(1, 5, "stalled"))).await.unwrap();
        for seq in 2..200_000u64 {
            match tokio::time::timeout(Duration::from_secs(2), stalled.send(Message::text(loadlist_frame(seq)))).await {
                Ok(Ok(())) => {}
                _ => break, // the core stopped reading: it closed the session
            }
        }
        stalled
    });

    // The other session learns that the stalled party joined, then that it left: the stalled
    // session was closed, its party freed.
    let roster = |f: &Incoming| matches!(f, Incoming::Event(e) if e.name() == ConfChanged::EVENT);
    let Incoming::Event(joined) = ws_until(&mut other, "addParties", roster).await else { unreachable!() };
    assert_eq!(ConfChanged::from_event(&joined).unwrap().add.len(), 1);
    let Incoming::Event(left) = ws_until(&mut other, "delParties", roster).await else { unreachable!() };
    assert_eq!(ConfChanged::from_event(&left).unwrap().del.len(), 1, "{left:?}");
    eventually(&core, "the stalled session is gone", |s| s.sessions == 1 && s.parties == 1).await;
    // The other session is served as before.
    assert_eq!(ws_answer(&mut other, loadlist_frame(3), 3).await.code, code::OK);

    // What the stalled client finds when it reads at last: its answers, then 1008.
    let mut stalled = flood.await.unwrap();
    let mut close_frame = None;
    for _ in 0..1_000_000 {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next()).await.expect("frames within 10 s") {
            Some(Ok(Message::Close(f))) => {
                close_frame = f;
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket failed before the close frame: {e}"),
            None => break,
        }
    }
    let f = close_frame.expect("a close frame");
    assert_eq!(u16::from(f.code), close::POLICY);
    assert_eq!(f.reason.as_str(), "outbound queue full: the client does not read");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_above_max_sessions_is_closed_at_once_with_1013() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config().with(|c| {
        c.max_sessions = 2;
    }))
    .await
    .unwrap();
    let mut first = ws_connect(&core).await;
    assert_eq!(ws_answer(&mut first, loadlist_frame(1), 1).await.code, code::OK);
    let mut second = ws_connect(&core).await;
    assert_eq!(ws_answer(&mut second, loadlist_frame(1), 1).await.code, code::OK);

    let mut third = ws_connect(&core).await;
    let m = tokio::time::timeout(Duration::from_secs(10), third.next()).await.expect("a close within 10 s");
    let Some(Ok(Message::Close(Some(f)))) = m else { panic!("expected a close frame, got {m:?}") };
    assert_eq!(u16::from(f.code), close::TRY_AGAIN_LATER);
    assert_eq!(f.reason.as_str(), "the core serves its maximum of 2 sessions: try again later");
    assert_eq!(core.stats().sessions, 2);

    // When one leaves, a new one is served.
    first.close(None).await.unwrap();
    eventually(&core, "the first session is gone", |s| s.sessions == 1).await;
    let mut fourth = ws_connect(&core).await;
    assert_eq!(ws_answer(&mut fourth, loadlist_frame(1), 1).await.code, code::OK);
    assert_eq!(ws_answer(&mut second, loadlist_frame(2), 2).await.code, code::OK);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_upgrade_is_disconnected_after_the_handshake_timeout() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config().with(|c| {
        c.handshake_timeout_ms = 300;
    }))
    .await
    .unwrap();
    let addr = addr_of(&core);
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await.unwrap();
    let mut upgraded = TcpStream::connect(&addr).await.unwrap();
    upgraded.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n").await.unwrap();
    for (what, s) in [("a silent client", &mut silent), ("half a request", &mut half), ("a head without its end", &mut upgraded)] {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after 10 s"));
        assert!(matches!(read, Ok(0) | Err(_)), "{what}: the core disconnects it without an answer, read {read:?}");
    }
    assert_eq!(core.stats().sessions, 0);
    // A complete upgrade is served as before.
    let mut ws = ws_connect(&core).await;
    assert_eq!(ws_answer(&mut ws, loadlist_frame(1), 1).await.code, code::OK);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed_and_its_party_freed_for_everyone() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config().with(|c| {
        c.ping_interval_ms = 200;
        c.idle_timeout_ms = 800;
    }))
    .await
    .unwrap();
    let mut alive = ws_connect(&core).await;
    assert_eq!(ws_answer(&mut alive, load_frame(1, 4, "alive"), 1).await.code, code::OK);

    // The frozen client loads, then reads nothing and answers nothing.
    let mut frozen = raw_connect(&addr_of(&core)).await;
    frozen.write_all(&raw_frame(0x1, load_frame(1, 4, "frozen").as_bytes(), true)).await.unwrap();
    ws_until(&mut alive, "addParties", |f| matches!(f, Incoming::Event(e) if e.name() == ConfChanged::EVENT)).await;
    assert_eq!(core.stats().parties, 2);

    // The live one (its client answers pings as it reads) hears that the frozen party left.
    let gone = ws_until(&mut alive, "delParties", |f| matches!(f, Incoming::Event(e) if e.name() == ConfChanged::EVENT)).await;
    let Incoming::Event(e) = gone else { unreachable!() };
    assert_eq!(ConfChanged::from_event(&e).unwrap().del.len(), 1);
    assert_eq!((core.stats().sessions, core.stats().parties), (1, 1));

    let (code, reason) = raw_close(&mut frozen).await.expect("a close frame");
    assert_eq!(code, close::POLICY);
    assert_eq!(reason, "idle: nothing received for 800 ms, not even a pong");
    assert_eq!(ws_answer(&mut alive, loadlist_frame(2), 2).await.code, code::OK, "the live session is still served");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_their_rfc_6455_close_codes() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config()).await.unwrap();
    let addr = addr_of(&core);
    let mut too_long = vec![0x81, 0xff];
    too_long.extend_from_slice(&(2u64 << 20).to_be_bytes());
    too_long.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("an unmasked frame", raw_frame(0x1, b"{}", false), close::PROTOCOL_ERROR, "WebSocket protocol error"),
        ("a reserved opcode", raw_frame(0x3, b"x", true), close::PROTOCOL_ERROR, "WebSocket protocol error"),
        (
            "reserved bits set",
            raw_frame(0x1, b"{}", true).into_iter().enumerate().map(|(i, b)| if i == 0 { b | 0x40 } else { b }).collect(),
            close::PROTOCOL_ERROR,
            "reserved bits",
        ),
        ("a text frame that is not UTF-8", raw_frame(0x1, &[0x7b, 0xff, 0xfe, 0x7d], true), close::INVALID_DATA, "not valid UTF-8"),
        ("a frame of 2 MiB", too_long, close::TOO_BIG, "frame too large"),
    ];
    for (what, bytes, want, says) in cases {
        let mut s = raw_connect(&addr).await;
        s.write_all(&bytes).await.unwrap();
        let (got, reason) = raw_close(&mut s).await.unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(got, want, "{what}: {reason}");
        assert!(reason.to_lowercase().contains(&says.to_lowercase()), "{what}: reason {reason:?} should say {says:?}");
    }
    eventually(&core, "every violating session is gone", |s| s.sessions == 0).await;
    let mut ws = ws_connect(&core).await;
    assert_eq!(ws_answer(&mut ws, loadlist_frame(1), 1).await.code, code::OK);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_display_name_and_too_many_conferences_are_refused_by_code() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config().with(|c| {
        c.max_name_len = 10;
        c.max_conferences_per_session = 2;
    }))
    .await
    .unwrap();
    let mut ws = ws_connect(&core).await;
    let a = ws_answer(&mut ws, load_frame(1, 1, "eleven char"), 1).await;
    let r = a.refusal(&[code::OK]).expect("refused");
    assert_eq!(r.code, code::BAD_PARAM);
    assert_eq!(r.text, "param NAME is 11 characters long, at most 10 are allowed");
    assert_eq!(ws_answer(&mut ws, load_frame(2, 1, "ten chars!"), 2).await.code, code::OK);
    assert_eq!(ws_answer(&mut ws, load_frame(3, 2, "x"), 3).await.code, code::OK);
    let r = ws_answer(&mut ws, load_frame(4, 3, "x"), 4).await.refusal(&[code::OK]).expect("refused");
    assert_eq!((r.code, r.class.as_str()), (code::TOO_MANY_CONFERENCES, "limit"));
    assert_eq!(core.stats().conferences, 2);
    core.stop().await;
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// The resident memory each idle, upgraded WebSocket adds to the process (core and raw client
/// together), over `n` sockets.
async fn rss_per_idle_socket(read_buffer: usize, n: usize) -> usize {
    let core = core::start(quiet_config().with(|c| {
        c.ws_read_buffer_bytes = read_buffer;
        c.max_sessions = n + 30;
    }))
    .await
    .unwrap();
    let addr = addr_of(&core);
    // Warm up: the first sockets pay for one-time allocations.
    let mut warm = Vec::new();
    for _ in 0..20 {
        let mut s = raw_connect(&addr).await;
        s.write_all(&raw_frame(0x1, loadlist_frame(1).as_bytes(), true)).await.unwrap();
        warm.push(s);
    }
    eventually(&core, "the warm-up sessions are open", |s| s.sessions == 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let mut sockets = Vec::new();
    for _ in 0..n {
        let mut s = raw_connect(&addr).await;
        s.write_all(&raw_frame(0x1, loadlist_frame(1).as_bytes(), true)).await.unwrap();
        sockets.push(s);
    }
    eventually(&core, "the idle sessions are open", |s| s.sessions == n + 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes();
    drop(sockets);
    drop(warm);
    core.stop().await;
    after.saturating_sub(before) / n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_costs_little_memory() {
    let _serial = SERIAL.lock().await;
    let n = 200;
    let small = rss_per_idle_socket(4096, n).await;
    let large = rss_per_idle_socket(128 * 1024, n).await;
    eprintln!("resident memory per idle WebSocket over {n}: {} bytes with a 4 KiB read buffer, {} bytes with 128 KiB", small, large);
    assert!(small < 64 * 1024, "an idle WebSocket costs {small} bytes");
    assert!(small < large, "the small read buffer saves memory: {small} vs {large}");
}

/// Sanity for the raw helpers: a masked text frame is read as a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_masked_frame_is_answered_like_any_other() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config()).await.unwrap();
    let mut s = raw_connect(&addr_of(&core)).await;
    s.write_all(&raw_frame(0x1, loadlist_frame(9).as_bytes(), true)).await.unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut payload).await.unwrap();
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["ANSW"]["seq"], 9);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_page_is_served_beside_the_websocket() {
    let _serial = SERIAL.lock().await;
    let core = core::start(quiet_config()).await.unwrap();
    for (path, status) in [("/", "HTTP/1.1 200 OK"), ("/callme.js", "HTTP/1.1 200 OK"), ("/nothing", "HTTP/1.1 404 Not Found")] {
        let mut s = TcpStream::connect(addr_of(&core)).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut body = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut body)).await.expect("an answer within 10 s").unwrap();
        assert!(body.starts_with(status.as_bytes()), "{path}: {}", String::from_utf8_lossy(&body[..body.len().min(80)]));
    }
    core.stop().await;
}
