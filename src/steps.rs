//! The join sequence as types: `MediaReady` → `S1Accepted` → `Offered` → `S2Accepted` →
//! `Connected`. Each transition consumes `self` and performs exactly its rows of the seed's
//! table, in order, recording each into the transcript; a step cannot be skipped, repeated or
//! reordered because the value that would allow it no longer exists.
//!
//! On failure a transition records the failure at its step, closes the PeerConnection (every
//! task stops with it), tells the core with `CALLME_BYE` if the core may hold media state for
//! the party, and returns an [`Error`] naming the step and the cause.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::audio::{self, AudioSource, Frame};
use crate::error::{Cause, Error, Result, Stage};
use crate::media::sdp::{self, OfferFacts};
use crate::media::{IceServer, MediaEngine, RtcMedia};
use crate::signaling::Party;
use crate::transcript::{Side, Transcript, What};
use crate::wire::{Event, PartyId, ServDesc, ServUfrag};

/// Frames of heard audio kept for the application; when it lags, the oldest go first (2 s).
const HEARD_QUEUE: usize = 100;

/// What every state carries: the media layer and the transcript it records to.
struct Join {
    media: Box<dyn MediaEngine>,
    transcript: Transcript,
    media_timeout: Duration,
}

impl Join {
    fn record(&self, step: u8, side: Side, what: What) {
        self.transcript.record(step, side, what);
    }

    fn call(&self, step: u8, name: &str, detail: impl Into<String>) {
        self.record(step, Side::Media, What::Call { name: name.to_owned(), detail: detail.into() });
    }

    fn returned(&self, step: u8, name: &str, detail: impl Into<String>) {
        self.record(step, Side::Media, What::Returned { name: name.to_owned(), detail: detail.into() });
    }

    /// Leaves nothing half-open after a failure: records it, closes the media, tells the core.
    async fn fail(mut self, party: Option<&mut Party>, error: Error) -> Error {
        let step = error.stage.transcript_step();
        self.record(step, Side::Local, What::Failed { error: error.to_string() });
        self.call(step, "close", "");
        self.media.close().await;
        if let Some(party) = party {
            let refused_s1 = error.stage == Stage::Step(4) && matches!(error.cause, Cause::Refused(_));
            if step >= 4 && !refused_s1 {
                let bye = party.callme("CALLME_BYE");
                party.session.send_quietly(error.stage, bye).await;
            }
        }
        error
    }
}

/// Runs a media call of step `step` under the media timeout; failures become [`Cause::Media`].
async fn timed<T>(step: u8, call: &'static str, after: Duration, f: impl Future<Output = std::result::Result<T, String>>) -> Result<T> {
    match tokio::time::timeout(after, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(reason)) => Err(Error::new(Stage::Step(step), Cause::Media { call, reason })),
        Err(_) => Err(Error::new(Stage::Step(step), Cause::TimedOut { waiting_for: call.to_owned(), after })),
    }
}

/// Runs `$body` (a `Result`); on error, cleans up and returns from the transition.
macro_rules! attempt {
    ($join:expr, $party:expr, $body:expr) => {
        match $body {
            Ok(v) => v,
            Err(e) => return Err($join.fail($party, e).await),
        }
    };
}

impl Party {
    /// All 19 steps in one call, with the real media layer: for applications that want the call,
    /// not the steps. Same errors, same clean-up, same transcript as the typestates one by one.
    pub async fn join(self, source: AudioSource) -> Result<Connected> {
        self.join_with(RtcMedia::default(), source).await
    }

    /// [`Party::join`] with a chosen media layer.
    pub async fn join_with(self, media: impl MediaEngine + 'static, source: AudioSource) -> Result<Connected> {
        let transcript = self.transcript();
        MediaReady::acquire_with(media, source, &transcript)
            .await?
            .call_me_s1(self)
            .await?
            .create_offer()
            .await?
            .call_me_s2()
            .await?
            .connect()
            .await
    }
}

/// Steps 1–2 done: the local audio stream exists. Next: [`MediaReady::call_me_s1`].
pub struct MediaReady {
    join: Join,
}

impl MediaReady {
    /// Steps 1–2 with the real media layer (webrtc-rs, libopus).
    pub async fn acquire(source: AudioSource) -> Result<MediaReady> {
        Self::acquire_with(RtcMedia::default(), source, &Transcript::new()).await
    }

    /// Steps 1–2 with a chosen media layer, recording into `transcript` (pass the party's, see
    /// [`Party::transcript`], to have one record of the whole join).
    pub async fn acquire_with(media: impl MediaEngine + 'static, source: AudioSource, transcript: &Transcript) -> Result<MediaReady> {
        let mut join = Join { media: Box::new(media), transcript: transcript.clone(), media_timeout: Duration::from_secs(10) };
        join.call(1, "getUserMedia", source.describe());
        let stream = attempt!(
            join,
            None,
            timed(1, "getUserMedia", join.media_timeout, join.media.get_user_media(source)).await.map_err(|e| match e.cause {
                Cause::Media { reason, .. } => Error::new(Stage::Step(1), Cause::Source { reason }),
                _ => e,
            })
        );
        join.returned(2, "getUserMedia", stream);
        Ok(MediaReady { join })
    }

    /// The transcript of steps 1–2 (it joins the party's at step 3).
    pub fn transcript(&self) -> Transcript {
        self.join.transcript.clone()
    }

    /// Steps 3–5: send CALLME_S1 for oneself, wait for the positive answer, wait for
    /// `conf.webrtc.servdesc`.
    pub async fn call_me_s1(self, mut party: Party) -> Result<S1Accepted> {
        let mut join = self.join;
        let transcript = party.transcript();
        transcript.absorb(&join.transcript);
        join.transcript = transcript;
        join.media_timeout = party.session.timeouts().media;

        let cmd = party.callme("CALLME_S1");
        let seq = attempt!(join, Some(&mut party), party.session.send(Stage::Step(3), cmd, true).await);
        let answer = attempt!(join, Some(&mut party), party.session.answer(Stage::Step(4), seq, "CALLME_S1").await);
        if let Some(refusal) = answer.refusal(&[crate::wire::code::OK]) {
            return Err(join.fail(Some(&mut party), Error::new(Stage::Step(4), Cause::Refused(refusal))).await);
        }
        let event = attempt!(join, Some(&mut party), party.session.event(Stage::Step(5), ServDesc::EVENT).await);
        // The TURN credentials are secrets: redacted even when the event turns out malformed.
        for (field, placeholder) in [("username", "turn-username"), ("credential", "turn-credential")] {
            if let Some(v) = event.evt_data().get(field).and_then(serde_json::Value::as_str) {
                join.transcript.redact(v, placeholder);
            }
        }
        let servdesc = attempt!(join, Some(&mut party), parse_event(5, &event, ServDesc::from_event));
        Ok(S1Accepted { join, party, servdesc })
    }
}

fn parse_event<T>(step: u8, e: &Event, parse: fn(&Event) -> std::result::Result<T, crate::wire::WireError>) -> Result<T> {
    parse(e).map_err(|w| Error::new(Stage::Step(step), Cause::Malformed(w)))
}

/// Steps 3–5 done: the core accepted CALLME_S1 and gave its ICE server. Next:
/// [`S1Accepted::create_offer`].
pub struct S1Accepted {
    join: Join,
    party: Party,
    servdesc: ServDesc,
}

impl S1Accepted {
    /// What `conf.webrtc.servdesc` said.
    pub fn servdesc(&self) -> &ServDesc {
        &self.servdesc
    }

    /// Steps 6–11: create the PeerConnection with servdesc's ICE server, create the offer, pull
    /// ufrag, pwd, fingerprint (and the rest CALLME_S2 carries) out of it, set it locally.
    pub async fn create_offer(self) -> Result<Offered> {
        let S1Accepted { mut join, mut party, servdesc } = self;
        let ice: Vec<IceServer> = if servdesc.serveraddr.is_empty() {
            Vec::new()
        } else {
            vec![IceServer {
                url: servdesc.serveraddr.clone(),
                username: servdesc.username.clone(),
                credential: servdesc.credential.clone(),
            }]
        };
        let detail = match ice.first() {
            Some(s) => format!("iceServers [{}] user {}", s.url, s.username),
            None => "no ICE server".to_owned(),
        };
        join.call(6, "createPeerConnection", detail);
        attempt!(
            join,
            Some(&mut party),
            timed(6, "createPeerConnection", join.media_timeout, join.media.create_peer_connection(&ice)).await
        );

        join.call(7, "createOffer", "");
        let sdp = attempt!(join, Some(&mut party), timed(8, "createOffer", join.media_timeout, join.media.create_offer()).await);
        join.returned(8, "createOffer", sdp.clone());

        let offer = attempt!(join, Some(&mut party), sdp::parse_offer(&sdp).map_err(|w| Error::new(Stage::Step(9), Cause::Offer(w))));
        let t = &join.transcript;
        t.redact(&offer.ufrag, "local-ufrag");
        t.redact(&offer.pwd, "local-pwd");
        t.redact(&offer.fingerprint, "local-fingerprint");
        t.redact(&offer.fingerprint["sha-256 ".len()..], "local-fingerprint-hex");
        if let Some(ssrc) = offer.ssrc {
            t.redact(&ssrc.to_string(), "local-ssrc");
        }
        if let Some(cname) = &offer.cname {
            t.redact(cname, "local-cname");
        }
        let facts: Vec<String> = offer.s2_params().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        join.record(9, Side::Local, What::Returned { name: "parseOffer".into(), detail: facts.join(" ") });

        join.call(10, "setLocalDescription", "offer");
        attempt!(
            join,
            Some(&mut party),
            timed(11, "setLocalDescription", join.media_timeout, join.media.set_local_description(&sdp)).await
        );
        join.returned(11, "setLocalDescription", "");
        Ok(Offered { join, party, offer })
    }
}

/// Steps 6–11 done: the offer is set locally and its facts are known. Next:
/// [`Offered::call_me_s2`].
pub struct Offered {
    join: Join,
    party: Party,
    offer: OfferFacts,
}

impl Offered {
    /// What step 9 pulled out of the offer.
    pub fn offer(&self) -> &OfferFacts {
        &self.offer
    }

    /// Steps 12–14: send CALLME_S2 with the offer's ufrag, pwd, fingerprint (and mid, Opus
    /// payload type, extension ids, SSRC, CNAME), wait for the positive answer, wait for
    /// `conf.webrtc.servufrag`.
    pub async fn call_me_s2(self) -> Result<S2Accepted> {
        let Offered { join, mut party, offer } = self;
        let mut cmd = party.callme("CALLME_S2");
        for (k, v) in offer.s2_params() {
            cmd = cmd.param(k, v);
        }
        let seq = attempt!(join, Some(&mut party), party.session.send(Stage::Step(12), cmd, true).await);
        let answer = attempt!(join, Some(&mut party), party.session.answer(Stage::Step(13), seq, "CALLME_S2").await);
        if let Some(refusal) = answer.refusal(&[crate::wire::code::OK]) {
            return Err(join.fail(Some(&mut party), Error::new(Stage::Step(13), Cause::Refused(refusal))).await);
        }
        let event = attempt!(join, Some(&mut party), party.session.event(Stage::Step(14), ServUfrag::EVENT).await);
        let core = attempt!(join, Some(&mut party), parse_event(14, &event, ServUfrag::from_event));
        let t = &join.transcript;
        t.redact(&core.ufrag, "core-ufrag");
        t.redact(&core.pwd, "core-pwd");
        t.redact(&core.fingerprint, "core-fingerprint");
        Ok(S2Accepted { join, party, offer, core })
    }
}

/// Steps 12–14 done: the core accepted CALLME_S2 and gave its ICE and DTLS parameters. Next:
/// [`S2Accepted::connect`].
pub struct S2Accepted {
    join: Join,
    party: Party,
    offer: OfferFacts,
    core: ServUfrag,
}

impl S2Accepted {
    /// What `conf.webrtc.servufrag` said.
    pub fn servufrag(&self) -> &ServUfrag {
        &self.core
    }

    /// Steps 15–19: write the core's answer from servufrag, set it as the remote description,
    /// wait for the remote track, attach it to playback (decoded frames, see
    /// [`Connected::next_frame`]).
    pub async fn connect(self) -> Result<Connected> {
        let S2Accepted { mut join, mut party, offer, core } = self;
        let addr = attempt!(join, Some(&mut party), candidate_addr(&core, party.session.host()).await);
        let answer = sdp::build_answer(&offer, &core, addr);
        join.record(15, Side::Local, What::Returned { name: "buildAnswer".into(), detail: answer.clone() });

        join.call(16, "setRemoteDescription", "answer");
        attempt!(
            join,
            Some(&mut party),
            timed(17, "setRemoteDescription", join.media_timeout, join.media.set_remote_description(&answer)).await
        );
        join.returned(17, "setRemoteDescription", "");

        // While the media is awaited the session is read too: the core may end the session.
        let track = tokio::select! {
            biased; // the media first: the same frames are read in every run
            t = timed(18, "ontrack", join.media_timeout, join.media.remote_track()) => t,
            e = party.session.until_ended(Stage::Step(18)) => Err(e),
        };
        let track = attempt!(join, Some(&mut party), track);
        join.returned(18, "ontrack", track);

        join.call(19, "play", "decoded 20 ms frames to the application");
        let (heard_tx, heard) = broadcast::channel(HEARD_QUEUE);
        attempt!(join, Some(&mut party), timed(19, "play", join.media_timeout, join.media.play(heard_tx)).await);
        Ok(Connected { join, party, offer, core, heard })
    }
}

/// The address of the core's candidate: servufrag's `addr`, else the WebSocket's host; a name is
/// resolved (IPv4 first).
async fn candidate_addr(core: &ServUfrag, ws_host: Option<&str>) -> Result<IpAddr> {
    let err =
        |reason: String| Error::new(Stage::Step(15), Cause::Malformed(crate::wire::WireError::new("EVT.result.EvtData.addr", reason)));
    let host = match (&core.addr, ws_host) {
        (Some(a), _) => a.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) if !core.candidates.is_empty() => "0.0.0.0".to_owned(),
        (None, None) => return Err(err("absent, and the session has no WebSocket host to use instead".into())),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<_> =
        tokio::net::lookup_host((host.as_str(), core.port)).await.map_err(|e| err(format!("{host:?} does not resolve: {e}")))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).map(|a| a.ip()).ok_or_else(|| err(format!("{host:?} resolves to no address")))
}

/// The next frame, past any the receiver lagged behind on.
async fn next_heard(rx: &mut broadcast::Receiver<Frame>) -> Option<Frame> {
    loop {
        match rx.recv().await {
            Ok(f) => return Some(f),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// What happened in the call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// An event from the core (`conf.changed`, `timer.time`, ...).
    Core(Event),
    /// The media session ended (`conf.webrtc.Disconnected`, the socket closed, ICE/DTLS failed).
    Ended(Error),
}

/// Steps 15–19 done: in the call, hearing the conference mix.
pub struct Connected {
    join: Join,
    party: Party,
    offer: OfferFacts,
    core: ServUfrag,
    heard: broadcast::Receiver<Frame>,
}

impl Connected {
    pub fn party_id(&self) -> PartyId {
        self.party.id()
    }

    pub fn transcript(&self) -> Transcript {
        self.join.transcript.clone()
    }

    pub fn offer(&self) -> &OfferFacts {
        &self.offer
    }

    pub fn servufrag(&self) -> &ServUfrag {
        &self.core
    }

    /// The next 20 ms of heard audio (48 kHz mono), or `None` once the media is closed. Up to
    /// 2 s are kept while the application does not read; past that the oldest frames are dropped.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        next_heard(&mut self.heard).await
    }

    /// Drops the heard audio kept so far, so the next frame is the newest.
    pub fn skip_heard(&mut self) {
        self.heard = self.heard.resubscribe();
    }

    /// The next thing that happens in the call: an event from the core, or the end of the media.
    /// Heard audio is not consumed.
    pub async fn next_event(&mut self) -> CallEvent {
        tokio::select! {
            e = self.party.session.next_event(Stage::InCall) => match e {
                Ok(ev) => CallEvent::Core(ev),
                Err(err) => CallEvent::Ended(err),
            },
            reason = self.join.media.ended() => CallEvent::Ended(Error::new(Stage::InCall, Cause::Disconnected { reason })),
        }
    }

    /// Collects what is heard during the next `duration` (audio kept from before is skipped)
    /// while watching the core and the media; fails if the call ends meanwhile.
    pub async fn listen(&mut self, duration: Duration) -> Result<Vec<i16>> {
        self.skip_heard();
        let deadline = tokio::time::sleep(duration);
        tokio::pin!(deadline);
        let mut heard = Vec::with_capacity((duration.as_secs_f64() * f64::from(audio::SAMPLE_RATE)) as usize);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(heard),
                f = next_heard(&mut self.heard) => match f {
                    Some(f) => heard.extend_from_slice(&f),
                    None => return Err(Error::new(Stage::InCall, Cause::Disconnected { reason: "the media closed".into() })),
                },
                e = self.party.session.next_event(Stage::InCall) => { e?; }
                reason = self.join.media.ended() => {
                    return Err(Error::new(Stage::InCall, Cause::Disconnected { reason }));
                }
            }
        }
    }

    /// [`Connected::listen`], then writes what was heard to a WAV file.
    pub async fn record(&mut self, duration: Duration, path: &Path) -> Result<Vec<i16>> {
        let heard = self.listen(duration).await?;
        audio::write_wav(path, &heard).map_err(|reason| Error::new(Stage::InCall, Cause::Invalid { reason }))?;
        Ok(heard)
    }

    /// Hangs up: closes the media, tells the core (`CALLME_BYE`), and gives the party back for a
    /// new CALLME_S1 (a reconnect) or other commands.
    pub async fn hang_up(self) -> Party {
        let Connected { mut join, mut party, .. } = self;
        join.call(20, "close", "");
        join.media.close().await;
        let bye = party.callme("CALLME_BYE");
        party.session.send_quietly(Stage::InCall, bye).await;
        party
    }

    /// Hangs up and closes the WebSocket.
    pub async fn leave(self) {
        let mut party = self.hang_up().await;
        party.session.close().await;
    }
}
