//! `callme soak`: join/leave churn against a reference core in a child process. One party stays
//! in the conference sending a tone; every cycle another party opens a WebSocket, loads, joins
//! (steps 1–19), checks that it hears the tone, and leaves. Every `--every` cycles it prints the
//! core's RSS, open files, threads and tasks, and the same of this process; at the end the
//! growth per cycle, also written as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callme::audio::tone_share;
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, SchemeId, Session};
use clap::Args;
use serde_json::json;

use crate::child::{proc_usage, CoreChild};

#[derive(Args)]
pub struct SoakArgs {
    /// Join/leave cycles.
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// Print the figures every this many cycles.
    #[arg(long, default_value_t = 100)]
    every: usize,
    /// Where to write the figures (JSON).
    #[arg(long, default_value = "target/callme-soak.json")]
    out: PathBuf,
}

async fn cycle(ws: &str, k: usize) -> Result<(), String> {
    let party = Session::connect(ws)
        .await
        .map_err(|e| e.to_string())?
        .load(ClusterId(1), SchemeId(7), &format!("churn{k}"))
        .await
        .map_err(|e| e.to_string())?;
    let call = party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::Silence).await.map_err(|e| e.to_string())?;
    // The first 100 ms may still be the jitter buffer filling; the next 200 ms must hold the tone.
    call.listen(Duration::from_millis(100)).await.map_err(|e| e.to_string())?;
    let heard = call.listen(Duration::from_millis(200)).await.map_err(|e| e.to_string())?;
    call.leave().await;
    let share = tone_share(&heard, 440.0);
    if share < 0.3 {
        return Err(format!("cycle {k}: the resident tone is not heard (share {share:.2})"));
    }
    Ok(())
}

pub async fn run(a: SoakArgs) -> ExitCode {
    let core = match CoreChild::spawn(Duration::from_millis(200), &[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callme soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let resident = async {
        Session::connect(&core.ws)
            .await?
            .load(ClusterId(1), SchemeId(7), "resident")
            .await?
            .join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(440.0))
            .await
            .map_err(callme::Error::from)
    }
    .await;
    let resident = match resident {
        Ok(r) => r,
        Err(e) => {
            eprintln!("callme soak: the resident party: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("callme soak: {} join/leave cycles against a core in process {} ({})", a.cycles, core.pid, core.ws);
    println!(
        "  {:>6} {:>9} {:>6} {:>8} {:>7} {:>9} {:>6} {:>8} {:>9}",
        "cycle", "core MiB", "fds", "threads", "tasks", "SDK MiB", "fds", "threads", "cycles/s"
    );
    let me = std::process::id();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut window = Instant::now();
    for k in 0..=a.cycles {
        if k % a.every.max(1) == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await; // a fresh counts line
            let (c, s, counts) = (proc_usage(core.pid), proc_usage(me), core.latest());
            let rate = if k == 0 { 0.0 } else { a.every as f64 / window.elapsed().as_secs_f64() };
            println!(
                "  {k:>6} {:>9.1} {:>6} {:>8} {:>7} {:>9.1} {:>6} {:>8} {rate:>9.1}",
                c.rss_mib,
                c.fds,
                c.threads,
                counts["tasks"].as_u64().unwrap_or(0),
                s.rss_mib,
                s.fds,
                s.threads
            );
            rows.push(json!({"cycle": k, "core": {"rss_mib": c.rss_mib, "fds": c.fds, "threads": c.threads, "tasks": counts["tasks"],
                "sessions": counts["sessions"], "parties": counts["parties"]},
                "sdk": {"rss_mib": s.rss_mib, "fds": s.fds, "threads": s.threads}}));
            window = Instant::now();
        }
        if k == a.cycles {
            break;
        }
        if let Err(e) = cycle(&core.ws, k).await {
            failures.push(e);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    resident.leave().await;
    // Growth per cycle between the first report after warm-up (cycle `every`) and the last.
    let growth = |side: &str, key: &str| -> f64 {
        let (Some(first), Some(last)) = (rows.get(1).or(rows.first()), rows.last()) else { return 0.0 };
        let (c0, c1) = (first["cycle"].as_f64().unwrap_or(0.0), last["cycle"].as_f64().unwrap_or(0.0));
        if c1 <= c0 {
            return 0.0;
        }
        (last[side][key].as_f64().unwrap_or(0.0) - first[side][key].as_f64().unwrap_or(0.0)) / (c1 - c0)
    };
    let per_cycle = json!({
        "core_rss_kib": growth("core", "rss_mib") * 1024.0, "core_fds": growth("core", "fds"),
        "core_threads": growth("core", "threads"), "core_tasks": growth("core", "tasks"),
        "sdk_rss_kib": growth("sdk", "rss_mib") * 1024.0, "sdk_fds": growth("sdk", "fds"), "sdk_threads": growth("sdk", "threads"),
    });
    println!("\n  {} cycles in {wall:.0} s, {} failed", a.cycles, failures.len());
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    println!("  growth per cycle after the first {}: {per_cycle}", a.every);
    let figures = json!({"command": format!("callme soak --cycles {} --every {}", a.cycles, a.every), "cycles": a.cycles,
        "failed": failures.len(), "seconds": wall, "rows": rows, "growth_per_cycle": per_cycle});
    if let Some(dir) = a.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&a.out, serde_json::to_string_pretty(&figures).expect("json")) {
        Ok(()) => println!("  figures written to {}", a.out.display()),
        Err(e) => eprintln!("callme soak: cannot write {}: {e}", a.out.display()),
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
