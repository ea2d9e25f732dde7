//! A browser in the same call: Debian's Chromium, driven by playwright-core, loads the page the
//! core serves, whose script performs the seed's 19 steps in JavaScript with a fake microphone
//! playing a 660 Hz tone; an SDK party sends 440 Hz. Each must hear the other and not itself.

use std::time::Duration;

use callme::audio::{tone_share, write_wav, AudioSource};
use callme::core::{self, CoreConfig};
use callme::media::{RtcMedia, RtcOptions};
use callme::{ClusterId, SchemeId, Session};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, node and playwright-core: run by tests/run.sh"]
async fn a_browser_and_an_sdk_party_hear_each_other() {
    let config = CoreConfig::loopback_ephemeral();
    let core = core::start(config).await.unwrap();

    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), "sdk").await.unwrap();
    let sdk = party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(440.0)).await.unwrap();

    // The browser's microphone: 10 s of 660 Hz (Chromium loops the file).
    let wav = std::env::temp_dir().join(format!("callme-browser-660-{}.wav", std::process::id()));
    let mut tone = AudioSource::tone(660.0).open().unwrap();
    let samples: Vec<i16> = (0..500).flat_map(|_| tone.next_frame()).collect();
    write_wav(&wav, &samples).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/join.mjs");
    let browser = tokio::process::Command::new("node")
        .args([script, "--url", &core.http_url, "--scheme", "7", "--name", "browser", "--seconds", "3", "--freqs", "440,660"])
        .arg("--wav")
        .arg(&wav)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs tests/browser/join.mjs");
    let output = browser.wait_with_output();
    tokio::pin!(output);

    // Meanwhile the SDK party listens, one second at a time, until the browser is done.
    let mut windows = Vec::new();
    let output = loop {
        tokio::select! {
            out = &mut output => break out.expect("the browser script ends"),
            heard = sdk.listen(Duration::from_secs(1)) => {
                let h = heard.expect("the SDK party stays in the call");
                windows.push((tone_share(&h, 660.0), tone_share(&h, 440.0)));
            }
        }
    };
    let _ = std::fs::remove_file(&wav);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["ok"], Value::Bool(true), "the browser joined: {report}");
    let steps = report["steps"].as_array().map_or(0, Vec::len);
    assert!(steps >= 19, "the browser performed all 19 steps: {report}");

    let level = |hz: &str| report["levels"][hz].as_f64().unwrap_or(-999.0);
    assert!(level("440") > -6.0, "the browser hears the SDK party's 440 Hz: {report}");
    assert!(level("660") < -40.0, "the browser does not hear its own 660 Hz: {report}");

    assert!(windows.iter().any(|(b, _)| *b > 0.5), "the SDK party hears the browser's 660 Hz: {windows:?}");
    assert!(windows.iter().all(|(_, own)| *own < 0.02), "the SDK party never hears its own 440 Hz: {windows:?}");
    sdk.leave().await;
    core.stop().await;
}
