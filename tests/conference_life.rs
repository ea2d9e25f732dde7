//! Conference life against the reference core over a real WebSocket and real media: the
//! roster's `bTalking` from the mixer's speech detection, and a resume that takes a party over
//! from a session whose connection is cut but not closed.

use std::time::Duration;

use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start_core() -> CoreHandle {
    core::start(CoreConfig::loopback_ephemeral().with(|c| c.media_timeout_ms = 3000)).await.expect("the core starts")
}

async fn join(core: &CoreHandle, name: &str, source: AudioSource) -> Connected {
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), name).await.unwrap();
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), source).await.unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

async fn ws_connect(core: &CoreHandle) -> Ws {
    tokio_tungstenite::connect_async(core.ws_url.as_str()).await.expect("the WebSocket opens").0
}

/// The next text frame as JSON, or `None` when nothing comes within `within`.
async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(within, ws.next()).await.ok()??.ok()?;
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).ok();
        }
    }
}

async fn answer(ws: &mut Ws, frame: Value) -> Value {
    let seq = frame["seq"].clone();
    ws.send(Message::text(frame.to_string())).await.unwrap();
    for _ in 0..1000 {
        let v = next_json(ws, Duration::from_secs(5)).await.expect("an answer within 5 s");
        if v.pointer("/ANSW/seq") == Some(&seq) {
            return v;
        }
    }
    panic!("no answer to {seq}");
}

fn load(seq: u64, name: &str, token: Option<&str>) -> Value {
    let mut params = json!({"ClusterID": "1", "SchemeID": "7", "NAME": name});
    if let Some(t) = token {
        params["ResumeToken"] = json!(t);
    }
    json!({"cmd": "load", "seq": seq, "obj": "cd", "params": params})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_shows_the_two_tone_parties_talking_and_the_silent_ones_never() {
    let core = start_core().await;
    // A watcher without media: a silent party that reads the roster.
    let mut watcher = ws_connect(&core).await;
    let me = answer(&mut watcher, load(1, "watcher", None)).await["ANSW"]["result"]["SVPartyID"].as_u64().unwrap();
    let a = join(&core, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, "b", AudioSource::tone(660.0)).await;
    let (silent_source, _keep_open) = AudioSource::pushed(4);
    let silent = join(&core, "silent", silent_source).await;
    let (a_id, b_id, silent_id) = (a.party_id().0, b.party_id().0, silent.party_id().0);

    // Read conf.changed for a bounded time: every bTalking each party had.
    let mut talking: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    let mut states: std::collections::HashMap<u64, u64> = Default::default();
    for _ in 0..2000 {
        let both = [a_id, b_id].iter().all(|p| talking.get(p).is_some_and(|t| t.contains(&1)));
        if both && states.get(&silent_id) == Some(&2) {
            break;
        }
        let Some(v) = next_json(&mut watcher, Duration::from_secs(10)).await else { break };
        for p in v.pointer("/EVT/result/updParties").and_then(Value::as_array).into_iter().flatten() {
            let id = p["PARTY_ID"].as_u64().unwrap();
            talking.entry(id).or_default().push(p["bTalking"].as_u64().unwrap());
            states.insert(id, p["State"].as_u64().unwrap());
        }
    }
    assert!(talking[&a_id].contains(&1), "a's tone is shown talking: {talking:?}");
    assert!(talking[&b_id].contains(&1), "b's tone is shown talking: {talking:?}");
    assert_eq!(states.get(&silent_id), Some(&2), "the silent party's media runs (State 2): {states:?}");
    assert!(talking.get(&silent_id).is_none_or(|t| t.iter().all(|&x| x == 0)), "the silent party never talks: {talking:?}");
    assert!(talking.get(&me).is_none_or(|t| t.iter().all(|&x| x == 0)), "the watcher never talks: {talking:?}");
    // A steady tone does not flicker: no stop while it plays.
    assert!(talking[&a_id].iter().filter(|&&x| x == 0).count() <= 1, "a flickers: {:?}", talking[&a_id]);
    a.leave().await;
    b.leave().await;
    silent.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_by_token_takes_the_party_from_a_cut_session_at_once_and_the_cut_one_is_closed_with_1008() {
    let core = start_core().await;
    let mut other = ws_connect(&core).await;
    answer(&mut other, load(1, "other", None)).await;
    // The session whose connection is cut: it is never read or written again, and not closed.
    let mut cut = ws_connect(&core).await;
    let loaded = answer(&mut cut, load(1, "cut", None)).await;
    let party = loaded["ANSW"]["result"]["SVPartyID"].as_u64().unwrap();
    let token = loaded["ANSW"]["result"]["ResumeToken"].as_str().unwrap().to_owned();
    assert!(token.len() >= 16, "{token}");

    // Back on a new socket with the token: the same party, code 1, a new token.
    let mut back = ws_connect(&core).await;
    let again = answer(&mut back, load(1, "back", Some(&token))).await;
    assert_eq!(again["ANSW"]["result"]["code"], json!(1), "{again}");
    assert_eq!(again["ANSW"]["result"]["SVPartyID"], json!(party));
    assert_ne!(again["ANSW"]["result"]["ResumeToken"], json!(token));
    let names: Vec<&str> = again["ANSW"]["result"]["parties"].as_array().unwrap().iter().map(|p| p["NAME"].as_str().unwrap()).collect();
    assert_eq!(names, ["other", "cut"], "the same party, as it was");
    assert_eq!(core.stats().parties, 2);

    // The cut session, when it reads at last, finds a close 1008 naming the resume.
    let mut close = None;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(5), cut.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                close = f;
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    let f = close.expect("a close frame");
    assert_eq!(u16::from(f.code), 1008);
    assert!(f.reason.contains("resumed by another session"), "{f:?}");
    // The resumed party is the new session's: CALLME_S1 on it is answered.
    let s1 = json!({"cmd": "CALLME_S1", "seq": 2, "obj": "conf", "params": {"ClusterID": "1", "ID": again["ANSW"]["result"]["confdata"]["ID"].to_string(), "PartyID": party.to_string()}});
    assert_eq!(answer(&mut back, s1).await["ANSW"]["result"]["code"], json!(0));
    // An unknown token loads a new party.
    let mut stranger = ws_connect(&core).await;
    let v = answer(&mut stranger, load(1, "stranger", Some("no-such-token-0123456789"))).await;
    assert_eq!(v["ANSW"]["result"]["code"], json!(1));
    assert_ne!(v["ANSW"]["result"]["SVPartyID"], json!(party));
    core.stop().await;
}

/// Listens in slices until `f` holds for what a slice heard (bounded: 20 slices of 300 ms).
async fn until_heard(call: &Connected, what: &str, f: impl Fn(&[i16]) -> bool) {
    for _ in 0..20 {
        let heard = call.listen(Duration::from_millis(300)).await.expect("the call goes on");
        if f(&heard) {
            return;
        }
    }
    panic!("{what}: not within 20 slices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setmic_takes_the_own_tone_out_of_the_others_mix_and_back_and_another_party_is_refused() {
    use callme::audio::tone_share;
    use callme::wire::{code, Command};
    let core = start_core().await;
    let a = join(&core, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, "b", AudioSource::tone(660.0)).await;
    until_heard(&a, "a hears b", |h| tone_share(h, 660.0) > 0.5).await;

    let muted = b.command(Command::set_mic(b.loaded().at(), false)).await.unwrap();
    assert_eq!(muted.code, code::OK);
    until_heard(&a, "b's tone is gone from a's mix", |h| tone_share(h, 660.0) < 0.02 && !h.is_empty()).await;
    // b still hears a: only b's audio is out of the mix.
    until_heard(&b, "b hears a while muted", |h| tone_share(h, 440.0) > 0.5).await;

    // a does not control the conference (an open core): it may not unmute b.
    let refused = a.command(Command::set_mic(b.loaded().at(), true)).await.unwrap();
    let r = refused.refusal(&[code::OK]).expect("a refusal");
    assert_eq!((r.code, r.class.as_str()), (code::NOT_OWN_PARTY, "auth"));
    assert!(r.text.contains("PartyID"), "{r:?}");

    let unmuted = b.command(Command::set_mic(b.loaded().at(), true)).await.unwrap();
    assert_eq!(unmuted.code, code::OK);
    until_heard(&a, "b's tone is back in a's mix", |h| tone_share(h, 660.0) > 0.5).await;
    a.leave().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delparty_on_the_own_party_ends_its_media_and_the_others_stop_hearing_it() {
    use callme::audio::tone_share;
    use callme::wire::{code, Command};
    let core = start_core().await;
    let a = join(&core, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, "b", AudioSource::tone(660.0)).await;
    until_heard(&a, "a hears b", |h| tone_share(h, 660.0) > 0.5).await;
    let refused = a.command(Command::del_party(b.loaded().at())).await.unwrap();
    assert_eq!(refused.refusal(&[code::OK]).map(|r| r.code), Some(code::NOT_OWN_PARTY), "no control in an open core");
    let removed = b.command(Command::del_party(b.loaded().at())).await.unwrap();
    assert_eq!(removed.code, code::OK);
    until_heard(&a, "b's tone is gone", |h| tone_share(h, 660.0) < 0.02 && !h.is_empty()).await;
    let mut stats = core.stats();
    for _ in 0..100 {
        if (stats.parties, stats.parties_with_media) == (1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = core.stats();
    }
    assert_eq!((stats.parties, stats.parties_with_media), (1, 1), "b is gone from the core, media and all");
    a.leave().await;
    drop(b);
    core.stop().await;
}
