//! In the call, against the scripted core and the fake media on tokio's paused clock: audio and
//! events are both delivered whatever the application reads, the end of the call reaches
//! `next_frame` at once, a failed join gives the party back, and dropping a call tells the core.

use std::time::Duration;

use callme::media::fake::{FakeMedia, FakeProbe};
use callme::testing::{conf_changed_event, disconnected_event, timer_event, values, Fault, ScriptedCore};
use callme::{
    AudioSource, CallEvent, ClusterId, Connected, MediaReady, Party, PartyId, Render, RosterChange, SchemeId, Session, Stage, Timeouts,
    Transcript,
};
use tokio::time::Instant;

async fn party(core: &ScriptedCore) -> Party {
    let session = Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1").with_reconnect(callme::ReconnectPolicy::off());
    session.load(ClusterId(values::CLUSTER), SchemeId(7), "tester").await.expect("loads")
}

async fn call(core: &ScriptedCore) -> (Connected, Transcript, FakeProbe) {
    let party = party(core).await;
    let transcript = party.transcript();
    let (media, probe) = FakeMedia::new();
    let call = party.join_with(media.hearing(660.0), AudioSource::tone(440.0)).await.expect("connects");
    (call, transcript, probe)
}

fn snapshot(name: &str, transcript: &Transcript) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, transcript.render(Render::Redacted));
    });
}

#[tokio::test(start_paused = true)]
async fn an_application_that_reads_only_audio_sees_the_end_within_100_ms() {
    let core = ScriptedCore::new();
    let (call, transcript, probe) = call(&core).await;
    for _ in 0..25 {
        assert!(call.next_frame().await.is_some(), "audio before the end");
    }
    core.push_event(disconnected_event(values::PARTY));
    let ended_at = Instant::now();
    // Drain whatever was heard, then the end.
    while call.next_frame().await.is_some() {}
    let waited = ended_at.elapsed();
    assert!(waited <= Duration::from_millis(100), "next_frame returned None {waited:?} after the end");
    let why = call.end_reason().expect("the reason is kept");
    assert_eq!(why.stage, Stage::InCall);
    assert!(why.to_string().contains("conf.webrtc.Disconnected"), "{why}");
    assert!(probe.is_closed(), "the media was closed when the call ended");
    assert_eq!(probe.running_tasks(), 0);
    call.leave().await;
    snapshot("in_call_disconnected_while_the_application_reads_only_audio", &transcript);
}

#[tokio::test(start_paused = true)]
async fn events_wait_for_an_application_that_reads_only_audio_and_come_in_order() {
    let core = ScriptedCore::new();
    let (call, transcript, _probe) = call(&core).await;
    core.push_event(conf_changed_event());
    core.push_event(timer_event());
    core.push_event(disconnected_event(values::OTHER_PARTY)); // another party's: not ours
    let heard = call.listen(Duration::from_secs(1)).await.expect("the call goes on");
    assert!(callme::audio::tone_share(&heard, 660.0) > 0.9, "audio flowed meanwhile");
    // conf.changed as the roster's change, timer.time as the clock, in the order they came.
    match call.next_event().await {
        Some(CallEvent::Roster(RosterChange::Joined(m))) => assert_eq!((m.id, m.name.as_str()), (PartyId(values::OTHER_PARTY), "other")),
        other => panic!("expected the other party's arrival, got {other:?}"),
    }
    assert_eq!(call.next_event().await, Some(CallEvent::Clock { unix: 1764000000 }));
    assert_eq!(call.roster().member(PartyId(values::OTHER_PARTY)).map(|m| m.index), Some(1));
    assert!(!call.is_ended());
    call.leave().await;
    snapshot("in_call_events_are_kept_for_the_application", &transcript);
}

#[tokio::test(start_paused = true)]
async fn the_end_is_the_last_event_with_its_reason() {
    let core = ScriptedCore::new();
    let (call, _transcript, _probe) = call(&core).await;
    core.push_event(timer_event());
    core.push_event(disconnected_event(values::PARTY));
    assert!(matches!(call.next_event().await, Some(CallEvent::Clock { .. })));
    match call.next_event().await {
        Some(CallEvent::Ended(e)) => assert!(e.to_string().contains("conf.webrtc.Disconnected"), "{e}"),
        other => panic!("expected the end, got {other:?}"),
    }
    assert_eq!(call.next_event().await, None, "nothing after the end");
    let mut left = 0;
    while call.next_frame().await.is_some() {
        left += 1;
        assert!(left <= 100, "only the frames heard before the end (2 s at most) are left");
    }
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn a_socket_closed_in_the_call_ends_it_and_next_frame_returns_none() {
    // The core closes the socket right after servufrag: the join completes, then the call ends.
    let core = ScriptedCore::new().with(Fault::CloseAfterEvent { on: "CALLME_S2" });
    let (call, transcript, probe) = call(&core).await;
    let started = Instant::now();
    while call.next_frame().await.is_some() {}
    assert!(started.elapsed() <= Duration::from_millis(100), "None {:?} after the start", started.elapsed());
    let why = call.ended().await;
    assert!(why.to_string().contains("the WebSocket closed"), "{why}");
    assert!(probe.is_closed());
    call.leave().await;
    snapshot("in_call_the_socket_closes", &transcript);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_frame_in_the_call_is_an_event_and_the_call_goes_on() {
    let core = ScriptedCore::new();
    let (call, _transcript, _probe) = call(&core).await;
    core.push_event(serde_json::json!({"EVT": {"obj": "conf", "evt": 7}}));
    match call.next_event().await {
        Some(CallEvent::Malformed(w)) => assert_eq!(w.field, "EVT.evt"),
        other => panic!("expected a malformed frame, got {other:?}"),
    }
    let heard = call.listen(Duration::from_millis(500)).await.expect("the call goes on");
    assert!(callme::audio::tone_share(&heard, 660.0) > 0.9);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn a_command_in_the_call_gets_its_answer_while_audio_flows() {
    let core = ScriptedCore::new();
    let (call, transcript, _probe) = call(&core).await;
    let cmd = callme::wire::Command::new("cd", "loadlist").param("ClusterID", 1);
    let answer = call.command(cmd).await.expect("answered");
    // The scripted core does not know loadlist: a negative answer, with its code.
    assert_eq!(answer.refusal(&[0]).map(|r| r.code), Some(103));
    assert!(call.next_frame().await.is_some());
    call.leave().await;
    assert!(transcript.render(Render::Redacted).contains(r#""cmd":"loadlist""#));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_tells_the_core_and_closes_the_socket() {
    let core = ScriptedCore::new();
    let (call, _transcript, probe) = call(&core).await;
    drop(call);
    // The call's task does the rest in the background.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(core.received_cmds().last().map(String::as_str), Some("CALLME_BYE"));
    assert!(probe.is_closed(), "the media was closed");
    assert!(core.is_closed(), "the socket was closed");
}

#[tokio::test(start_paused = true)]
async fn a_join_that_fails_at_a_step_gives_the_party_back_and_the_retry_succeeds() {
    let core = ScriptedCore::new();
    let party = party(&core).await;
    let transcript = party.transcript();
    let (broken, _) = FakeMedia::new();
    let failed = party.join_with(broken.failing("createOffer"), AudioSource::tone(440.0)).await.err().expect("step 8 fails");
    assert_eq!(failed.step(), Some(8));
    assert!(failed.has_party(), "the session is still usable");
    let party = failed.into_party().expect("the party comes back");
    let (media, _) = FakeMedia::new();
    let call = party.join_with(media.hearing(660.0), AudioSource::tone(440.0)).await.expect("the retry connects");
    let heard = call.listen(Duration::from_millis(500)).await.unwrap();
    assert!(callme::audio::tone_share(&heard, 660.0) > 0.9);
    call.leave().await;
    let cmds = core.received_cmds();
    assert_eq!(cmds.iter().filter(|c| *c == "load").count(), 1, "one session, one cd.load: {cmds:?}");
    assert_eq!(cmds.iter().filter(|c| *c == "CALLME_S1").count(), 2, "{cmds:?}");
    snapshot("a_failed_join_is_retried_on_the_same_session", &transcript);
}

#[tokio::test(start_paused = true)]
async fn a_join_whose_socket_closed_gives_no_party_back() {
    let core = ScriptedCore::new().with(Fault::CloseBeforeAnswer { on: "CALLME_S1" });
    let party = party(&core).await;
    let (media, _) = FakeMedia::new();
    let ready = MediaReady::acquire_with(media, AudioSource::tone(440.0), &party.transcript()).await.unwrap();
    let failed = ready.call_me_s1(party).await.err().expect("step 4 fails");
    assert_eq!(failed.step(), Some(4));
    assert!(!failed.has_party());
    let e = failed.into_party().expect_err("the error, not a party");
    assert!(e.to_string().contains("the WebSocket closed"), "{e}");
}
