//! Formal sequence tests: the join against a scripted core and the fake media layer, on tokio's
//! paused clock. Every path, happy or not, is checked against the seed's table
//! (`callme::spec::check`), asserted on its outcome and its clean-up, and stored as one redacted
//! transcript in `snapshots/`.

use std::time::Duration;

use callme::media::fake::{FakeMedia, FakeProbe, FAKE_OFFER};
use callme::spec::{self, Outcome};
use callme::testing::{disconnected_event, values, Fault, ScriptedCore};
use callme::{AudioSource, ClusterId, Connected, MediaReady, Render, SchemeId, Session, Timeouts, Transcript};
use serde_json::json;

/// What a case expects.
enum Expect {
    /// All 19 steps; the fake remote track carries 660 Hz, which must be heard.
    Connected,
    /// Failure at this step (0: `cd.load`), with a cause whose text contains `cause`.
    Fails { step: u8, cause: &'static str },
}

struct Case {
    core: ScriptedCore,
    media: FakeMedia,
    source: AudioSource,
    host: bool,
}

impl Case {
    fn new() -> Self {
        Case { core: ScriptedCore::new(), media: FakeMedia::new().0.hearing(660.0), source: AudioSource::tone(440.0), host: true }
    }
    fn fault(mut self, f: Fault) -> Self {
        self.core = self.core.with(f);
        self
    }
    fn media(mut self, f: impl FnOnce(FakeMedia) -> FakeMedia) -> Self {
        self.media = f(self.media);
        self
    }
}

async fn join(case: Case) -> (callme::Result<Connected>, Transcript, ScriptedCore, FakeProbe) {
    let Case { core, media, source, host } = case;
    let probe = media.probe();
    let mut session = Session::over(core.transport(), Timeouts::default()).with_reconnect(callme::ReconnectPolicy::off());
    if host {
        session = session.with_host("127.0.0.1");
    }
    let transcript = session.transcript();
    let result = async {
        let party = session.load(ClusterId(values::CLUSTER), SchemeId(7), "tester").await?;
        let ready = MediaReady::acquire_with(media, source, &party.transcript()).await?;
        Ok(ready.call_me_s1(party).await?.create_offer().await?.call_me_s2().await?.connect().await?)
    }
    .await;
    (result, transcript, core, probe)
}

async fn check(name: &str, what: &str, case: Case, expect: Expect) {
    let (result, transcript, core, probe) = join(case).await;
    let mut result_line = String::new();
    match (&expect, result) {
        (Expect::Connected, Ok(call)) => {
            let heard = call.listen(Duration::from_secs(1)).await.expect("the call goes on for a second");
            let share = callme::audio::tone_share(&heard, 660.0);
            assert!(share > 0.9, "the far side's 660 Hz is heard (share {share:.3})");
            assert!(callme::audio::tone_share(&heard, 440.0) < 0.01, "one's own 440 Hz is not heard");
            result_line.push_str(&format!("connected; heard {} ms of audio, 660 Hz share {:.2}", heard.len() / 48, share));
            call.leave().await;
            assert_eq!(spec::check(&transcript.entries()), Ok(Outcome::Connected));
        }
        (Expect::Connected, Err(e)) => panic!("expected to connect, failed: {e}\n{}", transcript.render(Render::Redacted)),
        (Expect::Fails { .. }, Ok(_)) => panic!("expected a failure, connected\n{}", transcript.render(Render::Redacted)),
        (Expect::Fails { step, cause }, Err(e)) => {
            let got_step = e.stage.transcript_step();
            assert_eq!(got_step, *step, "failing step of {e}");
            assert!(e.cause.to_string().contains(cause), "cause {:?} does not contain {cause:?}", e.cause.to_string());
            assert_eq!(spec::check(&transcript.entries()), Ok(Outcome::FailedAt(*step)), "{}", transcript.render(Render::Redacted));
            // Nothing half-open: the media closed, no task running, the core told when it may
            // hold media state (CALLME_S1 sent and not refused).
            if *step >= 1 {
                assert!(probe.is_closed(), "the PeerConnection was closed");
            }
            assert_eq!(probe.running_tasks(), 0, "no media task left running");
            let cmds = core.received_cmds();
            let s1_refused = *step == 4 && matches!(e.cause, callme::Cause::Refused(_));
            let socket_gone = matches!(e.cause, callme::Cause::Disconnected { .. } | callme::Cause::Transport { .. })
                && !e.to_string().contains("conf.webrtc.Disconnected");
            if *step >= 4 && !s1_refused && !socket_gone {
                assert_eq!(cmds.last().map(String::as_str), Some("CALLME_BYE"), "the core was told: {cmds:?}");
            } else {
                assert!(!cmds.iter().any(|c| c == "CALLME_BYE"), "no CALLME_BYE without core state: {cmds:?}");
            }
            if *step <= 2 {
                assert!(!cmds.iter().any(|c| c.starts_with("CALLME")), "nothing sent to the core: {cmds:?}");
            }
            result_line = format!("failed: {e}");
        }
    }
    let text = format!("case: {what}\nresult: {result_line}\n\n{}", transcript.render(Render::Redacted));
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, text);
    });
}

macro_rules! cases {
    ($( $name:ident: $what:literal, $case:expr => $expect:expr; )*) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            check(stringify!($name), $what, $case, $expect).await;
        }
    )*};
}

const S1: &str = "CALLME_S1";
const S2: &str = "CALLME_S2";

fn refuse(on: &'static str, code: i64, class: &'static str, text: &'static str) -> Fault {
    Fault::Refuse { on, code, class, text }
}

fn fails(step: u8, cause: &'static str) -> Expect {
    Expect::Fails { step, cause }
}

cases! {
    the_happy_path_performs_all_19_steps_and_hears_the_other_party:
        "a well-behaved core", Case::new() => Expect::Connected;

    // Before the sequence: cd.load.
    a_refused_load_gives_up_before_step_1:
        "cd.load answered with code 4 (denied)",
        Case::new().fault(refuse("load", 4, "auth", "conference 7 is closed to this session")) => fails(0, "code 4 (auth)");
    a_malformed_load_answer_names_result_code:
        "the answer to cd.load has code \"zero\"",
        Case::new().fault(Fault::MalformedAnswer { on: "load" }) => fails(0, "ANSW.result.code");
    a_silent_load_times_out:
        "cd.load never answered",
        Case::new().fault(Fault::NoAnswer { on: "load" }) => fails(0, "timed out after 5s waiting for the answer to load");

    // Steps 1–2.
    an_audio_source_that_cannot_open_gives_up_at_step_1_with_nothing_sent:
        "the WAV file to send does not exist",
        Case { source: AudioSource::Wav("/nonexistent/voice.wav".into()), ..Case::new() } => fails(1, "/nonexistent/voice.wav");
    a_failing_get_user_media_gives_up_at_step_1:
        "getUserMedia fails",
        Case::new().media(|m| m.failing("getUserMedia")) => fails(1, "getUserMedia failed");

    // Steps 3–5.
    a_socket_closed_before_callme_s1_fails_step_3:
        "the core closes the socket right after cd.load",
        Case::new().fault(Fault::CloseBeforeEvent { on: "load" }) => fails(3, "transport");
    a_refused_callme_s1_gives_up_at_step_4_with_the_cores_code:
        "CALLME_S1 refused: not the session's own party",
        Case::new().fault(refuse(S1, 202, "auth", "PartyID 3 is not this session's party")) => fails(4, "code 202 (auth): PartyID 3");
    a_silent_core_after_callme_s1_times_out_at_step_4:
        "CALLME_S1 never answered",
        Case::new().fault(Fault::NoAnswer { on: S1 }) => fails(4, "the answer to CALLME_S1 (seq 2)");
    a_socket_closed_instead_of_the_s1_answer_fails_step_4:
        "the socket closes instead of the answer to CALLME_S1",
        Case::new().fault(Fault::CloseBeforeAnswer { on: S1 }) => fails(4, "the WebSocket closed (close code 1001");
    a_malformed_s1_answer_names_result_code:
        "the answer to CALLME_S1 has code \"zero\"",
        Case::new().fault(Fault::MalformedAnswer { on: S1 }) => fails(4, "ANSW.result.code: not an integer");
    a_garbage_frame_instead_of_the_s1_answer_fails_step_4:
        "a truncated JSON frame instead of the answer to CALLME_S1",
        Case::new().fault(Fault::GarbageFrame { on: S1 }) => fails(4, "frame: not valid JSON");
    a_stale_answer_before_the_s1_answer_is_passed_over:
        "an answer with another seq comes first",
        Case::new().fault(Fault::StaleAnswer { on: S1 }) => Expect::Connected;
    servdesc_before_the_s1_answer_is_kept_for_step_5:
        "conf.webrtc.servdesc arrives before the answer to CALLME_S1",
        Case::new().fault(Fault::EventBeforeAnswer { on: S1 }) => Expect::Connected;
    unrelated_events_around_callme_s1_are_passed_over:
        "timer.time and conf.changed before the answer and before servdesc",
        Case::new().fault(Fault::Interleaved { on: S1 }) => Expect::Connected;
    a_missing_servdesc_times_out_at_step_5:
        "CALLME_S1 answered, servdesc never sent",
        Case::new().fault(Fault::NoEvent { on: S1 }) => fails(5, "waiting for the event conf.webrtc.servdesc");
    a_socket_closed_before_servdesc_fails_step_5:
        "the socket closes after the answer to CALLME_S1",
        Case::new().fault(Fault::CloseBeforeEvent { on: S1 }) => fails(5, "the WebSocket closed");
    a_servdesc_without_serveraddr_names_the_field:
        "servdesc lacks serveraddr",
        Case::new().fault(Fault::MalformedEvent { on: S1, field: "serveraddr", value: None }) => fails(5, "EVT.result.EvtData.serveraddr: missing");
    a_servdesc_with_a_numeric_username_names_the_field:
        "servdesc's username is a number",
        Case::new().fault(Fault::MalformedEvent { on: S1, field: "username", value: Some(json!(42)) }) => fails(5, "EVT.result.EvtData.username: not a string");
    a_servdesc_with_an_http_url_names_the_field:
        "servdesc's serveraddr is not a TURN/STUN URL",
        Case::new().fault(Fault::MalformedEvent { on: S1, field: "serveraddr", value: Some(json!("http://turn.example")) }) => fails(5, "EVT.result.EvtData.serveraddr: not a turn:");
    a_duplicate_servdesc_is_passed_over:
        "servdesc comes twice",
        Case::new().fault(Fault::DuplicateEvent { on: S1 }) => Expect::Connected;
    a_servdesc_for_another_party_is_passed_over:
        "servdesc for party 4 comes before ours",
        Case::new().fault(Fault::OtherPartyFirst { on: S1 }) => Expect::Connected;
    disconnected_instead_of_servdesc_fails_step_5:
        "conf.webrtc.Disconnected instead of servdesc",
        Case::new().fault(Fault::Disconnect { on: S1 }) => fails(5, "conf.webrtc.Disconnected");

    // Steps 6–11.
    a_failing_peer_connection_gives_up_at_step_6:
        "createPeerConnection fails",
        Case::new().media(|m| m.failing("createPeerConnection")) => fails(6, "createPeerConnection failed");
    a_failing_create_offer_gives_up_at_step_8:
        "createOffer fails",
        Case::new().media(|m| m.failing("createOffer")) => fails(8, "createOffer failed");
    an_offer_without_ice_ufrag_gives_up_at_step_9:
        "the offer has no a=ice-ufrag",
        Case::new().media(|m| m.with_offer(&FAKE_OFFER.replace("a=ice-ufrag:fAkE\r\n", ""))) => fails(9, "a=ice-ufrag: missing");
    an_offer_without_fingerprint_gives_up_at_step_9:
        "the offer has no a=fingerprint",
        Case::new().media(|m| m.with_offer(&FAKE_OFFER.lines().filter(|l| !l.starts_with("a=fingerprint")).collect::<Vec<_>>().join("\r\n"))) => fails(9, "a=fingerprint: missing");
    a_failing_set_local_description_gives_up_at_step_11:
        "setLocalDescription fails",
        Case::new().media(|m| m.failing("setLocalDescription")) => fails(11, "setLocalDescription failed");

    // Steps 12–14.
    a_socket_closed_before_callme_s2_fails_step_12:
        "the socket closes right after servdesc",
        Case::new().fault(Fault::CloseAfterEvent { on: S1 }) => fails(12, "transport");
    a_refused_callme_s2_gives_up_at_step_13_with_the_cores_code:
        "CALLME_S2 refused: fingerprint malformed",
        Case::new().fault(refuse(S2, 204, "proto", "param fingerprint: not 32 colon-separated hex bytes")) => fails(13, "code 204 (proto)");
    a_silent_core_after_callme_s2_times_out_at_step_13:
        "CALLME_S2 never answered",
        Case::new().fault(Fault::NoAnswer { on: S2 }) => fails(13, "the answer to CALLME_S2 (seq 3)");
    a_socket_closed_instead_of_the_s2_answer_fails_step_13:
        "the socket closes instead of the answer to CALLME_S2",
        Case::new().fault(Fault::CloseBeforeAnswer { on: S2 }) => fails(13, "the WebSocket closed");
    a_malformed_s2_answer_names_result_code:
        "the answer to CALLME_S2 has code \"zero\"",
        Case::new().fault(Fault::MalformedAnswer { on: S2 }) => fails(13, "ANSW.result.code");
    a_garbage_frame_instead_of_the_s2_answer_fails_step_13:
        "a truncated JSON frame instead of the answer to CALLME_S2",
        Case::new().fault(Fault::GarbageFrame { on: S2 }) => fails(13, "frame: not valid JSON");
    servufrag_before_the_s2_answer_is_kept_for_step_14:
        "servufrag arrives before the answer to CALLME_S2",
        Case::new().fault(Fault::EventBeforeAnswer { on: S2 }) => Expect::Connected;
    unrelated_events_around_callme_s2_are_passed_over:
        "timer.time and conf.changed before the answer and before servufrag",
        Case::new().fault(Fault::Interleaved { on: S2 }) => Expect::Connected;
    a_missing_servufrag_times_out_at_step_14:
        "CALLME_S2 answered, servufrag never sent",
        Case::new().fault(Fault::NoEvent { on: S2 }) => fails(14, "waiting for the event conf.webrtc.servufrag");
    a_socket_closed_before_servufrag_fails_step_14:
        "the socket closes after the answer to CALLME_S2",
        Case::new().fault(Fault::CloseBeforeEvent { on: S2 }) => fails(14, "the WebSocket closed");
    a_servufrag_with_a_short_pwd_names_the_field:
        "servufrag's pwd has 8 characters",
        Case::new().fault(Fault::MalformedEvent { on: S2, field: "pwd", value: Some(json!("tooshort")) }) => fails(14, "EVT.result.EvtData.pwd: 8 characters, at least 22 needed");
    a_servufrag_without_ufrag_names_the_field:
        "servufrag lacks ufrag",
        Case::new().fault(Fault::MalformedEvent { on: S2, field: "ufrag", value: None }) => fails(14, "EVT.result.EvtData.ufrag: missing");
    a_servufrag_with_a_bad_port_names_the_field:
        "servufrag's port is 70000",
        Case::new().fault(Fault::MalformedEvent { on: S2, field: "port", value: Some(json!(70000)) }) => fails(14, "EVT.result.EvtData.port: not a port number");
    a_servufrag_with_a_sha1_fingerprint_names_the_field:
        "servufrag's fingerprint is sha-1",
        Case::new().fault(Fault::MalformedEvent { on: S2, field: "fingerprint", value: Some(json!("sha-1 AB:CD")) }) => fails(14, "EVT.result.EvtData.fingerprint: hash \"sha-1\"");
    a_duplicate_servufrag_is_passed_over:
        "servufrag comes twice",
        Case::new().fault(Fault::DuplicateEvent { on: S2 }) => Expect::Connected;
    a_servufrag_for_another_party_is_passed_over:
        "servufrag for party 4 comes before ours",
        Case::new().fault(Fault::OtherPartyFirst { on: S2 }) => Expect::Connected;
    disconnected_instead_of_servufrag_fails_step_14:
        "conf.webrtc.Disconnected instead of servufrag",
        Case::new().fault(Fault::Disconnect { on: S2 }) => fails(14, "conf.webrtc.Disconnected");

    // Steps 15–19.
    a_servufrag_without_addr_and_no_host_fails_step_15:
        "servufrag lacks addr and the session has no WebSocket host",
        Case { host: false, ..Case::new() }.fault(Fault::MalformedEvent { on: S2, field: "addr", value: None }) => fails(15, "EVT.result.EvtData.addr: absent");
    a_failing_set_remote_description_gives_up_at_step_17:
        "setRemoteDescription fails",
        Case::new().media(|m| m.failing("setRemoteDescription")) => fails(17, "setRemoteDescription failed");
    a_remote_track_that_never_comes_times_out_at_step_18:
        "no remote track arrives",
        Case::new().media(|m| m.without_remote_track()) => fails(18, "timed out after 10s waiting for ontrack");
    disconnected_while_waiting_for_the_track_fails_step_18_at_once:
        "servufrag, unrelated events, then conf.webrtc.Disconnected while no track comes",
        Case::new().fault(Fault::DisconnectAfterEvent { on: S2 }).media(|m| m.without_remote_track()) => fails(18, "conf.webrtc.Disconnected");
    a_failing_playback_gives_up_at_step_19:
        "attaching the remote audio fails",
        Case::new().media(|m| m.failing("play")) => fails(19, "play failed");
}

#[tokio::test(start_paused = true)]
async fn a_servufrag_without_addr_uses_the_websocket_host() {
    let case = Case::new().fault(Fault::MalformedEvent { on: S2, field: "addr", value: None });
    let (result, transcript, _core, _probe) = join(case).await;
    let call = result.expect("connects");
    let text = transcript.render(Render::Redacted);
    assert!(text.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"), "{text}");
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn disconnected_in_the_call_ends_it_with_the_reason() {
    let (result, transcript, core, probe) = join(Case::new()).await;
    let call = result.expect("connects");
    core.push_event(disconnected_event(values::PARTY));
    let err = call.listen(Duration::from_secs(5)).await.expect_err("the call ends");
    assert_eq!(err.stage, callme::Stage::InCall);
    assert!(err.to_string().contains("conf.webrtc.Disconnected"), "{err}");
    call.leave().await;
    assert!(probe.is_closed());
    assert_eq!(probe.running_tasks(), 0);
    assert_eq!(spec::check(&transcript.entries()), Ok(Outcome::Connected));
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_for_another_party_does_not_end_the_call() {
    let (result, _transcript, core, _probe) = join(Case::new()).await;
    let call = result.expect("connects");
    core.push_event(disconnected_event(values::OTHER_PARTY));
    let heard = call.listen(Duration::from_secs(1)).await.expect("the call goes on");
    assert!(callme::audio::tone_share(&heard, 660.0) > 0.9);
    call.leave().await;
}

#[tokio::test(start_paused = true)]
async fn hanging_up_tells_the_core_and_gives_the_party_back_for_a_reconnect() {
    let (result, transcript, core, _probe) = join(Case::new()).await;
    let party = result.expect("connects").hang_up().await.expect("the session is still open");
    assert_eq!(core.received_cmds().last().map(String::as_str), Some("CALLME_BYE"));
    // The same party joins again: a second CALLME_S1 on the same session.
    let (media, _) = FakeMedia::new();
    let again = MediaReady::acquire_with(media.hearing(880.0), AudioSource::Silence, &transcript)
        .await
        .unwrap()
        .call_me_s1(party)
        .await
        .unwrap()
        .create_offer()
        .await
        .unwrap()
        .call_me_s2()
        .await
        .unwrap()
        .connect()
        .await;
    let call = again.expect("reconnects");
    let heard = call.listen(Duration::from_secs(1)).await.unwrap();
    assert!(callme::audio::tone_share(&heard, 880.0) > 0.9);
    let s1s = core.received_cmds().iter().filter(|c| *c == "CALLME_S1").count();
    assert_eq!(s1s, 2);
    call.leave().await;
}

#[test]
fn the_checker_rejects_a_transcript_that_skips_a_step() {
    use callme::transcript::{Side, What};
    let t = Transcript::new();
    t.record(1, Side::Media, What::Call { name: "getUserMedia".into(), detail: String::new() });
    t.record(2, Side::Media, What::Returned { name: "getUserMedia".into(), detail: String::new() });
    t.record(
        4,
        Side::Ws,
        What::Received {
            frame: r#"{"ANSW":{"cmd":"CALLME_S1","seq":1,"result":{"code":0}}}"#.into(),
            routing: callme::transcript::Routing::Answer,
        },
    );
    let err = spec::check(&t.entries()).unwrap_err();
    assert_eq!(err.index, 2);
    assert!(err.reason.contains("expected step 3"), "{err}");
}

#[test]
fn the_checker_rejects_a_transcript_that_stops_without_a_failure() {
    use callme::transcript::{Side, What};
    let t = Transcript::new();
    t.record(1, Side::Media, What::Call { name: "getUserMedia".into(), detail: String::new() });
    let err = spec::check(&t.entries()).unwrap_err();
    assert!(err.reason.contains("stops inside step 1"), "{err}");
}

#[test]
fn the_table_has_19_steps_numbered_in_order() {
    for (i, s) in spec::SEQUENCE.iter().enumerate() {
        assert_eq!(usize::from(s.number), i + 1);
        assert!(!s.entries.is_empty());
    }
}
