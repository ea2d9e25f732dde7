//! The SDK against the reference core over a real WebSocket and real UDP on loopback, with real
//! webrtc-rs and libopus on both sides. Every assertion is on audio actually heard.

use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, Connected, MediaReady, SchemeId, Session};

async fn start_core() -> CoreHandle {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let config = CoreConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        media: "127.0.0.1:0".parse().unwrap(),
        media_timeout_ms: 3000,
        ..CoreConfig::default()
    };
    core::start(config).await.expect("the core starts")
}

async fn join(core: &CoreHandle, scheme: u64, name: &str, source: AudioSource) -> Connected {
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(scheme), name).await.unwrap();
    let media = RtcMedia::new(RtcOptions::loopback_only());
    MediaReady::acquire_with(media, source, &party.transcript())
        .await
        .unwrap()
        .call_me_s1(party)
        .await
        .unwrap()
        .create_offer()
        .await
        .unwrap()
        .call_me_s2()
        .await
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

/// The share of each tone in what `call` hears over `secs`, after a settling second.
async fn hear(call: &mut Connected, tones: &[f32]) -> Vec<f64> {
    call.listen(Duration::from_millis(1000)).await.expect("settles");
    let heard = call.listen(Duration::from_millis(1500)).await.expect("hears");
    assert!(heard.len() > 48_000, "audio keeps coming: {} samples", heard.len());
    tones.iter().map(|&hz| tone_share(&heard, hz)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parties_each_hear_the_other_two_and_not_themselves() {
    let core = start_core().await;
    let tones = [440.0, 660.0, 880.0];
    let mut calls = Vec::new();
    for (i, hz) in tones.iter().enumerate() {
        calls.push(join(&core, 7, &format!("party{i}"), AudioSource::tone(*hz)).await);
    }
    for (i, call) in calls.iter_mut().enumerate() {
        let shares = hear(call, &tones).await;
        for (j, share) in shares.iter().enumerate() {
            if i == j {
                assert!(*share < 0.02, "party {i} hears its own {} Hz: {shares:?}", tones[i]);
            } else {
                assert!(*share > 0.2, "party {i} misses {} Hz: {shares:?}", tones[j]);
            }
        }
    }
    for c in calls {
        c.leave().await;
    }
    core.stop().await;
}
