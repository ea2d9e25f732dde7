//! `callme`: join a conference, run the reference core, see the join step by step, measure it.

mod bench;
mod bench_life;
mod bench_outage;
mod bench_quality;
mod child;
mod life;
mod soak;
mod steps;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callme::core::{self, CoreConfig};
use callme::media::fake::FakeMedia;
use callme::media::{RtcMedia, RtcOptions};
use callme::testing::ScriptedCore;
use callme::{AudioSource, ClusterId, Error, Render, SchemeId, Session, Stage, Timeouts, Transcript};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "callme", version, about = "Join a conference core's audio over WebRTC, step by step")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on an embedded default: a reference core on loopback and three parties with
    /// distinct tones in one conference; prints each party's steps and what each hears.
    Demo(DemoArgs),
    /// Join a conference on a core and report each step and what is heard.
    Join(JoinArgs),
    /// Run the reference core.
    Core(CoreArgs),
    /// Join N parties to one conference on a core in a child process and print the figures.
    Bench(bench::BenchArgs),
    /// Life in a conference with accounts, timed: login to first audio, SETMIC to the tone gone.
    BenchLife(bench_life::BenchLifeArgs),
    /// How fast a call comes back: blackouts of the media path and core restarts, timed.
    BenchOutage(bench_outage::BenchOutageArgs),
    /// How speech sounds through loss (PESQ, against Chromium and the naive path), and
    /// mouth-to-ear latency with and without jitter.
    BenchQuality(bench_quality::BenchQualityArgs),
    /// Join/leave churn against a core in a child process: its memory, files, threads and tasks.
    Soak(soak::SoakArgs),
    /// Read a password from standard input (one line) and print its argon2id PHC string, for
    /// `password_hash` of an `[[accounts]]` entry in the core's configuration.
    HashPassword,
}

#[derive(Args)]
struct DemoArgs {
    /// Run the sequence against the scripted core in memory instead (no network, fake media),
    /// and print its transcript.
    #[arg(long)]
    scripted: bool,
    /// How long the parties listen.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

#[derive(Args)]
struct JoinArgs {
    /// The core's WebSocket, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    url: String,
    /// The conference number (SchemeID).
    #[arg(long)]
    scheme: u64,
    /// The display name.
    #[arg(long, default_value = "callme")]
    name: String,
    /// The cluster (ClusterID).
    #[arg(long, default_value_t = 1)]
    cluster: u64,
    /// Send a sine tone at this frequency (the default, 440 Hz).
    #[arg(long, conflicts_with_all = ["wav", "silent"])]
    tone: Option<f32>,
    /// Send this WAV file (16-bit PCM), looped.
    #[arg(long, conflicts_with = "silent")]
    wav: Option<PathBuf>,
    /// Send silence.
    #[arg(long)]
    silent: bool,
    /// How long to stay in the call and listen, through outages (the call reconnects by
    /// itself); the exit code is 0 only if it is in the call at the end.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print a line of the call's stats every second.
    #[arg(long)]
    stats: bool,
    /// Write what was heard to this WAV file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Write the transcript (JSON) to this file.
    #[arg(long)]
    transcript: Option<PathBuf>,
    /// Use only relayed (TURN) candidates.
    #[arg(long)]
    relay: bool,
    /// Log in as this user first (q_cplxLogin); the password comes from CALLME_PASSWORD or is
    /// asked on the terminal, never from a flag.
    #[arg(long, value_name = "USER")]
    login: Option<String>,
    /// Send this chat line once in the call.
    #[arg(long, value_name = "TEXT")]
    say: Option<String>,
    /// Stay in the call until /quit or the end of stdin, taking commands from stdin: a line to
    /// chat, /mute NAME, /unmute NAME, /kick NAME, /who, /quit (instead of listening for
    /// --seconds).
    #[arg(long)]
    console: bool,
}

#[derive(Args)]
struct CoreArgs {
    /// A TOML configuration file (docs/core.sample.toml shows every key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the WebSocket and the page listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The UDP port all media shares (on the listen address's IP).
    #[arg(long)]
    media_port: Option<u16>,
    /// The address announced in servufrag.
    #[arg(long)]
    announce: Option<std::net::IpAddr>,
    /// Print a line of counts (sessions, parties, tasks) on stdout every this many milliseconds.
    #[arg(long)]
    report_ms: Option<u64>,
}

/// The exit code for a failure: the failing step (1–19), 30 for opening or cd.load, 40 in the call.
fn exit_code(e: &Error) -> u8 {
    match e.stage {
        Stage::Step(n) => n,
        Stage::Open | Stage::Load | Stage::Login => 30,
        _ => 40, // in the call
    }
}

fn write_transcript(transcript: &Transcript, out: Option<&PathBuf>) {
    if let Some(path) = out {
        let json = serde_json::to_string_pretty(&transcript.to_json()).expect("entries serialise");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("callme: cannot write the transcript to {}: {e}", path.display());
        }
    }
}

/// Whether `url`'s host is on this machine: then only loopback candidates are gathered.
fn is_loopback_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn join(a: JoinArgs) -> ExitCode {
    let source = match (a.tone, a.wav.clone(), a.silent) {
        (_, _, true) => AudioSource::Silence,
        (_, Some(w), _) => AudioSource::Wav(w),
        (hz, None, false) => AudioSource::tone(hz.unwrap_or(440.0)),
    };
    println!("callme: joining conference {} at {} as {:?}", a.scheme, a.url, a.name);
    let mut transcript = Transcript::new();
    let result: Result<(), Error> = async {
        let password = match &a.login {
            Some(user) => Some(life::password(user).map_err(|reason| Error::new(Stage::Login, callme::Cause::Invalid { reason }))?),
            None => None,
        };
        let t = Instant::now();
        let session = Session::connect(&a.url).await?;
        transcript = session.transcript();
        let (cluster, scheme) = (ClusterId(a.cluster), SchemeId(a.scheme));
        let party = match (&a.login, password) {
            (Some(user), Some(password)) => {
                let logged_in = session.login(user, password).await?;
                let account = logged_in.account();
                println!("  logged in as {user}: {} ({})", account.name, account.role);
                logged_in.load(cluster, scheme, &a.name).await?
            }
            _ => session.load(cluster, scheme, &a.name).await?,
        };
        steps::loaded(&party, t.elapsed()).print(&a.name);
        let options = RtcOptions::default().relay_only(a.relay).with_loopback_only(is_loopback_url(&a.url));
        let call = steps::join(party, RtcMedia::new(options), source, |row| row.print(&a.name)).await?;
        life::print_roster(&call.roster(), call.party_id());
        if let Some(text) = &a.say {
            call.say(text).await?;
        }
        if a.console {
            life::console(&call).await;
            call.leave().await;
            return Ok(());
        }
        let listen = Duration::from_secs_f64(a.seconds.max(0.0));
        println!("  listening for {:.1} s ...", listen.as_secs_f64());
        let window = life::listen_through(&call, listen, a.stats).await?;
        println!("  {} hears: {}", a.name, steps::describe_heard(&window.heard));
        println!("  {}", window.summary());
        if let Some(path) = &a.record {
            callme::audio::write_wav(path, &window.heard).map_err(|reason| Error::new(Stage::InCall, callme::Cause::Invalid { reason }))?;
            println!("  recorded to {}", path.display());
        }
        if let Some(since) = window.reconnecting_since {
            let reason = format!("not in the call at the end: reconnecting for the last {} ms", since.as_millis());
            call.leave().await;
            return Err(Error::new(Stage::InCall, callme::Cause::Disconnected { reason }));
        }
        call.leave().await;
        Ok(())
    }
    .await;
    write_transcript(&transcript, a.transcript.as_ref());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callme: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The main job: a core on loopback, three parties with distinct tones, what each hears.
async fn demo(a: DemoArgs) -> ExitCode {
    if a.scripted {
        return demo_scripted().await;
    }
    let config = CoreConfig::loopback_ephemeral();
    let core = match core::start(config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callme demo: the core does not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("callme demo: a reference core and three parties in conference 7, all on loopback");
    println!("  core: WebSocket {}, media on UDP {}, browser page {}\n", core.ws_url, core.media_addr, core.http_url);
    let parties = [("A", 440.0f32), ("B", 660.0), ("C", 880.0)];
    let mut calls = Vec::new();
    for (name, hz) in parties {
        println!("{name} sends {hz} Hz:");
        let joined: Result<_, Error> = async {
            let t = Instant::now();
            let party = Session::connect(&core.ws_url).await?.load(ClusterId(1), SchemeId(7), name).await?;
            steps::loaded(&party, t.elapsed()).print(name);
            steps::join(party, RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz), |row| row.print(name)).await
        }
        .await;
        match joined {
            Ok(call) => calls.push((name, hz, call)),
            Err(e) => {
                eprintln!("callme demo: {name} failed: {e}");
                core.stop().await;
                return ExitCode::from(exit_code(&e));
            }
        }
        println!();
    }
    let listen = Duration::from_secs_f64(a.seconds.max(0.5));
    println!("All three are in. Listening for {:.1} s ...\n", listen.as_secs_f64());
    // Let the mix settle, then listen to all three at once.
    let heard = futures::future::join_all(calls.iter_mut().map(|(_, _, call)| async move {
        call.listen(Duration::from_millis(500)).await?;
        call.listen(listen).await
    }))
    .await;
    let mut all_right = true;
    for ((name, own, _), heard) in calls.iter().zip(&heard) {
        match heard {
            Ok(h) => {
                let others: Vec<f32> = parties.iter().map(|p| p.1).filter(|hz| hz != own).collect();
                let right = others.iter().all(|&hz| callme::audio::tone_share(h, hz) > 0.2) && callme::audio::tone_share(h, *own) < 0.02;
                all_right &= right;
                let verdict = if right { "the other two, not its own" } else { "NOT what it should" };
                println!("  {name} hears {}: {verdict} ({own} Hz)", steps::describe_heard(h));
            }
            Err(e) => {
                all_right = false;
                println!("  {name}: {e}");
            }
        }
    }
    for (_, _, call) in calls {
        call.leave().await;
    }
    core.stop().await;
    if all_right {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn demo_scripted() -> ExitCode {
    println!("callme demo --scripted: the join against the scripted core in memory (fake media: the far side is a 660 Hz tone)\n");
    let core = ScriptedCore::new();
    let session = Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1");
    let transcript = session.transcript();
    let (media, _probe) = FakeMedia::new();
    let result: Result<(), Error> = async {
        let party = session.load(ClusterId(1), SchemeId(7), "demo").await?;
        let call = steps::join(party, media.hearing(660.0), AudioSource::tone(440.0), |row| row.print("demo")).await?;
        let heard = call.listen(Duration::from_secs(1)).await?;
        println!("  demo hears: {}", steps::describe_heard(&heard));
        call.leave().await;
        Ok(())
    }
    .await;
    println!("\nThe transcript (random values redacted):\n");
    print!("{}", transcript.render(Render::Redacted));
    match callme::spec::check(&transcript.entries()) {
        Ok(outcome) => println!("\nChecked against the 19-step table: {outcome:?}"),
        Err(d) => println!("\nThe transcript departs from the 19-step table: {d}"),
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callme: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Builds the core's configuration: defaults → file → environment → flags, then validates.
fn core_config(a: &CoreArgs) -> Result<CoreConfig, String> {
    let mut c = match &a.config {
        Some(path) => CoreConfig::from_toml_file(path)?,
        None => CoreConfig::default(),
    };
    c = c.with_env(|k| std::env::var(k).ok())?;
    if let Some(l) = a.listen {
        c.listen = l;
        c.media.set_ip(l.ip());
    }
    if let Some(p) = a.media_port {
        c.media.set_port(p);
    }
    if let Some(ip) = a.announce {
        c.announce = Some(ip);
    }
    c.validate()
}

async fn run_core(a: CoreArgs) -> ExitCode {
    let config = match core_config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callme core: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let effective = config.redacted();
    let core = match core::start(config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callme core: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("callme core: configuration {effective}");
    // One line a parent process can read the addresses from.
    println!("callme core: ws {} http {} media {}", core.ws_url, core.http_url, core.media_addr);
    if let Some(ms) = a.report_ms.filter(|ms| *ms > 0) {
        let mut every = tokio::time::interval(Duration::from_millis(ms));
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = every.tick() => {
                    let s = core.stats();
                    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
                    let mixers = core.mixer_stats();
                    let sum = |f: fn(&core::MixerStats) -> u64| mixers.iter().map(|(_, m)| f(m)).sum::<u64>();
                    let counts = serde_json::json!({"sessions": s.sessions, "conferences": s.conferences, "parties": s.parties,
                        "parties_with_media": s.parties_with_media, "tasks": tasks,
                        "mixer": {"ticks": sum(|m| m.ticks), "late_ticks": sum(|m| m.late_ticks), "skipped_ticks": sum(|m| m.skipped_ticks),
                            "packets_dropped": sum(|m| m.packets_dropped), "sends_dropped": sum(|m| m.sends_dropped)}});
                    println!("{}{counts}", child::REPORT);
                }
            }
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    core.stop().await;
    ExitCode::SUCCESS
}

/// `callme hash-password`: the password never comes from a flag (it would be in the shell's
/// history and the process list).
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("callme hash-password: reading standard input: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if password.is_empty() {
        eprintln!("callme hash-password: standard input gave an empty password (one line expected)");
        return ExitCode::FAILURE;
    }
    match callme::core::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callme hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `CALLME_LOG` (default `error,callme=warn`), with the WebSocket library never above debug:
/// its trace prints every frame's payload, a login's password too. A `trace` asked for it (or
/// for everything) becomes `debug` for its targets.
fn log_filter(asked: Option<String>) -> tracing_subscriber::EnvFilter {
    let asked = asked.unwrap_or_else(|| "error,callme=warn".into());
    let is_ws = |d: &str| d.starts_with("tungstenite") || d.starts_with("tokio_tungstenite");
    let mut directives: Vec<String> = Vec::new();
    let mut cap = false;
    for d in asked.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if is_ws(d) {
            cap |= d.ends_with("=trace");
            directives.push(d.replace("=trace", "=debug"));
        } else {
            cap |= d == "trace";
            directives.push(d.to_owned());
        }
    }
    if cap {
        directives.extend(["tungstenite=debug".to_owned(), "tokio_tungstenite=debug".to_owned()]);
    }
    tracing_subscriber::EnvFilter::try_new(directives.join(",")).unwrap_or_else(|_| "error,callme=warn".into())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(log_filter(std::env::var("CALLME_LOG").ok())).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Demo(DemoArgs { scripted: false, seconds: 2.0 })) {
            Command::Demo(a) => demo(a).await,
            Command::Join(a) => join(a).await,
            Command::Core(a) => run_core(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::BenchLife(a) => bench_life::run(a).await,
            Command::BenchOutage(a) => bench_outage::run(a).await,
            Command::BenchQuality(a) => bench_quality::run(a).await,
            Command::Soak(a) => soak::run(a).await,
            Command::HashPassword => hash_password(),
        }
    })
}
