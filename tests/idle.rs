//! Idle is free: conferences without media cost no CPU, and a call beside them is heard.

use std::time::{Duration, Instant};

use callme::audio::tone_share;
use callme::core::{self, CoreConfig};
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, SchemeId, Session};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The CPU time this process has used (user + system), from /proc/self/stat (USER_HZ = 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_conferences_without_media_cost_no_cpu_and_a_call_beside_them_is_heard() {
    let core = core::start(CoreConfig::loopback_ephemeral().with(|c| {
        c.media_timeout_ms = 3000;
    }))
    .await
    .expect("the core starts");

    // 300 conferences, loaded by 50 sessions of 6 each (a session may start 8); the sessions stay open.
    let mut sockets = Vec::new();
    for s in 0..50u64 {
        let (mut ws, _) = tokio_tungstenite::connect_async(core.ws_url.as_str()).await.expect("a session opens");
        for k in 0..6u64 {
            let scheme = 1000 + s * 10 + k;
            let frame =
                format!(r#"{{"cmd":"load","seq":{},"obj":"cd","params":{{"ClusterID":"1","SchemeID":"{scheme}","NAME":"idle"}}}}"#, k + 1);
            ws.send(Message::text(frame)).await.unwrap();
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an answer").expect("open").unwrap();
                if msg.to_text().unwrap_or("").contains("\"ANSW\"") {
                    assert!(msg.to_text().unwrap().contains("\"SVPartyID\""), "cd.load answered: {msg}");
                    break;
                }
            }
        }
        sockets.push(ws);
    }
    assert_eq!(core.stats().conferences, 300);

    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_second = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!("300 idle conferences: {per_second:.3} CPU-seconds per second");
    // 300 mixers ticking and encoding at 50 Hz took about 1.5 CPU-seconds per second.
    assert!(per_second < 0.2, "300 idle conferences use {per_second:.3} CPU-seconds per second");
    let stats = core.mixer_stats();
    assert_eq!(stats.len(), 300);
    assert!(stats.iter().all(|(_, s)| s.ticks == 0), "an idle mixer ticked: {:?}", stats.iter().find(|(_, s)| s.ticks > 0));

    // An honest call beside them.
    let mut calls = Vec::new();
    for (name, hz) in [("a", 440.0), ("b", 660.0)] {
        let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(1), name).await.unwrap();
        calls.push(party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz)).await.expect("joins"));
    }
    calls[0].listen(Duration::from_millis(1000)).await.unwrap();
    let heard = calls[0].listen(Duration::from_millis(1500)).await.unwrap();
    assert!(heard.len() > 48_000, "audio keeps coming: {} samples", heard.len());
    let (other, own) = (tone_share(&heard, 660.0), tone_share(&heard, 440.0));
    assert!(other > 0.2 && own < 0.02, "a hears 660 Hz {other:.3}, its own {own:.3}");
    let busy: Vec<_> = core.mixer_stats().into_iter().filter(|(_, s)| s.ticks > 0).collect();
    assert_eq!(busy.len(), 1, "only the call's mixer ticks: {busy:?}");

    for c in calls {
        c.leave().await;
    }
    drop(sockets);
    core.stop().await;
}
