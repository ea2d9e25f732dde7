//! `callme bench-quality`: how speech sounds through loss, and how late it is heard.
//!
//! **Speech quality.** A reference core (`callme core`, a child process) behind the network
//! emulator's relay. One SDK party sends espeak-ng speech, looped. Three parties listen: the SDK
//! as it is (adaptive jitter buffer, FEC, concealment), the SDK on the naive path (decode in
//! arrival order, no FEC), and Chromium (`tests/browser/join.mjs --record`, its NetEq). The
//! relay impairs only what the core sends, so the speech reaches the core clean and each
//! listener's path is what is measured. All three get the same packets from the core's shared
//! encoder, each with its own loss drawn from the same model. Each recording is scored against
//! the sent speech by PESQ (P.862.2 wideband, `tests/quality/score.py`), loop by loop. The
//! conditions are 0, 2, 5, 10 and 20 % random loss and 10 % in bursts of 3.
//!
//! **Mouth-to-ear latency.** A click every second, pushed by the application into one party's
//! source. The time is counted from that push to the click's sample in the other party's heard
//! stream, as the frame holding it is handed to the application. It is measured over a clean
//! link and over 0–30 ms of jitter both ways, for the SDK as it is and for the naive path.
//!
//! Prints a table and writes everything to a JSON file. `bash tests/quality/setup.sh` first
//! (espeak-ng, and a Python with numpy, scipy and pesq in `target/quality-venv`), then run it in a
//! loopback-only network namespace, as the tests are: `unshare --net bash -c 'ip link set lo up
//! && callme bench-quality'`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use callme::audio::{read_wav, write_wav, FRAME_SAMPLES, SAMPLE_RATE};
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::{Direction, GilbertElliott, Impairment, Relay};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};
use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use crate::child::CoreChild;

#[derive(Args)]
pub struct BenchQualityArgs {
    /// Times the whole measurement is repeated (the figures are the median of the runs).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each listener records per condition (at least two whole loops of the speech).
    #[arg(long, default_value_t = 34)]
    seconds: u64,
    /// Leave Chromium out.
    #[arg(long)]
    no_chromium: bool,
    /// Clicks timed per latency condition.
    #[arg(long, default_value_t = 20)]
    clicks: usize,
    /// Where the recordings and the speech go.
    #[arg(long, default_value = "target/bench-quality")]
    dir: PathBuf,
    /// Where to write the figures (JSON).
    #[arg(long, default_value = "target/callme-bench-quality.json")]
    out: PathBuf,
}

/// The speech sent: Harvard sentences, read by espeak-ng.
const TEXT: &str = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. \
It is easy to tell the depth of a well. These days a chicken leg is a rare dish.";

/// The listeners, in the table's order.
const LISTENERS: [&str; 3] = ["sdk", "naive", "chromium"];

/// A loss condition: its name and the impairment of what the core sends.
fn conditions(seed: u64) -> Vec<(&'static str, Impairment)> {
    let random = |share: f64| Impairment::default().with_loss(share).with_seed(seed);
    vec![
        ("0%", Impairment::default().with_seed(seed)),
        ("2%", random(0.02)),
        ("5%", random(0.05)),
        ("10%", random(0.10)),
        ("20%", random(0.20)),
        ("10% bursts of 3", Impairment::default().with_bursts(GilbertElliott::from_mean(0.10, 3.0)).with_seed(seed)),
    ]
}

pub async fn run(a: BenchQualityArgs) -> ExitCode {
    match bench(&a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callme bench-quality: {e}");
            ExitCode::FAILURE
        }
    }
}

fn free_ports() -> Result<(u16, u16), String> {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.port();
    Ok((tcp, udp))
}

/// A child core announcing the relay's address, and the relay in front of it.
async fn core_behind_relay() -> Result<(CoreChild, Relay, u16), String> {
    let (ws_port, media_port) = free_ports()?;
    let listen = format!("127.0.0.1:{ws_port}");
    let core = CoreChild::spawn_at(&listen, media_port, Duration::from_secs(3600), &[("CALLME_LOG", "warn")], &["--announce", "127.0.0.2"])?;
    let media: std::net::SocketAddr = format!("127.0.0.1:{media_port}").parse().map_err(|e| format!("{e}"))?;
    let public = format!("127.0.0.2:{media_port}").parse().map_err(|e| format!("{e}"))?;
    let relay = Relay::start(public, "127.0.0.3".parse().map_err(|e| format!("{e}"))?, media, Impairment::default()).await.map_err(|e| e.to_string())?;
    Ok((core, relay, ws_port))
}

async fn join(ws: &str, scheme: u64, name: &str, options: RtcOptions, source: AudioSource) -> Result<Connected, String> {
    let party = Session::connect(ws).await.map_err(|e| e.to_string())?.load(ClusterId(1), SchemeId(scheme), name).await.map_err(|e| e.to_string())?;
    party.join_with(RtcMedia::new(options), source).await.map_err(|e| format!("{name}: {e}"))
}

fn naive() -> RtcOptions {
    RtcOptions::loopback_only().with_jitter_buffer(false).with_fec(false)
}

/// Everything `call` hears for `window`.
async fn record(call: &Connected, window: Duration) -> Vec<i16> {
    call.skip_heard().await;
    let mut pcm = Vec::with_capacity(window.as_millis() as usize * 48);
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return pcm,
            f = call.next_frame() => match f {
                Some(f) => pcm.extend(f),
                None => return pcm,
            },
        }
    }
}

/// The speech: espeak-ng's reading of [`TEXT`], at 48 kHz (as the sender reads it).
fn speech(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let raw = dir.join("speech-espeak.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&raw)
        .arg(TEXT)
        .status()
        .map_err(|e| format!("espeak-ng (tests/quality/setup.sh installs it): {e}"))?;
    if !status.success() {
        return Err(format!("espeak-ng failed: {status}"));
    }
    let samples = read_wav(&raw)?;
    let sent = dir.join("speech.wav");
    write_wav(&sent, &samples)?;
    Ok(sent)
}

/// The Python that has numpy, scipy and pesq: `tests/quality/setup.sh` makes it (outside the
/// namespace: it installs from PyPI).
fn python() -> Result<String, String> {
    let venv = "target/quality-venv/bin/python";
    let ok = std::process::Command::new(venv).args(["-c", "import numpy, scipy, pesq"]).status().is_ok_and(|s| s.success());
    if ok {
        Ok(venv.to_owned())
    } else {
        Err(format!("{venv} cannot import numpy, scipy and pesq: run `bash tests/quality/setup.sh` first"))
    }
}

/// PESQ of each recording against the sent speech: the median over its loops.
fn score(python: &str, sent: &Path, recordings: &[PathBuf]) -> Result<Vec<Option<f64>>, String> {
    let out = std::process::Command::new(python)
        .arg("tests/quality/score.py")
        .arg("--ref")
        .arg(sent)
        .args(recordings)
        .output()
        .map_err(|e| format!("score.py: {e}"))?;
    if !out.status.success() {
        return Err(format!("score.py failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("score.py's output: {e}"))?;
    Ok(recordings.iter().map(|r| v[r.to_string_lossy().as_ref()]["median"].as_f64()).collect())
}

/// One condition: the three listeners' recordings, in [`LISTENERS`]' order (Chromium's `None`
/// when left out or failed).
async fn condition(a: &BenchQualityArgs, sent: &Path, dir: &Path, impairment: Impairment, scheme: u64) -> Result<Vec<Option<PathBuf>>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (core, relay, ws_port) = core_behind_relay().await?;
    let ws = format!("ws://127.0.0.1:{ws_port}/ws");
    let speaker = join(&ws, scheme, "speaker", RtcOptions::loopback_only(), AudioSource::Wav(sent.to_owned())).await?;
    let sdk = join(&ws, scheme, "sdk", RtcOptions::loopback_only(), AudioSource::Silence).await?;
    let plain = join(&ws, scheme, "naive", naive(), AudioSource::Silence).await?;
    let window = Duration::from_secs(a.seconds);
    let settle = Duration::from_secs(3);
    let browser_file = dir.join("chromium.wav");
    let browser = if a.no_chromium {
        None
    } else {
        let silence = dir.join("silence.wav");
        write_wav(&silence, &vec![0; SAMPLE_RATE as usize])?;
        let child = tokio::process::Command::new("node")
            .arg("tests/browser/join.mjs")
            .args(["--url", &format!("http://127.0.0.1:{ws_port}/"), "--scheme", &scheme.to_string(), "--name", "chromium"])
            .arg("--wav")
            .arg(&silence)
            .arg("--record")
            .arg(&browser_file)
            .args(["--seconds", &a.seconds.to_string(), "--settle", &settle.as_secs().to_string(), "--timeout", &(a.seconds + 60).to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("node tests/browser/join.mjs: {e}"))?;
        // The impairment starts once the browser's media path goes through the relay too.
        let since = Instant::now();
        while relay.clients().len() < 4 && since.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(child)
    };
    relay.set_impairment_one_way(Direction::ToClients, impairment);
    tokio::time::sleep(settle).await;
    let (heard_sdk, heard_naive) = tokio::join!(record(&sdk, window), record(&plain, window));
    let (f_sdk, f_naive) = (dir.join("sdk.wav"), dir.join("naive.wav"));
    write_wav(&f_sdk, &heard_sdk)?;
    write_wav(&f_naive, &heard_naive)?;
    let f_browser = match browser {
        None => None,
        Some(child) => {
            let out = child.wait_with_output().await.map_err(|e| format!("node: {e}"))?;
            let report = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() && browser_file.exists() {
                Some(browser_file)
            } else {
                eprintln!("  chromium did not record: {}", report.trim());
                None
            }
        }
    };
    for c in [speaker, sdk, plain] {
        c.leave().await;
    }
    drop(relay);
    drop(core);
    Ok(vec![Some(f_sdk), Some(f_naive), f_browser])
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Mouth-to-ear latency of `clicks` clicks from one party to another, the listener's media
/// layer with `options`, every path with `impairment`: each click's time in milliseconds.
async fn latency(clicks: usize, impairment: Impairment, options: RtcOptions, scheme: u64) -> Result<Vec<f64>, String> {
    let (core, relay, ws_port) = core_behind_relay().await?;
    let ws = format!("ws://127.0.0.1:{ws_port}/ws");
    let (source, push) = AudioSource::pushed(4);
    let talker = join(&ws, scheme, "talker", RtcOptions::loopback_only(), source).await?;
    let listener = join(&ws, scheme, "listener", options, AudioSource::Silence).await?;
    relay.set_impairment(impairment);
    tokio::time::sleep(Duration::from_secs(2)).await;
    listener.skip_heard().await;
    // The click: 2 ms of a 2 kHz tone at half of full scale, at the start of a frame.
    let mut click = vec![0i16; FRAME_SAMPLES];
    for (i, s) in click.iter_mut().take(96).enumerate() {
        *s = ((i as f32 * std::f32::consts::TAU * 2000.0 / SAMPLE_RATE as f32).sin() * 16_000.0) as i16;
    }
    let pushed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let pusher = {
        let pushed = pushed.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for n in 0..clicks * 50 {
                tick.tick().await;
                let frame = if n % 50 == 25 { click.clone() } else { vec![0; FRAME_SAMPLES] };
                if n % 50 == 25 {
                    pushed.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                }
                if push.send(frame).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut heard = Vec::new();
    let mut quiet = true;
    let until = Instant::now() + Duration::from_secs(clicks as u64 + 3);
    while Instant::now() < until {
        let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(500), listener.next_frame()).await else { continue };
        let at = Instant::now();
        match f.iter().position(|s| s.unsigned_abs() > 4_000) {
            Some(i) if quiet => {
                heard.push(at + Duration::from_micros(i as u64 * 1_000_000 / u64::from(SAMPLE_RATE)));
                quiet = false;
            }
            Some(_) => {}
            None => quiet = f.iter().all(|s| s.unsigned_abs() < 1_000),
        }
    }
    let _ = pusher.await;
    talker.leave().await;
    listener.leave().await;
    drop(relay);
    drop(core);
    let pushed = pushed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Each push matched with the first click heard after it, within a second.
    let mut times = Vec::new();
    for p in pushed {
        if let Some(h) = heard.iter().find(|&&h| h > p && h < p + Duration::from_secs(1)) {
            times.push(h.duration_since(p).as_secs_f64() * 1000.0);
        }
    }
    Ok(times)
}

async fn bench(a: &BenchQualityArgs) -> Result<(), String> {
    let python = python()?;
    let sent = speech(&a.dir)?;
    println!("callme bench-quality: {} run(s); speech {} ({:.1} s); {} s recorded per listener and condition", a.runs, sent.display(), read_wav(&sent)?.len() as f64 / f64::from(SAMPLE_RATE), a.seconds);
    // condition → listener → MOS per run
    let names: Vec<&str> = conditions(0).iter().map(|(n, _)| *n).collect();
    let mut mos: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); LISTENERS.len()]; names.len()];
    let mut scheme = 100;
    for run in 0..a.runs {
        for (ci, (name, impairment)) in conditions(2026 + run as u64).into_iter().enumerate() {
            scheme += 1;
            let dir = a.dir.join(format!("run{}", run + 1)).join(name.replace(['%', ' '], ""));
            let files = condition(a, &sent, &dir, impairment, scheme).await?;
            let present: Vec<PathBuf> = files.iter().flatten().cloned().collect();
            let scores = score(&python, &sent, &present)?;
            let mut it = scores.into_iter();
            let mut line = format!("  run {} {name:>16}:", run + 1);
            for (li, f) in files.iter().enumerate() {
                let s = if f.is_some() { it.next().flatten() } else { None };
                if let Some(s) = s {
                    mos[ci][li].push(s);
                }
                line += &format!(" {} {}", LISTENERS[li], s.map_or("-".into(), |s| format!("{s:.2}")));
            }
            println!("{line}");
        }
    }
    println!("\nPESQ MOS-LQO (P.862.2 wideband), median of {} run(s): loss on the core's sending path", a.runs);
    println!("  {:>16} {:>8} {:>8} {:>8}", "loss", "sdk", "naive", "chromium");
    let mut table = Vec::new();
    for (ci, name) in names.iter().enumerate() {
        let m: Vec<Option<f64>> = (0..LISTENERS.len()).map(|li| median(mos[ci][li].clone())).collect();
        let cell = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
        println!("  {:>16} {:>8} {:>8} {:>8}", name, cell(m[0]), cell(m[1]), cell(m[2]));
        table.push(json!({"loss": name, "sdk": m[0], "naive": m[1], "chromium": m[2], "runs": {"sdk": mos[ci][0], "naive": mos[ci][1], "chromium": mos[ci][2]}}));
    }

    println!("\nMouth-to-ear latency (push of a click into the source → its sample handed to the listener), median of {} run(s):", a.runs);
    let mut lat = serde_json::Map::new();
    let jitter = |seed: u64| Impairment::default().with_delay(0, 30).with_seed(seed);
    for (name, imp, options) in [
        ("clean, sdk", Impairment::default(), RtcOptions::loopback_only()),
        ("0-30 ms jitter, sdk", jitter(7), RtcOptions::loopback_only()),
        ("clean, naive", Impairment::default(), naive()),
        ("0-30 ms jitter, naive", jitter(7), naive()),
    ] {
        let (mut p50s, mut p95s, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.runs {
            scheme += 1;
            let mut t = latency(a.clicks, imp.clone(), options.clone(), scheme).await?;
            t.sort_by(f64::total_cmp);
            counts.push(t.len());
            p50s.push(percentile(&t, 50.0));
            p95s.push(percentile(&t, 95.0));
        }
        let (p50, p95) = (median(p50s.clone()), median(p95s.clone()));
        println!("  {name:>22}: p50 {:.0} ms, p95 {:.0} ms ({:?} of {} clicks heard per run)", p50.unwrap_or(f64::NAN), p95.unwrap_or(f64::NAN), counts, a.clicks);
        lat.insert(name.into(), json!({"p50_ms": p50, "p95_ms": p95, "runs_p50": p50s, "runs_p95": p95s, "heard": counts}));
    }
    let out = json!({"pesq": table, "latency": lat, "runs": a.runs, "seconds": a.seconds});
    if let Some(parent) = a.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out).unwrap_or_default()).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!("  written to {}", a.out.display());
    Ok(())
}
