//! `callme bench-outage`: how fast a call comes back. A reference core behind the network
//! emulator's relay, in this process, and two parties with a tone each; then, many times over:
//! - a blackout of the media path that the call rides out (2 s by default), and one long
//!   enough to need a reconnection (6 s by default): the time from the end of the blackout to
//!   the first 20 ms frame that holds the other party's tone again;
//! - the core (`callme core` in a child process) killed and started again on the same ports:
//!   the time from the new core accepting connections to both parties hearing each other
//!   again.
//!
//! Prints p50/p95/max of each and writes them to a JSON file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use callme::audio::tone_share;
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::{Impairment, Relay};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};
use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use crate::child::CoreChild;

#[derive(Args)]
pub struct BenchOutageArgs {
    /// Blackouts of each length timed.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The short blackout, ridden out without a reconnection (ms).
    #[arg(long, default_value_t = 2000)]
    short_ms: u64,
    /// The long blackout, past the media-silence bound: the call reconnects (ms).
    #[arg(long, default_value_t = 6000)]
    long_ms: u64,
    /// Core restarts timed.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// Where to write the figures (JSON).
    #[arg(long, default_value = "target/callme-bench-outage.json")]
    out: PathBuf,
}

const A_HZ: f32 = 440.0;
const B_HZ: f32 = 660.0;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut v: Vec<f64>, failed: usize) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({"n": v.len(), "failed": failed, "p50": percentile(&v, 50.0), "p95": percentile(&v, 95.0), "max": v.last().copied().unwrap_or(f64::NAN)})
}

async fn join(ws: &str, name: &str, hz: f32) -> Result<Connected, String> {
    let party = Session::connect(ws).await.map_err(|e| e.to_string())?.load(ClusterId(1), SchemeId(9), name).await.map_err(|e| e.to_string())?;
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz)).await.map_err(|e| e.to_string())
}

/// Milliseconds until `call` hears a frame of `other` without `own` (at most `bound`).
async fn until_heard(call: &Connected, other: f32, own: f32, bound: Duration) -> Option<f64> {
    call.skip_heard().await;
    let start = Instant::now();
    while start.elapsed() < bound {
        match tokio::time::timeout(Duration::from_millis(200), call.next_frame()).await {
            Ok(Some(f)) if tone_share(&f, other) > 0.5 && tone_share(&f, own) < 0.1 => return Some(start.elapsed().as_secs_f64() * 1000.0),
            Ok(None) => return None,
            _ => {}
        }
    }
    None
}

/// A free TCP and a free UDP port on 127.0.0.1 (picked by the system, then released).
fn free_ports() -> Result<(u16, u16), String> {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.port();
    Ok((tcp, udp))
}

/// `callme core` on these ports, announcing the relay's address.
fn start(ws_port: u16, media_port: u16) -> Result<CoreChild, String> {
    let listen = format!("127.0.0.1:{ws_port}");
    CoreChild::spawn_at(&listen, media_port, Duration::from_secs(3600), &[("CALLME_LOG", "warn")], &["--announce", "127.0.0.2"])
}

pub async fn run(a: BenchOutageArgs) -> ExitCode {
    match bench(&a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callme bench-outage: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(a: &BenchOutageArgs) -> Result<(), String> {
    let (ws_port, media_port) = free_ports()?;
    let mut core = start(ws_port, media_port)?;
    let ws = core.ws.clone();
    let media: std::net::SocketAddr = format!("127.0.0.1:{media_port}").parse().map_err(|e| format!("{e}"))?;
    let public = format!("127.0.0.2:{media_port}").parse().map_err(|e| format!("{e}"))?;
    let relay = Relay::start(public, "127.0.0.3".parse().unwrap(), media, Impairment::default()).await.map_err(|e| e.to_string())?;
    let (x, y) = tokio::join!(join(&ws, "a", A_HZ), join(&ws, "b", B_HZ));
    let (ca, cb) = (x?, y?);
    until_heard(&ca, B_HZ, A_HZ, Duration::from_secs(10)).await.ok_or("a does not hear b at the start")?;
    println!("callme bench-outage: {} runs of a {} ms and a {} ms blackout, {} core restarts", a.runs, a.short_ms, a.long_ms, a.restarts);

    let mut figures = serde_json::Map::new();
    for (name, ms) in [("short", a.short_ms), ("long", a.long_ms)] {
        let (mut times, mut failed) = (Vec::new(), 0);
        for _ in 0..a.runs {
            relay.blackout(Duration::from_millis(ms));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            match until_heard(&ca, B_HZ, A_HZ, Duration::from_secs(30)).await {
                Some(t) => times.push(t),
                None => failed += 1,
            }
            // Both sides settled before the next run.
            until_heard(&cb, A_HZ, B_HZ, Duration::from_secs(30)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let s = summary(times, failed);
        println!("  {ms} ms blackout: end of the blackout → the other's tone heard again: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms ({} failed)", s["p50"].as_f64().unwrap_or(f64::NAN), s["p95"].as_f64().unwrap_or(f64::NAN), s["max"].as_f64().unwrap_or(f64::NAN), failed);
        figures.insert(format!("blackout_{name}_{ms}ms"), s);
    }

    let (mut times, mut failed) = (Vec::new(), 0);
    for _ in 0..a.restarts {
        drop(core); // killed
        tokio::time::sleep(Duration::from_millis(500)).await;
        core = start(ws_port, media_port)?;
        let accepting = Instant::now();
        let both = tokio::join!(until_heard(&ca, B_HZ, A_HZ, Duration::from_secs(30)), until_heard(&cb, A_HZ, B_HZ, Duration::from_secs(30)));
        match both {
            (Some(_), Some(_)) => times.push(accepting.elapsed().as_secs_f64() * 1000.0),
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = summary(times, failed);
    println!("  core restart: new core accepting → both parties hear each other: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms ({} failed)", s["p50"].as_f64().unwrap_or(f64::NAN), s["p95"].as_f64().unwrap_or(f64::NAN), s["max"].as_f64().unwrap_or(f64::NAN), failed);
    figures.insert("core_restart".into(), s);
    let stats = ca.stats();
    println!("  party a: {} reconnections, {} outages recorded", stats.reconnects, stats.outages.len());
    ca.leave().await;
    cb.leave().await;
    drop(core);
    let out = serde_json::Value::Object(figures);
    std::fs::write(&a.out, serde_json::to_string_pretty(&out).unwrap_or_default()).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!("  written to {}", a.out.display());
    Ok(())
}
