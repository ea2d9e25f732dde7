//! Life in the conference, against the scripted core and the fake media on tokio's paused
//! clock: the login, the roster and its events, acting (mic, chat, remove), coming back by
//! `ResumeToken`. Each test stores one redacted snapshot in `snapshots/`; none holds a password.

use std::time::Duration;

use callme::media::fake::{FakeMedia, FakeProbe};
use callme::testing::{changed, disconnected_with_reason, values, Fault, ScriptedCore};
use callme::wire::{PartyData, PartyGone};
use callme::{
    AudioSource, CallEvent, Cause, ClusterId, Connected, LoggedIn, Party, PartyId, ReconnectPolicy, Render, Resumed, Role, RosterChange, SchemeId, Session,
    Stage, Timeouts, Transcript,
};

const PASSWORD: &str = "pa55-w0rd-never-shown";
const TOKEN: &str = "rEsUmE-0123456789abcdef";
const BOB: u64 = values::OTHER_PARTY;
const CAROL: u64 = 6;

fn party_data(id: u64, index: u64, name: &str) -> PartyData {
    PartyData::new(PartyId(id), index, name)
}

/// A core with two accounts (an admin and a user), Bob and Carol in the conference, and a token.
fn core() -> ScriptedCore {
    ScriptedCore::new()
        .with_account("alice", PASSWORD, 3, "Alice Example")
        .with_account("uma", PASSWORD, 2, "Uma User")
        .with_roster(vec![party_data(BOB, 0, "Bob"), party_data(CAROL, 1, "Carol")])
        .with_resume_token(TOKEN)
}

fn session(core: &ScriptedCore) -> Session {
    let reopen = core.clone();
    // The call does not reconnect by itself here: these tests resume by hand (tests/reconnect.rs
    // has the automatic paths).
    Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1").with_reconnect(ReconnectPolicy::off()).with_reopen(move || {
        let t = reopen.transport();
        Box::pin(async move { Ok(Session::over(t, Timeouts::default()).with_host("127.0.0.1")) })
    })
}

async fn logged_in(core: &ScriptedCore, user: &str) -> LoggedIn {
    session(core).login(user, PASSWORD).await.expect("logs in")
}

async fn loaded(core: &ScriptedCore, user: &str) -> Party {
    logged_in(core, user).await.load(ClusterId(values::CLUSTER), SchemeId(7), "").await.expect("loads")
}

async fn join(party: Party) -> (Connected, FakeProbe) {
    let (media, probe) = FakeMedia::new();
    let call = party.join_with(media.hearing(660.0), AudioSource::tone(440.0)).await.expect("connects");
    (call, probe)
}

/// The far side's tone is heard and one's own is not.
async fn assert_hears_the_other_side(call: &Connected) {
    let heard = call.listen(Duration::from_millis(500)).await.expect("the call goes on");
    assert!(callme::audio::tone_share(&heard, 660.0) > 0.9, "the far side's 660 Hz is heard");
    assert!(callme::audio::tone_share(&heard, 440.0) < 0.01, "one's own 440 Hz is not heard");
}

/// The next `n` events, each awaited for at most 5 s.
async fn events(call: &Connected, n: usize) -> Vec<CallEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(5), call.next_event()).await {
            Ok(Some(e)) => out.push(e),
            other => panic!("expected {n} events, got {out:?} then {other:?}"),
        }
    }
    out
}

fn line(e: &CallEvent) -> String {
    match e {
        CallEvent::Roster(c) => format!("roster: {c}"),
        CallEvent::Chat(m) => {
            format!("chat from {:?} {:?}: {:?} (color {:?}, time {})", m.from.map(|p| p.0), m.username, m.msg, m.color, m.time)
        }
        CallEvent::Clock { unix } => format!("clock {unix}"),
        CallEvent::Ended(e) => format!("ended: {e}"),
        other => format!("{other:?}"),
    }
}

/// Stores the snapshot, after checking that no password and no token is in it.
fn snapshot(name: &str, text: String) {
    assert!(!text.contains(PASSWORD), "the password is in the snapshot:\n{text}");
    assert!(!text.contains(TOKEN), "the resume token is in the snapshot:\n{text}");
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, text);
    });
}

fn transcript_text(t: &Transcript) -> String {
    let full = t.render(Render::Full);
    assert!(!full.contains(PASSWORD), "the password is in the full transcript");
    assert!(!t.to_json().to_string().contains(PASSWORD), "the password is in the transcript's JSON");
    t.render(Render::Redacted)
}

#[tokio::test(start_paused = true)]
async fn an_accepted_login_gives_the_role_and_name_and_a_controlling_load() {
    let core = core();
    let logged = logged_in(&core, "alice").await;
    let account = logged.account().clone();
    assert_eq!((account.role, account.name.as_str(), account.login.as_str()), (Role::Admin, "Alice Example", "alice"));
    assert!(account.role.is_controlling());
    let debug = format!("{logged:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    let party = logged.load(ClusterId(values::CLUSTER), SchemeId(7), "").await.expect("loads");
    assert!(party.loaded().control, "an admin controls the conference (bControl 1)");
    let me = party.roster().member(party.id()).cloned().expect("one's own party is in the roster");
    assert_eq!(me.name, "Alice Example", "the party is named after the account when no name is given");
    let resumer = format!("{:?}", party.resumer());
    assert!(!resumer.contains(PASSWORD) && !resumer.contains(TOKEN), "{resumer}");
    // The password went over the wire, once.
    let sent = core.received();
    assert_eq!(sent[0]["query"]["params"]["sPassword"], PASSWORD);
    let text = format!(
        "case: login as alice (admin), then cd.load without a name\naccount: {:?} {:?}\ncontrol: {}\n\n{}",
        account.role,
        account.name,
        party.loaded().control,
        transcript_text(&party.transcript())
    );
    snapshot("conference_login_accepted", text);
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_names_retcode_4_and_the_close_with_1008() {
    let core = core();
    let s = session(&core);
    let transcript = s.transcript();
    let e = s.login("alice", "wrong-password").await.expect_err("refused");
    assert_eq!(e.stage, Stage::Login);
    match &e.cause {
        Cause::LoginFailed { retcode, meaning, closed } => {
            assert_eq!(*retcode, 4);
            assert_eq!(meaning, "login error: unknown login or wrong password");
            assert!(closed.as_deref().is_some_and(|c| c.contains("1008")), "the close was seen: {closed:?}");
        }
        other => panic!("expected LoginFailed, got {other:?}"),
    }
    let said = e.to_string();
    assert!(said.contains("RETCODE 4") && said.contains("wrong password") && said.contains("close code 1008"), "{said}");
    assert!(core.is_closed());
    assert!(!transcript.render(Render::Full).contains("wrong-password"));
    let text = format!("case: login as alice with a wrong password\nresult: {e}\n\n{}", transcript.render(Render::Redacted));
    assert!(!text.contains("wrong-password"));
    snapshot("conference_login_refused", text);
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_on_a_core_that_keeps_the_socket_open_says_no_close_and_the_client_closes() {
    let core = core().keeping_open_after_failed_login();
    let s = session(&core);
    let transcript = s.transcript();
    let e = s.login("nobody", PASSWORD).await.expect_err("refused");
    assert!(matches!(&e.cause, Cause::LoginFailed { retcode: 4, closed: None, .. }), "{e:#?}");
    assert!(!e.to_string().contains("closed"), "{e}");
    assert!(core.is_closed(), "the client closed the socket itself");
    let text = format!("case: login as an unknown user; the core does not close\nresult: {e}\n\n{}", transcript_text(&transcript));
    snapshot("conference_login_refused_socket_left_open", text);
}

#[tokio::test(start_paused = true)]
async fn loading_without_the_login_a_core_requires_is_refused_with_208() {
    let core = core();
    let s = session(&core);
    let transcript = s.transcript();
    let e = s.load(ClusterId(values::CLUSTER), SchemeId(7), "sneaky").await.expect_err("refused");
    let r = e.refusal().expect("a refusal");
    assert_eq!((r.code, r.class.as_str()), (208, "auth"));
    let text = format!("case: cd.load on a core with accounts, without a login\nresult: {e}\n\n{}", transcript.render(Render::Redacted));
    snapshot("conference_load_before_login_refused", text);
}

#[tokio::test(start_paused = true)]
async fn the_roster_follows_the_load_answer_and_every_change_in_order() {
    // Dave joins while the join's steps run: told first when the call starts.
    let dave = party_data(8, 3, "Dave");
    let core = core().after_load(vec![changed(vec![dave], vec![], vec![])]);
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let mut text = format!("case: the roster from the load answer, then add/upd/del\n\nafter cd.load:\n{}", party.roster());
    let (call, _probe) = join(party).await;
    let mut step = |what: &str, evs: &[CallEvent], call: &Connected| {
        text.push_str(&format!("\n{what}:\n"));
        for e in evs {
            text.push_str(&format!("  {}\n", line(e)));
        }
        text.push_str(&call.roster().to_string());
    };
    let evs = events(&call, 1).await;
    assert!(matches!(&evs[0], CallEvent::Roster(RosterChange::Joined(m)) if m.name == "Dave"), "{evs:?}");
    step("read during the steps (own addParties replaces the same entry: no change; Dave joins)", &evs, &call);
    assert_hears_the_other_side(&call).await;

    let mut eve = party_data(9, 4, "Eve");
    eve.state = 2;
    core.push_event(changed(vec![eve], vec![], vec![]));
    let evs = events(&call, 1).await;
    step("addParties Eve at 4", &evs, &call);

    let mut bob = party_data(BOB, 5, "Bob");
    bob.old_index = Some(0);
    bob.talking = true;
    core.push_event(changed(vec![], vec![bob], vec![]));
    let evs = events(&call, 2).await;
    assert!(matches!(&evs[0], CallEvent::Roster(RosterChange::Moved { from: 0, member }) if member.index == 5), "{evs:?}");
    assert!(matches!(&evs[1], CallEvent::Roster(RosterChange::TalkingStarted(m)) if m.id == PartyId(BOB)), "{evs:?}");
    step("updParties Bob OldIndex 0 -> Index 5, talking", &evs, &call);

    let mut carol = party_data(CAROL, 1, "Carol");
    carol.old_index = Some(1);
    carol.mic_on = false;
    carol.state = 2;
    core.push_event(changed(vec![], vec![carol], vec![]));
    let evs = events(&call, 2).await;
    step("updParties Carol: audio connected, mic off", &evs, &call);

    let before = call.roster();
    core.push_event(changed(vec![], vec![], vec![PartyGone { id: PartyId(99), index: 7 }]));
    let evs = events(&call, 1).await;
    assert!(matches!(&evs[0], CallEvent::Roster(RosterChange::Anomaly(_))), "{evs:?}");
    assert_eq!(call.roster(), before, "an unknown delParties changes nothing");
    step("delParties for unknown party 99", &evs, &call);

    core.push_event(changed(vec![], vec![], vec![PartyGone { id: PartyId(CAROL), index: 1 }]));
    let evs = events(&call, 1).await;
    assert!(matches!(&evs[0], CallEvent::Roster(RosterChange::Left(m)) if m.name == "Carol"), "{evs:?}");
    step("delParties Carol", &evs, &call);

    let mut me = party_data(values::PARTY, 2, "Uma User");
    me.old_index = Some(2);
    me.talking = true;
    core.push_event(changed(vec![], vec![me], vec![]));
    let evs = events(&call, 1).await;
    step("updParties oneself talking", &evs, &call);

    let roster = call.roster();
    let got: Vec<(u64, u64, bool, bool)> = roster.members().iter().map(|m| (m.id.0, m.index, m.mic_on, m.talking)).collect();
    assert_eq!(got, [(values::PARTY, 2, true, true), (8, 3, true, false), (9, 4, true, false), (BOB, 5, true, true)]);
    call.leave().await;
    text.push_str(&format!("\n{}", transcript_text(&transcript)));
    snapshot("conference_roster_add_upd_del", text);
}

#[tokio::test(start_paused = true)]
async fn muting_oneself_stops_the_sending_and_the_roster_shows_it() {
    let core = core();
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let (call, probe) = join(party).await;
    let mut text = "case: SETMIC off then on for oneself\n".to_owned();
    call.set_mic(false).await.expect("mute accepted");
    assert!(call.is_muted() && probe.is_muted(), "the media stopped sending");
    let evs = events(&call, 1).await;
    assert!(matches!(&evs[0], CallEvent::Roster(RosterChange::MicChanged(m)) if m.id == PartyId(values::PARTY) && !m.mic_on), "{evs:?}");
    text.push_str(&format!("muted: {}\n", line(&evs[0])));
    assert_hears_the_other_side(&call).await;
    call.set_mic(true).await.expect("unmute accepted");
    assert!(!call.is_muted() && !probe.is_muted(), "the media sends again");
    let evs = events(&call, 1).await;
    assert!(matches!(&evs[0], CallEvent::Roster(RosterChange::MicChanged(m)) if m.mic_on), "{evs:?}");
    text.push_str(&format!("unmuted: {}\n", line(&evs[0])));
    assert!(probe.calls().iter().any(|c| c == "setSending off") && probe.calls().iter().any(|c| c == "setSending on"));
    call.leave().await;
    text.push_str(&format!("\n{}", transcript_text(&transcript)));
    snapshot("conference_mic_accepted", text);
}

#[tokio::test(start_paused = true)]
async fn a_refused_mute_is_an_error_with_the_cores_code_class_and_text() {
    let core = core().with(Fault::Refuse { on: "SETMIC", code: 206, class: "auth", text: "SETMIC is not allowed in this conference" });
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let (call, probe) = join(party).await;
    let e = call.set_mic(false).await.expect_err("refused");
    assert_eq!(e.stage, Stage::InCall);
    let r = e.refusal().expect("the core's refusal");
    assert_eq!((r.code, r.class.as_str(), r.text.as_str()), (206, "auth", "SETMIC is not allowed in this conference"));
    assert!(probe.is_muted(), "what a person muted is not sent, even when the core refuses");
    assert!(call.roster().member(PartyId(values::PARTY)).is_some_and(|m| m.mic_on), "the core's roster still has the mic on");
    call.leave().await;
    snapshot("conference_mic_refused", format!("case: SETMIC refused\nresult: {e}\n\n{}", transcript_text(&transcript)));
}

#[tokio::test(start_paused = true)]
async fn a_chat_line_comes_back_to_everyone_as_a_chat_event() {
    let core = core();
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let (call, _probe) = join(party).await;
    call.say_in("hello, conference", Some("#3366ff")).await.expect("accepted");
    let evs = events(&call, 1).await;
    match &evs[0] {
        CallEvent::Chat(m) => {
            assert_eq!(m.from, Some(PartyId(values::PARTY)));
            assert_eq!(
                (m.username.as_str(), m.msg.as_str(), m.color.as_str(), m.time),
                ("Uma User", "hello, conference", "#3366ff", values::TIME)
            );
        }
        other => panic!("expected a chat line, got {other:?}"),
    }
    let sent_before = core.received().len();
    let empty = call.say("").await.expect_err("an empty line is not sent");
    assert!(matches!(&empty.cause, Cause::Invalid { reason } if reason.starts_with("msg:")), "{empty}");
    let long = call.say(&"x".repeat(1001)).await.expect_err("too long");
    assert!(long.to_string().contains("msg: 1001 characters"), "{long}");
    assert_eq!(core.received().len(), sent_before, "nothing was sent for them");
    call.leave().await;
    let text = format!(
        "case: INSTANTMSG accepted; an empty and an overlong line refused before sending\nchat: {}\nempty: {empty}\nlong: {long}\n\n{}",
        line(&evs[0]),
        transcript_text(&transcript)
    );
    snapshot("conference_chat_accepted", text);
}

#[tokio::test(start_paused = true)]
async fn a_refused_chat_line_is_an_error_with_the_cores_code_class_and_text() {
    let core = core().with(Fault::Refuse { on: "INSTANTMSG", code: 107, class: "proto", text: "param msg: too long" });
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let (call, _probe) = join(party).await;
    let e = call.say("hello").await.expect_err("refused");
    let r = e.refusal().expect("the core's refusal");
    assert_eq!((r.code, r.class.as_str(), r.text.as_str()), (107, "proto", "param msg: too long"));
    call.leave().await;
    snapshot("conference_chat_refused", format!("case: INSTANTMSG refused\nresult: {e}\n\n{}", transcript_text(&transcript)));
}

#[tokio::test(start_paused = true)]
async fn a_controller_mutes_and_removes_another_party_and_it_leaves_the_roster() {
    let core = core();
    let party = loaded(&core, "alice").await;
    let transcript = party.transcript();
    let (call, _probe) = join(party).await;
    call.set_mic_of(PartyId(BOB), false).await.expect("an admin mutes Bob");
    let muted = events(&call, 1).await;
    assert!(matches!(&muted[0], CallEvent::Roster(RosterChange::MicChanged(m)) if m.id == PartyId(BOB) && !m.mic_on), "{muted:?}");
    call.remove(PartyId(BOB)).await.expect("an admin removes Bob");
    let left = events(&call, 1).await;
    assert!(matches!(&left[0], CallEvent::Roster(RosterChange::Left(m)) if m.name == "Bob"), "{left:?}");
    assert!(call.roster().member(PartyId(BOB)).is_none());
    assert!(!call.is_ended(), "removing another party does not end one's own call");
    call.leave().await;
    let text = format!(
        "case: an admin mutes and removes Bob\n{}\n{}\n\nroster:\n{}\n{}",
        line(&muted[0]),
        line(&left[0]),
        core.roster().iter().map(|p| format!("{} {}", p.id.0, p.name)).collect::<Vec<_>>().join("\n"),
        transcript_text(&transcript)
    );
    snapshot("conference_remove_accepted", text);
}

#[tokio::test(start_paused = true)]
async fn a_user_may_not_mute_or_remove_another_party() {
    let core = core();
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let (call, _probe) = join(party).await;
    let mute = call.set_mic_of(PartyId(BOB), false).await.expect_err("refused");
    let remove = call.remove(PartyId(BOB)).await.expect_err("refused");
    for e in [&mute, &remove] {
        let r = e.refusal().expect("the core's refusal");
        assert_eq!((r.code, r.class.as_str()), (202, "auth"));
        assert!(r.text.contains("PartyID 4"), "{r}");
    }
    assert!(call.roster().member(PartyId(BOB)).is_some_and(|m| m.mic_on), "Bob is still there, mic on");
    call.leave().await;
    let text = format!("case: a user mutes and removes Bob\nmute: {mute}\nremove: {remove}\n\n{}", transcript_text(&transcript));
    snapshot("conference_remove_refused", text);
}

#[tokio::test(start_paused = true)]
async fn removal_of_oneself_by_a_controller_ends_the_call_with_the_cores_reason() {
    let core = core();
    let party = loaded(&core, "uma").await;
    let transcript = party.transcript();
    let (call, probe) = join(party).await;
    assert_hears_the_other_side(&call).await;
    core.push_event(disconnected_with_reason(values::PARTY, "removed by Alice Example"));
    let evs = events(&call, 1).await;
    let why = match &evs[0] {
        CallEvent::Ended(e) => e.clone(),
        other => panic!("expected the end, got {other:?}"),
    };
    assert!(matches!(&why.cause, Cause::Disconnected { reason } if reason.contains("removed by Alice Example")), "{why}");
    assert_eq!(call.end_reason(), Some(why.clone()));
    assert!(probe.is_closed(), "the media is closed");
    call.leave().await;
    snapshot(
        "conference_removed_by_a_controller",
        format!("case: a controller removes this party\nresult: {why}\n\n{}", transcript_text(&transcript)),
    );
}

#[tokio::test(start_paused = true)]
async fn a_cut_socket_is_resumed_by_token_as_the_same_party_and_joined_again() {
    let core = core();
    let party = loaded(&core, "uma").await;
    assert!(party.resume_token().is_some_and(|t| t.as_str() == TOKEN));
    let first = party.transcript();
    let (call, _probe) = join(party).await;
    let resume = call.resumer();
    core.cut();
    let why = call.ended().await;
    assert!(why.to_string().contains("the WebSocket closed"), "{why}");
    let party = match resume.connect().await.expect("resumes") {
        Resumed::Same(p) => p,
        Resumed::New { party, .. } => panic!("expected the same party, got {:?}", party.id()),
    };
    assert_eq!(party.id(), PartyId(values::PARTY));
    assert_eq!(party.loaded().code, 1, "connected: the conference was running");
    assert_eq!(party.account().map(|a| a.role), Some(Role::User), "logged in again");
    let second = party.transcript();
    let (again, _probe) = join(party).await;
    assert_hears_the_other_side(&again).await;
    let cmds = core.received_cmds();
    assert_eq!(cmds.iter().filter(|c| *c == "query").count(), 2, "the login was sent again: {cmds:?}");
    let load = core.received().into_iter().rfind(|v| v["cmd"] == "load").expect("a second load");
    assert_eq!(load["params"]["ResumeToken"], TOKEN);
    assert_eq!(load["params"]["NAME"], "Uma User", "the same name");
    again.leave().await;
    let text = format!(
        "case: the WebSocket is cut in the call; resume by token, join again\nended: {why}\n\nfirst session:\n{}\nsecond session:\n{}",
        transcript_text(&first),
        transcript_text(&second)
    );
    snapshot("conference_resume_same_party", text);
}

#[tokio::test(start_paused = true)]
async fn a_resume_after_the_grace_time_gets_a_new_party_and_says_so() {
    let core = core();
    let party = loaded(&core, "uma").await;
    let resume = party.resumer();
    drop(party);
    core.forget_resume();
    match resume.connect().await.expect("loads") {
        Resumed::New { party, lost } => {
            assert_eq!((lost, party.id()), (PartyId(values::PARTY), PartyId(values::NEW_PARTY)));
            assert!(party.roster().member(PartyId(values::PARTY)).is_none(), "the old party is gone");
            snapshot(
                "conference_resume_new_party",
                format!(
                    "case: resume after the grace time\nresult: a new party {} (lost {})\n\n{}",
                    party.id().0,
                    lost.0,
                    transcript_text(&party.transcript())
                ),
            );
        }
        Resumed::Same(_) => panic!("the core no longer knows the token"),
    }
}
