//! The send path follows the path: a real call through a relay that drops a tenth of the
//! datagrams each way; the core's receiver reports on the party's stream raise the expected loss
//! of the party's encoder (so its in-band FEC), and echo its sender reports for a round trip.

use std::time::Duration;

use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::rtcp::EXPECTED_LOSS_FLOOR;
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::{Impairment, Relay};
use callme::stats::{SendStats, StatsCell};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};

/// A core announcing 127.0.0.2, and the relay in front of it dropping `loss` of the datagrams
/// each way (seeded).
async fn core_behind_relay(loss: f64) -> (CoreHandle, Relay) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.announce = Some("127.0.0.2".parse().unwrap());
        // Room for the DTLS handshake to repeat its lost flights before media flows.
        c.media_timeout_ms = 20_000;
    });
    let core = core::start(config).await.expect("the core starts");
    let public = format!("127.0.0.2:{}", core.media_addr.port()).parse().unwrap();
    let mut impairment = Impairment::default();
    impairment.loss = loss;
    impairment.seed = 7;
    let relay = Relay::start(public, "127.0.0.3".parse().unwrap(), core.media_addr, impairment).await.expect("the relay starts");
    (core, relay)
}

/// A party sending a tone, and where its media layer keeps its stats. Through a lossy relay a
/// join's handshake can lose enough to time out: it is tried up to three times.
async fn join(core: &CoreHandle, name: &str, hz: f32) -> (Connected, StatsCell) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let media = RtcMedia::new(RtcOptions::loopback_only());
        let stats = media.stats_cell();
        let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(5), name).await.unwrap();
        match party.join_with(media, AudioSource::tone(hz)).await {
            Ok(call) => return (call, stats),
            Err(e) => {
                eprintln!("{name} joins: {e}; again");
                failures.push(e.to_string());
            }
        }
    }
    panic!("{name} did not join in three tries: {failures:?}");
}

/// Watches the send stats for up to `seconds` (every 100 ms) until `done` holds for them; the
/// highest loss and expected loss seen, and the last stats.
async fn watch(stats: &StatsCell, seconds: u64, done: impl Fn(&SendStats) -> bool) -> (f32, u8, SendStats) {
    let (mut max_lost, mut max_expected) = (0.0f32, 0u8);
    let mut last = SendStats::default();
    for _ in 0..seconds * 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = stats.snapshot().sent;
        max_lost = max_lost.max(last.remote_fraction_lost);
        max_expected = max_expected.max(last.expected_loss_percent);
        if done(&last) {
            break;
        }
    }
    (max_lost, max_expected, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_to_the_core_raises_the_expected_loss_and_the_reports_give_a_round_trip() {
    let (core, relay) = core_behind_relay(0.1).await;
    // One party is enough: the core sends it the (silent) mix and reports on its stream.
    let (a, stats_a) = join(&core, "a", 440.0).await;

    // About one receiver report a second, a tenth of them lost: a few seconds give several.
    let (max_lost, max_expected, sent) = watch(&stats_a, 20, |s| {
        s.remote_fraction_lost > 0.0 && s.expected_loss_percent > EXPECTED_LOSS_FLOOR && s.round_trip.is_some() && s.packets > 100
    })
    .await;
    eprintln!("a's send stats: {sent:?}; highest loss reported {max_lost:.3}, highest expected loss {max_expected} %; relay {:?}", relay.stats());
    assert!(relay.stats().dropped > 0, "the relay dropped nothing: {:?}", relay.stats());
    assert!(max_lost > 0.0, "no receiver report gave any loss: {sent:?}");
    assert!(max_expected > EXPECTED_LOSS_FLOOR, "the expected loss stayed at the floor: {sent:?}");
    assert!(max_lost < 0.5 && max_expected <= callme::media::rtcp::EXPECTED_LOSS_CAP, "{sent:?}");
    let rtt = sent.round_trip.expect("a round trip from the core's receiver reports");
    assert!(rtt < Duration::from_secs(2), "a round trip over loopback of {rtt:?}");
    assert!(sent.packets > 100 && sent.bytes > sent.packets * 20, "packets and bytes sent: {sent:?}");
    // A tone at a quarter of full scale: its RMS is about -15 dBFS.
    assert!((-18.0..-12.0).contains(&sent.level_dbfs), "level sent {} dBFS", sent.level_dbfs);

    a.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_loss_the_expected_loss_stays_at_the_floor() {
    let (core, relay) = core_behind_relay(0.0).await;
    let (a, stats_a) = join(&core, "a", 440.0).await;

    // Several reports' time: until a round trip came and three more seconds passed.
    let (_, _, first) = watch(&stats_a, 20, |s| s.round_trip.is_some()).await;
    assert!(first.round_trip.is_some(), "no round trip from the core's receiver reports: {first:?}");
    let (max_lost, max_expected, sent) = watch(&stats_a, 3, |_| false).await;
    eprintln!("a's send stats: {sent:?}; relay {:?}", relay.stats());
    assert_eq!(relay.stats().dropped, 0);
    assert_eq!(max_lost, 0.0, "a report gave loss on a path without any");
    assert_eq!(max_expected, EXPECTED_LOSS_FLOOR, "the expected loss left the floor without loss");

    a.leave().await;
    core.stop().await;
}
