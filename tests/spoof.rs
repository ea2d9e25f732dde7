//! Forged datagrams during a call, sent from the addresses the two sides know each other by.
//!
//! The core sits behind the relay of `callme::netem` (it announces the relay's address), so the
//! relay is a party's address as the core sees it and the core's address as the party sees it:
//! it injects datagrams either way without any keys. The call must go on with the other party's
//! tone heard throughout, and nothing reported.

use std::net::SocketAddr;
use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::{Impairment, Relay};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};

/// RTP v2 with the extension bit, one word of one-byte-profile extension whose first element
/// (id 1) claims 16 bytes: webrtc-rs 0.17's RTP header parser panics on it inside SRTP decryption.
const OVERLONG_EXTENSION: [u8; 20] =
    [0x90, 0x6F, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0xBE, 0xDE, 0x00, 0x01, 0x1F, 0x00, 0x00, 0x00];

/// An SRTCP receiver report cut to 8 bytes: the SRTCP index is computed from a length it does not have.
const SHORT_RTCP: [u8; 8] = [0x80, 0xC9, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07];

async fn core_behind_relay() -> (CoreHandle, Relay) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.announce = Some("127.0.0.2".parse().unwrap());
        c.media_timeout_ms = 3000;
    });
    let core = core::start(config).await.expect("the core starts");
    let public = format!("127.0.0.2:{}", core.media_addr.port()).parse().unwrap();
    let relay = Relay::start(public, "127.0.0.3".parse().unwrap(), core.media_addr, Impairment::default()).await.expect("the relay starts");
    (core, relay)
}

/// Joins and returns the call with the client address the relay saw it from.
async fn join(core: &CoreHandle, relay: &Relay, name: &str, hz: f32) -> (Connected, SocketAddr) {
    let before: Vec<SocketAddr> = relay.clients().into_iter().map(|(c, _)| c).collect();
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(9), name).await.unwrap();
    let call = party
        .join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz))
        .await
        .unwrap_or_else(|e| panic!("{name} joins: {e}"));
    let addr = relay.clients().into_iter().map(|(c, _)| c).find(|c| !before.contains(c)).expect("the relay saw the new client");
    (call, addr)
}

/// Listens `rounds` times 500 ms and asserts each round holds `other` and not `own`.
async fn hears_throughout(call: &mut Connected, who: &str, other: f32, own: f32, rounds: usize) {
    for round in 0..rounds {
        let heard = call.listen(Duration::from_millis(500)).await.unwrap_or_else(|e| panic!("{who} round {round}: {e}"));
        let (o, s) = (tone_share(&heard, other), tone_share(&heard, own));
        assert!(heard.len() >= 12_000, "{who} round {round}: only {} samples", heard.len());
        assert!(o > 0.2, "{who} round {round}: {other} Hz gone ({o:.3})");
        assert!(s < 0.02, "{who} round {round}: hears its own {own} Hz ({s:.3})");
    }
}

/// A well-formed RTP header with `ssrc` and a 10-byte stand-in for the SRTP tag.
fn forged_rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend(seq.to_be_bytes());
    p.extend([0, 0, 0, 0]);
    p.extend(ssrc.to_be_bytes());
    p.extend([0xAA; 30]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overlong_extension_packet_from_either_side_ends_no_audio() {
    let (core, relay) = core_behind_relay().await;
    let (mut a, a_addr) = join(&core, &relay, "a", 440.0).await;
    let (mut b, b_addr) = join(&core, &relay, "b", 660.0).await;
    a.listen(Duration::from_millis(1000)).await.expect("a settles");
    b.listen(Duration::from_millis(200)).await.expect("b settles");
    hears_throughout(&mut a, "a", 660.0, 440.0, 1).await;
    hears_throughout(&mut b, "b", 440.0, 660.0, 1).await;

    // To the core from each party's address, and to each party from the core's address.
    for addr in [a_addr, b_addr] {
        relay.inject_to_core(addr, &OVERLONG_EXTENSION).await.unwrap();
        relay.inject_to_core(addr, &SHORT_RTCP).await.unwrap();
        relay.inject_to_client(addr, &OVERLONG_EXTENSION).await.unwrap();
        relay.inject_to_client(addr, &SHORT_RTCP).await.unwrap();
    }
    b.skip_heard().await;
    hears_throughout(&mut a, "a", 660.0, 440.0, 4).await;
    hears_throughout(&mut b, "b", 440.0, 660.0, 2).await;
    assert_eq!(core.stats().parties_with_media, 2, "nothing was reported: both parties keep their media");

    a.leave().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_ssrcs_is_dropped_and_the_call_goes_on() {
    let (core, relay) = core_behind_relay().await;
    let (mut a, a_addr) = join(&core, &relay, "a", 440.0).await;
    let (mut b, b_addr) = join(&core, &relay, "b", 660.0).await;
    a.listen(Duration::from_millis(1000)).await.expect("a settles");
    b.listen(Duration::from_millis(200)).await.expect("b settles");

    // 2000 well-formed RTP headers, each with an SSRC of its own, both ways: each would make the
    // SRTP context keep a state before its tag is checked. The core admits only the SSRC the
    // party declared, the client the first few it sees; the rest never reach webrtc-rs.
    for i in 0..1000u32 {
        relay.inject_to_core(a_addr, &forged_rtp(0x5000_0000 + i, i as u16)).await.unwrap();
        relay.inject_to_client(b_addr, &forged_rtp(0x6000_0000 + i, i as u16)).await.unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    a.skip_heard().await;
    b.skip_heard().await;
    hears_throughout(&mut a, "a", 660.0, 440.0, 2).await;
    hears_throughout(&mut b, "b", 440.0, 660.0, 2).await;
    assert_eq!(core.stats().parties_with_media, 2);

    a.leave().await;
    b.leave().await;
    core.stop().await;
}
