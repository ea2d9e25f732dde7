//! The call brings itself back, against the scripted core and the fake media on tokio's paused
//! clock: each way a call is lost (the WebSocket cut, the core restarted, the PeerConnection
//! failed, the media silent, `conf.webrtc.Disconnected`), each way it must not come back (a
//! removal, a refused login), and every attempt failing. Each test stores one snapshot in
//! `snapshots/`: the events the application saw and the transcript, reconnection included.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callme::media::fake::{FakeMedia, FakeProbe};
use callme::testing::{disconnected_with_reason, removed_event, values, ScriptedCore};
use callme::wire::PartyData;
use callme::{
    AudioSource, CallEvent, Cause, ClusterId, Connected, Error, Party, PartyId, ReconnectCause, ReconnectPolicy, Render, SchemeId, Session,
    Stage, Timeouts,
};

const PASSWORD: &str = "pa55-w0rd-never-shown";
const TOKEN: &str = "rEsUmE-0123456789abcdef";

fn core() -> ScriptedCore {
    ScriptedCore::new()
        .with_account("uma", PASSWORD, 2, "Uma User")
        .with_roster(vec![PartyData::new(PartyId(values::OTHER_PARTY), 0, "Bob")])
        .with_resume_token(TOKEN)
}

fn session(core: &ScriptedCore, policy: ReconnectPolicy) -> Session {
    let reopen = core.clone();
    Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1").with_reconnect(policy).with_reopen(move || {
        let t = reopen.transport();
        Box::pin(async move { Ok(Session::over(t, Timeouts::default()).with_host("127.0.0.1")) })
    })
}

async fn loaded(session: Session) -> Party {
    session.login("uma", PASSWORD).await.expect("logs in").load(ClusterId(values::CLUSTER), SchemeId(7), "").await.expect("loads")
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

/// Events until `last` matches (stats events passed over), each awaited for at most 60 s of
/// the paused clock.
async fn events_until(call: &Connected, last: impl Fn(&CallEvent) -> bool) -> Vec<CallEvent> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), call.next_event()).await {
            Ok(Some(CallEvent::Stats(_))) => continue,
            Ok(Some(e)) => {
                let done = last(&e);
                out.push(e);
                if done {
                    return out;
                }
            }
            other => panic!("the awaited event did not come: {out:?} then {other:?}"),
        }
    }
}

fn is_back(e: &CallEvent) -> bool {
    matches!(e, CallEvent::Reconnected { .. })
}

fn is_end(e: &CallEvent) -> bool {
    matches!(e, CallEvent::Ended(_))
}

fn line(e: &CallEvent) -> String {
    match e {
        CallEvent::Reconnecting { cause, attempt } => format!("reconnecting, attempt {attempt}: {cause}"),
        CallEvent::Reconnected { attempts, party, .. } => format!("reconnected after {attempts} attempt(s) as party {}", party.0),
        CallEvent::Roster(c) => format!("roster: {c}"),
        CallEvent::Ended(e) => format!("ended: {e}"),
        other => format!("{other:?}"),
    }
}

fn snapshot(name: &str, case: &str, events: &[CallEvent], call: &Connected) {
    let lines: Vec<String> = events.iter().map(line).collect();
    let text = format!("case: {case}\n\nevents:\n{}\n\ntranscript:\n{}", lines.join("\n"), call.transcript().render(Render::Redacted));
    assert!(!text.contains(PASSWORD), "the password is in the snapshot:\n{text}");
    assert!(!text.contains(TOKEN), "the resume token is in the snapshot:\n{text}");
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, text);
    });
}

#[tokio::test(start_paused = true)]
async fn a_cut_websocket_is_resumed_by_token_and_the_call_goes_on() {
    let core = core();
    let (call, _probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    let before = call.party_id();
    core.cut();
    let events = events_until(&call, is_back).await;
    assert!(matches!(&events[0], CallEvent::Reconnecting { cause: ReconnectCause::SocketLost { .. }, attempt: 1 }), "{events:?}");
    assert_eq!(call.party_id(), before, "the same party");
    assert_hears_the_other_side(&call).await;
    let load = core.received().into_iter().rfind(|v| v["cmd"] == "load").expect("a second load");
    assert_eq!(load["params"]["ResumeToken"], TOKEN);
    assert_eq!(core.received_cmds().iter().filter(|c| *c == "CALLME_S1").count(), 2);
    assert!(call.stats().reconnects == 1 && call.stats().outages.len() == 1, "{:?}", call.stats());
    snapshot("reconnect_socket_cut", "the WebSocket is cut in the call", &events, &call);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn a_core_that_no_longer_knows_the_party_loads_a_new_one() {
    let core = core();
    let (call, _probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    core.forget_resume();
    core.cut();
    let events = events_until(&call, is_back).await;
    assert_eq!(call.party_id(), PartyId(values::NEW_PARTY), "a fresh load: a new party");
    assert!(matches!(events.last(), Some(CallEvent::Reconnected { party, .. }) if *party == PartyId(values::NEW_PARTY)));
    assert_hears_the_other_side(&call).await;
    assert_eq!(call.loaded().party, PartyId(values::NEW_PARTY), "the accessors follow");
    snapshot("reconnect_core_restarted", "the core restarted: the token is unknown, a new party is loaded", &events, &call);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn failed_media_gets_a_new_callme_s1_on_the_same_session() {
    let core = core();
    let (call, probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    probe.fail_media("ICE failed");
    let events = events_until(&call, is_back).await;
    assert!(matches!(&events[0], CallEvent::Reconnecting { cause: ReconnectCause::MediaFailed { .. }, .. }), "{events:?}");
    assert_eq!(core.received_cmds().iter().filter(|c| *c == "load").count(), 1, "no new session");
    assert_eq!(core.received_cmds().iter().filter(|c| *c == "CALLME_S1").count(), 2);
    assert!(probe.calls().contains(&"restart".to_owned()), "the PeerConnection was replaced: {:?}", probe.calls());
    assert!(!probe.is_closed(), "the media layer itself stays open");
    assert_hears_the_other_side(&call).await;
    snapshot("reconnect_media_failed", "ICE fails in the call", &events, &call);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn silent_media_for_longer_than_the_bound_is_reconnected() {
    let core = core();
    let policy = ReconnectPolicy::default().with_media_silence(Duration::from_secs(2));
    let (call, probe) = join(loaded(session(&core, policy)).await).await;
    probe.set_silent(true);
    let first = events_until(&call, |e| matches!(e, CallEvent::Reconnecting { .. })).await;
    let Some(CallEvent::Reconnecting { cause: ReconnectCause::MediaSilent { after }, .. }) = first.last() else { panic!("{first:?}") };
    assert!(*after >= Duration::from_secs(2), "{after:?}");
    probe.set_silent(false);
    let mut events = first.clone();
    events.extend(events_until(&call, is_back).await);
    let CallEvent::Reconnected { outage, .. } = events.last().unwrap() else { unreachable!() };
    assert!(*outage >= Duration::from_secs(2), "the outage counts from the last packet: {outage:?}");
    assert_hears_the_other_side(&call).await;
    snapshot("reconnect_media_silent", "no media from the core for 2 s", &events, &call);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn a_transient_disconnected_gets_a_new_callme_s1() {
    let core = core();
    let (call, _probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    core.push_event(disconnected_with_reason(values::PARTY, "no media from the party for 10000 ms"));
    let events = events_until(&call, is_back).await;
    assert!(matches!(&events[0], CallEvent::Reconnecting { cause: ReconnectCause::Disconnected { .. }, .. }), "{events:?}");
    assert_hears_the_other_side(&call).await;
    snapshot("reconnect_disconnected", "the core ends the media after its media timeout", &events, &call);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn a_removal_is_final() {
    let core = core();
    let (call, probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    core.push_event(removed_event(values::PARTY, "removed by Ann Admin"));
    let events = events_until(&call, is_end).await;
    assert!(!events.iter().any(|e| matches!(e, CallEvent::Reconnecting { .. })), "{events:?}");
    assert!(call.ended().await.to_string().contains("removed by Ann Admin"));
    assert!(probe.is_closed());
    assert_eq!(core.received_cmds().iter().filter(|c| *c == "CALLME_S1").count(), 1, "no new attempt");
    snapshot("reconnect_removed", "a controller removes the party: not retried", &events, &call);
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_on_resume_is_final() {
    let core = core();
    let (call, _probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    core.refuse_logins();
    core.cut();
    let events = events_until(&call, is_end).await;
    let attempts = events.iter().filter(|e| matches!(e, CallEvent::Reconnecting { .. })).count();
    assert_eq!(attempts, 1, "one attempt, then the refusal ends it: {events:?}");
    let why = call.ended().await;
    assert!(matches!(why.cause, Cause::LoginFailed { .. }), "{why}");
    snapshot("reconnect_login_refused", "the login is refused when resuming: not retried", &events, &call);
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_error_names_each_one() {
    let core = core();
    let opened = Arc::new(AtomicU32::new(0));
    let count = opened.clone();
    let policy = ReconnectPolicy::default().with_max_attempts(4);
    let session = Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1").with_reconnect(policy).with_reopen(move || {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let reason = format!("connection refused (try {n})");
            Err::<Session, _>(Error::new(Stage::Open, Cause::Transport { reason, source: None }))
        })
    });
    let (call, probe) = join(loaded(session).await).await;
    let started = tokio::time::Instant::now();
    core.cut();
    let events = events_until(&call, is_end).await;
    assert_eq!(opened.load(Ordering::SeqCst), 4, "four attempts");
    let why = call.ended().await;
    let Cause::ReconnectFailed { attempts, .. } = &why.cause else { panic!("{why}") };
    assert_eq!(attempts.len(), 4);
    for (i, a) in attempts.iter().enumerate() {
        assert!(a.starts_with(&format!("attempt {}: ", i + 1)) && a.contains(&format!("try {}", i + 1)), "{a}");
    }
    // Backoff 0, 250, 500, 1000 ms, each within 20 %: at least 1.4 s of the paused clock.
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());
    assert!(probe.is_closed(), "the media closes at the end");
    snapshot("reconnect_every_attempt_fails", "the core stays unreachable: four attempts, then the end", &events, &call);
}

#[tokio::test(start_paused = true)]
async fn with_reconnection_off_the_first_failure_ends_the_call() {
    let core = core();
    let (call, _probe) = join(loaded(session(&core, ReconnectPolicy::off())).await).await;
    core.cut();
    let events = events_until(&call, is_end).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(call.ended().await.to_string().contains("the WebSocket closed"));
}

#[tokio::test(start_paused = true)]
async fn commands_sent_while_reconnecting_are_answered_once_back() {
    let core = core();
    let (call, _probe) = join(loaded(session(&core, ReconnectPolicy::default())).await).await;
    core.cut();
    let first = events_until(&call, |e| matches!(e, CallEvent::Reconnecting { .. })).await;
    assert_eq!(first.len(), 1);
    call.say("still here?").await.expect("the chat line goes out on the new session");
    let sent = core.received().into_iter().rfind(|v| v["cmd"] == "INSTANTMSG").expect("sent");
    assert_eq!(sent["params"]["msg"], "still here?");
    call.leave().await;
}
