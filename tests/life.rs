//! Life in one conference, end to end, with accounts: three SDK parties (Ann the admin and Bob
//! with tones, Cat silent) and Chromium (Dora, logging in through the page's form, with a tone of
//! its own), over real WebSockets and real media. At every step every roster, the page's list
//! included, comes to equal the core's; muting, chat, removal, a cut WebSocket resumed by token
//! and a cut one left to expire are each checked by what the parties hear and show.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use callme::audio::{tone_share, write_wav, AudioSource};
use callme::core::{self, Account, CoreConfig, CoreHandle, Role};
use callme::media::{RtcMedia, RtcOptions};
use callme::netem::TcpRelay;
use callme::roster::Roster;
use callme::wire::PartyData;
use callme::{CallEvent, Cause, ClusterId, ConnectOptions, Connected, PartyId, Resumed, SchemeId, Session};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CLUSTER: ClusterId = ClusterId(1);
const SCHEME: SchemeId = SchemeId(7);
const ANN_HZ: f32 = 440.0;
const BOB_HZ: f32 = 660.0;
const DORA_HZ: f32 = 880.0;

fn account(login: &str, role: Role, name: &str) -> Account {
    Account::with_password(login, &format!("pw-{login}"), role, name)
}

async fn start_core() -> CoreHandle {
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.accounts = vec![
            account("ann", Role::Admin, "Ann Admin"),
            account("bob", Role::User, "Bob"),
            account("cat", Role::User, "Cat"),
            account("dora", Role::User, "Dora Web"),
        ];
        c.resume_grace_ms = 3000;
        // A cut connection is noticed after 2 s without a frame (pings every 500 ms).
        c.ping_interval_ms = 500;
        c.idle_timeout_ms = 2000;
        c.media_timeout_ms = 5000;
    });
    core::start(config).await.expect("the core starts")
}

async fn join(ws_url: &str, login: &str, source: AudioSource) -> Connected {
    // Resuming is done by hand here, and a cut left alone must expire: no reconnection by itself
    // (tests/outages.rs has the automatic paths).
    let options = ConnectOptions::default().with_reconnect(callme::ReconnectPolicy::off());
    let session = Session::connect_with_options(ws_url, &options).await.expect("the WebSocket opens");
    let party =
        session.login(login, format!("pw-{login}")).await.expect("the login is accepted").load(CLUSTER, SCHEME, "").await.expect("cd.load");
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), source).await.unwrap_or_else(|e| panic!("{login} joins: {e}"))
}

/// What a roster entry is, compared across the core, the SDK and the page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    id: u64,
    index: u64,
    name: String,
    state: u64,
    mic_on: bool,
}

fn from_core(list: &[PartyData]) -> Vec<Entry> {
    list.iter().map(|p| Entry { id: p.id.0, index: p.index, name: p.name.clone(), state: p.state, mic_on: p.mic_on }).collect()
}

fn from_sdk(r: &Roster) -> Vec<Entry> {
    r.members()
        .iter()
        .map(|m| Entry { id: m.id.0, index: m.index, name: m.name.clone(), state: m.state.code(), mic_on: m.mic_on })
        .collect()
}

fn from_page(v: &Value) -> Vec<Entry> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| Entry {
                    id: p["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                    index: p["index"].as_u64().unwrap_or(0),
                    name: p["name"].as_str().unwrap_or("").to_owned(),
                    state: p["state"].as_u64().unwrap_or(0),
                    mic_on: p["micOn"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Chromium on the core's page, driven by tests/browser/drive.mjs one command at a time.
struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    wav: PathBuf,
}

impl Browser {
    async fn open(http_url: &str, query: &str, hz: f32) -> Browser {
        let wav = std::env::temp_dir().join(format!("callme-life-{hz}-{}.wav", std::process::id()));
        let mut tone = AudioSource::tone(hz).open().unwrap();
        let samples: Vec<i16> = (0..500).flat_map(|_| tone.next_frame()).collect();
        write_wav(&wav, &samples).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/drive.mjs");
        let mut child = tokio::process::Command::new("node")
            .args([script, "--url", http_url, "--query", query, "--timeout", "240", "--wav"])
            .arg(&wav)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs tests/browser/drive.mjs");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.expect("the browser starts").unwrap();
        assert_eq!(
            ready.as_deref().map(serde_json::from_str::<Value>).and_then(Result::ok),
            Some(json!({"ok": true, "value": "ready"})),
            "{ready:?}"
        );
        Browser { child, stdin, lines, wav }
    }

    async fn send(&mut self, c: Value) -> Value {
        self.stdin.write_all(format!("{c}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the browser answers")
            .unwrap()
            .unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Evaluates `js` in the page (awaited); panics with the page's error when it throws.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self.send(json!({"eval": js})).await;
        assert_eq!(r["ok"], json!(true), "{js}: {r}");
        r["value"].clone()
    }

    /// Evaluates `js`, giving the page's error back instead of panicking.
    async fn try_eval(&mut self, js: &str) -> Result<Value, String> {
        let r = self.send(json!({"eval": js})).await;
        if r["ok"] == json!(true) {
            Ok(r["value"].clone())
        } else {
            Err(r["error"].as_str().unwrap_or("").to_owned())
        }
    }

    async fn roster(&mut self) -> Vec<Entry> {
        from_page(&self.eval("window.callme.roster()").await)
    }

    /// Levels of `freqs` in dB relative to the strongest bin, over `ms`.
    async fn levels(&mut self, freqs: &[f32], ms: u32) -> Value {
        let list: Vec<String> = freqs.iter().map(|f| f.to_string()).collect();
        self.eval(&format!("window.callme.toneLevels([{}], {ms})", list.join(","))).await
    }

    async fn close(mut self) {
        let _ = self.send(json!({"close": true})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = std::fs::remove_file(&self.wav);
    }
}

fn level(v: &Value, hz: f32) -> f64 {
    v[hz.to_string()].as_f64().unwrap_or(-999.0)
}

/// Waits (bounded: about 15 s) until every SDK party's roster and the page's list equal the
/// core's, and gives that list; panics with all of them when they do not.
async fn rosters_agree(core: &CoreHandle, calls: &[&Connected], page: &mut Browser, what: &str) -> Vec<Entry> {
    let mut last = String::new();
    for _ in 0..75 {
        let want = from_core(&core.roster(CLUSTER, SCHEME));
        let sdk: Vec<Vec<Entry>> = calls.iter().map(|c| from_sdk(&c.roster())).collect();
        let shown = page.roster().await;
        if sdk.iter().all(|r| *r == want) && shown == want {
            return want;
        }
        last = format!("core {want:?}\nsdk {sdk:?}\npage {shown:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: the rosters do not come to agree with the core's:\n{last}");
}

/// Waits (bounded) until `f` holds for the core's roster.
async fn until_core(core: &CoreHandle, what: &str, f: impl Fn(&[PartyData]) -> bool) {
    for _ in 0..150 {
        if f(&core.roster(CLUSTER, SCHEME)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: the core's roster never got there: {:?}", core.roster(CLUSTER, SCHEME));
}

/// Waits for the first event `f` picks out of the call's stream (bounded: 10 s).
async fn event<T>(call: &Connected, what: &str, f: impl Fn(&CallEvent) -> Option<T>) -> T {
    let wait = async {
        while let Some(e) = call.next_event().await {
            if let Some(t) = f(&e) {
                return Some(t);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(Some(t)) => t,
        other => panic!("{what}: no such event ({})", if other.is_err() { "timed out" } else { "the call ended" }),
    }
}

/// Share of `hz` in what `call` hears over 1 s, after the audio of the first 200 ms is let go
/// (what was in flight when the change was made).
async fn share_now(call: &Connected, hz: f32) -> f64 {
    call.skip_heard().await;
    let heard = call.listen(Duration::from_millis(1200)).await.expect("the party stays in the call");
    tone_share(&heard[heard.len().min(48 * 200)..], hz)
}

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs chromium, node and playwright-core: run by tests/run.sh"]
async fn three_sdk_parties_and_a_browser_live_in_one_conference_with_accounts() {
    let core = start_core().await;
    // Bob reaches the core through a relay that can cut his connection without closing it.
    let ws_port: u16 = core.ws_url.rsplit(':').next().unwrap().trim_end_matches("/ws").parse().unwrap();
    let relay = TcpRelay::start("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{ws_port}").parse().unwrap()).await.unwrap();
    let bob_url = format!("ws://{}/ws", relay.addr());

    let ann = join(&core.ws_url, "ann", AudioSource::tone(ANN_HZ)).await;
    assert!(ann.loaded().control, "an admin's session controls the conference");
    let bob = join(&bob_url, "bob", AudioSource::tone(BOB_HZ)).await;
    assert!(!bob.loaded().control);
    let cat = join(&core.ws_url, "cat", AudioSource::Silence).await;

    // Dora logs in through the page's form.
    let mut page = Browser::open(&core.http_url, "scheme=7&login=1", DORA_HZ).await;
    page.send(json!({"fill": "#login-user", "value": "dora"})).await;
    page.send(json!({"fill": "#login-password", "value": "pw-dora"})).await;
    assert_eq!(page.send(json!({"click": "#login-submit"})).await["ok"], json!(true));
    let joined = page.try_eval("window.callme.done.then(() => window.callme.account)").await;
    assert_eq!(joined.as_ref().map(|a| a["name"].clone()), Ok(json!("Dora Web")), "the page logs in and joins: {joined:?}");
    assert_eq!(page.eval("window.callme.control").await, json!(false));

    let (a_id, b_id, c_id) = (ann.party_id(), bob.party_id(), cat.party_id());
    let everyone = rosters_agree(&core, &[&ann, &bob, &cat], &mut page, "all four in").await;
    let names: Vec<&str> = everyone.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["Ann Admin", "Bob", "Cat", "Dora Web"], "names come from the accounts");
    assert!(everyone.iter().all(|e| e.state == PartyData::CONNECTED && e.mic_on), "{everyone:?}");

    // The tone parties are shown talking, the silent one not, everywhere.
    until_core(&core, "talking", |r| r.iter().all(|p| p.talking == (p.id != c_id))).await;
    for _ in 0..75 {
        let sdk_ok = [&ann, &bob, &cat].iter().all(|c| c.roster().members().iter().all(|m| m.talking == (m.id != c_id)));
        let page_ok = page
            .eval("window.callme.roster()")
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["talking"] == json!(p["id"] != json!(c_id.0.to_string())));
        if sdk_ok && page_ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in [&ann, &bob, &cat] {
        let talking: Vec<String> = c.roster().members().iter().filter(|m| m.talking).map(|m| m.name.clone()).collect();
        assert_eq!(talking, ["Ann Admin", "Bob", "Dora Web"], "who talks, as {} sees it", c.party_id());
    }
    let shown_talking: Vec<Value> = page
        .eval("window.callme.roster()")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["talking"] == json!(true))
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(shown_talking, [json!("Ann Admin"), json!("Bob"), json!("Dora Web")]);
    assert!(share_now(&cat, BOB_HZ).await > 0.15 && share_now(&cat, ANN_HZ).await > 0.15, "Cat hears Ann and Bob");

    // The admin mutes Bob: no one hears his tone, every roster shows him muted.
    ann.set_mic_of(b_id, false).await.expect("the admin mutes Bob");
    for (who, c) in [("Ann", &ann), ("Cat", &cat)] {
        let s = share_now(c, BOB_HZ).await;
        assert!(s < 0.02, "{who} still hears Bob's tone while he is muted: {s}");
    }
    let muted = page.levels(&[ANN_HZ, BOB_HZ], 1000).await;
    assert!(level(&muted, BOB_HZ) < -40.0 && level(&muted, ANN_HZ) > -6.0, "the page hears Ann, not the muted Bob: {muted}");
    let after = rosters_agree(&core, &[&ann, &bob, &cat], &mut page, "Bob muted").await;
    assert!(after.iter().all(|e| e.mic_on == (e.id != b_id.0)), "{after:?}");
    assert!(bob.is_muted(), "Bob's own SDK follows the roster and sends no audio");

    // Unmuted, he is heard again.
    ann.set_mic_of(b_id, true).await.expect("the admin unmutes Bob");
    let mut heard_again = 0.0;
    for _ in 0..5 {
        heard_again = share_now(&cat, BOB_HZ).await;
        if heard_again > 0.15 {
            break;
        }
    }
    assert!(heard_again > 0.15, "Cat hears Bob again: {heard_again}");
    rosters_agree(&core, &[&ann, &bob, &cat], &mut page, "Bob unmuted").await;

    // A user may not mute someone else.
    let refused = bob.set_mic_of(a_id, false).await.expect_err("Bob may not mute Ann");
    match &refused.cause {
        Cause::Refused(r) => {
            assert_eq!((r.code, r.class.as_str()), (callme::wire::code::NOT_OWN_PARTY, "auth"), "{refused}");
            assert!(r.text.contains("PartyID"), "the refusal names the field: {refused}");
        }
        other => panic!("not a refusal: {other:?}"),
    }
    let denied =
        page.try_eval(&format!("window.callme.setMicOf('{}', false)", a_id.0)).await.expect_err("the page's user may not mute Ann");
    assert!(denied.contains("202"), "{denied}");

    // Chat, from the page to every SDK party and back.
    page.eval("window.callme.say('hello from the page')").await;
    for c in [&ann, &bob, &cat] {
        let m = event(c, "the page's chat line", |e| match e {
            CallEvent::Chat(m) if m.msg == "hello from the page" => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(m.username, "Dora Web");
    }
    bob.say("hello page").await.expect("Bob chats");
    let mut got = Value::Null;
    for _ in 0..50 {
        got = page.eval("window.callme.chat").await;
        if got.as_array().is_some_and(|a| a.iter().any(|m| m["msg"] == json!("hello page"))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let line = got.as_array().and_then(|a| a.iter().find(|m| m["msg"] == json!("hello page")).cloned());
    assert_eq!(line.map(|m| m["username"].clone()), Some(json!("Bob")), "the page shows Bob's line: {got}");

    // The page as it stands: the roster and the chat, kept as an artifact.
    let shot = artifact("life-page.png");
    assert_eq!(page.send(json!({"screenshot": shot.to_string_lossy()})).await["ok"], json!(true));
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "a real picture: {} bytes", png.len());
    let shown = page.send(json!({"text": "#room"})).await["value"].as_str().unwrap_or("").to_owned();
    for name in ["Ann Admin", "Bob", "Cat", "Dora Web", "hello from the page", "hello page"] {
        assert!(shown.contains(name), "the page shows {name:?}: {shown}");
    }

    // The admin removes Cat: her SDK says so with the reason, the others' rosters drop her.
    ann.remove(c_id).await.expect("the admin removes Cat");
    let end = tokio::time::timeout(Duration::from_secs(10), cat.ended()).await.expect("Cat's call ends");
    assert!(end.to_string().contains("removed by Ann Admin"), "{end}");
    let left = event(&ann, "Cat left", |e| match e {
        CallEvent::Roster(callme::RosterChange::Left(m)) if m.id == c_id => Some(m.name.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, "Cat");
    let three = rosters_agree(&core, &[&ann, &bob], &mut page, "Cat removed").await;
    assert!(three.iter().all(|e| e.id != c_id.0), "{three:?}");
    drop(cat);

    // Bob's WebSocket is cut, not closed: he comes back by his token as the same party, and is
    // heard again.
    let resume = bob.resumer();
    relay.cut();
    let back = resume.connect().await.expect("Bob resumes");
    let Resumed::Same(party) = back else { panic!("Bob comes back as a new party: {back:?}") };
    assert_eq!(party.id(), b_id);
    drop(bob);
    let bob = party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(BOB_HZ)).await.expect("Bob joins again");
    let mut heard = 0.0;
    for _ in 0..5 {
        heard = share_now(&ann, BOB_HZ).await;
        if heard > 0.15 {
            break;
        }
    }
    assert!(heard > 0.15, "Ann hears the resumed Bob: {heard}");
    let resumed = rosters_agree(&core, &[&ann, &bob], &mut page, "Bob resumed").await;
    assert_eq!(resumed.iter().filter(|e| e.id == b_id.0).count(), 1, "the same party, once: {resumed:?}");

    // Cut again and left alone: after the idle timeout and the grace time he is gone for all.
    relay.cut();
    until_core(&core, "Bob's cut party expires", |r| r.iter().all(|p| p.id != b_id)).await;
    let last = rosters_agree(&core, &[&ann], &mut page, "Bob expired").await;
    let names: Vec<&str> = last.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["Ann Admin", "Dora Web"]);
    assert!(bob.roster().member(PartyId(a_id.0)).is_some(), "Bob's own roster is frozen at the cut, not corrupted");

    // A controlling login in a page gets mute and remove buttons per party: Ann mutes Dora with
    // a click, and Dora's page turns its microphone off with the roster.
    let mut admin = Browser::open(&core.http_url, "scheme=7&login=1", 1100.0).await;
    admin.send(json!({"fill": "#login-user", "value": "ann"})).await;
    admin.send(json!({"fill": "#login-password", "value": "pw-ann"})).await;
    admin.send(json!({"click": "#login-submit"})).await;
    admin.eval("window.callme.done").await;
    assert_eq!(admin.eval("window.callme.control").await, json!(true));
    let dora = page.eval("window.callme.party").await.as_str().unwrap().to_owned();
    let buttons = admin.send(json!({"text": format!("#roster li[data-party='{dora}']")})).await["value"].as_str().unwrap_or("").to_owned();
    assert!(buttons.contains("Mute") && buttons.contains("Remove"), "an admin sees the buttons: {buttons}");
    assert!(!page.send(json!({"text": "#roster"})).await["value"].as_str().unwrap_or("").contains("Remove"), "a user does not");
    let clicked = admin.send(json!({"click": format!("#roster li[data-party='{dora}'] button")})).await;
    assert_eq!(clicked["ok"], json!(true), "{clicked}");
    until_core(&core, "Dora muted by the click", |r| r.iter().any(|p| p.id.0.to_string() == dora && !p.mic_on)).await;
    let mut followed = json!(true);
    for _ in 0..50 {
        followed = page.eval("window.callme.micOn").await;
        if followed == json!(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(followed, json!(false), "Dora's page follows the roster and disables its microphone");
    let shot = artifact("life-page-admin.png");
    assert_eq!(admin.send(json!({"screenshot": shot.to_string_lossy()})).await["ok"], json!(true));
    admin.close().await;

    page.close().await;
    ann.leave().await;
    drop(bob);
    core.stop().await;
}
