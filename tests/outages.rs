//! Outages end to end: the call goes on through a blackout of the media path (2 s, and 15 s:
//! longer than the core's media timeout), a cut WebSocket, and a core killed and started again
//! on the same ports. Two SDK parties with a tone each (reconnection on, as by default) and a
//! `callme core` process or an in-process core behind `callme::netem`'s relays. Each test
//! checks that each party hears the other again (and not itself) and that the outage was
//! measured; the times are printed, not asserted (the bench measures them).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::{Impairment, Relay, TcpRelay};
use callme::{AudioSource, CallEvent, ClusterId, Connected, SchemeId, Session};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

const CALLME: &str = env!("CARGO_BIN_EXE_callme");
const A_HZ: f32 = 440.0;
const B_HZ: f32 = 660.0;

async fn join(ws_url: &str, name: &str, hz: f32) -> Connected {
    let party = Session::connect(ws_url).await.expect("the WebSocket opens").load(ClusterId(1), SchemeId(21), name).await.expect("cd.load");
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz)).await.unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

/// Whether `call` hears `other` and not `own` in the next 200 ms.
async fn hears(call: &Connected, other: f32, own: f32) -> bool {
    match call.listen(Duration::from_millis(200)).await {
        Ok(heard) if heard.len() >= 4800 => tone_share(&heard, other) > 0.5 && tone_share(&heard, own) < 0.1,
        _ => false,
    }
}

/// Waits (at most `bound`) until both parties hear each other; how long it took.
async fn until_both_hear(a: &Connected, b: &Connected, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < bound {
        let (x, y) = tokio::join!(hears(a, B_HZ, A_HZ), hears(b, A_HZ, B_HZ));
        if x && y {
            return Some(start.elapsed());
        }
    }
    None
}

/// The events seen so far (passes over stats), without waiting.
async fn drain(call: &Connected) -> Vec<CallEvent> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), call.next_event()).await {
        if !matches!(e, CallEvent::Stats(_)) {
            out.push(e);
        }
    }
    out
}

fn reconnected(events: &[CallEvent]) -> Option<Duration> {
    events.iter().find_map(|e| match e {
        CallEvent::Reconnected { outage, .. } => Some(*outage),
        _ => None,
    })
}

/// A free TCP and a free UDP port on 127.0.0.1 (picked by the system, then released).
fn free_ports() -> (u16, u16) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (tcp, udp)
}

/// `callme core` on these ports; returns when it has printed its addresses.
async fn core_process(ws_port: u16, media_port: u16) -> Child {
    let mut child = Command::new(CALLME)
        .args(["core", "--listen", &format!("127.0.0.1:{ws_port}"), "--media-port", &media_port.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("callme core starts");
    let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("the core reports").unwrap().unwrap_or_default();
    assert!(first.contains(" ws "), "the core's first line: {first:?}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_killed_and_started_again_has_both_parties_back_and_heard() {
    let (ws_port, media_port) = free_ports();
    let mut first = core_process(ws_port, media_port).await;
    let url = format!("ws://127.0.0.1:{ws_port}/ws");
    let (a, b) = tokio::join!(join(&url, "a", A_HZ), join(&url, "b", B_HZ));
    assert!(until_both_hear(&a, &b, Duration::from_secs(10)).await.is_some(), "before the restart");
    let (a_party, b_party) = (a.party_id(), b.party_id());

    first.kill().expect("the core is killed");
    let _ = first.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = core_process(ws_port, media_port).await;
    let accepting = Instant::now();
    let back = until_both_hear(&a, &b, Duration::from_secs(30)).await;
    eprintln!("core restart: both parties heard {:?} after the new core accepted connections", back);
    assert!(back.is_some(), "both parties are back and heard: {:?} / {:?}", a.end_reason(), b.end_reason());
    let (ea, eb) = (drain(&a).await, drain(&b).await);
    for (name, events, before, call) in [("a", &ea, a_party, &a), ("b", &eb, b_party, &b)] {
        let outage = reconnected(events).unwrap_or_else(|| panic!("{name} reports its reconnection: {events:?}"));
        eprintln!("core restart: {name} was out for {} ms, party {} -> {}", outage.as_millis(), before.0, call.party_id().0);
        assert_ne!(call.party_id(), before, "{name}: a new core loads a new party");
        assert_eq!(call.stats().reconnects, 1);
    }
    eprintln!("core restart: measured from accepting to both heard: {:?}", accepting.elapsed());
    a.leave().await;
    b.leave().await;
    let _ = second.kill();
    let _ = second.wait();
}

async fn core_behind_relays() -> (CoreHandle, Relay) {
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.announce = Some("127.0.0.2".parse().unwrap());
        c.media_timeout_ms = 10_000;
    });
    let core = core::start(config).await.expect("the core starts");
    let public = format!("127.0.0.2:{}", core.media_addr.port()).parse().unwrap();
    let relay = Relay::start(public, "127.0.0.3".parse().unwrap(), core.media_addr, Impairment::default()).await.expect("the relay starts");
    (core, relay)
}

async fn blackout(length: Duration, expect_reconnect: bool) {
    let (core, relay) = core_behind_relays().await;
    let (a, b) = tokio::join!(join(&core.ws_url, "a", A_HZ), join(&core.ws_url, "b", B_HZ));
    assert!(until_both_hear(&a, &b, Duration::from_secs(10)).await.is_some(), "before the blackout");
    relay.blackout(length);
    tokio::time::sleep(length).await;
    let after = until_both_hear(&a, &b, Duration::from_secs(30)).await;
    eprintln!("blackout {} ms: both heard {:?} after it ended", length.as_millis(), after);
    assert!(after.is_some(), "both heard again: {:?} / {:?}", a.end_reason(), b.end_reason());
    for (name, call) in [("a", &a), ("b", &b)] {
        let events = drain(call).await;
        let stats = call.stats();
        eprintln!("blackout {} ms: {name} outages {:?}, events {events:?}", length.as_millis(), stats.outages);
        match (expect_reconnect, reconnected(&events)) {
            (true, Some(outage)) => assert!(outage >= length / 2, "{name}: the outage covers the blackout: {outage:?}"),
            (true, None) => panic!("{name}: a blackout longer than the core's media timeout is reconnected: {events:?}"),
            (false, Some(o)) => panic!("{name}: a 2 s blackout does not need a reconnection (outage {o:?})"),
            (false, None) => {}
        }
        assert!(!stats.outages.is_empty(), "{name}: the outage is recorded in the stats");
    }
    a.leave().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_s_blackout_of_the_media_path_is_ridden_out() {
    blackout(Duration::from_secs(2), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_15_s_blackout_longer_than_the_media_timeout_is_reconnected() {
    blackout(Duration::from_secs(15), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_websocket_is_noticed_and_resumed_as_the_same_party() {
    let core = core::start(CoreConfig::loopback_ephemeral()).await.expect("the core starts");
    let ws_port: u16 = core.ws_url.rsplit(':').next().unwrap().trim_end_matches("/ws").parse().unwrap();
    let relay = TcpRelay::start("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{ws_port}").parse().unwrap()).await.unwrap();
    let a = join(&core.ws_url, "a", A_HZ).await;
    let b = join(&format!("ws://{}/ws", relay.addr()), "b", B_HZ).await;
    assert!(until_both_hear(&a, &b, Duration::from_secs(10)).await.is_some(), "before the cut");
    let before = b.party_id();
    relay.cut();
    // Nothing comes on b's socket any more; its keep-alive notices, and it resumes.
    let start = Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < Duration::from_secs(30) && reconnected(&events).is_none() {
        events.extend(drain(&b).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("cut WebSocket: b's events {events:?} after {:?}", start.elapsed());
    assert!(reconnected(&events).is_some(), "b reconnects: {events:?}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Reconnecting { cause: callme::ReconnectCause::SocketLost { .. }, .. })));
    assert_eq!(b.party_id(), before, "resumed by token as the same party");
    assert!(until_both_hear(&a, &b, Duration::from_secs(10)).await.is_some(), "heard again after the resume");
    a.leave().await;
    b.leave().await;
    core.stop().await;
}
