use std::time::Duration;

use callme::audio::{dominant_frequencies, tone_share, write_wav, AudioSource};
use callme::core::{self, CoreConfig};
use callme::media::{RtcMedia, RtcOptions};
use callme::{ClusterId, MediaReady, SchemeId, Session};

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).try_init();
    let core = core::start(CoreConfig { listen: "127.0.0.1:8080".parse().unwrap(), media: "127.0.0.1:40000".parse().unwrap(), ..Default::default() })
        .await
        .unwrap();
    eprintln!("core at {} media {}", core.http_url, core.media_addr);

    if let Ok(extra) = std::env::var("PROBE_ARGS") {
        let mut args: Vec<String> = vec!["tests/browser/join.mjs".into(), "--url".into(), core.http_url.clone()];
        args.extend(extra.split_whitespace().map(String::from));
        let t = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || std::process::Command::new("node").args(&args).output().unwrap()).await.unwrap();
        println!("node exit {:?} after {:?}", out.status.code(), t.elapsed());
        println!("node stdout: {}", String::from_utf8_lossy(&out.stdout));
        println!("node stderr: {}", String::from_utf8_lossy(&out.stderr));
        println!("stats after: {:?}", core.stats());
        core.stop().await;
        return;
    }
    // 660 Hz WAV for the browser's fake microphone.
    let wav = std::env::temp_dir().join("probe660.wav");
    let mut local = AudioSource::tone(660.0).open().unwrap();
    let mut samples = Vec::new();
    for _ in 0..(5 * 50) {
        samples.extend(local.next_frame());
    }
    write_wav(&wav, &samples).unwrap();

    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), "sdk").await.unwrap();
    let media = RtcMedia::new(RtcOptions::loopback_only());
    let mut call = MediaReady::acquire_with(media, AudioSource::tone(440.0), &party.transcript())
        .await.unwrap().call_me_s1(party).await.unwrap().create_offer().await.unwrap()
        .call_me_s2().await.unwrap().connect().await.unwrap();
    eprintln!("sdk joined");

    let url = core.http_url.clone();
    let wav_s = wav.display().to_string();
    let node = std::thread::spawn(move || {
        std::process::Command::new("node")
            .args(["tests/browser/join.mjs", "--url", &url, "--scheme", "7", "--name", "browser", "--wav", &wav_s, "--seconds", "4", "--freqs", "440,660", "--sdp"])
            .args(std::env::var("PROBE_VERBOSE").ok().map(|_| "--verbose"))
            .output()
            .unwrap()
    });

    // Wait until the browser has media, then listen.
    for _ in 0..300 {
        if core.stats().parties_with_media >= 2 {
            break;
        }
        call.listen(Duration::from_millis(100)).await.unwrap();
    }
    eprintln!("stats {:?}", core.stats());
    call.listen(Duration::from_millis(1500)).await.unwrap();
    let heard = call.listen(Duration::from_millis(3000)).await.unwrap();
    println!("sdk heard {} samples, dominant {:?}, share440 {:.3} share660 {:.3}", heard.len(), dominant_frequencies(&heard, 4), tone_share(&heard, 440.0), tone_share(&heard, 660.0));

    let out = tokio::task::spawn_blocking(move || node.join().unwrap()).await.unwrap();
    println!("node exit {:?}", out.status.code());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("node ok {} levels {} peak {} db {}", v["ok"], v["levels"], v["peak"], v["db"]);
    let sdp = &v["sdp"];
    let offer = sdp["offer"].as_str().unwrap();
    let facts = callme::media::sdp::parse_offer(offer).unwrap();
    let rust_s2: std::collections::BTreeMap<String, String> = facts.s2_params().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let js_s2: std::collections::BTreeMap<String, String> = serde_json::from_value(sdp["s2"].clone()).unwrap();
    println!("s2 params equal: {} {:?}", rust_s2 == js_s2, js_s2);
    let su: callme::wire::ServUfrag = callme::wire::ServUfrag {
        ufrag: sdp["servufrag"]["ufrag"].as_str().unwrap().into(),
        pwd: sdp["servufrag"]["pwd"].as_str().unwrap().into(),
        fingerprint: sdp["servufrag"]["fingerprint"].as_str().unwrap().into(),
        port: sdp["servufrag"]["port"].as_u64().unwrap() as u16,
        addr: sdp["servufrag"]["addr"].as_str().map(String::from),
        candidates: vec![],
    };
    let rust_answer = callme::media::sdp::build_answer(&facts, &su, su.addr.as_deref().unwrap().parse().unwrap());
    let js_answer = sdp["answer"].as_str().unwrap();
    println!("answers equal: {}", rust_answer == js_answer);
    if rust_answer != js_answer { println!("RUST:\n{rust_answer}\nJS:\n{js_answer}"); }
    println!("JS answer:\n{js_answer}");
    println!("offer:\n{offer}");
    eprintln!("node stderr: {}", String::from_utf8_lossy(&out.stderr));
    call.leave().await;
    core.stop().await;
}
