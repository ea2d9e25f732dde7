//! `callme bench`: N SDK parties join one conference on a reference core running in a child
//! process; prints join times per step (p50/p95/p99), the core's and the SDK's CPU and memory per
//! party, and whether a sample of parties hears the speakers. Writes the same figures as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callme::audio::tone_share;
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};
use clap::Args;
use serde_json::json;

use crate::child::{self, CoreChild};
use crate::steps;

#[derive(Args)]
pub struct BenchArgs {
    /// Parties in the conference.
    #[arg(long, default_value_t = 10)]
    parties: usize,
    /// How many of them speak (distinct tones); the rest send silence.
    #[arg(long, default_value_t = 3)]
    speakers: usize,
    /// Seconds all parties stay in the call while CPU is measured.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Where to write the figures (JSON).
    #[arg(long, default_value = "target/callme-bench.json")]
    out: PathBuf,
}

const TONES: [f32; 6] = [440.0, 660.0, 880.0, 1100.0, 1320.0, 1540.0];

/// CPU seconds (user + system) and resident memory (MiB) of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let u = child::proc_usage(pid);
    (u.cpu_s, u.rss_mib)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Joined {
    call: Connected,
    tone: Option<f32>,
    /// Milliseconds per typestate: 3-5, 6-11, 12-14, 15-19, first audio.
    steps: [f64; 5],
    /// CALLME_S1 sent → first decoded frame.
    join_ms: f64,
}

async fn join_one(ws: String, i: usize, tone: Option<f32>) -> Result<Joined, String> {
    let party = Session::connect(&ws).await.map_err(|e| e.to_string())?;
    let party = party.load(ClusterId(1), SchemeId(7), &format!("p{i}")).await.map_err(|e| e.to_string())?;
    let source = tone.map_or(AudioSource::Silence, AudioSource::tone);
    let mut rows = Vec::new();
    let call = steps::join(party, RtcMedia::new(RtcOptions::loopback_only()), source, |r| rows.push(r.took.as_secs_f64() * 1000.0))
        .await
        .map_err(|e| format!("party {i}: {e}"))?;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), call.next_frame()).await.map_err(|_| format!("party {i}: no audio within 5 s"))?;
    let first = t.elapsed().as_secs_f64() * 1000.0;
    // rows: 1-2, 3-5, 6-11, 12-14, 15-19
    let s = [rows[1], rows[2], rows[3], rows[4], first];
    Ok(Joined { call, tone, steps: s, join_ms: s.iter().sum() })
}

pub async fn run(a: BenchArgs) -> ExitCode {
    let n = a.parties.max(1);
    let speakers = a.speakers.min(n).min(TONES.len());
    let core = match CoreChild::spawn(Duration::from_millis(500), &[("CALLME_MEDIA_TIMEOUT_MS", "30000")]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callme bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (pid, ws) = (core.pid, core.ws.clone());
    println!("callme bench: {n} parties ({speakers} speaking) join conference 7 on a core in process {pid} ({ws})");
    let me = std::process::id();
    let (core_cpu0, core_rss0) = proc_usage(pid);
    let (sdk_cpu0, sdk_rss0) = proc_usage(me);

    // Join at most `concurrency` at a time, in order.
    let started = Instant::now();
    let mut joined: Vec<Joined> = Vec::with_capacity(n);
    let mut failures = Vec::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + a.concurrency.max(1)).min(n))
            .map(|k| tokio::spawn(join_one(ws.clone(), k, (k < speakers).then(|| TONES[k]))))
            .collect();
        i += batch.len();
        for h in batch {
            match h.await {
                Ok(Ok(j)) => joined.push(j),
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("join task: {e}")),
            }
        }
        // Keep every call's heard queue drained so the decoders keep running as in a real call.
        for j in joined.iter_mut() {
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, j.call.next_frame()).await {}
        }
    }
    let join_wall = started.elapsed().as_secs_f64();
    println!("  {} joined in {join_wall:.1} s, {} failed", joined.len(), failures.len());
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }

    // Hold: everyone in the call; measure CPU over the hold.
    let hold = Duration::from_secs_f64(a.hold.max(1.0));
    tokio::time::sleep(Duration::from_millis(600)).await; // a fresh counts line
    let mixer0 = core.latest()["mixer"].clone();
    let (core_cpu1, _) = proc_usage(pid);
    let (sdk_cpu1, _) = proc_usage(me);
    let hold_start = Instant::now();
    let drains = joined.iter_mut().map(|j| async {
        let _ = j.call.listen(hold).await;
    });
    futures::future::join_all(drains).await;
    let held = hold_start.elapsed().as_secs_f64();
    let (core_cpu2, core_rss2) = proc_usage(pid);
    let (sdk_cpu2, sdk_rss2) = proc_usage(me);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mixer1 = core.latest()["mixer"].clone();
    let mixer_delta = |k: &str| mixer1[k].as_u64().unwrap_or(0).saturating_sub(mixer0[k].as_u64().unwrap_or(0));
    let (ticks, late, skipped) = (mixer_delta("ticks"), mixer_delta("late_ticks"), mixer_delta("skipped_ticks"));

    // A sample hears the speakers: every speaker and up to five listeners.
    let speaker_tones: Vec<f32> = joined.iter().filter_map(|j| j.tone).collect();
    let mut sample: Vec<usize> = (0..joined.len()).filter(|&k| joined[k].tone.is_some()).collect();
    let listeners: Vec<usize> = (0..joined.len()).filter(|&k| joined[k].tone.is_none()).collect();
    let step = (listeners.len() / 5).max(1);
    sample.extend(listeners.iter().step_by(step).take(5));
    let mut sample_ok = 0;
    let mut sample_report = Vec::new();
    let hears = futures::future::join_all(
        joined
            .iter_mut()
            .enumerate()
            .filter(|(k, _)| sample.contains(k))
            .map(|(k, j)| async move { (k, j.tone, j.call.listen(Duration::from_secs(1)).await) }),
    )
    .await;
    for (k, own, heard) in hears {
        let ok = match &heard {
            Ok(h) => {
                speaker_tones.iter().filter(|&&hz| Some(hz) != own).all(|&hz| tone_share(h, hz) > 0.5 / speaker_tones.len() as f64)
                    && own.is_none_or(|hz| tone_share(h, hz) < 0.02)
            }
            Err(_) => false,
        };
        sample_ok += usize::from(ok);
        sample_report.push(json!({"party": k, "speaks": own, "hears_right": ok,
            "heard": heard.as_ref().map(|h| steps::describe_heard(h)).unwrap_or_else(|e| e.to_string())}));
    }

    let mut by_step: Vec<Vec<f64>> = vec![Vec::new(); 5];
    let mut totals: Vec<f64> = Vec::new();
    for j in &joined {
        for (s, v) in j.steps.iter().enumerate() {
            by_step[s].push(*v);
        }
        totals.push(j.join_ms);
    }
    for v in by_step.iter_mut().chain(std::iter::once(&mut totals)) {
        v.sort_by(f64::total_cmp);
    }
    let names = ["3-5   S1Accepted", "6-11  Offered", "12-14 S2Accepted", "15-19 Connected", "first decoded audio"];
    println!("\n  join time, ms (CALLME_S1 sent → first decoded audio)     p50      p95      p99");
    let mut steps_json = serde_json::Map::new();
    for (name, v) in names.iter().zip(&by_step) {
        println!("    {name:<48} {:>8.1} {:>8.1} {:>8.1}", percentile(v, 50.0), percentile(v, 95.0), percentile(v, 99.0));
        steps_json.insert(name.to_string(), json!({"p50": percentile(v, 50.0), "p95": percentile(v, 95.0), "p99": percentile(v, 99.0)}));
    }
    println!(
        "    {:<48} {:>8.1} {:>8.1} {:>8.1}",
        "total",
        percentile(&totals, 50.0),
        percentile(&totals, 95.0),
        percentile(&totals, 99.0)
    );
    let m = joined.len().max(1) as f64;
    let core_cores = (core_cpu2 - core_cpu1) / held;
    let sdk_cores = (sdk_cpu2 - sdk_cpu1) / held;
    println!("\n  in the call ({} parties, {held:.1} s)                  total      per party", joined.len());
    println!("    core CPU (cores)                              {core_cores:>9.3} {:>10.4}", core_cores / m);
    println!("    core memory (MiB RSS, growth since start)     {:>9.1} {:>10.3}", core_rss2 - core_rss0, (core_rss2 - core_rss0) / m);
    println!("    SDK CPU (cores)                               {sdk_cores:>9.3} {:>10.4}", sdk_cores / m);
    println!("    SDK memory (MiB RSS, growth since start)      {:>9.1} {:>10.3}", sdk_rss2 - sdk_rss0, (sdk_rss2 - sdk_rss0) / m);
    println!("    CPU while joining: core {:.2} s, SDK {:.2} s", core_cpu1 - core_cpu0, sdk_cpu1 - sdk_cpu0);
    println!("    mixer ticks over the hold: {ticks}, late (over 10 ms) {late}, skipped {skipped}");
    println!("\n  sample hears the speakers: {sample_ok} of {} right", sample_report.len());
    for r in &sample_report {
        println!(
            "    party {:>3} {}: {}",
            r["party"],
            if r["speaks"].is_null() { "listens".to_owned() } else { format!("speaks {} Hz", r["speaks"]) },
            r["heard"].as_str().unwrap_or("")
        );
    }

    let figures = json!({
        "command": format!("callme bench --parties {n} --speakers {speakers} --hold {} --concurrency {}", a.hold, a.concurrency),
        "parties": n, "joined": joined.len(), "failed": failures.len(), "speakers": speakers,
        "join_ms": {"steps": steps_json, "total": {"p50": percentile(&totals, 50.0), "p95": percentile(&totals, 95.0), "p99": percentile(&totals, 99.0)}},
        "core": {"cpu_cores": core_cores, "cpu_cores_per_party": core_cores / m, "rss_mib": core_rss2 - core_rss0, "rss_mib_per_party": (core_rss2 - core_rss0) / m},
        "sdk": {"cpu_cores": sdk_cores, "cpu_cores_per_party": sdk_cores / m, "rss_mib": sdk_rss2 - sdk_rss0, "rss_mib_per_party": (sdk_rss2 - sdk_rss0) / m},
        "mixer": {"ticks": ticks, "late_ticks": late, "skipped_ticks": skipped},
        "sample": {"right": sample_ok, "of": sample_report.len(), "parties": sample_report},
    });
    if let Some(dir) = a.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&a.out, serde_json::to_string_pretty(&figures).expect("json")) {
        Ok(()) => println!("\n  figures written to {}", a.out.display()),
        Err(e) => eprintln!("callme bench: cannot write {}: {e}", a.out.display()),
    }

    for j in joined {
        j.call.leave().await;
    }
    drop(core);
    if failures.is_empty() && sample_ok == sample_report.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
