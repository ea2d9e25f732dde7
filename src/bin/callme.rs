//! `callme`: join a conference from the command line, and run the scripted demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callme::media::fake::FakeMedia;
use callme::media::{MediaEngine, RtcMedia, RtcOptions};
use callme::testing::ScriptedCore;
use callme::{AudioSource, ClusterId, Error, MediaReady, Render, SchemeId, Session, Stage, Timeouts, Transcript};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "callme", version, about = "Join a conference core's audio over WebRTC, step by step")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join a conference on a core and report each step and what is heard.
    Join(JoinArgs),
    /// Run the join against the scripted core in memory (no network, no media), printing each
    /// step and the transcript.
    Demo,
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
    /// How long to stay in the call and listen.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Write what was heard to this WAV file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Write the transcript (JSON) to this file.
    #[arg(long)]
    transcript: Option<PathBuf>,
    /// Use only relayed (TURN) candidates.
    #[arg(long)]
    relay: bool,
}

/// The exit code for a failure: the failing step (1–19), 30 for opening or cd.load, 40 in the call.
fn exit_code(e: &Error) -> u8 {
    match e.stage {
        Stage::Step(n) => n,
        Stage::Open | Stage::Load => 30,
        Stage::InCall => 40,
    }
}

fn row(steps: &str, what: &str, detail: impl AsRef<str>, took: Duration) {
    println!("  {steps:<12} {what:<22} {:>8.1} ms   {}", took.as_secs_f64() * 1000.0, detail.as_ref());
}

/// Runs the typestates one by one, printing each with its duration.
async fn run_join(
    session: Session,
    cluster: u64,
    scheme: u64,
    name: &str,
    media: impl MediaEngine + 'static,
    source: AudioSource,
    listen: Duration,
    record: Option<&std::path::Path>,
) -> (Result<(), Error>, Transcript) {
    let transcript = session.transcript();
    let result = async {
        let t = Instant::now();
        let party = session.load(ClusterId(cluster), SchemeId(scheme), name).await?;
        row("before", "cd.load", format!("party {} in conference {}", party.id(), party.loaded().conf), t.elapsed());

        let t = Instant::now();
        let describe = source.describe();
        let ready = MediaReady::acquire_with(media, source, &transcript).await?;
        row("steps 1-2", "getUserMedia", describe, t.elapsed());

        let t = Instant::now();
        let s1 = ready.call_me_s1(party).await?;
        let ice = if s1.servdesc().serveraddr.is_empty() { "no ICE server".to_owned() } else { s1.servdesc().serveraddr.clone() };
        row("steps 3-5", "CALLME_S1, servdesc", ice, t.elapsed());

        let t = Instant::now();
        let offered = s1.create_offer().await?;
        row("steps 6-11", "offer", format!("ufrag {}, mid {}, opus pt {}", offered.offer().ufrag, offered.offer().mid, offered.offer().opus_pt), t.elapsed());

        let t = Instant::now();
        let s2 = offered.call_me_s2().await?;
        let u = s2.servufrag();
        row("steps 12-14", "CALLME_S2, servufrag", format!("core {}:{}", u.addr.as_deref().unwrap_or("(ws host)"), u.port), t.elapsed());

        let t = Instant::now();
        let mut call = s2.connect().await?;
        row("steps 15-19", "answer, track, play", "connected", t.elapsed());

        println!("  listening for {:.1} s ...", listen.as_secs_f64());
        let heard = match record {
            Some(path) => call.record(listen, path).await?,
            None => call.listen(listen).await?,
        };
        println!("  heard: {}", describe_heard(&heard));
        if let Some(path) = record {
            println!("  recorded to {}", path.display());
        }
        call.leave().await;
        Ok(())
    }
    .await;
    (result, transcript)
}

/// The dominant frequencies of what was heard, for people.
fn describe_heard(heard: &[i16]) -> String {
    let peaks = callme::audio::dominant_frequencies(heard, 4);
    if peaks.is_empty() {
        return format!("silence ({} ms)", heard.len() / 48);
    }
    let list: Vec<String> = peaks.iter().map(|(hz, share)| format!("{hz:.0} Hz ({:.0}%)", share * 100.0)).collect();
    format!("{} ({} ms of audio)", list.join(", "), heard.len() / 48)
}

fn report(result: Result<(), Error>, transcript: &Transcript, out: Option<&PathBuf>) -> ExitCode {
    if let Some(path) = out {
        let json = serde_json::to_string_pretty(&transcript.to_json()).expect("json");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("callme: cannot write the transcript to {}: {e}", path.display());
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callme: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn join(a: JoinArgs) -> ExitCode {
    let source = match (a.tone, a.wav.clone(), a.silent) {
        (_, _, true) => AudioSource::Silence,
        (_, Some(w), _) => AudioSource::Wav(w),
        (hz, None, false) => AudioSource::tone(hz.unwrap_or(440.0)),
    };
    println!("callme: joining conference {} at {} as {:?}", a.scheme, a.url, a.name);
    let t = Instant::now();
    let session = match Session::connect(&a.url).await {
        Ok(s) => s,
        Err(e) => return report(Err(e), &Transcript::new(), a.transcript.as_ref()),
    };
    row("before", "WebSocket open", &a.url, t.elapsed());
    let media = RtcMedia::new(RtcOptions { relay_only: a.relay, ..Default::default() });
    let listen = Duration::from_secs_f64(a.seconds.max(0.0));
    let (result, transcript) = run_join(session, a.cluster, a.scheme, &a.name, media, source, listen, a.record.as_deref()).await;
    report(result, &transcript, a.transcript.as_ref())
}

async fn demo() -> ExitCode {
    println!("callme demo: the join sequence against the scripted core in memory (fake media: the far side is a 660 Hz tone)");
    let core = ScriptedCore::new();
    let session = Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1");
    let (media, _probe) = FakeMedia::new();
    let (result, transcript) =
        run_join(session, 1, 7, "demo", media.hearing(660.0), AudioSource::tone(440.0), Duration::from_secs(1), None).await;
    println!("\nThe transcript (random values redacted):\n");
    print!("{}", transcript.render(Render::Redacted));
    match callme::spec::check(&transcript.entries()) {
        Ok(outcome) => println!("\nchecked against the 19-step table: {outcome:?}"),
        Err(d) => println!("\nthe transcript departs from the 19-step table: {d}"),
    }
    report(result, &transcript, None)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Join(a) => join(a).await,
        Command::Demo => demo().await,
    }
}
