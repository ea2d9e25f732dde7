//! The examples, run as a user runs them: each joins (an embedded reference core, or the
//! scripted core) and reports what it heard; the test checks what they print and write.

use std::path::PathBuf;
use std::process::Command;

/// The built example `name`: `cargo test` (and `tests/run.sh`) builds the examples before it
/// runs the tests; `cargo test --test examples` alone does not, so build them first then.
fn example(name: &str) -> Command {
    let deps = std::env::current_exe().expect("the test binary's path");
    let dir: PathBuf = deps.parent().and_then(|d| d.parent()).expect("target/<profile>").join("examples");
    Command::new(dir.join(name))
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn the_scripted_example_performs_the_19_steps_and_hears_the_far_side() {
    let out = run(example("scripted"));
    assert!(out.contains("19 media < play"), "{out}");
    assert!(out.contains("Ok(Connected)"), "{out}");
    let share: f64 =
        out.split("660 Hz share ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).expect("a share");
    assert!(share > 0.9, "{out}");
}

#[test]
fn the_join_example_hears_the_embedded_party() {
    let out = run(example("join"));
    assert!(out.contains("CALLME_S2"), "the transcript is printed: {out}");
    let peaks = out.lines().find(|l| l.starts_with("heard ")).expect("the summary line");
    assert!(peaks.contains("(660.0,"), "660 Hz is the strongest frequency heard: {peaks}");
}

#[test]
fn the_record_example_writes_the_mix_to_a_wav_file() {
    let wav = std::env::temp_dir().join(format!("callme-example-record-{}.wav", std::process::id()));
    let mut cmd = example("record");
    cmd.env_remove("CALLME_URL").arg(&wav); // no URL: the embedded core
    let out = run(cmd);
    assert!(out.contains("wrote"), "{out}");
    let heard = callme::audio::read_wav(&wav);
    let _ = std::fs::remove_file(&wav);
    let heard = heard.expect("the WAV file is written");
    assert!(heard.len() > 48_000 * 2, "about 3 s of the mix: {} samples", heard.len());
    assert!(callme::audio::tone_share(&heard[48_000..], 660.0) > 0.5, "the other party's 660 Hz is in it");
}

#[test]
fn the_pushed_frames_example_reads_the_mix_back() {
    let out = run(example("pushed_frames"));
    let loud: u32 =
        out.split("of them with sound").next().and_then(|s| s.split_whitespace().last()).and_then(|s| s.parse().ok()).expect("a count");
    assert!(loud >= 25, "most of the mix read back has sound (the embedded party's tone): {out}");
}
