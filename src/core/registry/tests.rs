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
