//! The command line, run as a user runs it: `callme join` against a core with another party in
//! the call, its exit codes, its recording and transcript files, and the scripted demo.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use callme::audio::{read_wav, tone_share, AudioSource};
use callme::core::{self, CoreConfig};
use callme::media::{RtcMedia, RtcOptions};
use callme::{ClusterId, SchemeId, Session};

const CALLME: &str = env!("CARGO_BIN_EXE_callme");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_prints_the_steps_and_what_it_hears_and_records_both_files() {
    let config = CoreConfig::loopback_ephemeral();
    let core = core::start(config).await.unwrap();
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), "other").await.unwrap();
    let other = party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(440.0)).await.unwrap();

    let dir = std::env::temp_dir().join(format!("callme-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (wav, json) = (dir.join("heard.wav"), dir.join("transcript.json"));
    let ws_url = core.ws_url.clone();
    let (wav2, json2) = (wav.clone(), json.clone());
    let run = tokio::task::spawn_blocking(move || {
        Command::new(CALLME)
            .args(["join", "--url", &ws_url, "--scheme", "7", "--name", "cli", "--tone", "880", "--seconds", "2"])
            .arg("--record")
            .arg(&wav2)
            .arg("--transcript")
            .arg(&json2)
            .output()
            .unwrap()
    });
    // Meanwhile the other party hears the command line's tone.
    let mut heard_cli = 0.0f64;
    while !run.is_finished() {
        if let Ok(h) = other.listen(Duration::from_millis(500)).await {
            heard_cli = heard_cli.max(tone_share(&h, 880.0));
        }
    }
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    for row in ["1-2", "3-5", "6-11", "12-14", "15-19", "Connected"] {
        assert!(stdout.contains(row), "the step row {row:?} is printed:\n{stdout}");
    }
    assert!(stdout.contains("cli hears: 440 Hz"), "it says what it hears:\n{stdout}");
    assert!(heard_cli > 0.8, "the other party hears the command line's 880 Hz: {heard_cli}");

    let recorded = read_wav(&wav).unwrap();
    assert!(recorded.len() > 48_000, "two seconds recorded: {}", recorded.len());
    assert!(tone_share(&recorded[24_000..], 440.0) > 0.8, "the recording holds the other party");
    let transcript: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let steps: Vec<u64> = transcript.as_array().unwrap().iter().filter_map(|e| e["step"].as_u64()).collect();
    assert!((1..=19).all(|s| steps.contains(&s)), "the transcript holds every step: {steps:?}");
    let _ = std::fs::remove_dir_all(&dir);
    other.leave().await;
    core.stop().await;
}

#[test]
fn join_exits_with_30_when_no_core_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(CALLME).args(["join", "--url", &format!("ws://127.0.0.1:{port}/ws"), "--scheme", "7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("opening the WebSocket"), "{stderr}");
}

#[test]
fn the_scripted_demo_shows_a_transcript_that_follows_the_table() {
    let out = Command::new(CALLME).args(["demo", "--scripted"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("Checked against the 19-step table: Connected"), "{stdout}");
    assert!(stdout.contains("demo hears: 660 Hz"), "{stdout}");
}

#[test]
fn hash_password_reads_one_line_from_stdin_and_prints_an_argon2id_string_that_verifies_it() {
    use std::io::Write;
    let mut child =
        Command::new(CALLME).arg("hash-password").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let account = callme::core::Account::with_hash("a", &phc, callme::core::Role::User, "A");
    let credential = account.credential().unwrap();
    assert!(credential.verify("correct horse") && !credential.verify("correct horse\n"));
    // An empty line is refused.
    let empty = Command::new(CALLME).arg("hash-password").stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!empty.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_logs_in_prints_the_roster_and_its_changes_and_takes_console_commands() {
    use callme::core::{Account, Role};
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.accounts = vec![
            Account::with_password("ann", "pw-ann", Role::Admin, "Ann Admin"),
            Account::with_password("bob", "pw-bob", Role::User, "Bob"),
        ];
    });
    let core = core::start(config).await.unwrap();
    let bob = Session::connect(&core.ws_url)
        .await
        .unwrap()
        .login("bob", "pw-bob")
        .await
        .unwrap()
        .load(ClusterId(1), SchemeId(7), "")
        .await
        .unwrap();
    let bob = bob.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(440.0)).await.unwrap();

    let mut child = Command::new(CALLME)
        .args(["join", "--url", &core.ws_url, "--scheme", "7", "--login", "ann", "--silent", "--console", "--say", "hi from the cli"])
        .env("CALLME_PASSWORD", "pw-ann")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Lines go in once the console is up, each after the last one's effect was printed.
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut script = vec!["/quit", "/kick Nobody", "/mute Bob"];
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            let next =
                if line.contains("console:") || line.contains("Bob muted") || line.contains("! no party") { script.pop() } else { None };
            if let Some(l) = next {
                let _ = writeln!(stdin, "{l}");
            }
        }
        seen
    });
    let said = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match bob.next_event().await {
                Some(callme::CallEvent::Chat(m)) if m.msg == "hi from the cli" => return m.username,
                Some(_) => continue,
                None => return String::new(),
            }
        }
    })
    .await
    .expect("Bob gets the chat line");
    assert_eq!(said, "Ann Admin");
    let stdout = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{stdout}");
    for want in [
        "logged in as ann: Ann Admin (admin)",
        "in the conference (2):",
        "Bob ",
        "[chat] Ann Admin: hi from the cli",
        "Bob muted",
        "! no party named \"Nobody\" in the conference",
    ] {
        assert!(stdout.contains(want), "{want:?} is printed:\n{stdout}");
    }
    assert!(!core.roster(ClusterId(1), SchemeId(7)).iter().any(|p| p.name == "Bob" && p.mic_on), "the console muted Bob");
    drop(bob);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_exits_with_30_naming_the_retcode_and_never_shows_the_password() {
    use callme::core::{Account, Role};
    let config = CoreConfig::loopback_ephemeral().with(|c| c.accounts = vec![Account::with_password("ann", "pw-ann", Role::Admin, "Ann")]);
    let core = core::start(config).await.unwrap();
    let ws = core.ws_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(CALLME)
            .args(["join", "--url", &ws, "--scheme", "7", "--login", "ann"])
            .env("CALLME_PASSWORD", "not-the-password-xyz")
            .env("CALLME_LOG", "trace,tungstenite=trace,tungstenite::protocol=trace")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(30));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("RETCODE 4"), "{stderr}");
    assert!(
        !stdout.contains("not-the-password-xyz") && !stderr.contains("not-the-password-xyz"),
        "the password shows:\n{stdout}\n{stderr}"
    );
    core.stop().await;
}

/// `callme join --seconds` through a blackout of the media path: a 6 s blackout in a 14 s
/// window is reconnected and the exit is 0, with the reconnection and the share of the window
/// with sound printed; a blackout that outlasts the window is not, and the exit is not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_stays_through_an_outage_and_exits_0_only_if_back_in_the_call() {
    use callme::netem::{Impairment, Relay};
    for (blackout, window, back) in [(6u64, 14u64, true), (60, 10, false)] {
        let config = CoreConfig::loopback_ephemeral().with(|c| c.announce = Some("127.0.0.2".parse().unwrap()));
        let core = core::start(config).await.unwrap();
        let public = format!("127.0.0.2:{}", core.media_addr.port()).parse().unwrap();
        let relay = Relay::start(public, "127.0.0.3".parse().unwrap(), core.media_addr, Impairment::default()).await.unwrap();
        let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), "other").await.unwrap();
        let other = party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(440.0)).await.unwrap();
        let ws_url = core.ws_url.clone();
        let run = tokio::task::spawn_blocking(move || {
            Command::new(CALLME)
                .args(["join", "--url", &ws_url, "--scheme", "7", "--name", "cli", "--tone", "880", "--seconds", &window.to_string()])
                .output()
                .unwrap()
        });
        // The blackout starts once the command line is in the call (the core counts it).
        while core.stats().parties_with_media < 2 && !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        relay.blackout(Duration::from_secs(blackout));
        let out = run.await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = stdout.lines().find(|l| l.contains("sound in")).unwrap_or_else(|| panic!("a summary line:\n{stdout}"));
        let share: f64 = summary.split("sound in ").nth(1).and_then(|r| r.split('%').next()).and_then(|p| p.trim().parse().ok()).unwrap();
        eprintln!("blackout {blackout} s in {window} s: exit {:?}; {summary}", out.status.code());
        assert!(stdout.contains("reconnecting (attempt 1): no media from the core"), "the reconnection is printed:\n{stdout}");
        if back {
            assert!(out.status.success(), "back in the call: exit 0\n{stdout}\n{stderr}");
            assert!(stdout.contains("back in the call as party"), "{stdout}");
            assert!(summary.contains("1 outage(s)"), "{summary}");
            assert!(share > 30.0 && share < 80.0, "the window had sound before and after the outage only: {summary}");
        } else {
            assert_eq!(out.status.code(), Some(40), "not in the call at the end\n{stdout}\n{stderr}");
            assert!(stderr.contains("not in the call at the end"), "{stderr}");
            assert!(share < 40.0, "most of the window had no sound: {summary}");
        }
        other.leave().await;
        core.stop().await;
    }
}
