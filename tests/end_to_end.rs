//! The SDK against the reference core over a real WebSocket and real UDP on loopback, with real
//! webrtc-rs and libopus on both sides. Every assertion is on audio actually heard.

use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};

async fn start_core() -> CoreHandle {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.media_timeout_ms = 3000;
    });
    core::start(config).await.expect("the core starts")
}

async fn join(core: &CoreHandle, scheme: u64, name: &str, source: AudioSource) -> Connected {
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(scheme), name).await.unwrap();
    let media = RtcMedia::new(RtcOptions::loopback_only());
    party.join_with(media, source).await.unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

/// The share of each tone in what `call` hears over `secs`, after a settling second.
async fn hear(call: &Connected, tones: &[f32]) -> Vec<f64> {
    call.listen(Duration::from_millis(1000)).await.expect("settles");
    let heard = call.listen(Duration::from_millis(1500)).await.expect("hears");
    assert!(heard.len() > 48_000, "audio keeps coming: {} samples", heard.len());
    tones.iter().map(|&hz| tone_share(&heard, hz)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parties_each_hear_the_other_two_and_not_themselves() {
    let core = start_core().await;
    let tones = [440.0, 660.0, 880.0];
    let mut calls = Vec::new();
    for (i, hz) in tones.iter().enumerate() {
        calls.push(join(&core, 7, &format!("party{i}"), AudioSource::tone(*hz)).await);
    }
    for (i, call) in calls.iter().enumerate() {
        let shares = hear(call, &tones).await;
        for (j, share) in shares.iter().enumerate() {
            if i == j {
                assert!(*share < 0.02, "party {i} hears its own {} Hz: {shares:?}", tones[i]);
            } else {
                assert!(*share > 0.2, "party {i} misses {} Hz: {shares:?}", tones[j]);
            }
        }
    }
    for c in calls {
        c.leave().await;
    }
    core.stop().await;
}

/// Shares of `tones` in one listen of `ms`.
async fn shares(call: &Connected, tones: &[f32], ms: u64) -> Vec<f64> {
    let heard = call.listen(Duration::from_millis(ms)).await.expect("hears");
    tones.iter().map(|&hz| tone_share(&heard, hz)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_conference_at_the_same_time_hears_none_of_the_first() {
    let core = start_core().await;
    let a = join(&core, 7, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    let d = join(&core, 8, "d", AudioSource::tone(1100.0)).await;
    let e = join(&core, 8, "e", AudioSource::tone(1320.0)).await;
    let tones = [440.0, 660.0, 1100.0, 1320.0];
    a.listen(Duration::from_millis(800)).await.unwrap();
    let (sa, sd) = tokio::join!(shares(&a, &tones, 1500), shares(&d, &tones, 1500));
    assert!(sa[1] > 0.8 && sa[2] < 0.02 && sa[3] < 0.02, "conference 7 hears only its own parties: {sa:?}");
    assert!(sd[3] > 0.8 && sd[0] < 0.02 && sd[1] < 0.02, "conference 8 hears only its own parties: {sd:?}");
    for c in [a, b, d, e] {
        c.leave().await;
    }
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_keeps_the_party_and_replaces_its_media() {
    let core = start_core().await;
    let a = join(&core, 7, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    let id = a.party_id();
    let party = a.hang_up().await.expect("the session is still open");
    assert_eq!(party.id(), id);
    let media = RtcMedia::new(RtcOptions::loopback_only());
    let a = party.join_with(media, AudioSource::tone(880.0)).await.expect("the same party joins again");
    assert_eq!(a.party_id(), id, "the party is kept");
    b.listen(Duration::from_millis(800)).await.unwrap();
    let s = shares(&b, &[440.0, 880.0], 1500).await;
    assert!(s[1] > 0.8 && s[0] < 0.02, "b hears the party's new media, not the old: {s:?}");
    assert_eq!(core.stats().parties_with_media, 2);
    a.listen(Duration::from_millis(10)).await.unwrap();
    a.leave().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_stopped_mid_call_is_reported_precisely() {
    let core = start_core().await;
    let a = join(&core, 7, "a", AudioSource::tone(440.0)).await;
    let _b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    a.listen(Duration::from_millis(300)).await.unwrap();
    core.stop().await;
    // The call tries to come back (the core stays down), then ends naming the cause and each
    // attempt.
    let err = a.listen(Duration::from_secs(60)).await.expect_err("the call ends");
    assert_eq!(err.stage, callme::Stage::InCall);
    let text = err.to_string();
    assert!(text.contains("close code 1001") && text.contains("the core is stopping"), "{text}");
    let callme::Cause::ReconnectFailed { attempts, .. } = &err.cause else { panic!("{text}") };
    assert_eq!(attempts.len(), callme::ReconnectPolicy::default().max_attempts as usize, "{text}");
    assert!(attempts.iter().all(|a| a.contains("opening the WebSocket")), "{text}");
}

mod by_hand {
    //! The sequence performed by hand on the public lower layers (session, media engine), so a
    //! test can send what the typestates never would.
    use super::*;
    use callme::media::sdp;
    use callme::media::MediaEngine;
    use callme::signaling::Party;
    use callme::wire::{Command, ServUfrag};
    use callme::Stage;

    pub fn callme(party: &Party, cmd: &str) -> Command {
        Command::new("conf", cmd).param("ClusterID", 1).param("ID", party.loaded().conf).param("PartyID", party.id())
    }

    /// Waits for the event `name`, passing over others.
    pub async fn event(party: &mut Party, name: &str) -> callme::wire::Event {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), party.session().next_event())
                .await
                .expect("an event within 10 s")
                .expect("the session lives");
            if e.name() == name {
                return e;
            }
        }
    }

    /// Waits for `conf.webrtc.Disconnected` (which the session reports as the end of the call).
    pub async fn disconnected(party: &mut Party) -> callme::Error {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), party.session().next_event()).await.expect("an event within 10 s");
            if let Err(e) = e {
                return e;
            }
        }
    }

    /// Joins with CALLME_S2's fingerprint replaced by `fingerprint` (if given); returns the
    /// party and its media after setRemoteDescription.
    pub async fn join_tampered(core: &CoreHandle, fingerprint: Option<&str>) -> (Party, RtcMedia) {
        let mut party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), "tampered").await.unwrap();
        let mut media = RtcMedia::new(RtcOptions::loopback_only());
        media.get_user_media(AudioSource::tone(1760.0)).await.unwrap();
        let s1 = callme(&party, "CALLME_S1");
        assert_eq!(party.session().request(Stage::Step(3), s1).await.unwrap().code, 0);
        event(&mut party, "conf.webrtc.servdesc").await;
        media.create_peer_connection(&[]).await.unwrap();
        let offer_sdp = media.create_offer().await.unwrap();
        let offer = sdp::parse_offer(&offer_sdp).unwrap();
        media.set_local_description(&offer_sdp).await.unwrap();
        let mut s2 = callme(&party, "CALLME_S2");
        for (k, v) in offer.s2_params() {
            s2 = s2.param(k, v);
        }
        if let Some(fp) = fingerprint {
            s2 = s2.param("fingerprint", fp);
        }
        assert_eq!(party.session().request(Stage::Step(12), s2).await.unwrap().code, 0);
        let e = event(&mut party, "conf.webrtc.servufrag").await;
        let u = ServUfrag::from_event(&e).unwrap();
        let answer = sdp::build_answer(&offer, &u, "127.0.0.1".parse().unwrap());
        media.set_remote_description(&answer).await.unwrap();
        (party, media)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_certificate_gets_no_media_and_is_disconnected() {
    use callme::media::MediaEngine;
    let core = start_core().await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    let wrong = format!("sha-256 {}", ["AB"; 32].join(":"));
    let (mut party, mut media) = by_hand::join_tampered(&core, Some(&wrong)).await;
    // The DTLS handshake fails on the core's check: no track, and the core ends the session.
    let track = tokio::time::timeout(Duration::from_secs(3), media.remote_track()).await;
    assert!(track.is_err(), "no media reaches a peer whose certificate does not match");
    let err = by_hand::disconnected(&mut party).await;
    assert!(err.to_string().contains("conf.webrtc.Disconnected: ICE or DTLS failed"), "{err}");
    // And nothing of it reaches the conference.
    let s = shares(&b, &[1760.0], 1000).await;
    assert!(s[0] < 0.01, "the tampered party's tone is not mixed: {s:?}");
    media.close().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_peer_with_its_true_fingerprint_is_heard() {
    // The control for the test above: the by-hand join itself works.
    use callme::media::MediaEngine;
    let core = start_core().await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    let (_party, mut media) = by_hand::join_tampered(&core, None).await;
    tokio::time::timeout(Duration::from_secs(3), media.remote_track()).await.expect("a track").expect("a track");
    let (tx, _rx) = tokio::sync::broadcast::channel(100);
    media.play(tx).await.unwrap();
    b.listen(Duration::from_millis(600)).await.unwrap();
    let s = shares(&b, &[1760.0], 1000).await;
    assert!(s[0] > 0.8, "the party is heard: {s:?}");
    media.close().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_whose_media_falls_silent_is_freed_and_told() {
    use callme::media::MediaEngine;
    let core = start_core().await; // media_timeout 3 s
    let (mut party, mut media) = by_hand::join_tampered(&core, None).await;
    tokio::time::timeout(Duration::from_secs(3), media.remote_track()).await.expect("a track").expect("a track");
    let (tx, _rx) = tokio::sync::broadcast::channel(100);
    media.play(tx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(core.stats().parties_with_media, 1);
    // The media stops without a word to the core (a crashed client, a lost network).
    media.close().await;
    let err = by_hand::disconnected(&mut party).await.to_string();
    assert!(err.contains("conf.webrtc.Disconnected: no media from the party for 3000 ms") || err.contains("ICE or DTLS failed"), "{err}");
    assert_eq!(core.stats().parties_with_media, 0, "the party's media is freed");
    assert_eq!(core.stats().parties, 1, "the party itself stays loaded");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callme_s1_again_replaces_the_running_media_session() {
    use callme::media::MediaEngine;
    let core = start_core().await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    let (mut party, mut old) = by_hand::join_tampered(&core, None).await;
    tokio::time::timeout(Duration::from_secs(3), old.remote_track()).await.expect("a track").expect("a track");
    let (tx, _rx) = tokio::sync::broadcast::channel(100);
    old.play(tx).await.unwrap();
    b.listen(Duration::from_millis(500)).await.unwrap();
    assert!(shares(&b, &[1760.0], 800).await[0] > 0.8, "the first media session is heard");
    // CALLME_S1 again, without hanging up: the core drops the old media session at once.
    let s1 = by_hand::callme(&party, "CALLME_S1");
    assert_eq!(party.session().request(callme::Stage::Step(3), s1).await.unwrap().code, 0);
    assert_eq!(core.stats().parties_with_media, 1, "only b's media runs; the party waits for CALLME_S2");
    b.listen(Duration::from_millis(300)).await.unwrap();
    assert!(shares(&b, &[1760.0], 800).await[0] < 0.01, "the old media session is no longer mixed");
    assert_eq!(core.stats().parties, 2, "the party itself stays");
    old.close().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_fails_in_the_media_leaves_no_party_connecting_in_the_core() {
    let core = start_core().await;
    // Relay-only with no TURN server: no candidate, so ICE never starts and step 18 times out.
    let timeouts = callme::Timeouts::default().with_media(Duration::from_secs(2));
    let party = Session::connect_with(&core.ws_url, timeouts).await.unwrap().load(ClusterId(1), SchemeId(7), "stuck").await.unwrap();
    let transcript = party.transcript();
    let media = RtcMedia::new(RtcOptions::loopback_only().relay_only(true));
    let err = party.join_with(media, AudioSource::tone(440.0)).await.err().expect("the join fails");
    assert_eq!(err.step(), Some(18), "{err}");
    assert!(err.to_string().contains("timed out after 2s waiting for ontrack"), "{err}");
    // The SDK told the core, and the core let the media session go.
    let entries = transcript.entries();
    let bye = entries.iter().any(|e| matches!(&e.what, callme::transcript::What::Sent { frame } if frame.contains("CALLME_BYE")));
    assert!(bye, "CALLME_BYE was sent");
    for _ in 0..50 {
        if core.stats().parties_with_media == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(core.stats().parties_with_media, 0, "no media session is left in the core");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_frees_the_party_and_the_others_are_told() {
    let core = start_core().await;
    let a = join(&core, 7, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    assert_eq!(core.stats().parties, 2);
    let a_id = a.party_id();
    a.leave().await;
    // b is told by conf.changed (delParties), as its roster's change, and the core holds one party.
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(callme::CallEvent::Roster(callme::RosterChange::Left(m))) = b.next_event().await {
                if m.id == a_id {
                    return;
                }
            }
        }
    })
    .await;
    assert!(told.is_ok(), "b hears of a's leaving");
    assert!(b.roster().member(a_id).is_none(), "b's roster no longer holds a");
    assert_eq!(core.stats().parties, 1);
    assert_eq!(core.stats().parties_with_media, 1);
    b.leave().await;
    core.stop().await;
}

/// Waits (bounded) until the core counts `parties` parties, `with_media` of them with media.
async fn until_core_counts(core: &CoreHandle, parties: usize, with_media: usize) -> core::CoreStats {
    let mut stats = core.stats();
    for _ in 0..100 {
        if (stats.parties, stats.parties_with_media) == (parties, with_media) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = core.stats();
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_or_a_state_dropped_without_leave_leaves_nothing_half_open_in_the_core() {
    use callme::MediaReady;
    let core = start_core().await;
    let a = join(&core, 7, "a", AudioSource::tone(440.0)).await;
    let b = join(&core, 7, "b", AudioSource::tone(660.0)).await;
    let heard = a.listen(Duration::from_millis(800)).await.unwrap();
    assert!(tone_share(&heard, 660.0) > 0.5, "a hears b before b is dropped");

    // A Connected dropped: its task closes the media, sends CALLME_BYE, closes the socket.
    drop(b);
    let stats = until_core_counts(&core, 1, 1).await;
    assert_eq!((stats.parties, stats.parties_with_media), (1, 1), "b is freed in the core");
    // a was told (conf.changed with delParties) on its event stream.
    let mut told = false;
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(2), a.next_event()).await {
            Ok(Some(callme::CallEvent::Roster(callme::RosterChange::Left(_)))) => {
                told = true;
                break;
            }
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    assert!(told, "the remaining party was told that b left");

    // A state dropped half-way (CALLME_S2 answered, the answer not yet applied): the socket
    // closes with it and the core frees the party and its media.
    let party = Session::connect(&core.ws_url).await.unwrap().load(ClusterId(1), SchemeId(7), "c").await.unwrap();
    let s2 = MediaReady::acquire_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(880.0), &party.transcript())
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
        .unwrap();
    let stats = until_core_counts(&core, 2, 2).await;
    assert_eq!((stats.parties, stats.parties_with_media), (2, 2), "c holds media state in the core");
    drop(s2);
    // The socket closed without CALLME_BYE: c's media is freed, the party itself is kept for
    // a resume (out of the mix) for the grace time.
    let stats = until_core_counts(&core, 2, 1).await;
    assert_eq!((stats.parties, stats.parties_with_media), (2, 1), "c's media is freed in the core, c kept for a resume");
    let heard = a.listen(Duration::from_millis(300)).await.expect("a's call goes on");
    assert!(heard.len() >= 48_000 * 2 / 10, "a keeps hearing the mix");
    a.leave().await;
    core.stop().await;
}
