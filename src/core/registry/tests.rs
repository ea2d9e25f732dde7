//! The registry, command by command, with no socket and no media.

use super::*;
use crate::wire::{self, Event, LoadList, SessionError};

const A: SessionId = SessionId(1);
const B: SessionId = SessionId(2);

fn registry() -> Registry {
    registry_with(|_| {})
}

/// A registry whose closed sessions' parties leave at once (`resume_grace_ms` 0) unless `f`
/// says otherwise, with tokens `token-1`, `token-2`, ...
fn registry_with(f: impl FnOnce(&mut RegistryConfig)) -> Registry {
    let mut c = RegistryConfig { resume_grace_ms: 0, ..RegistryConfig::default() };
    f(&mut c);
    let mut n = 0;
    let mut r = Registry::with_tokens(
        c,
        TokenSource::from_fn(move || {
            n += 1;
            format!("token-{n}")
        }),
    );
    assert!(r.handle_session_opened(A, None).is_empty());
    assert!(r.handle_session_opened(B, None).is_empty());
    r
}

fn cmd(obj: &str, name: &str, seq: u64, params: &[(&str, &str)]) -> Command {
    params.iter().fold(Command { seq, ..Command::new(obj, name) }, |c, (k, v)| c.param(k, v))
}

fn load(r: &mut Registry, s: SessionId, scheme: u64, name: &str) -> Vec<Effect> {
    let scheme = scheme.to_string();
    r.handle_command(s, cmd("cd", "load", 1, &[("ClusterID", "1"), ("SchemeID", &scheme), ("NAME", name)]), 0)
}

fn callme(name: &str, seq: u64, conf: ConfId, party: PartyId) -> Command {
    cmd("conf", name, seq, &[("ClusterID", "1"), ("ID", &conf.0.to_string()), ("PartyID", &party.0.to_string())])
}

fn s2(conf: ConfId, party: PartyId) -> Command {
    let fp = format!("sha-256 {}", ["AB"; 32].join(":"));
    callme("CALLME_S2", 3, conf, party).param("ufrag", "abcd").param("pwd", "abcdefghijklmnopqrstuvwx").param("fingerprint", fp)
}

/// The frames sent to `s`, in order.
fn sent(effects: &[Effect], s: SessionId) -> Vec<Incoming> {
    effects
        .iter()
        .filter_map(|e| if let Effect::Send { session, frame } = e { (*session == s).then(|| frame.clone()) } else { None })
        .collect()
}

fn answer(effects: &[Effect], s: SessionId) -> Answer {
    let answers: Vec<Answer> =
        sent(effects, s).into_iter().filter_map(|f| if let Incoming::Answer(a) = f { Some(a) } else { None }).collect();
    assert_eq!(answers.len(), 1, "one answer to session {s}: {effects:?}");
    answers[0].clone()
}

fn events(effects: &[Effect], s: SessionId) -> Vec<Event> {
    sent(effects, s).into_iter().filter_map(|f| if let Incoming::Event(e) = f { Some(e) } else { None }).collect()
}

fn loaded(effects: &[Effect], s: SessionId) -> LoadAnswer {
    LoadAnswer::from_answer(&answer(effects, s), ClusterId(1)).unwrap()
}

fn refusal(effects: &[Effect], s: SessionId) -> Refusal {
    answer(effects, s).refusal(&[code::OK]).expect("a refusal")
}

fn ufrag() -> ServUfrag {
    ServUfrag {
        ufrag: "CoRe".into(),
        pwd: "corepasswordcorepassword".into(),
        fingerprint: format!("sha-256 {}", ["C0"; 32].join(":")),
        port: 40000,
        addr: Some("127.0.0.1".into()),
        candidates: Vec::new(),
    }
}

/// Loads, S1, S2 and a started media for `s`: the party whose media runs.
fn running(r: &mut Registry, s: SessionId, scheme: u64) -> (ConfId, PartyId) {
    let l = loaded(&load(r, s, scheme, "x"), s).loaded;
    r.handle_command(s, callme("CALLME_S1", 2, l.conf, l.party), 0);
    let e = r.handle_command(s, s2(l.conf, l.party), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!("StartMedia: {e:?}") };
    let (keep, _) = r.handle_media_started(l.conf, l.party, generation, Ok(ufrag()));
    assert!(keep);
    (l.conf, l.party)
}

#[test]
fn a_load_of_a_new_number_starts_a_conference_and_answers_code_0_with_the_roster() {
    let mut r = registry();
    let e = load(&mut r, A, 7, "alice");
    assert_eq!(e[0], Effect::ConferenceStarted { conf: ConfId(1) });
    let l = loaded(&e, A);
    assert_eq!((l.loaded.code, l.loaded.conf, l.loaded.party, l.index), (code::OK, ConfId(1), PartyId(1), 0));
    assert_eq!(l.parties.len(), 1);
    assert_eq!((l.parties[0].name.as_str(), l.parties[0].state), ("alice", PartyData::LOADED));
    assert!(sent(&e, B).is_empty(), "nobody else is in the conference");
}

#[test]
fn a_load_of_a_running_conference_answers_code_1_and_tells_the_others() {
    let mut r = registry();
    load(&mut r, A, 7, "alice");
    let e = load(&mut r, B, 7, "bob");
    assert!(!e.iter().any(|e| matches!(e, Effect::ConferenceStarted { .. })));
    let l = loaded(&e, B);
    assert_eq!((l.loaded.code, l.loaded.party, l.index), (code::LOAD_CONNECTED, PartyId(2), 1));
    assert_eq!(l.parties.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
    let told = events(&e, A);
    assert_eq!(told.len(), 1);
    let changed = ConfChanged::from_event(&told[0]).unwrap();
    assert_eq!(changed.add.iter().map(|p| (p.id, p.name.as_str())).collect::<Vec<_>>(), [(PartyId(2), "bob")]);
    assert!(events(&e, B).is_empty(), "the new party learns the roster from its answer");
}

#[test]
fn a_second_load_by_the_same_session_answers_code_2_with_the_same_party() {
    let mut r = registry();
    load(&mut r, A, 7, "alice");
    let e = load(&mut r, A, 7, "alice");
    let l = loaded(&e, A);
    assert_eq!((l.loaded.code, l.loaded.party), (code::LOAD_ALREADY_CONNECTED, PartyId(1)));
    assert_eq!(r.stats().parties, 1);
}

#[test]
fn a_load_with_a_bad_scheme_or_a_long_name_is_refused_naming_the_param() {
    let mut r = registry_with(|c| c.max_name_len = 8);
    let e = r.handle_command(A, cmd("cd", "load", 4, &[("ClusterID", "1"), ("SchemeID", "0")]), 0);
    let f = refusal(&e, A);
    assert_eq!(f.code, code::BAD_PARAM);
    assert!(f.text.contains("SchemeID"), "{f}");
    let e = load(&mut r, A, 7, "a name of twenty one");
    let f = refusal(&e, A);
    assert_eq!((f.code, f.class.as_str()), (code::BAD_PARAM, "proto"));
    assert!(f.text.contains("param NAME is 20 characters long, at most 8"), "{f}");
    // Characters, not bytes: eight two-byte letters fit.
    assert_eq!(loaded(&load(&mut r, A, 7, "éééééééé"), A).loaded.code, code::OK);
    assert_eq!(refusal(&load(&mut r, B, 7, "a\nb"), B).code, code::BAD_PARAM);
}

#[test]
fn a_session_may_start_only_so_many_conferences() {
    let mut r = registry_with(|c| c.max_conferences_per_session = 2);
    load(&mut r, A, 1, "a");
    load(&mut r, A, 2, "a");
    let f = refusal(&load(&mut r, A, 3, "a"), A);
    assert_eq!((f.code, f.class.as_str()), (code::TOO_MANY_CONFERENCES, "limit"));
    assert!(f.text.contains("already started 2"), "{f}");
    // Joining one another session started is not starting one.
    load(&mut r, B, 9, "b");
    assert_eq!(loaded(&load(&mut r, A, 9, "a"), A).loaded.code, code::LOAD_CONNECTED);
    // When a started conference ends, the session may start another.
    r.handle_session_closed(B, 0);
    let e = r.handle_session_closed(A, 0);
    assert_eq!(e.iter().filter(|e| matches!(e, Effect::ConferenceEnded { .. })).count(), 3);
    r.handle_session_opened(A, None);
    load(&mut r, A, 1, "a");
    load(&mut r, A, 2, "a");
    assert_eq!(refusal(&load(&mut r, A, 3, "a"), A).code, code::TOO_MANY_CONFERENCES);
}

#[test]
fn loadlist_lists_the_running_conferences_of_the_cluster() {
    let mut r = registry();
    load(&mut r, A, 7, "a");
    load(&mut r, B, 7, "b");
    load(&mut r, B, 8, "b");
    let e = r.handle_command(A, cmd("cd", "loadlist", 5, &[("ClusterID", "1")]), 0);
    let list = LoadList::from_answer(&answer(&e, A)).unwrap().list;
    assert_eq!(list.iter().map(|c| (c.scheme, c.parties)).collect::<Vec<_>>(), [(SchemeId(7), 2), (SchemeId(8), 1)]);
    let e = r.handle_command(A, cmd("cd", "loadlist", 6, &[("ClusterID", "2")]), 0);
    assert!(LoadList::from_answer(&answer(&e, A)).unwrap().list.is_empty());
}

#[test]
fn callme_s1_on_the_own_party_answers_and_sends_servdesc() {
    let mut r = registry();
    let l = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    let e = r.handle_command(A, callme("CALLME_S1", 2, l.conf, l.party), 0);
    assert_eq!(answer(&e, A).code, code::OK);
    let ev = events(&e, A);
    assert_eq!(ev[0].name(), ServDesc::EVENT);
    assert_eq!(ev[0].party(), Some(l.party));
    assert_eq!(ServDesc::from_event(&ev[0]).unwrap().serveraddr, "");
}

#[test]
fn callme_s1_with_turn_mints_credentials_for_the_party() {
    let mut r = registry_with(|c| c.turn = Some(TurnConfig::new("turn:127.0.0.1:3478", "north").with_ttl_secs(600)));
    let l = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    let e = r.handle_command(A, callme("CALLME_S1", 2, l.conf, l.party), 1_700_000_000);
    let d = ServDesc::from_event(&events(&e, A)[0]).unwrap();
    assert_eq!(d.username, "1700000600:party1");
    assert_eq!(d.credential, turn::mint("north", "party1", 1_700_000_000, 600).credential);
}

#[test]
fn callme_for_another_sessions_party_is_refused_with_202() {
    let mut r = registry();
    let a = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    load(&mut r, B, 7, "b");
    for name in ["CALLME_S1", "CALLME_S2", "CALLME_BYE"] {
        let f = refusal(&r.handle_command(B, callme(name, 9, a.conf, a.party), 0), B);
        assert_eq!((f.code, f.class.as_str()), (code::NOT_OWN_PARTY, "auth"), "{name}");
        assert!(f.text.contains("param PartyID"), "{f}");
    }
}

#[test]
fn callme_for_an_unknown_conference_or_party_is_refused_with_200_and_201() {
    let mut r = registry();
    let a = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    for name in ["CALLME_S1", "CALLME_S2", "CALLME_BYE"] {
        assert_eq!(refusal(&r.handle_command(A, callme(name, 9, ConfId(99), a.party), 0), A).code, code::NO_CONFERENCE, "{name}");
        assert_eq!(refusal(&r.handle_command(A, callme(name, 9, a.conf, PartyId(99)), 0), A).code, code::NO_PARTY, "{name}");
    }
}

#[test]
fn callme_before_any_load_is_not_authorised() {
    let mut r = registry();
    let f = refusal(&r.handle_command(A, callme("CALLME_S1", 2, ConfId(1), PartyId(1)), 0), A);
    assert_eq!(f.code, code::NOT_AUTHORISED);
}

#[test]
fn callme_s2_before_s1_is_refused_and_after_it_starts_the_media() {
    let mut r = registry();
    let l = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    assert_eq!(refusal(&r.handle_command(A, s2(l.conf, l.party), 0), A).code, code::S2_BEFORE_S1);
    r.handle_command(A, callme("CALLME_S1", 2, l.conf, l.party), 0);
    let bad = s2(l.conf, l.party).param("pwd", "short");
    assert_eq!(refusal(&r.handle_command(A, bad, 0), A).code, code::BAD_ICE_CREDENTIALS);
    let e = r.handle_command(A, s2(l.conf, l.party), 0);
    let [Effect::StartMedia { conf, party, generation, offer }] = e.as_slice() else { panic!("{e:?}") };
    assert_eq!((*conf, *party, offer.ufrag.as_str()), (l.conf, l.party, "abcd"));
    assert!(sent(&e, A).is_empty(), "the answer waits for the media");
    assert_eq!(refusal(&r.handle_command(A, s2(l.conf, l.party), 0), A).code, code::S2_BEFORE_S1, "one S2 per S1");
    let (keep, e) = r.handle_media_started(l.conf, l.party, *generation, Ok(ufrag()));
    assert!(keep);
    assert_eq!(answer(&e, A).code, code::OK);
    let ev = events(&e, A);
    assert_eq!(ServUfrag::from_event(&ev[0]).unwrap(), ufrag());
    assert_eq!(r.stats().parties_with_media, 1);
}

#[test]
fn media_that_fails_to_start_is_refused_with_300_and_s2_may_come_again() {
    let mut r = registry();
    let l = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    r.handle_command(A, callme("CALLME_S1", 2, l.conf, l.party), 0);
    let e = r.handle_command(A, s2(l.conf, l.party), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!() };
    let (keep, e) = r.handle_media_started(l.conf, l.party, generation, Err("no track".into()));
    assert!(!keep);
    let f = refusal(&e, A);
    assert_eq!((f.code, f.class.as_str()), (code::MEDIA_FAILED, "media"));
    assert!(matches!(r.handle_command(A, s2(l.conf, l.party), 0).first(), Some(Effect::StartMedia { .. })));
}

#[test]
fn a_new_s1_during_media_start_makes_the_started_media_stale() {
    let mut r = registry();
    let l = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    r.handle_command(A, callme("CALLME_S1", 2, l.conf, l.party), 0);
    let e = r.handle_command(A, s2(l.conf, l.party), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!() };
    let e = r.handle_command(A, callme("CALLME_S1", 4, l.conf, l.party), 0);
    assert!(e.contains(&Effect::StopMedia { conf: l.conf, party: l.party }));
    let (keep, e) = r.handle_media_started(l.conf, l.party, generation, Ok(ufrag()));
    assert!(!keep, "the shell closes the stale media");
    assert_eq!(refusal(&e, A).code, code::NO_PARTY);
    assert_eq!(r.stats().parties_with_media, 0);
}

#[test]
fn s1_on_running_media_replaces_it() {
    let mut r = registry();
    let (conf, party) = running(&mut r, A, 7);
    let e = r.handle_command(A, callme("CALLME_S1", 5, conf, party), 0);
    assert_eq!(e[0], Effect::StopMedia { conf, party });
    assert_eq!(r.stats().parties_with_media, 0);
}

#[test]
fn bye_stops_the_own_media_and_keeps_the_party() {
    let mut r = registry();
    let (conf, party) = running(&mut r, A, 7);
    let e = r.handle_command(A, callme("CALLME_BYE", 0, conf, party), 0);
    assert_eq!(e[0], Effect::StopMedia { conf, party });
    assert!(sent(&e, A).iter().all(|f| matches!(f, Incoming::Event(_))), "with seq 0 no answer is sent: {e:?}");
    let upd = ConfChanged::from_event(&events(&e, A)[0]).unwrap().upd;
    assert_eq!((upd[0].id, upd[0].state), (party, PartyData::LOADED), "the roster shows the party without audio");
    assert_eq!((r.stats().parties, r.stats().parties_with_media), (1, 0));
    assert_eq!(refusal(&r.handle_command(A, s2(conf, party), 0), A).code, code::S2_BEFORE_S1);
}

#[test]
fn media_that_ends_tells_its_session_once_and_late_reports_are_ignored() {
    let mut r = registry();
    let (conf, party) = running(&mut r, A, 7);
    assert!(r.handle_media_ended(conf, party, 999, "old").is_empty(), "another generation");
    let e = r.handle_media_ended(conf, party, 1, "ICE or DTLS failed");
    assert_eq!(e[0], Effect::StopMedia { conf, party });
    let d = Disconnected::from_event(&events(&e, A)[0]).unwrap();
    assert_eq!((d.at.party, d.reason.as_deref()), (party, Some("ICE or DTLS failed")));
    assert!(r.handle_media_ended(conf, party, 1, "again").is_empty());
}

#[test]
fn a_closed_session_frees_its_parties_and_tells_the_others() {
    let mut r = registry();
    let (conf, a_party) = running(&mut r, A, 7);
    load(&mut r, B, 7, "b");
    let e = r.handle_session_closed(A, 0);
    assert!(e.contains(&Effect::StopMedia { conf, party: a_party }));
    let told = events(&e, B);
    let changed = ConfChanged::from_event(&told[0]).unwrap();
    assert_eq!(changed.del, [PartyGone { id: a_party, index: 0 }]);
    assert_eq!(r.stats(), RegistryStats { sessions: 1, conferences: 1, parties: 1, parties_with_media: 0 });
    let e = r.handle_session_closed(B, 0);
    assert!(e.contains(&Effect::ConferenceEnded { conf }));
    assert_eq!(r.stats(), RegistryStats::default());
    // The number can be loaded again, as a new conference.
    r.handle_session_opened(A, None);
    assert_eq!(load(&mut r, A, 7, "a")[0], Effect::ConferenceStarted { conf: ConfId(2) });
}

#[test]
fn media_started_after_its_session_closed_is_not_kept() {
    let mut r = registry();
    let l = loaded(&load(&mut r, A, 7, "a"), A).loaded;
    r.handle_command(A, callme("CALLME_S1", 2, l.conf, l.party), 0);
    let e = r.handle_command(A, s2(l.conf, l.party), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!() };
    r.handle_session_closed(A, 0);
    let (keep, e) = r.handle_media_started(l.conf, l.party, generation, Ok(ufrag()));
    assert!(!keep);
    assert_eq!(e, vec![Effect::StopMedia { conf: l.conf, party: l.party }]);
}

#[test]
fn sessions_above_the_maximum_are_closed_with_1013() {
    let mut r = registry_with(|c| c.max_sessions = 2);
    let e = r.handle_session_opened(SessionId(3), None);
    let [Effect::Close { session, code, reason }] = e.as_slice() else { panic!("{e:?}") };
    assert_eq!((*session, *code), (SessionId(3), wire::close::TRY_AGAIN_LATER));
    assert!(reason.contains("maximum of 2 sessions"), "{reason}");
    assert_eq!(r.stats().sessions, 2);
    r.handle_session_closed(A, 0);
    assert!(r.handle_session_opened(SessionId(3), None).is_empty());
}

#[test]
fn bad_frames_are_answered_and_too_many_close_the_session_with_1008() {
    let mut r = registry_with(|c| c.max_errors = 2);
    let e = r.handle_frame(A, "not json", 0);
    let [Effect::Send { frame: Incoming::Event(ev), .. }] = e.as_slice() else { panic!("{e:?}") };
    assert_eq!(SessionError::from_event(ev).unwrap().0.code, code::NOT_JSON);
    let e = r.handle_frame(A, r#"{"cmd":"EXPLODE","seq":6,"obj":"conf"}"#, 0);
    assert_eq!(refusal(&e, A).code, code::UNKNOWN_CMD);
    let e = r.handle_frame(A, r#"{"cmd":"load","seq":7,"obj":"kitchen"}"#, 0);
    assert_eq!(refusal(&e, A).code, code::UNKNOWN_OBJ);
    assert!(e.contains(&Effect::Close { session: A, code: wire::close::POLICY, reason: "too many bad frames".into() }));
    assert!(r.handle_frame(A, "more", 0).is_empty(), "a closing session is not served");
    assert!(!r.handle_frame(B, r#"{"cmd":"loadlist","seq":1,"obj":"cd","params":{"ClusterID":"1"}}"#, 0).is_empty(), "another is");
}

#[test]
fn a_refusal_of_a_command_with_seq_0_comes_as_session_error() {
    let mut r = registry();
    let e = r.handle_command(A, callme("CALLME_BYE", 0, ConfId(1), PartyId(1)), 0);
    let ev = events(&e, A);
    assert_eq!(SessionError::from_event(&ev[0]).unwrap().0.code, code::NOT_AUTHORISED);
}

#[test]
fn shutdown_stops_every_media_and_ends_every_conference() {
    let mut r = registry();
    let (conf, party) = running(&mut r, A, 7);
    let e = r.handle_shutdown();
    assert_eq!(e, vec![Effect::StopMedia { conf, party }, Effect::ConferenceEnded { conf }]);
    assert_eq!(r.stats(), RegistryStats::default());
}

/// A subscriber that writes each event as `span{fields}: message fields`, for the log test.
#[derive(Default)]
struct Capture {
    spans: std::sync::Mutex<Vec<String>>,
    stack: std::sync::Mutex<Vec<u64>>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Fields(Vec<String>, String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.1 = format!("{value:?}");
        } else {
            self.0.push(format!("{}={value:?}", field.name()));
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut f = Fields::default();
        span.record(&mut f);
        let mut spans = self.spans.lock().unwrap();
        spans.push(format!("{}{{{}}}", span.metadata().name(), f.0.join(" ")));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let parent = event.parent().map(|id| id.into_u64()).or_else(|| self.stack.lock().unwrap().last().copied());
        let span = parent.map(|id| self.spans.lock().unwrap()[id as usize - 1].clone()).unwrap_or_default();
        let level = event.metadata().level();
        self.lines.lock().unwrap().push(format!("{level} {span}: {} {}", f.1, f.0.join(" ")));
    }
    fn enter(&self, span: &tracing::span::Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _: &tracing::span::Id) {
        self.stack.lock().unwrap().pop();
    }
}

#[test]
fn every_session_party_conference_and_media_change_is_logged_at_info_with_its_ids() {
    let capture = Capture::default();
    let lines = capture.lines.clone();
    tracing::subscriber::with_default(capture, || {
        let mut r = registry();
        let (conf, party) = running(&mut r, A, 7);
        r.handle_media_ended(conf, party, 1, "ICE or DTLS failed");
        r.handle_command(A, callme("CALLME_BYE", 0, conf, party), 0);
        r.handle_session_closed(A, 0);
    });
    let lines = lines.lock().unwrap().clone();
    let text = lines.join("\n");
    for want in [
        "INFO : session opened session=1",
        "INFO : conference started conf=1 cluster=1 scheme=7 session=1",
        "INFO party{conf=1 id=1}: party loaded session=1 index=0",
        "INFO party{conf=1 id=1}: CALLME_S1 accepted generation=1 replaces_media=false",
        "INFO party{conf=1 id=1}: CALLME_S2 accepted: starting media generation=1",
        "INFO party{conf=1 id=1}: media started generation=1",
        "INFO party{conf=1 id=1}: media ended generation=1 reason=ICE or DTLS failed",
        "INFO party{conf=1 id=1}: CALLME_BYE: media stopped",
        "INFO : session closed session=1 parties=1",
        "INFO party{conf=1 id=1}: party left",
        "INFO : conference ended conf=1 cluster=1 scheme=7",
    ] {
        assert!(lines.iter().any(|l| l.trim_end() == want), "missing {want:?} in\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// v2: login, roster, SETMIC, INSTANTMSG, DELPARTY, resume

const C: SessionId = SessionId(3);
const HOME: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));
const ELSEWHERE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

fn account(login: &str, password: &str, control: bool, name: &str) -> AccountEntry {
    AccountEntry { login: login.into(), credential: Credential::Plain(password.into()), control, name: name.into() }
}

/// A registry with accounts alice (admin), bob and carol (users), sessions A, B, C from HOME.
fn with_accounts(f: impl FnOnce(&mut RegistryConfig)) -> Registry {
    let mut r = registry_with(|c| {
        c.accounts = vec![
            account("alice", "pw-alice", true, "Alice Admin"),
            account("bob", "pw-bob", false, "Bob User"),
            account("carol", "pw-carol", false, "Carol User"),
        ];
        f(c);
    });
    for s in [A, B] {
        r.handle_session_closed(s, 0);
        r.handle_session_opened(s, HOME);
    }
    r.handle_session_opened(C, HOME);
    r
}

fn login_query(seq: u64, user: &str, password: &str) -> Command {
    Command { seq, ..Command::login(user, password) }
}

/// Sends the login and carries out the password check as the shell would; returns the delay
/// asked for and what followed the check.
fn log_in(r: &mut Registry, s: SessionId, user: &str, password: &str, now_unix: u64) -> (u64, Vec<Effect>) {
    let e = r.handle_command(s, login_query(1, user, password), now_unix);
    let [Effect::CheckLogin { session, credential, password: given, delay_ms }] = e.as_slice() else { panic!("a password check: {e:?}") };
    assert_eq!(*session, s);
    let ok = credential.as_ref().is_some_and(|c| c.verify(given.expose()));
    (*delay_ms, r.handle_login_checked(s, ok, now_unix))
}

fn login_answer(e: &[Effect], s: SessionId) -> LoginAnswer {
    LoginAnswer::from_answer(&answer(e, s)).unwrap()
}

fn closes(e: &[Effect], s: SessionId) -> Vec<(u16, String)> {
    e.iter()
        .filter_map(
            |e| if let Effect::Close { session, code, reason } = e { (*session == s).then(|| (*code, reason.clone())) } else { None },
        )
        .collect()
}

fn changes(e: &[Effect], s: SessionId) -> Vec<ConfChanged> {
    events(e, s).iter().filter(|e| e.name() == ConfChanged::EVENT).map(|e| ConfChanged::from_event(e).unwrap()).collect()
}

fn at(conf: ConfId, party: PartyId) -> PartyRef {
    PartyRef { cluster: ClusterId(1), conf, party }
}

fn with_seq(c: Command, seq: u64) -> Command {
    Command { seq, ..c }
}

#[test]
fn with_accounts_every_cd_and_conf_command_before_a_login_is_refused_with_208() {
    let mut r = with_accounts(|_| {});
    for c in [
        cmd("cd", "load", 1, &[("ClusterID", "1"), ("SchemeID", "7")]),
        cmd("cd", "loadlist", 2, &[("ClusterID", "1")]),
        callme("CALLME_S1", 3, ConfId(1), PartyId(1)),
        with_seq(Command::set_mic(at(ConfId(1), PartyId(1)), false), 4),
        with_seq(Command::instant_msg(ClusterId(1), ConfId(1), "hi", None), 5),
        with_seq(Command::del_party(at(ConfId(1), PartyId(1))), 6),
    ] {
        let f = refusal(&r.handle_command(A, c.clone(), 0), A);
        assert_eq!((f.code, f.class.as_str()), (code::LOGIN_REQUIRED, class::AUTH), "{c:?}");
        assert!(f.text.contains(&format!("cmd {:?}", c.cmd)) && f.text.contains("q_cplxLogin"), "{f}");
    }
    // An open core needs no login.
    let mut open = registry();
    assert_eq!(loaded(&load(&mut open, A, 7, "a"), A).loaded.code, code::OK);
}

#[test]
fn a_login_answers_retcode_2_for_a_user_and_3_for_an_admin_who_controls_with_the_accounts_name() {
    let mut r = with_accounts(|_| {});
    let (delay, e) = log_in(&mut r, A, "alice", "pw-alice", 0);
    assert_eq!(delay, 0);
    assert_eq!(login_answer(&e, A), LoginAnswer { retcode: retcode::ADMIN, name: "Alice Admin".into() });
    assert!(closes(&e, A).is_empty());
    let (_, e) = log_in(&mut r, B, "bob", "pw-bob", 0);
    assert_eq!(login_answer(&e, B), LoginAnswer { retcode: retcode::USER, name: "Bob User".into() });
    let a = loaded(&load(&mut r, A, 7, "not my name"), A);
    assert!(a.loaded.control, "an admin's load answers bControl 1");
    assert_eq!(a.parties[0].name, "Alice Admin", "the account names the party, not the NAME param");
    let b = loaded(&load(&mut r, B, 7, ""), B);
    assert!(!b.loaded.control, "a user's load answers bControl 0");
    assert_eq!(b.parties.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Alice Admin", "Bob User"]);
}

#[test]
fn a_wrong_password_and_an_unknown_login_get_the_same_answer_retcode_4_then_a_close_with_1008() {
    let mut r = with_accounts(|_| {});
    let (_, wrong) = log_in(&mut r, A, "alice", "pw-bob", 0);
    let (_, unknown) = log_in(&mut r, B, "mallory", "pw-alice", 0);
    for (e, s) in [(&wrong, A), (&unknown, B)] {
        assert_eq!(login_answer(e, s), LoginAnswer { retcode: retcode::LOGIN_ERROR, name: String::new() });
        assert_eq!(closes(e, s), [(close::POLICY, "login error: unknown login or wrong password".to_owned())]);
        // The answer comes before the close.
        assert!(matches!(e[0], Effect::Send { .. }) && matches!(e[1], Effect::Close { .. }), "{e:?}");
    }
    assert_eq!(sent(&wrong, A), sent(&unknown, B), "nothing tells an unknown login from a wrong password");
    assert!(!r.is_open(A) && r.handle_command(A, login_query(2, "alice", "pw-alice"), 0).is_empty(), "nothing more is handled");
}

#[test]
fn the_login_query_names_what_is_wrong_with_it() {
    let mut r = with_accounts(|_| {});
    let q = |name: &str, params: &[(&str, String)]| Command {
        seq: 1,
        query: Some(wire::Query { name: name.into(), params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }),
        ..Command::new("", "query")
    };
    let pw = || ("sPassword", "x".to_owned());
    let cases = [
        (q("q_other", &[("sLogin", "a".into()), pw()]), code::UNKNOWN_QUERY, "query.name: \"q_other\""),
        (q("q_cplxLogin", &[("sLogin", "a".into())]), code::BAD_PARAM, "query.params.sPassword is missing"),
        (q("q_cplxLogin", &[pw()]), code::BAD_PARAM, "query.params.sLogin is missing"),
        (q("q_cplxLogin", &[("sLogin", String::new()), pw()]), code::BAD_PARAM, "query.params.sLogin is empty"),
        (q("q_cplxLogin", &[("sLogin", "a".repeat(257)), pw()]), code::TOO_LONG, "query.params.sLogin is 257 characters long"),
        (q("q_cplxLogin", &[("sLogin", "a".into()), ("sPassword", "p".repeat(10_000))]), code::TOO_LONG, "query.params.sPassword is 10000"),
    ];
    for (c, want_code, want_text) in cases {
        let f = refusal(&r.handle_command(A, c, 0), A);
        assert_eq!(f.code, want_code, "{f}");
        assert!(f.text.starts_with(want_text), "{f}");
        assert!(!f.text.contains("ppppp"), "a password is never echoed: {f}");
    }
    assert!(r.is_open(A), "a malformed login is refused, not a failed login");
    log_in(&mut r, A, "bob", "pw-bob", 0);
    let f = refusal(&r.handle_command(A, login_query(2, "alice", "pw-alice"), 0), A);
    assert_eq!((f.code, f.class.as_str()), (code::ALREADY_LOGGED_IN, class::AUTH), "{f}");
    assert!(f.text.contains("logged in already"), "{f}");
}

#[test]
fn failed_logins_from_one_address_are_delayed_after_three_doubling_up_to_16_s() {
    let mut r = with_accounts(|_| {});
    let mut delays = Vec::new();
    for i in 0..9u64 {
        let s = SessionId(100 + i);
        r.handle_session_opened(s, HOME);
        let (delay, e) = log_in(&mut r, s, "alice", "wrong", 1000 + i);
        assert_eq!(login_answer(&e, s).retcode, retcode::LOGIN_ERROR);
        delays.push(delay);
    }
    assert_eq!(delays, [0, 0, 0, 1000, 2000, 4000, 8000, 16_000, 16_000]);
    // Another address is not slowed down; a right password from the throttled one still is,
    // and works.
    r.handle_session_opened(SessionId(200), ELSEWHERE);
    assert_eq!(log_in(&mut r, SessionId(200), "alice", "wrong", 1010).0, 0);
    r.handle_session_opened(SessionId(201), HOME);
    let (delay, e) = log_in(&mut r, SessionId(201), "alice", "pw-alice", 1010);
    assert_eq!((delay, login_answer(&e, SessionId(201)).retcode), (16_000, retcode::ADMIN));
    // A minute after the last failure the address is no longer slowed down.
    r.handle_session_opened(SessionId(202), HOME);
    assert_eq!(log_in(&mut r, SessionId(202), "alice", "pw-alice", 1008 + 61).0, 0);
}

#[test]
fn an_open_core_answers_a_login_with_retcode_2_and_the_login_as_the_name() {
    let mut r = registry();
    let e = r.handle_command(A, login_query(1, "guest", "anything"), 0);
    assert_eq!(login_answer(&e, A), LoginAnswer { retcode: retcode::USER, name: "guest".into() });
    let l = loaded(&load(&mut r, A, 7, ""), A);
    assert_eq!((l.loaded.control, l.parties[0].name.as_str()), (false, "guest"));
    // A NAME param names the party in an open core.
    r.handle_command(B, login_query(1, "guest2", ""), 0);
    assert_eq!(loaded(&load(&mut r, B, 7, "Bee"), B).parties[1].name, "Bee");
}

#[test]
fn a_password_never_reaches_the_log_or_the_effects_debug() {
    let capture = Capture::default();
    let lines = capture.lines.clone();
    let mut shown = String::new();
    tracing::subscriber::with_default(capture, || {
        let mut r = with_accounts(|_| {});
        let e = r.handle_command(A, login_query(1, "alice", "pw-secret-1"), 0);
        shown = format!("{e:?}");
        r.handle_login_checked(A, false, 0);
        log_in(&mut r, B, "alice", "pw-alice", 0);
        r.handle_command(C, login_query(1, "alice", &"pw-secret-2".repeat(200)), 0);
    });
    let text = lines.lock().unwrap().join("\n");
    assert!(text.contains("login refused") && text.contains("logged in"), "{text}");
    for secret in ["pw-secret", "pw-alice"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
    assert!(!shown.contains("pw-secret") && !shown.contains("pw-alice") && shown.contains("[redacted]"), "{shown}");
}

/// A, B and C logged in as alice (admin), bob and carol, each with a party in conference 7 and
/// B's media running; the effects of the setup are dropped.
fn three_in_a_conference(r: &mut Registry) -> (ConfId, PartyId, PartyId, PartyId) {
    log_in(r, A, "alice", "pw-alice", 0);
    log_in(r, B, "bob", "pw-bob", 0);
    log_in(r, C, "carol", "pw-carol", 0);
    let a = loaded(&load(r, A, 7, ""), A).loaded;
    let b = loaded(&load(r, B, 7, ""), B).loaded;
    let c = loaded(&load(r, C, 7, ""), C).loaded;
    r.handle_command(B, callme("CALLME_S1", 2, b.conf, b.party), 0);
    let e = r.handle_command(B, s2(b.conf, b.party), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!("{e:?}") };
    r.handle_media_started(b.conf, b.party, generation, Ok(ufrag()));
    (a.conf, a.party, b.party, c.party)
}

#[test]
fn every_roster_change_reaches_every_session_its_own_included_in_order() {
    let mut r = with_accounts(|_| {});
    log_in(&mut r, A, "alice", "pw-alice", 0);
    log_in(&mut r, B, "bob", "pw-bob", 0);
    let a = loaded(&load(&mut r, A, 7, ""), A).loaded;
    let e = load(&mut r, B, 7, "");
    let b = loaded(&e, B).loaded;
    assert_eq!(changes(&e, A)[0].add.iter().map(|p| (p.id, p.name.as_str())).collect::<Vec<_>>(), [(b.party, "Bob User")]);
    assert!(changes(&e, B).is_empty(), "the loader has itself in its answer");
    let (conf, party) = (b.conf, b.party);

    // Media up: State 2, to both.
    r.handle_command(B, callme("CALLME_S1", 2, conf, party), 0);
    let e = r.handle_command(B, s2(conf, party), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!() };
    let (_, e) = r.handle_media_started(conf, party, generation, Ok(ufrag()));
    for s in [A, B] {
        let upd = &changes(&e, s)[0].upd;
        assert_eq!((upd[0].id, upd[0].old_index, upd[0].index, upd[0].state), (party, Some(1), 1, PartyData::CONNECTED), "to {s}");
    }
    // Talking, then not: bTalking, to both; a repeated report changes nothing.
    let e = r.handle_talking(conf, party, true);
    assert!(changes(&e, A)[0].upd[0].talking && changes(&e, B)[0].upd[0].talking);
    assert!(r.handle_talking(conf, party, true).is_empty());
    // The mic off: bMicOn 0 and talking 0 in one update.
    let e = r.handle_command(A, with_seq(Command::set_mic(at(conf, party), false), 3), 0);
    for s in [A, B] {
        let p = &changes(&e, s)[0].upd[0];
        assert_eq!((p.id, p.mic_on, p.talking), (party, false, false), "to {s}");
    }
    // Talking reports while muted are not believed.
    assert!(r.handle_talking(conf, party, true).is_empty());
    // Media ends: State 1, to both.
    let e = r.handle_media_ended(conf, party, generation, "ICE failed");
    for s in [A, B] {
        assert_eq!(changes(&e, s)[0].upd[0].state, PartyData::LOADED, "to {s}");
    }
    // A party without media never talks.
    assert!(r.handle_talking(conf, party, true).is_empty());
    // B leaves (after BYE): delParties to A.
    r.handle_command(B, callme("CALLME_BYE", 0, conf, party), 0);
    let e = r.handle_session_closed(B, 0);
    assert_eq!(changes(&e, A)[0].del, [PartyGone { id: party, index: 1 }]);
    assert_eq!(r.stats().parties, 1);
    let _ = a;
}

#[test]
fn setmic_on_the_own_party_or_with_control_mutes_in_the_mixer_and_else_is_refused_naming_party_id() {
    let mut r = with_accounts(|_| {});
    let (conf, a, b, c) = three_in_a_conference(&mut r);
    // Own party.
    let e = r.handle_command(B, with_seq(Command::set_mic(at(conf, b), false), 5), 0);
    assert!(e.contains(&Effect::SetMic { conf, party: b, on: false }));
    assert_eq!(answer(&e, B).code, code::OK);
    // Another party without control.
    let f = refusal(&r.handle_command(C, with_seq(Command::set_mic(at(conf, b), true), 6), 0), C);
    assert_eq!((f.code, f.class.as_str()), (code::NOT_OWN_PARTY, class::AUTH));
    assert!(f.text.starts_with("param PartyID:") && f.text.contains("does not control"), "{f}");
    // With control (alice, an admin).
    let e = r.handle_command(A, with_seq(Command::set_mic(at(conf, b), true), 7), 0);
    assert!(e.contains(&Effect::SetMic { conf, party: b, on: true }));
    assert!(changes(&e, C)[0].upd[0].mic_on);
    let e = r.handle_command(A, with_seq(Command::set_mic(at(conf, c), false), 8), 0);
    assert_eq!(answer(&e, A).code, code::OK);
    // bMicOn must be "0" or "1".
    for (v, text) in [
        (Some("2"), "param bMicOn is \"2\", not \"0\" or \"1\""),
        (Some("yes"), "param bMicOn is \"yes\""),
        (None, "param bMicOn is missing"),
    ] {
        let mut m = with_seq(Command::set_mic(at(conf, a), true), 9);
        match v {
            Some(v) => {
                m.params.insert("bMicOn".into(), v.into());
            }
            None => {
                m.params.remove("bMicOn");
            }
        }
        let f = refusal(&r.handle_command(A, m, 0), A);
        assert_eq!(f.code, code::BAD_PARAM);
        assert!(f.text.starts_with(text), "{f}");
    }
    // Unknown party, unknown conference, a conference the session is not in.
    assert_eq!(refusal(&r.handle_command(A, with_seq(Command::set_mic(at(conf, PartyId(99)), true), 10), 0), A).code, code::NO_PARTY);
    assert_eq!(refusal(&r.handle_command(A, with_seq(Command::set_mic(at(ConfId(99), a), true), 11), 0), A).code, code::NO_CONFERENCE);
    // The mic state survives new media: a muted party's media starts muted in the mixer.
    r.handle_command(C, callme("CALLME_S1", 2, conf, c), 0);
    let e = r.handle_command(C, s2(conf, c), 0);
    let Some(Effect::StartMedia { generation, .. }) = e.first().cloned() else { panic!() };
    let (_, e) = r.handle_media_started(conf, c, generation, Ok(ufrag()));
    assert_eq!(e[0], Effect::SetMic { conf, party: c, on: false }, "before servufrag: {e:?}");
}

#[test]
fn instantmsg_reaches_every_session_with_the_senders_name_and_is_length_limited() {
    let mut r = with_accounts(|_| {});
    let (conf, _, b, _) = three_in_a_conference(&mut r);
    let e = r.handle_command(B, with_seq(Command::instant_msg(ClusterId(1), conf, "hello all", Some("#00ff00")), 4), 1_764_000_000);
    assert_eq!(answer(&e, B).code, code::OK);
    for s in [A, B, C] {
        let m: Vec<InstantMsg> = events(&e, s).iter().map(|e| InstantMsg::from_event(e).unwrap()).collect();
        assert_eq!(
            m,
            [InstantMsg {
                cluster: ClusterId(1),
                conf,
                sender: Some(b),
                username: "Bob User".into(),
                msg: "hello all".into(),
                color: "#00ff00".into(),
                time: 1_764_000_000
            }],
            "to {s}"
        );
    }
    let long = "é".repeat(MAX_MSG_CHARS);
    let e = r.handle_command(B, with_seq(Command::instant_msg(ClusterId(1), conf, &long, None), 5), 0);
    assert_eq!(answer(&e, B).code, code::OK, "1000 characters (2000 bytes) are allowed");
    let cases = [
        (Command::instant_msg(ClusterId(1), conf, "", None), code::BAD_PARAM, "param msg is empty"),
        (Command::instant_msg(ClusterId(1), conf, &"x".repeat(1001), None), code::TOO_LONG, "param msg is 1001 characters long"),
        (Command::instant_msg(ClusterId(1), conf, "x", Some(&"c".repeat(33))), code::TOO_LONG, "param color is 33 characters long"),
        (Command::instant_msg(ClusterId(1), conf, "x", Some("red\n")), code::BAD_PARAM, "param color contains a control character"),
        (
            Command {
                params: Command::instant_msg(ClusterId(1), conf, "", None).params.into_iter().filter(|(k, _)| k != "msg").collect(),
                ..Command::new("conf", "INSTANTMSG")
            },
            code::BAD_PARAM,
            "param msg is missing",
        ),
    ];
    for (c, want, text) in cases {
        let e = r.handle_command(B, with_seq(c, 6), 0);
        let f = refusal(&e, B);
        assert_eq!(f.code, want, "{f}");
        assert!(f.text.starts_with(text), "{f}");
        assert!(events(&e, A).is_empty(), "nothing is broadcast");
    }
    // The sender must hold a party there.
    let f = refusal(&r.handle_command(C, with_seq(Command::instant_msg(ClusterId(1), ConfId(99), "x", None), 7), 0), C);
    assert_eq!(f.code, code::NO_CONFERENCE, "{f}");
}

#[test]
fn delparty_by_a_controller_ends_the_media_tells_the_party_who_removed_it_and_everyone() {
    let mut r = with_accounts(|_| {});
    let (conf, a, b, c) = three_in_a_conference(&mut r);
    // A user may not remove another.
    let f = refusal(&r.handle_command(C, with_seq(Command::del_party(at(conf, b)), 4), 0), C);
    assert_eq!((f.code, f.class.as_str()), (code::NOT_OWN_PARTY, class::AUTH));
    assert!(f.text.starts_with("param PartyID:"), "{f}");
    // The admin removes B.
    let e = r.handle_command(A, with_seq(Command::del_party(at(conf, b)), 5), 0);
    assert!(e.contains(&Effect::StopMedia { conf, party: b }));
    let to_b = events(&e, B);
    let d = Disconnected::from_event(&to_b[0]).unwrap();
    assert_eq!((d.at.party, d.reason.as_deref()), (b, Some("removed by Alice Admin")));
    assert_eq!(ConfChanged::from_event(&to_b[1]).unwrap().del, [PartyGone { id: b, index: 1 }]);
    for s in [A, C] {
        assert_eq!(changes(&e, s)[0].del, [PartyGone { id: b, index: 1 }], "to {s}");
    }
    assert_eq!(answer(&e, A).code, code::OK);
    assert_eq!(r.stats().parties, 2);
    // B's session may load again, as a new party.
    assert_ne!(loaded(&load(&mut r, B, 7, ""), B).loaded.party, b);
    // Removing oneself: the own party leaves; once everyone has, the conference ends.
    let e = r.handle_command(C, with_seq(Command::del_party(at(conf, c)), 6), 0);
    assert_eq!(answer(&e, C).code, code::OK);
    let to_c = sent(&e, C);
    assert!(matches!(to_c[0], Incoming::Answer(_)), "the own removal is answered before Disconnected ends the call: {to_c:?}");
    assert_eq!(Disconnected::from_event(&events(&e, C)[0]).unwrap().reason.as_deref(), Some("left the conference (DELPARTY)"));
    let e = r.handle_command(A, with_seq(Command::del_party(at(conf, a)), 7), 0);
    assert_eq!(answer(&e, A).code, code::OK);
    let b2 = r.stats();
    assert_eq!(b2.parties, 1);
    r.handle_command(B, callme("CALLME_BYE", 0, conf, PartyId(4)), 0);
    let e = r.handle_session_closed(B, 0);
    assert!(e.contains(&Effect::ConferenceEnded { conf }), "{e:?}");
}

fn resumable() -> Registry {
    let mut r = registry_with(|c| c.resume_grace_ms = 15_000);
    r.handle_session_opened(C, None);
    r
}

fn load_with_token(r: &mut Registry, s: SessionId, token: &str) -> Vec<Effect> {
    r.handle_command(s, cmd("cd", "load", 1, &[("ClusterID", "1"), ("SchemeID", "7"), ("NAME", "again"), ("ResumeToken", token)]), 0)
}

#[test]
fn a_party_whose_session_closes_without_bye_is_kept_out_of_the_mix_and_resumed_by_its_token() {
    let mut r = resumable();
    let (conf, party) = running(&mut r, A, 7);
    load(&mut r, B, 7, "b");
    let token = "token-1";
    let e = r.handle_session_closed(A, 1000);
    assert!(e.contains(&Effect::StopMedia { conf, party }));
    let upd = &changes(&e, B)[0].upd[0];
    assert_eq!((upd.id, upd.state), (party, PartyData::LOADED), "the others see it without audio, not gone");
    assert_eq!(r.stats().parties, 2);
    assert!(r.handle_tick(15_999).is_empty(), "kept within the grace time");
    // Back, in a new session: the same party, code 1, a new token.
    let e = load_with_token(&mut r, C, token);
    let l = loaded(&e, C);
    assert_eq!((l.loaded.party, l.loaded.code), (party, code::LOAD_CONNECTED));
    assert_eq!(l.parties.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["x", "b"], "the same party, its name kept");
    let new_token = l.resume_token.unwrap();
    assert_ne!(new_token, token);
    assert!(events(&e, B).is_empty(), "nothing changed for the others");
    // It is C's now: CALLME_S1 works, and it is not removed when the grace would have ended.
    assert_eq!(answer(&r.handle_command(C, callme("CALLME_S1", 2, conf, party), 0), C).code, code::OK);
    assert!(r.handle_tick(20_000).is_empty());
    assert_eq!(r.stats().parties, 2);
    // The old token is spent.
    r.handle_session_opened(SessionId(4), None);
    assert_ne!(loaded(&load_with_token(&mut r, SessionId(4), token), SessionId(4)).loaded.party, party);
}

#[test]
fn a_kept_party_leaves_when_the_grace_time_is_over_and_its_token_then_loads_a_new_party() {
    let mut r = resumable();
    let (conf, party) = running(&mut r, A, 7);
    load(&mut r, B, 7, "b");
    r.handle_session_closed(A, 1000);
    let e = r.handle_tick(16_000);
    assert_eq!(changes(&e, B)[0].del, [PartyGone { id: party, index: 0 }]);
    assert_eq!(r.stats().parties, 1);
    let l = loaded(&load_with_token(&mut r, C, "token-1"), C).loaded;
    assert_ne!(l.party, party, "an expired token loads a new party");
    assert_eq!(l.code, code::LOAD_CONNECTED);
    r.handle_session_opened(SessionId(5), None);
    let l = loaded(&load_with_token(&mut r, SessionId(5), "no-such-token"), SessionId(5));
    assert_eq!(l.loaded.code, code::LOAD_CONNECTED, "an unknown token loads a new party, no error");
    assert_eq!(l.resume_token.as_deref(), Some("token-4"));
    // A kept party alone in its conference ends it when it leaves.
    let mut r = resumable();
    let (conf2, _) = running(&mut r, A, 8);
    r.handle_session_closed(A, 0);
    assert!(r.handle_tick(15_000).contains(&Effect::ConferenceEnded { conf: conf2 }));
    let _ = conf;
}

#[test]
fn a_resume_takes_the_party_over_from_a_session_still_open_and_closes_that_one_with_1008() {
    let mut r = resumable();
    let (conf, party) = running(&mut r, A, 7);
    load(&mut r, B, 7, "b");
    // A's connection is cut, the core has not noticed: C comes with A's token.
    let e = load_with_token(&mut r, C, "token-1");
    assert_eq!(loaded(&e, C).loaded.party, party);
    assert!(e.contains(&Effect::StopMedia { conf, party }), "the old media stops: {e:?}");
    assert_eq!(closes(&e, A), [(close::POLICY, format!("party {party} was resumed by another session"))]);
    assert_eq!(changes(&e, B)[0].upd[0].state, PartyData::LOADED, "the others see the media gone");
    assert!(!r.is_open(A));
    // When A's socket finally closes, the party stays C's.
    let e = r.handle_session_closed(A, 0);
    assert!(changes(&e, B).is_empty() && r.handle_tick(100_000).is_empty(), "{e:?}");
    assert_eq!(answer(&r.handle_command(C, callme("CALLME_S1", 2, conf, party), 0), C).code, code::OK);
}

#[test]
fn a_party_that_said_bye_leaves_at_once_when_its_session_closes_and_tokens_are_random_and_long() {
    let mut r = resumable();
    let (conf, party) = running(&mut r, A, 7);
    load(&mut r, B, 7, "b");
    r.handle_command(A, callme("CALLME_BYE", 0, conf, party), 0);
    let e = r.handle_session_closed(A, 0);
    assert_eq!(changes(&e, B)[0].del, [PartyGone { id: party, index: 0 }]);
    let (t1, t2) = ((TokenSource::random().0)(), (TokenSource::random().0)());
    assert!(t1.len() >= 16 && t1 != t2 && t1.chars().all(|c| c.is_ascii_alphanumeric()), "{t1} {t2}");
    // An oversized token is refused naming it.
    let f = refusal(&load_with_token(&mut r, C, &"t".repeat(129)), C);
    assert_eq!(f.code, code::TOO_LONG);
    assert!(f.text.starts_with("param ResumeToken is 129 characters long"), "{f}");
}
