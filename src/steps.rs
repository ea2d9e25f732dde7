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
use std::time::Duration;

use tokio::sync::broadcast;

use crate::audio::{AudioSource, Frame};
use crate::call::Connected;
use crate::error::{Cause, Error, JoinError, Result, Stage};
use crate::media::sdp::{self, OfferFacts};
use crate::media::{IceServer, MediaEngine, RtcMedia};
use crate::signaling::Party;
use crate::transcript::{Side, Transcript, What};
use crate::wire::{Event, ServDesc, ServUfrag};

/// Frames of heard audio kept for the application; when it lags, the oldest go first (2 s).
const HEARD_QUEUE: usize = 100;

/// What every state carries: the media layer and the transcript it records to.
pub(crate) struct Join {
    pub(crate) media: Box<dyn MediaEngine>,
    pub(crate) transcript: Transcript,
    media_timeout: Duration,
    /// The heard audio's channel: made at step 19 of the first join, kept by every rejoin so
    /// the application's stream goes on.
    pub(crate) heard: Option<broadcast::Sender<Frame>>,
    /// A bound on the session's media timeout (a reconnection's attempt waits less).
    pub(crate) media_bound: Option<Duration>,
}

/// What steps 15–19 leave: the media playing, the party, the facts of both sides.
pub(crate) struct Joined {
    pub(crate) join: Join,
    pub(crate) party: Party,
    pub(crate) offer: OfferFacts,
    pub(crate) core: ServUfrag,
    pub(crate) heard: broadcast::Receiver<Frame>,
}

impl Join {
    pub(crate) fn record(&self, step: u8, side: Side, what: What) {
        self.transcript.record(step, side, what);
    }

    pub(crate) fn call(&self, step: u8, name: &str, detail: impl Into<String>) {
        self.record(step, Side::Media, What::Call { name: name.to_owned(), detail: detail.into() });
    }

    fn returned(&self, step: u8, name: &str, detail: impl Into<String>) {
        self.record(step, Side::Media, What::Returned { name: name.to_owned(), detail: detail.into() });
    }

    /// Leaves nothing half-open after a failure: records it, closes the media, tells the core.
    async fn fail_alone(mut self, error: Error) -> Error {
        let step = error.stage.transcript_step();
        self.record(step, Side::Local, What::Failed { error: error.to_string() });
        self.call(step, "close", "");
        self.media.close().await;
        error
    }

    /// [`Join::fail_alone`], then tells the core if it may hold media state for the party, and
    /// gives the party back with the error while its WebSocket is open.
    async fn fail(self, mut party: Party, error: Error) -> JoinError {
        let error = self.fail_alone(error).await;
        let step = error.stage.transcript_step();
        let refused_s1 = error.stage == Stage::Step(4) && matches!(error.cause, Cause::Refused(_));
        if step >= 4 && !refused_s1 {
            let bye = party.callme("CALLME_BYE");
            party.session.send_quietly(error.stage, bye).await;
        }
        let usable = !party.session.is_closed();
        JoinError::new(error, usable.then_some(party))
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

/// Runs `$body` (a `Result`); on error, cleans up and returns from the transition, with the
/// party when there is one.
macro_rules! attempt {
    ($join:expr, None, $body:expr) => {
        match $body {
            Ok(v) => v,
            Err(e) => return Err($join.fail_alone(e).await),
        }
    };
    ($join:expr, $party:expr, $body:expr) => {
        match $body {
            Ok(v) => v,
            Err(e) => return Err($join.fail($party, e).await),
        }
    };
}

impl Party {
    /// All 19 steps in one call, with the real media layer: for applications that want the call,
    /// not the steps. Same errors, same clean-up, same transcript as the typestates one by one;
    /// a failure gives the party back while its session is usable ([`JoinError::into_party`]).
    pub async fn join(self, source: AudioSource) -> Result<Connected, JoinError> {
        self.join_with(RtcMedia::default(), source).await
    }

    /// [`Party::join`] with a chosen media layer.
    pub async fn join_with(self, media: impl MediaEngine + 'static, source: AudioSource) -> Result<Connected, JoinError> {
        let transcript = self.transcript();
        let ready = match MediaReady::acquire_with(media, source, &transcript).await {
            Ok(r) => r,
            Err(e) => return Err(JoinError::new(e, Some(self))),
        };
        ready.call_me_s1(self).await?.create_offer().await?.call_me_s2().await?.connect().await
    }
}

/// Steps 1–2 done: the local audio stream exists. Next: [`MediaReady::call_me_s1`].
///
/// Dropped instead, it closes the audio source; nothing was sent to the core.
#[must_use = "steps 3–19 follow with call_me_s1"]
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
        let mut join = Join { media: Box::new(media), transcript: transcript.clone(), media_timeout: Duration::from_secs(10), heard: None, media_bound: None };
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
    pub async fn call_me_s1(self, mut party: Party) -> Result<S1Accepted, JoinError> {
        let mut join = self.join;
        let transcript = party.transcript();
        transcript.absorb(&join.transcript);
        join.transcript = transcript;
        join.media_timeout = party.session.timeouts().media.min(join.media_bound.unwrap_or(Duration::MAX));

        let cmd = party.callme("CALLME_S1");
        let seq = attempt!(join, party, party.session.send(Stage::Step(3), cmd, true).await);
        let answer = attempt!(join, party, party.session.answer(Stage::Step(4), seq, "CALLME_S1").await);
        if let Some(refusal) = answer.refusal(&[crate::wire::code::OK]) {
            return Err(join.fail(party, Error::new(Stage::Step(4), Cause::Refused(refusal))).await);
        }
        let event = attempt!(join, party, party.session.event(Stage::Step(5), ServDesc::EVENT).await);
        // The TURN credentials are secrets: redacted even when the event turns out malformed.
        for (field, placeholder) in [("username", "turn-username"), ("credential", "turn-credential")] {
            if let Some(v) = event.evt_data().get(field).and_then(serde_json::Value::as_str) {
                join.transcript.redact(v, placeholder);
            }
        }
        let servdesc = attempt!(join, party, parse_event(5, &event, ServDesc::from_event));
        Ok(S1Accepted { join, party, servdesc })
    }
}

fn parse_event<T>(step: u8, e: &Event, parse: fn(&Event) -> std::result::Result<T, crate::wire::WireError>) -> Result<T> {
    parse(e).map_err(|w| Error::new(Stage::Step(step), Cause::Malformed(w)))
}

/// Steps 3–5 done: the core accepted CALLME_S1 and gave its ICE server. Next:
/// [`S1Accepted::create_offer`].
///
/// Dropped instead, its PeerConnection closes and its WebSocket closes with it; the core frees
/// the party when it sees the socket close.
#[must_use = "steps 6–19 follow with create_offer"]
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
    pub async fn create_offer(self) -> Result<Offered, JoinError> {
        let S1Accepted { mut join, party, servdesc } = self;
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
        attempt!(join, party, timed(6, "createPeerConnection", join.media_timeout, join.media.create_peer_connection(&ice)).await);

        join.call(7, "createOffer", "");
        let sdp = attempt!(join, party, timed(8, "createOffer", join.media_timeout, join.media.create_offer()).await);
        join.returned(8, "createOffer", sdp.clone());

        let offer = attempt!(join, party, sdp::parse_offer(&sdp).map_err(|w| Error::new(Stage::Step(9), Cause::Offer(w))));
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
        attempt!(join, party, timed(11, "setLocalDescription", join.media_timeout, join.media.set_local_description(&sdp)).await);
        join.returned(11, "setLocalDescription", "");
        Ok(Offered { join, party, offer })
    }
}

/// Steps 6–11 done: the offer is set locally and its facts are known. Next:
/// [`Offered::call_me_s2`].
///
/// Dropped instead, its PeerConnection closes and its WebSocket closes with it; the core frees
/// the party when it sees the socket close.
#[must_use = "steps 12–19 follow with call_me_s2"]
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
    pub async fn call_me_s2(self) -> Result<S2Accepted, JoinError> {
        let Offered { join, mut party, offer } = self;
        let mut cmd = party.callme("CALLME_S2");
        for (k, v) in offer.s2_params() {
            cmd = cmd.param(k, v);
        }
        let seq = attempt!(join, party, party.session.send(Stage::Step(12), cmd, true).await);
        let answer = attempt!(join, party, party.session.answer(Stage::Step(13), seq, "CALLME_S2").await);
        if let Some(refusal) = answer.refusal(&[crate::wire::code::OK]) {
            return Err(join.fail(party, Error::new(Stage::Step(13), Cause::Refused(refusal))).await);
        }
        let event = attempt!(join, party, party.session.event(Stage::Step(14), ServUfrag::EVENT).await);
        let core = attempt!(join, party, parse_event(14, &event, ServUfrag::from_event));
        let t = &join.transcript;
        t.redact(&core.ufrag, "core-ufrag");
        t.redact(&core.pwd, "core-pwd");
        t.redact(&core.fingerprint, "core-fingerprint");
        Ok(S2Accepted { join, party, offer, core })
    }
}

/// Steps 12–14 done: the core accepted CALLME_S2 and gave its ICE and DTLS parameters. Next:
/// [`S2Accepted::connect`].
///
/// Dropped instead, its PeerConnection closes and its WebSocket closes with it; the core frees
/// the party and its media when it sees the socket close.
#[must_use = "steps 15–19 follow with connect"]
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
    pub async fn connect(self) -> Result<Connected, JoinError> {
        let Joined { join, party, offer, core, heard } = self.connect_parts().await?;
        Ok(Connected::start(join, party, offer, core, heard))
    }

    /// Steps 15–19, giving back the parts instead of starting the call.
    pub(crate) async fn connect_parts(self) -> Result<Joined, JoinError> {
        let S2Accepted { mut join, mut party, offer, core } = self;
        let addr = attempt!(join, party, candidate_addr(&core, party.session.host()).await);
        let answer =
            attempt!(join, party, sdp::try_build_answer(&offer, &core, addr).map_err(|w| Error::new(Stage::Step(15), Cause::Malformed(w))));
        join.record(15, Side::Local, What::Returned { name: "buildAnswer".into(), detail: answer.clone() });

        join.call(16, "setRemoteDescription", "answer");
        attempt!(join, party, timed(17, "setRemoteDescription", join.media_timeout, join.media.set_remote_description(&answer)).await);
        join.returned(17, "setRemoteDescription", "");

        // While the media is awaited the session is read too: the core may end the session.
        let track = tokio::select! {
            biased; // the media first: the same frames are read in every run
            t = timed(18, "ontrack", join.media_timeout, join.media.remote_track()) => t,
            e = party.session.until_ended(Stage::Step(18)) => Err(e),
        };
        let track = attempt!(join, party, track);
        join.returned(18, "ontrack", track);

        join.call(19, "play", "decoded 20 ms frames to the application");
        let heard_tx = join.heard.get_or_insert_with(|| broadcast::channel(HEARD_QUEUE).0).clone();
        let heard = heard_tx.subscribe();
        attempt!(join, party, timed(19, "play", join.media_timeout, join.media.play(heard_tx)).await);
        Ok(Joined { join, party, offer, core, heard })
    }
}

/// Steps 3–19 again for a party whose media is already open (a reconnection): the same media
/// layer, the same local audio and heard stream, a new PeerConnection. The media is lent: on
/// failure the attempt's clean-up closes only the PeerConnection ([`MediaEngine::restart`]), and
/// the media layer comes back with the result either way.
pub(crate) async fn rejoin(
    media: Box<dyn MediaEngine>,
    transcript: Transcript,
    heard: broadcast::Sender<Frame>,
    party: Party,
    media_bound: Duration,
) -> (Box<dyn MediaEngine>, std::result::Result<Joined, JoinError>) {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let lent = Lent { inner: Some(media), back: slot.clone() };
    let join = Join { media: Box::new(lent), transcript, media_timeout: media_bound, heard: Some(heard), media_bound: Some(media_bound) };
    let result = match (MediaReady { join }).call_me_s1(party).await {
        Ok(s1) => match s1.create_offer().await {
            Ok(offered) => match offered.call_me_s2().await {
                Ok(s2) => s2.connect_parts().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    // Dropping the lending wrapper (with the join it was in) gives the media back.
    let result = result.map(|mut joined| {
        joined.join.media = Box::new(Placeholder);
        joined
    });
    let media = slot.lock().unwrap_or_else(|p| p.into_inner()).take().expect("the lent media comes back when its wrapper is dropped");
    (media, result)
}

/// A media layer lent to a rejoin: every call goes through, but closing it only restarts it
/// (the PeerConnection closes, the audio stays), and when dropped it goes back to its slot.
struct Lent {
    inner: Option<Box<dyn MediaEngine>>,
    back: std::sync::Arc<std::sync::Mutex<Option<Box<dyn MediaEngine>>>>,
}

impl Lent {
    fn inner(&mut self) -> &mut Box<dyn MediaEngine> {
        self.inner.as_mut().expect("present until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        *self.back.lock().unwrap_or_else(|p| p.into_inner()) = self.inner.take();
    }
}

#[async_trait::async_trait]
impl MediaEngine for Lent {
    async fn get_user_media(&mut self, source: AudioSource) -> std::result::Result<String, String> {
        self.inner().get_user_media(source).await
    }
    async fn create_peer_connection(&mut self, ice: &[IceServer]) -> std::result::Result<(), String> {
        self.inner().create_peer_connection(ice).await
    }
    async fn create_offer(&mut self) -> std::result::Result<String, String> {
        self.inner().create_offer().await
    }
    async fn set_local_description(&mut self, sdp: &str) -> std::result::Result<(), String> {
        self.inner().set_local_description(sdp).await
    }
    async fn set_remote_description(&mut self, sdp: &str) -> std::result::Result<(), String> {
        self.inner().set_remote_description(sdp).await
    }
    async fn remote_track(&mut self) -> std::result::Result<String, String> {
        self.inner().remote_track().await
    }
    async fn play(&mut self, heard: broadcast::Sender<Frame>) -> std::result::Result<(), String> {
        self.inner().play(heard).await
    }
    async fn set_sending(&mut self, on: bool) -> std::result::Result<(), String> {
        self.inner().set_sending(on).await
    }
    async fn ended(&mut self) -> String {
        self.inner().ended().await
    }
    async fn restart(&mut self) -> std::result::Result<(), String> {
        self.inner().restart().await
    }
    async fn close(&mut self) {
        let _ = self.inner().restart().await;
    }
}

/// The place of a media layer that is elsewhere (lent to a rejoin, or gone back to its owner).
pub(crate) struct Placeholder;

#[async_trait::async_trait]
impl MediaEngine for Placeholder {
    async fn get_user_media(&mut self, _: AudioSource) -> std::result::Result<String, String> {
        Err(GONE.into())
    }
    async fn create_peer_connection(&mut self, _: &[IceServer]) -> std::result::Result<(), String> {
        Err(GONE.into())
    }
    async fn create_offer(&mut self) -> std::result::Result<String, String> {
        Err(GONE.into())
    }
    async fn set_local_description(&mut self, _: &str) -> std::result::Result<(), String> {
        Err(GONE.into())
    }
    async fn set_remote_description(&mut self, _: &str) -> std::result::Result<(), String> {
        Err(GONE.into())
    }
    async fn remote_track(&mut self) -> std::result::Result<String, String> {
        Err(GONE.into())
    }
    async fn play(&mut self, _: broadcast::Sender<Frame>) -> std::result::Result<(), String> {
        Err(GONE.into())
    }
    async fn set_sending(&mut self, _: bool) -> std::result::Result<(), String> {
        Err(GONE.into())
    }
    async fn ended(&mut self) -> String {
        GONE.into()
    }
    async fn restart(&mut self) -> std::result::Result<(), String> {
        Err(GONE.into())
    }
    async fn close(&mut self) {}
}

const GONE: &str = "the media layer went back to the call";

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
