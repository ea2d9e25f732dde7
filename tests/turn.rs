//! TURN: a real coturn (Debian's `turnserver`) started by the test on loopback with
//! `use-auth-secret`; the core mints time-limited credentials for it in `servdesc`; an SDK party
//! forced to relay-only candidates connects through it and hears the mix. The control: the same
//! party with credentials minted from another secret gets no media.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use callme::audio::{mean_power, tone_share};
use callme::core::{self, CoreConfig, CoreHandle, TurnConfig};
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};

struct Turn {
    child: Child,
    port: u16,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_coturn(secret: &str) -> Turn {
    let port = free_udp_port();
    let relay_min = free_udp_port().max(20000);
    let mut child = Command::new("turnserver")
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", &port.to_string()])
        .args(["--min-port", &relay_min.to_string(), "--max-port", &(relay_min + 200).to_string()])
        .args(["--use-auth-secret", "--static-auth-secret", secret, "--realm", "callme.test"])
        .args(["--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--fingerprint"])
        .args(["--no-stdout-log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn's turnserver is installed (apt-get install coturn)");
    // Wait until it answers: a STUN binding request gets a response once it listens.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let binding = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    for _ in 0..50 {
        let _ = sock.send_to(&binding, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        if sock.recv(&mut buf).is_ok() {
            return Turn { child, port };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("coturn did not start on port {port}");
}

async fn start_core(turn_port: u16, secret: &str) -> CoreHandle {
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.turn = Some(TurnConfig::new(format!("turn:127.0.0.1:{turn_port}?transport=udp"), secret).with_ttl_secs(600));
    });
    core::start(config).await.unwrap()
}

async fn join(core: &CoreHandle, name: &str, hz: f32, relay_only: bool) -> Result<Connected, callme::Error> {
    let party = Session::connect(&core.ws_url).await?.load(ClusterId(1), SchemeId(7), name).await?;
    let options = RtcOptions::default().relay_only(relay_only).with_loopback_only(!relay_only);
    Ok(party.join_with(RtcMedia::new(options), AudioSource::tone(hz)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs coturn (turnserver): run by tests/run.sh"]
async fn a_relay_only_party_connects_through_coturn_and_hears_the_mix() {
    let turn = start_coturn("north-wind");
    let core = start_core(turn.port, "north-wind").await;
    let direct = join(&core, "direct", 660.0, false).await.expect("the direct party joins");
    let relayed = join(&core, "relayed", 440.0, true).await.expect("the relay-only party joins through coturn");
    relayed.listen(Duration::from_millis(800)).await.unwrap();
    let heard = relayed.listen(Duration::from_millis(1500)).await.unwrap();
    assert!(tone_share(&heard, 660.0) > 0.8, "the relayed party hears the mix: {}", tone_share(&heard, 660.0));
    assert!(tone_share(&heard, 440.0) < 0.02);
    let back = direct.listen(Duration::from_millis(1000)).await.unwrap();
    assert!(tone_share(&back, 440.0) > 0.8, "and is heard: {}", tone_share(&back, 440.0));
    // The media path runs through coturn: without it the relayed party hears nothing more
    // (its heard stream goes on, a frame every 20 ms, as silence once the concealment has faded),
    // while the direct party goes on hearing the conference.
    drop(turn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = relayed.listen(Duration::from_millis(1000)).await.unwrap_or_default();
    assert!(mean_power(&after) < 1e-7 && tone_share(&after, 660.0) < 0.5, "audio still arrives without coturn: power {:e}, 660 Hz share {}", mean_power(&after), tone_share(&after, 660.0));
    relayed.leave().await;
    direct.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs coturn (turnserver): run by tests/run.sh"]
async fn credentials_from_another_secret_get_no_relay_and_no_media() {
    let turn = start_coturn("north-wind");
    let core = start_core(turn.port, "south-wind").await;
    let err = join(&core, "relayed", 440.0, true).await.err().expect("no media without a relay");
    assert_eq!(err.step(), Some(18), "{err}");
    core.stop().await;
}
