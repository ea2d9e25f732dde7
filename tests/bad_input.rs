//! The bad-input battery over a real WebSocket and a real UDP socket: every malformed or
//! unauthorised frame gets its own code with a text naming the field, garbage datagrams are
//! dropped, and a call in progress hears its audio throughout.

use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::wire::code;
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn start_core() -> CoreHandle {
    let config = CoreConfig::loopback_ephemeral();
    core::start(config).await.expect("the core starts")
}

async fn join(core: &CoreHandle, name: &str, hz: f32) -> Connected {
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), name).await.unwrap();
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz)).await.unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a raw frame and returns the first answer or error event that comes back.
async fn exchange(ws: &mut Ws, frame: &str) -> Value {
    ws.send(Message::text(frame.to_owned())).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a reply within 5 s").expect("open").unwrap();
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v.get("ANSW").is_some() || v.pointer("/EVT/evt") == Some(&json!("error")) {
            return v;
        }
    }
}

fn code_and_text(v: &Value) -> (i64, String) {
    let r = v.pointer("/ANSW/result").or_else(|| v.pointer("/EVT/result")).expect("a result");
    (r["code"].as_i64().unwrap(), r["text"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_frame_gets_its_own_code_naming_the_field_and_the_call_goes_on() {
    let core = start_core().await;
    let a = join(&core, "a", 440.0).await;
    let _b = join(&core, "b", 660.0).await;
    a.listen(Duration::from_millis(500)).await.unwrap();
    let conf = 1; // the first running conference
    let b_party = 2;

    let (mut ws, _) = tokio_tungstenite::connect_async(core.ws_url.as_str()).await.unwrap();
    // Before cd.load the session holds no party: CALLME is not authorised.
    let early = exchange(
        &mut ws,
        &format!(r#"{{"cmd":"CALLME_S1","seq":1,"obj":"conf","params":{{"ClusterID":"1","ID":"{conf}","PartyID":"{b_party}"}}}}"#),
    )
    .await;
    let (c, text) = code_and_text(&early);
    assert_eq!(c, code::NOT_AUTHORISED, "{early}");
    assert!(text.contains("cd.load first"), "{text}");
    let load = exchange(&mut ws, r#"{"cmd":"load","seq":1,"obj":"cd","params":{"ClusterID":"1","SchemeID":"7","NAME":"prober"}}"#).await;
    assert_eq!(code_and_text(&load).0, code::LOAD_CONNECTED);
    let me = load.pointer("/ANSW/result/SVPartyID").unwrap().as_u64().unwrap();
    let fp = format!("sha-256 {}", ["AB"; 32].join(":"));
    let s2 = |extra: &str| {
        format!(
            r#"{{"cmd":"CALLME_S2","seq":20,"obj":"conf","params":{{"ClusterID":"1","ID":"{conf}","PartyID":"{me}","ufrag":"abcd","pwd":"abcdefghijklmnopqrstuvwx","fingerprint":"{fp}"{extra}}}}}"#
        )
    };
    let oversize = format!(r#"{{"cmd":"load","seq":9,"obj":"cd","params":{{"NAME":"{}"}}}}"#, "x".repeat(20_000));
    let battery: Vec<(&str, String, i64, &str)> = vec![
        ("not JSON", "this is not json".into(), code::NOT_JSON, "not valid JSON"),
        ("a JSON array", "[1,2,3]".into(), code::NOT_JSON, "not a JSON object"),
        ("no seq", r#"{"cmd":"load","obj":"cd"}"#.into(), code::BAD_FRAME, "seq: missing"),
        ("seq of the wrong type", r#"{"cmd":"load","seq":"x","obj":"cd"}"#.into(), code::BAD_FRAME, "seq: not a non-negative integer"),
        ("no cmd", r#"{"seq":3,"obj":"cd"}"#.into(), code::BAD_FRAME, "cmd: missing"),
        ("cmd of the wrong type", r#"{"cmd":5,"seq":3,"obj":"cd"}"#.into(), code::BAD_FRAME, "cmd: not a string"),
        ("no obj", r#"{"cmd":"load","seq":3}"#.into(), code::BAD_FRAME, "obj: missing"),
        ("params not an object", r#"{"cmd":"load","seq":3,"obj":"cd","params":[1]}"#.into(), code::BAD_FRAME, "params: not an object"),
        (
            "a param of the wrong type",
            r#"{"cmd":"load","seq":4,"obj":"cd","params":{"ClusterID":[1],"SchemeID":"7"}}"#.into(),
            code::BAD_PARAM,
            "param ClusterID",
        ),
        (
            "a missing param",
            r#"{"cmd":"load","seq":5,"obj":"cd","params":{"ClusterID":"1"}}"#.into(),
            code::BAD_PARAM,
            "param SchemeID is missing",
        ),
        (
            "a non-numeric param",
            r#"{"cmd":"load","seq":5,"obj":"cd","params":{"ClusterID":"1","SchemeID":"seven"}}"#.into(),
            code::BAD_PARAM,
            "param SchemeID is \"seven\"",
        ),
        ("an unknown cmd", r#"{"cmd":"EXPLODE","seq":6,"obj":"conf"}"#.into(), code::UNKNOWN_CMD, "cmd: \"EXPLODE\""),
        ("an unknown obj", r#"{"cmd":"load","seq":7,"obj":"kitchen"}"#.into(), code::UNKNOWN_OBJ, "obj: \"kitchen\""),
        ("an oversize frame", oversize, code::TOO_LARGE, "larger than the limit"),
        (
            "no such conference",
            r#"{"cmd":"CALLME_S1","seq":10,"obj":"conf","params":{"ClusterID":"1","ID":"999","PartyID":"1"}}"#.into(),
            code::NO_CONFERENCE,
            "param ID",
        ),
        (
            "no such party",
            format!(r#"{{"cmd":"CALLME_S1","seq":11,"obj":"conf","params":{{"ClusterID":"1","ID":"{conf}","PartyID":"999"}}}}"#),
            code::NO_PARTY,
            "param PartyID",
        ),
        (
            "someone else's PartyID",
            format!(r#"{{"cmd":"CALLME_S1","seq":12,"obj":"conf","params":{{"ClusterID":"1","ID":"{conf}","PartyID":"{b_party}"}}}}"#),
            code::NOT_OWN_PARTY,
            "not this session's own",
        ),
        (
            "someone else's PartyID in a hang-up",
            format!(r#"{{"cmd":"CALLME_BYE","seq":13,"obj":"conf","params":{{"ClusterID":"1","ID":"{conf}","PartyID":"{b_party}"}}}}"#),
            code::NOT_OWN_PARTY,
            "not this session's own",
        ),
        ("CALLME_S2 before CALLME_S1", s2(""), code::S2_BEFORE_S1, "CALLME_S1 first"),
    ];
    for (what, frame, want, names) in &battery {
        let reply = exchange(&mut ws, frame).await;
        let (got, text) = code_and_text(&reply);
        assert_eq!(got, *want, "{what}: {reply}");
        assert!(text.contains(names), "{what}: the text {text:?} should name {names:?}");
    }

    // With CALLME_S1 done, the S2 param checks.
    let s1 = exchange(
        &mut ws,
        &format!(r#"{{"cmd":"CALLME_S1","seq":19,"obj":"conf","params":{{"ClusterID":"1","ID":"{conf}","PartyID":"{me}"}}}}"#),
    )
    .await;
    assert_eq!(code_and_text(&s1).0, 0);
    let s2_battery: Vec<(&str, String, i64, &str)> = vec![
        ("a malformed fingerprint", s2("").replace(&fp, "sha-256 AB:CD"), code::BAD_FINGERPRINT, "param fingerprint"),
        ("a sha-1 fingerprint", s2("").replace("sha-256", "sha-1"), code::BAD_FINGERPRINT, "param fingerprint"),
        ("a short pwd", s2("").replace("abcdefghijklmnopqrstuvwx", "short"), code::BAD_ICE_CREDENTIALS, "param pwd"),
        ("a ufrag with a space", s2("").replace("\"abcd\"", "\"ab cd\""), code::BAD_ICE_CREDENTIALS, "param ufrag"),
        ("a payload type out of range", s2(r#","opus_pt":"300""#), code::BAD_PARAM, "param opus_pt"),
        ("an fmtp with a line break", s2(r#","opus_fmtp":"a\r\na=evil""#), code::BAD_PARAM, "param opus_fmtp"),
    ];
    for (what, frame, want, names) in &s2_battery {
        let reply = exchange(&mut ws, frame).await;
        let (got, text) = code_and_text(&reply);
        assert_eq!(got, *want, "{what}: {reply}");
        assert!(text.contains(names), "{what}: the text {text:?} should name {names:?}");
    }

    // Garbage datagrams at the media port, 2000 a second for a second and a half while the call
    // goes on: random bytes, a truncated STUN header, an RTP-looking packet with no session.
    let media_addr = core.media_addr;
    let flood = tokio::spawn(async move {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut x: u32 = 12345;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..3000u32 {
            if i % 20 == 0 {
                tick.tick().await;
            }
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = (x % 1200) as usize + 1;
            let datagram: Vec<u8> = match i % 3 {
                0 => (0..len).map(|k| (x.wrapping_add(k as u32) >> 7) as u8).collect(),
                1 => vec![0x00, 0x01, 0x00, 0x50, 0x21, 0x12, 0xa4, 0x42],
                _ => [vec![0x80, 111, 0, 1], vec![0; 40]].concat(),
            };
            udp.send_to(&datagram, media_addr).await.unwrap();
        }
    });

    // Nothing else was affected: the call hears the other party throughout, the session is
    // still served.
    let heard = a.listen(Duration::from_millis(1500)).await.expect("the call goes on");
    flood.await.unwrap();
    let share = tone_share(&heard, 660.0);
    let quiet_frames = heard.chunks(960).filter(|f| callme::audio::mean_power(f) < 1e-4).count();
    eprintln!("flood: 660 Hz share {share:.3}, {} samples, {quiet_frames} quiet frames", heard.len());
    assert!(share > 0.8, "a still hears b: share {share:.3}, {quiet_frames} quiet 20 ms frames of {}", heard.len() / 960);
    assert!(heard.len() >= 48_000 * 14 / 10, "no audio was lost: {} samples in 1.5 s", heard.len());
    let list = exchange(&mut ws, r#"{"cmd":"loadlist","seq":30,"obj":"cd","params":{"ClusterID":"1"}}"#).await;
    assert_eq!(code_and_text(&list).0, 0);
    assert_eq!(core.stats().parties_with_media, 2);
    a.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_keeps_sending_garbage_is_closed_with_1008() {
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.max_errors = 5;
    });
    let core = core::start(config).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(core.ws_url.as_str()).await.unwrap();
    for _ in 0..10 {
        if ws.send(Message::text("garbage")).await.is_err() {
            break;
        }
    }
    let mut close = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Close(f) = m {
            close = f;
            break;
        }
    }
    let f = close.expect("a close frame");
    assert_eq!(u16::from(f.code), 1008);
    assert!(f.reason.contains("too many bad frames"));
    // Another session is served as before.
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(3), "fine").await;
    assert!(party.is_ok());
    core.stop().await;
}

// ---------------------------------------------------------------------------------------------
// v2: login, SETMIC, INSTANTMSG, DELPARTY against a core with accounts

/// Reads frames until one passes `want` (bounded); the frames on the way are kept in `seen`.
async fn until(ws: &mut Ws, seen: &mut Vec<Value>, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1000 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap_or_else(|_| panic!("{what}: nothing within 5 s"));
        let m = m.unwrap_or_else(|| panic!("{what}: the socket closed")).unwrap_or_else(|e| panic!("{what}: {e}"));
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if want(&v) {
            return v;
        }
        seen.push(v);
    }
    panic!("{what}: not among 1000 frames");
}

fn is_event(v: &Value, evt: &str) -> bool {
    v.pointer("/EVT/evt") == Some(&json!(evt))
}

fn login_frame(seq: u64, user: &str, password: &str) -> String {
    json!({"cmd": "query", "seq": seq, "query": {"name": "q_cplxLogin", "params": {"sLogin": user, "sPassword": password}}}).to_string()
}

fn conf_frame(cmd: &str, seq: u64, params: Value) -> String {
    json!({"cmd": cmd, "seq": seq, "obj": "conf", "params": params}).to_string()
}

fn retcode_of(v: &Value) -> String {
    v.pointer("/ANSW/records/0/0").and_then(Value::as_str).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_login_and_v2_command_gets_its_own_code_naming_the_field_and_the_sessions_go_on() {
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.accounts = vec![
            core::Account::with_password("alice", "pw-alice", core::Role::Admin, "Alice Admin"),
            core::Account::with_hash("bob", &core::hash_password("pw-bob").unwrap(), core::Role::User, "Bob User"),
        ];
    });
    let core = core::start(config).await.unwrap();
    let (mut bob, _) = tokio_tungstenite::connect_async(core.ws_url.as_str()).await.unwrap();
    let load = r#"{"cmd":"load","seq":2,"obj":"cd","params":{"ClusterID":"1","SchemeID":"7","NAME":"ignored"}}"#;

    // Before a login: refused, class auth.
    let v = exchange(&mut bob, load).await;
    assert_eq!(code_and_text(&v).0, code::LOGIN_REQUIRED, "{v}");
    assert_eq!(v.pointer("/ANSW/result/class"), Some(&json!("auth")));
    assert!(code_and_text(&v).1.contains("q_cplxLogin"), "{v}");

    let huge = "p".repeat(10 * 1024);
    let query = |q: Value| json!({"cmd": "query", "seq": 1, "query": q}).to_string();
    let battery: Vec<(&str, String, i64, &str)> = vec![
        ("a 10 kB password", login_frame(1, "bob", &huge), code::TOO_LONG, "query.params.sPassword is 10240 characters long"),
        ("a long login", login_frame(1, &"b".repeat(300), "x"), code::TOO_LONG, "query.params.sLogin is 300 characters long"),
        (
            "no sPassword",
            query(json!({"name": "q_cplxLogin", "params": {"sLogin": "bob"}})),
            code::BAD_PARAM,
            "query.params.sPassword is missing",
        ),
        (
            "no sLogin",
            query(json!({"name": "q_cplxLogin", "params": {"sPassword": "x"}})),
            code::BAD_PARAM,
            "query.params.sLogin is missing",
        ),
        (
            "sLogin of the wrong type",
            query(json!({"name": "q_cplxLogin", "params": {"sLogin": {}, "sPassword": "x"}})),
            code::BAD_PARAM,
            "query.params.sLogin: not a string or number",
        ),
        ("an unknown query", query(json!({"name": "q_dropTables", "params": {}})), code::UNKNOWN_QUERY, "query.name: \"q_dropTables\""),
        ("query of the wrong type", query(json!("q_cplxLogin")), code::BAD_FRAME, "query: not an object"),
        ("no query", json!({"cmd": "query", "seq": 1}).to_string(), code::BAD_FRAME, "query: missing"),
    ];
    for (what, frame, want, text) in &battery {
        let v = exchange(&mut bob, frame).await;
        let (c, t) = code_and_text(&v);
        assert_eq!(c, *want, "{what}: {v}");
        assert!(t.contains(text), "{what}: {t:?} does not say {text:?}");
        assert!(!v.to_string().contains("ppppp"), "{what}: the password is echoed");
    }
    // The session still logs in (a malformed login is no failed login).
    let v = exchange(&mut bob, &login_frame(3, "bob", "pw-bob")).await;
    assert_eq!((retcode_of(&v).as_str(), v.pointer("/ANSW/records/0/1")), ("2", Some(&json!("Bob User"))), "{v}");
    let v = exchange(&mut bob, &login_frame(4, "bob", "pw-bob")).await;
    assert_eq!(code_and_text(&v).0, code::ALREADY_LOGGED_IN, "{v}");
    let v = exchange(&mut bob, load).await;
    assert_eq!(v.pointer("/ANSW/result/bControl"), Some(&json!(0)));
    let conf = v.pointer("/ANSW/result/confdata/ID").unwrap().as_u64().unwrap();
    let bob_party = v.pointer("/ANSW/result/SVPartyID").unwrap().as_u64().unwrap();
    assert!(v.pointer("/ANSW/result/ResumeToken").and_then(Value::as_str).is_some_and(|t| t.len() >= 16), "{v}");
    assert_eq!(v.pointer("/ANSW/result/parties/0/NAME"), Some(&json!("Bob User")), "the account names the party");

    let (mut alice, _) = tokio_tungstenite::connect_async(core.ws_url.as_str()).await.unwrap();
    let v = exchange(&mut alice, &login_frame(1, "alice", "pw-alice")).await;
    assert_eq!(retcode_of(&v), "3");
    let v = exchange(&mut alice, load).await;
    assert_eq!(v.pointer("/ANSW/result/bControl"), Some(&json!(1)));
    let alice_party = v.pointer("/ANSW/result/SVPartyID").unwrap().as_u64().unwrap();

    let p = |party: u64, more: Value| {
        let mut m = json!({"ClusterID": "1", "ID": conf.to_string(), "PartyID": party.to_string()});
        m.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        m
    };
    let msg = |more: Value| {
        let mut m = json!({"ClusterID": "1", "ID": conf.to_string()});
        m.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        m
    };
    let battery: Vec<(&str, String, i64, &str)> = vec![
        (
            "SETMIC on another's party",
            conf_frame("SETMIC", 5, p(alice_party, json!({"bMicOn": "0"}))),
            code::NOT_OWN_PARTY,
            "param PartyID: party",
        ),
        ("SETMIC without bMicOn", conf_frame("SETMIC", 5, p(bob_party, json!({}))), code::BAD_PARAM, "param bMicOn is missing"),
        ("SETMIC with bMicOn 2", conf_frame("SETMIC", 5, p(bob_party, json!({"bMicOn": "2"}))), code::BAD_PARAM, "param bMicOn is \"2\""),
        (
            "SETMIC with bMicOn of the wrong type",
            conf_frame("SETMIC", 5, p(bob_party, json!({"bMicOn": [1]}))),
            code::BAD_PARAM,
            "param bMicOn: not a string or number",
        ),
        ("SETMIC without PartyID", conf_frame("SETMIC", 5, msg(json!({"bMicOn": "1"}))), code::BAD_PARAM, "param PartyID is missing"),
        ("SETMIC on no party", conf_frame("SETMIC", 5, p(999, json!({"bMicOn": "1"}))), code::NO_PARTY, "param PartyID: no party 999"),
        ("INSTANTMSG without msg", conf_frame("INSTANTMSG", 6, msg(json!({}))), code::BAD_PARAM, "param msg is missing"),
        ("INSTANTMSG empty", conf_frame("INSTANTMSG", 6, msg(json!({"msg": ""}))), code::BAD_PARAM, "param msg is empty"),
        (
            "INSTANTMSG oversized",
            conf_frame("INSTANTMSG", 6, msg(json!({"msg": "m".repeat(1001)}))),
            code::TOO_LONG,
            "param msg is 1001 characters long, at most 1000",
        ),
        (
            "INSTANTMSG of the wrong type",
            conf_frame("INSTANTMSG", 6, msg(json!({"msg": {"text": "hi"}}))),
            code::BAD_PARAM,
            "param msg: not a string or number",
        ),
        (
            "INSTANTMSG with a long color",
            conf_frame("INSTANTMSG", 6, msg(json!({"msg": "hi", "color": "c".repeat(40)}))),
            code::TOO_LONG,
            "param color is 40 characters long",
        ),
        (
            "INSTANTMSG without ID",
            conf_frame("INSTANTMSG", 6, json!({"ClusterID": "1", "msg": "hi"})),
            code::BAD_PARAM,
            "param ID is missing",
        ),
        ("DELPARTY on another's party", conf_frame("DELPARTY", 7, p(alice_party, json!({}))), code::NOT_OWN_PARTY, "param PartyID: party"),
        ("DELPARTY without PartyID", conf_frame("DELPARTY", 7, msg(json!({}))), code::BAD_PARAM, "param PartyID is missing"),
        (
            "DELPARTY in another conference",
            conf_frame("DELPARTY", 7, json!({"ClusterID": "1", "ID": "99", "PartyID": "1"})),
            code::NO_CONFERENCE,
            "param ID: no running conference 99",
        ),
    ];
    for (what, frame, want, text) in &battery {
        let v = exchange(&mut bob, frame).await;
        let (c, t) = code_and_text(&v);
        assert_eq!(c, *want, "{what}: {v}");
        assert!(t.contains(text), "{what}: {t:?} does not say {text:?}");
    }

    // Bob's session goes on: a chat line reaches both, with Bob's name.
    bob.send(Message::text(conf_frame("INSTANTMSG", 8, msg(json!({"msg": "hello", "color": "#0f0"}))))).await.unwrap();
    let mut seen = Vec::new();
    let m = until(&mut alice, &mut seen, "alice hears the chat line", |v| is_event(v, "instantmsg")).await;
    assert_eq!((m.pointer("/EVT/result/username"), m.pointer("/EVT/result/msg")), (Some(&json!("Bob User")), Some(&json!("hello"))));
    assert_eq!(m.pointer("/EVT/result/SenderID"), Some(&json!(bob_party)));
    until(&mut bob, &mut seen, "bob hears his own chat line", |v| is_event(v, "instantmsg")).await;
    until(&mut bob, &mut seen, "bob's answer", |v| v.pointer("/ANSW/seq") == Some(&json!(8))).await;

    // The admin mutes Bob: both rosters are told.
    alice.send(Message::text(conf_frame("SETMIC", 9, p(bob_party, json!({"bMicOn": "0"}))))).await.unwrap();
    for ws in [&mut alice, &mut bob] {
        let v =
            until(ws, &mut seen, "updParties with bMicOn 0", |v| is_event(v, "changed") && v.pointer("/EVT/result/updParties").is_some())
                .await;
        assert_eq!(v.pointer("/EVT/result/updParties/0/PARTY_ID"), Some(&json!(bob_party)));
        assert_eq!(v.pointer("/EVT/result/updParties/0/bMicOn"), Some(&json!(0)));
    }
    // The admin removes Bob: Bob is told why, then that he is gone.
    alice.send(Message::text(conf_frame("DELPARTY", 10, p(bob_party, json!({}))))).await.unwrap();
    let v = until(&mut bob, &mut seen, "Disconnected", |v| is_event(v, "webrtc")).await;
    assert_eq!(v.pointer("/EVT/evttype"), Some(&json!("Disconnected")));
    assert!(v.to_string().contains("removed by Alice Admin"), "{v}");
    let v = until(&mut bob, &mut seen, "delParties", |v| is_event(v, "changed")).await;
    assert_eq!(v.pointer("/EVT/result/delParties/0/ID"), Some(&json!(bob_party)));
    // Bob's session still works.
    let v = exchange(&mut bob, r#"{"cmd":"loadlist","seq":11,"obj":"cd","params":{"ClusterID":"1"}}"#).await;
    assert_eq!(code_and_text(&v).0, code::OK);

    // A wrong password: RETCODE 4, then the socket is closed with 1008.
    let (mut eve, _) = tokio_tungstenite::connect_async(core.ws_url.as_str()).await.unwrap();
    let v = exchange(&mut eve, &login_frame(1, "alice", "guess")).await;
    assert_eq!(retcode_of(&v), "4", "{v}");
    let mut close = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), eve.next()).await {
        if let Message::Close(f) = m {
            close = f;
            break;
        }
    }
    let f = close.expect("a close frame after the failed login");
    assert_eq!(u16::from(f.code), 1008);
    assert!(f.reason.contains("login error"), "{f:?}");
    core.stop().await;
}
