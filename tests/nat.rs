//! The core behind a 1:1 NAT: its media socket on 127.0.0.1:P, `announce` set to 127.0.0.2, where
//! a relay listens on the same port and forwards to 127.0.0.1:P from 127.0.0.3. Clients reach the
//! core only through the relay, and the core sees them at the relay's inside addresses.

use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::{Impairment, Relay};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};

/// A core announcing 127.0.0.2, and the relay in front of it.
async fn core_behind_nat() -> (CoreHandle, Relay) {
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

async fn join(core: &CoreHandle, name: &str, hz: f32) -> Connected {
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(5), name).await.unwrap();
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz)).await.unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parties_behind_an_announced_address_hear_each_other_and_not_themselves() {
    let (core, relay) = core_behind_nat().await;
    let a = join(&core, "a", 440.0).await;
    assert_eq!(a.servufrag().addr.as_deref(), Some("127.0.0.2"), "servufrag announces the relay's address");
    let b = join(&core, "b", 660.0).await;

    a.listen(Duration::from_millis(1000)).await.expect("a settles");
    b.listen(Duration::from_millis(200)).await.expect("b settles");
    let heard_a = a.listen(Duration::from_millis(1500)).await.expect("a hears");
    let heard_b = b.listen(Duration::from_millis(1500)).await.expect("b hears");
    assert!(heard_a.len() > 48_000 && heard_b.len() > 48_000, "audio keeps coming: {} and {}", heard_a.len(), heard_b.len());
    let (a_other, a_own) = (tone_share(&heard_a, 660.0), tone_share(&heard_a, 440.0));
    let (b_other, b_own) = (tone_share(&heard_b, 440.0), tone_share(&heard_b, 660.0));
    assert!(a_other > 0.2 && a_own < 0.02, "a hears 660 Hz {a_other:.3}, its own 440 Hz {a_own:.3}");
    assert!(b_other > 0.2 && b_own < 0.02, "b hears 440 Hz {b_other:.3}, its own 660 Hz {b_own:.3}");

    // Everything went through the relay: both clients are mapped, media flowed both ways.
    let clients = relay.clients();
    assert_eq!(clients.len(), 2, "one mapping per client: {clients:?}");
    assert!(clients.iter().all(|(_, inside)| inside.ip().to_string() == "127.0.0.3"), "{clients:?}");
    let stats = relay.stats();
    assert!(stats.to_core > 200 && stats.to_clients > 200, "{stats:?}");
    assert_eq!(core.stats().parties_with_media, 2);

    a.leave().await;
    b.leave().await;
    core.stop().await;
}
