//! `callme bench-life`: life in a conference on a core with accounts, in a child process.
//! Two figures, each over many samples: the time from opening the WebSocket (through the login
//! and `cd.load`) to the first decoded audio, and the time from sending `SETMIC` (an admin
//! muting a speaker) to the speaker's tone gone from the admin's audio, and back after the unmute.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callme::audio::{mean_power, tone_share};
use callme::core::hash_password;
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};
use clap::Args;
use serde_json::json;

use crate::child::CoreChild;

#[derive(Args)]
pub struct BenchLifeArgs {
    /// Logins timed (each: open, login, cd.load, the 19 steps, first decoded audio).
    #[arg(long, default_value_t = 20)]
    logins: usize,
    /// Mute/unmute cycles timed.
    #[arg(long, default_value_t = 20)]
    mutes: usize,
    /// Where to write the figures (JSON).
    #[arg(long, default_value = "target/callme-bench-life.json")]
    out: PathBuf,
}

const SPEAKER_HZ: f32 = 660.0;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({"n": v.len(), "p50": percentile(&v, 50.0), "p95": percentile(&v, 95.0), "max": v.last().copied().unwrap_or(f64::NAN)})
}

/// Open, log in, load, join; the milliseconds of the login answer and of the whole, up to the
/// first decoded frame.
async fn login_and_join(ws: &str, login: &str, source: AudioSource) -> Result<(Connected, f64, f64), String> {
    let t = Instant::now();
    let session = Session::connect(ws).await.map_err(|e| e.to_string())?;
    let l = Instant::now();
    let logged_in = session.login(login, format!("pw-{login}")).await.map_err(|e| e.to_string())?;
    let login_ms = l.elapsed().as_secs_f64() * 1000.0;
    let party = logged_in.load(ClusterId(1), SchemeId(7), "").await.map_err(|e| e.to_string())?;
    let call = party.join_with(RtcMedia::new(RtcOptions::loopback_only()), source).await.map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), call.next_frame()).await.map_err(|_| "no audio within 5 s".to_owned())?;
    Ok((call, login_ms, t.elapsed().as_secs_f64() * 1000.0))
}

/// Whether a 20 ms frame carries the speaker's tone.
fn has_tone(frame: &[i16]) -> bool {
    mean_power(frame) > 1e-6 && tone_share(frame, SPEAKER_HZ) > 0.5
}

/// Milliseconds from `t` until the heard frames are `want` (tone present or not) for five
/// frames running; `None` after 3 s.
async fn until_frames(call: &Connected, t: Instant, want: bool) -> Option<f64> {
    let mut first = None;
    let mut run = 0;
    let deadline = t + Duration::from_secs(3);
    while Instant::now() < deadline {
        let frame = tokio::time::timeout(Duration::from_millis(500), call.next_frame()).await.ok()??;
        let at = t.elapsed().as_secs_f64() * 1000.0;
        if has_tone(&frame) == want {
            first.get_or_insert(at);
            run += 1;
            if run >= 5 {
                return first;
            }
        } else {
            first = None;
            run = 0;
        }
    }
    None
}

pub async fn run(a: BenchLifeArgs) -> ExitCode {
    // Accounts with argon2id hashes, as an operator would configure them.
    let mut toml = String::new();
    for (login, role) in [("admin", "admin"), ("speaker", "user"), ("guest", "user")] {
        let hash = match hash_password(&format!("pw-{login}")) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("callme bench-life: {e}");
                return ExitCode::FAILURE;
            }
        };
        toml.push_str(&format!("[[accounts]]\nlogin = \"{login}\"\npassword_hash = \"{hash}\"\nrole = \"{role}\"\nname = \"{login}\"\n\n"));
    }
    let config = std::env::temp_dir().join(format!("callme-bench-life-{}.toml", std::process::id()));
    if let Err(e) = std::fs::write(&config, toml) {
        eprintln!("callme bench-life: cannot write {}: {e}", config.display());
        return ExitCode::FAILURE;
    }
    let core = CoreChild::spawn_with(Duration::from_millis(1000), &[], &["--config", &config.to_string_lossy()]);
    let _ = std::fs::remove_file(&config);
    let core = match core {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callme bench-life: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ws = core.ws.clone();
    println!("callme bench-life: a core with accounts (argon2id) in process {} ({ws})", core.pid);

    let result: Result<serde_json::Value, String> = async {
        let (admin, _, _) = login_and_join(&ws, "admin", AudioSource::Silence).await?;
        let (speaker, _, _) = login_and_join(&ws, "speaker", AudioSource::tone(SPEAKER_HZ)).await?;

        // Logins one after another, each into the running conference of two.
        let (mut logins, mut totals) = (Vec::new(), Vec::new());
        for _ in 0..a.logins.max(1) {
            let (call, login_ms, total_ms) = login_and_join(&ws, "guest", AudioSource::Silence).await?;
            logins.push(login_ms);
            totals.push(total_ms);
            call.leave().await;
        }

        // The admin mutes and unmutes the speaker; the admin's own audio says when it took.
        let (mut gone, mut back, mut missed) = (Vec::new(), Vec::new(), 0);
        until_frames(&admin, Instant::now(), true).await.ok_or("the admin never hears the speaker")?;
        for _ in 0..a.mutes.max(1) {
            admin.skip_heard().await;
            let t = Instant::now();
            admin.set_mic_of(speaker.party_id(), false).await.map_err(|e| e.to_string())?;
            match until_frames(&admin, t, false).await {
                Some(ms) => gone.push(ms),
                None => missed += 1,
            }
            admin.skip_heard().await;
            let t = Instant::now();
            admin.set_mic_of(speaker.party_id(), true).await.map_err(|e| e.to_string())?;
            match until_frames(&admin, t, true).await {
                Some(ms) => back.push(ms),
                None => missed += 1,
            }
        }
        speaker.leave().await;
        admin.leave().await;
        Ok(json!({
            "command": format!("callme bench-life --logins {} --mutes {}", a.logins, a.mutes),
            "login_answer_ms": summary(logins),
            "login_to_first_audio_ms": summary(totals),
            "setmic_to_tone_gone_ms": summary(gone),
            "unmute_to_tone_back_ms": summary(back),
            "cycles_without_result": missed,
        }))
    }
    .await;
    drop(core);
    let figures = match result {
        Ok(f) => f,
        Err(e) => {
            eprintln!("callme bench-life: {e}");
            return ExitCode::FAILURE;
        }
    };
    let row = |name: &str, key: &str| {
        let v = &figures[key];
        println!(
            "  {name:<52} {:>8.1} {:>8.1} {:>8.1}   (n = {})",
            v["p50"].as_f64().unwrap_or(f64::NAN),
            v["p95"].as_f64().unwrap_or(f64::NAN),
            v["max"].as_f64().unwrap_or(f64::NAN),
            v["n"]
        );
    };
    println!("\n  ms                                                        p50      p95      max");
    row("login answer (q_cplxLogin, argon2id verify)", "login_answer_ms");
    row("open → login → cd.load → first decoded audio", "login_to_first_audio_ms");
    row("SETMIC (mute) sent → tone gone from the admin's audio", "setmic_to_tone_gone_ms");
    row("SETMIC (unmute) sent → tone back", "unmute_to_tone_back_ms");
    if let Some(dir) = a.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&a.out, serde_json::to_string_pretty(&figures).expect("json")) {
        Ok(()) => println!("\n  figures written to {}", a.out.display()),
        Err(e) => eprintln!("callme bench-life: cannot write {}: {e}", a.out.display()),
    }
    if figures["cycles_without_result"].as_u64() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
