//! One party's media session on the core: a webrtc-rs PeerConnection in ICE-lite mode, DTLS
//! server, on the core's one shared UDP port.
//!
//! The client's offer never arrives; the core reads its facts back from CALLME_S2's params
//! ([`offer_from_params`]), writes the offer from them ([`client_offer`]), applies it, answers, and reads its own ufrag, pwd and fingerprint back
//! out of the answer for `servufrag`. webrtc-rs checks the client's DTLS certificate against the
//! fingerprint in that offer, so a peer with another certificate never gets media.
//!
//! RTCP: the receiver- and sender-report interceptors run for each party; the receiver reports the
//! party sends on the mix set the expected loss of the mixer's encoders it hears.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::api::interceptor_registry::configure_rtcp_reports;
use webrtc::api::media_engine::{MediaEngine as RtcMediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::dtls_transport::dtls_role::DTLSRole;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::UDPMux;
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::certificate::RTCCertificate;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use super::mixer::Mixer;
use crate::media::guard::{self, GuardStats, GuardedMux, SsrcBudget, MAX_SSRCS};
use crate::media::rtcp::{ntp_middle, SenderFeedback};
use crate::media::sdp::{self, OfferFacts, EXT_AUDIO_LEVEL, EXT_SDES_MID};
use crate::wire::{self, code, PartyId};

/// What the core shares between all parties' media.
#[derive(Clone)]
pub struct MediaEnv {
    pub mux: Arc<dyn UDPMux + Send + Sync>,
    pub certificate: RTCCertificate,
    /// `"sha-256 AB:..."` of the certificate.
    pub fingerprint: String,
    /// The address clients are told (`servufrag`'s `addr`): the media socket's, or another that
    /// reaches it (a 1:1 NAT's public address, a container's host).
    pub announce: IpAddr,
    /// The IP the media socket is bound to (may be unspecified: every interface).
    pub bound: IpAddr,
    pub port: u16,
    pub media_timeout: Duration,
}

impl MediaEnv {
    pub fn fingerprint_of(cert: &RTCCertificate) -> String {
        let fp = cert.get_fingerprints().into_iter().find(|f| f.algorithm == "sha-256").expect("webrtc-rs gives a sha-256 fingerprint");
        format!("sha-256 {}", fp.value.to_ascii_uppercase())
    }
}

/// The client's offer, as CALLME_S2's params describe it (the inverse of
/// [`OfferFacts::s2_params`]); when an optional param is absent, Chromium's usual value.
pub fn offer_from_params(p: &BTreeMap<String, String>) -> Result<OfferFacts, wire::Refusal> {
    let bad = |code: i64, text: String| wire::Refusal::proto(code, text);
    let need = |k: &str| p.get(k).cloned().ok_or_else(|| bad(code::BAD_PARAM, format!("param {k} is missing")));
    let num = |k: &str, max: u64| -> Result<Option<u64>, wire::Refusal> {
        match p.get(k) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or_else(|| bad(code::BAD_PARAM, format!("param {k} is {v:?}, not a number from 0 to {max}"))),
        }
    };
    let ufrag = need(wire::s2::UFRAG)?;
    wire::check_ice_chars(&ufrag, 4).map_err(|r| bad(code::BAD_ICE_CREDENTIALS, format!("param ufrag: {r}")))?;
    let pwd = need(wire::s2::PWD)?;
    wire::check_ice_chars(&pwd, 22).map_err(|r| bad(code::BAD_ICE_CREDENTIALS, format!("param pwd: {r}")))?;
    let fingerprint = need(wire::s2::FINGERPRINT)?;
    let fingerprint = match fingerprint.split_once(' ') {
        Some((a, h)) => format!("{} {}", a.to_ascii_lowercase(), h.to_ascii_uppercase()),
        None => fingerprint,
    };
    wire::check_fingerprint(&fingerprint).map_err(|r| bad(code::BAD_FINGERPRINT, format!("param fingerprint: {r}")))?;
    let mid = p.get(wire::s2::MID).cloned().unwrap_or_else(|| "0".into());
    if mid.is_empty() || mid.len() > 16 || !mid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(bad(code::BAD_PARAM, format!("param mid {mid:?}: 1 to 16 letters, digits, - or _")));
    }
    let opus_pt = num(wire::s2::OPUS_PT, 127)?.unwrap_or(111) as u8;
    if opus_pt < 96 {
        return Err(bad(code::BAD_PARAM, format!("param opus_pt {opus_pt}: a dynamic payload type is 96-127")));
    }
    let opus_fmtp = p.get(wire::s2::OPUS_FMTP).cloned().unwrap_or_else(|| "minptime=10;useinbandfec=1".into());
    if opus_fmtp.contains(['\r', '\n']) {
        return Err(bad(code::BAD_PARAM, "param opus_fmtp contains a line break".into()));
    }
    let ext = |k: &str, default: u8| -> Result<Option<u8>, wire::Refusal> {
        Ok(Some(num(k, 14)?.map_or(default, |v| v as u8)).filter(|id| *id >= 1))
    };
    let cname = p.get(wire::s2::CNAME).cloned();
    if cname.as_deref().is_some_and(|c| c.contains(['\r', '\n', ' '])) {
        return Err(bad(code::BAD_PARAM, "param cname contains a space or line break".into()));
    }
    Ok(OfferFacts {
        bundle: true,
        ufrag,
        pwd,
        fingerprint,
        mid,
        opus_pt,
        opus_fmtp,
        ext_audio_level: ext(wire::s2::EXT_AUDIO_LEVEL, 1)?,
        ext_mid: ext(wire::s2::EXT_MID, 4)?,
        ssrc: num(wire::s2::SSRC, u64::from(u32::MAX))?.map(|v| v as u32),
        cname,
    })
}

/// The client's offer as the core reconstructs it from CALLME_S2.
pub fn client_offer(p: &OfferFacts) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push_str("\r\n");
    };
    line("v=0".into());
    line("o=- 1 1 IN IP4 0.0.0.0".into());
    line("s=-".into());
    line("t=0 0".into());
    line(format!("a=group:BUNDLE {}", p.mid));
    line(format!("m=audio 9 UDP/TLS/RTP/SAVPF {}", p.opus_pt));
    line("c=IN IP4 0.0.0.0".into());
    line(format!("a=ice-ufrag:{}", p.ufrag));
    line(format!("a=ice-pwd:{}", p.pwd));
    line(format!("a=fingerprint:{}", p.fingerprint));
    line("a=setup:actpass".into());
    line(format!("a=mid:{}", p.mid));
    sdp::media_lines(p, &mut line);
    if let Some(ssrc) = p.ssrc {
        line(format!("a=ssrc:{ssrc} cname:{}", p.cname.as_deref().unwrap_or("callme")));
    }
    s
}

/// What `servufrag` tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreIce {
    pub ufrag: String,
    pub pwd: String,
    pub fingerprint: String,
}

/// A running media session; dropping it does not stop it, [`PartyMedia::close`] does.
pub struct PartyMedia {
    pc: Arc<RTCPeerConnection>,
    tasks: Vec<JoinHandle<()>>,
    guard: Arc<GuardStats>,
}

impl PartyMedia {
    /// Sets up the party's PeerConnection, registers it with the mixer, and starts the
    /// supervisor that reports the end of the media (with a reason) on `ended`.
    pub async fn start(
        env: &MediaEnv,
        party: PartyId,
        params: &OfferFacts,
        mixer: Mixer,
        ended: impl FnOnce(String) + Send + 'static,
    ) -> Result<(PartyMedia, CoreIce), String> {
        let opus = RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: params.opus_fmtp.clone(),
            rtcp_feedback: vec![],
        };
        let mut media = RtcMediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters { capability: opus.clone(), payload_type: params.opus_pt, ..Default::default() },
                RTPCodecType::Audio,
            )
            .map_err(|e| e.to_string())?;
        for uri in [EXT_AUDIO_LEVEL, EXT_SDES_MID] {
            media
                .register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.to_owned() }, RTPCodecType::Audio, None)
                .map_err(|e| e.to_string())?;
        }
        let mut settings = SettingEngine::default();
        settings.set_lite(true);
        // Every datagram from the party's address passes the guard before webrtc-rs parses it;
        // RTP is admitted for the SSRC the party declared (when it did).
        let guard = GuardedMux::over_mux(env.mux.clone(), SsrcBudget::new(params.ssrc, MAX_SSRCS));
        let guard_stats = guard.stats();
        settings.set_udp_network(UDPNetwork::Muxed(guard));
        settings.set_answering_dtls_role(DTLSRole::Server).map_err(|e| e.to_string())?;
        candidate_settings(&mut settings, env.bound, env.announce);
        // RTCP for audio: a receiver report on the party's stream and a sender report on the mix,
        // once a second each (no NACK, no TWCC: audio is neither retransmitted nor paced).
        let registry = configure_rtcp_reports(Registry::new());
        let api = APIBuilder::new().with_media_engine(media).with_interceptor_registry(registry).with_setting_engine(settings).build();
        let config = RTCConfiguration { certificates: vec![env.certificate.clone()], ..Default::default() };
        let pc = Arc::new(api.new_peer_connection(config).await.map_err(|e| e.to_string())?);

        let result = Self::negotiate(env, party, params, &pc, opus, mixer, ended).await;
        match result {
            Ok((tasks, ice)) => Ok((PartyMedia { pc, tasks, guard: guard_stats }, ice)),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    async fn negotiate(
        env: &MediaEnv,
        party: PartyId,
        params: &OfferFacts,
        pc: &Arc<RTCPeerConnection>,
        opus: RTCRtpCodecCapability,
        mixer: Mixer,
        ended: impl FnOnce(String) + Send + 'static,
    ) -> Result<(Vec<JoinHandle<()>>, CoreIce), String> {
        let mut tasks = Vec::new();
        let track = Arc::new(TrackLocalStaticSample::new(opus, "mix".to_owned(), format!("conference-mix-{party}")));
        let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>).await.map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(read_party_rtcp(sender, party, mixer.clone())));

        // Incoming audio goes to the mixer; the time of the last packet feeds the supervisor, and
        // a reader that stops for any reason but a clean close reports it at once.
        let started = Instant::now();
        let last_rx = Arc::new(AtomicU64::new(0));
        let last = last_rx.clone();
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
        let packets = mixer.clone();
        pc.on_track(Box::new(move |remote, receiver, _transceiver| {
            // The party's sender reports reach the receiver-report interceptor only through the
            // receiver's RTCP, read here: then the core's receiver reports echo them (LSR, DLSR)
            // and the party can measure its round trip.
            tokio::spawn(async move { while receiver.read_rtcp().await.is_ok() {} });
            let mixer = packets.clone();
            let last = last.clone();
            let reader = ReaderWatch(Some(failed_tx.clone()));
            tokio::spawn(async move {
                let failure = loop {
                    match remote.read_rtp().await {
                        Ok((packet, _)) => {
                            last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            mixer.packet(party, packet.header.sequence_number, packet.header.timestamp, packet.payload);
                        }
                        Err(e) => break guard::reader_failure(&e),
                    }
                };
                reader.finish(failure);
            });
            Box::pin(async {})
        }));
        let (state_tx, mut state_rx) = watch::channel(RTCPeerConnectionState::New);
        let connected = mixer.clone();
        pc.on_peer_connection_state_change(Box::new(move |s| {
            if s == RTCPeerConnectionState::Connected {
                connected.connected(party);
            }
            let _ = state_tx.send(s);
            Box::pin(async {})
        }));

        let offer = RTCSessionDescription::offer(client_offer(params)).map_err(|e| e.to_string())?;
        pc.set_remote_description(offer).await.map_err(|e| format!("the client's offer: {e}"))?;
        let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await.map_err(|e| e.to_string())?;
        // The party's ufrag is registered on the shared port once gathering completes: only then
        // may servufrag go out, so the client's first check is never dropped.
        let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
        let local = pc.local_description().await.ok_or("no local description after setLocalDescription")?;
        let facts = sdp::parse_offer(&local.sdp).map_err(|e| format!("the core's own answer: {e}"))?;
        let ice = CoreIce { ufrag: facts.ufrag, pwd: facts.pwd, fingerprint: env.fingerprint.clone() };

        mixer.add(party, track);

        // The supervisor: the media ends when ICE/DTLS fail or nothing arrives for too long.
        let timeout = env.media_timeout;
        tasks.push(tokio::spawn(async move {
            let mut check = tokio::time::interval(Duration::from_millis(250));
            let reason = loop {
                tokio::select! {
                    changed = state_rx.changed() => {
                        if changed.is_err() {
                            break "the PeerConnection is gone".to_owned();
                        }
                        match *state_rx.borrow_and_update() {
                            RTCPeerConnectionState::Failed => break "ICE or DTLS failed".to_owned(),
                            RTCPeerConnectionState::Closed => break "the PeerConnection closed".to_owned(),
                            _ => {}
                        }
                    }
                    Some(failure) = failed_rx.recv() => break failure,
                    _ = check.tick() => {
                        // The reader stores its time on another thread: it may be a little ahead.
                        let idle = (started.elapsed().as_millis() as u64).saturating_sub(last_rx.load(Ordering::Relaxed));
                        if idle > timeout.as_millis() as u64 {
                            break format!("no media from the party for {} ms", timeout.as_millis());
                        }
                    }
                }
            };
            ended(reason);
        }));
        Ok((tasks, ice))
    }

    /// Stops every task and closes the PeerConnection (its ufrag leaves the shared port).
    pub async fn close(mut self) {
        if self.guard.dropped() > 0 {
            tracing::info!(
                passed = self.guard.passed(),
                dropped = self.guard.dropped(),
                last = %self.guard.last_rejection().map(|r| r.to_string()).unwrap_or_default(),
                "the datagram guard dropped datagrams from this party's address"
            );
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
    }
}

/// Reads the RTCP on the mix sent to the party until the sender stops (the interceptors need it
/// read): the party's receiver reports give the loss on the path to it, which the mixer's encoders
/// that the party hears are told to expect (see `media::rtcp` and docs/mixer.md).
async fn read_party_rtcp(sender: Arc<RTCRtpSender>, party: PartyId, mixer: Mixer) {
    let mut feedback = sender.get_parameters().await.encodings.first().map(|e| SenderFeedback::new(e.ssrc, true));
    let mut buf = vec![0u8; 1500];
    while let Ok((packets, _)) = sender.read(&mut buf).await {
        let Some(f) = feedback.as_mut() else { continue };
        if let Some(percent) = f.handle_rtcp(&packets, ntp_middle(SystemTime::now())) {
            tracing::debug!(%party, percent, loss = f.smoothed_loss(), round_trip = ?f.round_trip(), "the expected loss of the party's mix changes");
            mixer.expected_loss(party, percent);
        }
    }
}

/// Tells the supervisor how a media reader ended: with a failure (`finish(Some(..))`), cleanly
/// (`finish(None)`), or, when it is dropped unfinished (its task panicked or was aborted), that
/// it stopped without a reason.
struct ReaderWatch(Option<mpsc::UnboundedSender<String>>);

impl ReaderWatch {
    fn finish(mut self, failure: Option<String>) {
        if let (Some(tx), Some(f)) = (self.0.take(), failure) {
            let _ = tx.send(f);
        }
    }
}

impl Drop for ReaderWatch {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send("the RTP reader stopped unexpectedly".to_owned());
        }
    }
}

/// The one host candidate: at the announced address, on the shared port.
///
/// webrtc-rs offers one candidate per local interface address that passes the IP filter, and
/// with a 1:1 NAT mapping it writes the mapped address instead of the local one. When the
/// announced address is not the socket's (a NAT's public address, or another loopback address
/// forwarded to this one), no local interface has it: filtering on it alone leaves no
/// candidate, so the ICE agent has nothing to answer checks on and the client's checks go
/// unanswered. So the filter lets through the socket's own address (the first address of the
/// announced family when the socket is bound to every interface), and the 1:1 mapping turns it
/// into the announced one.
fn candidate_settings(settings: &mut SettingEngine, bound: IpAddr, announce: IpAddr) {
    let v4 = announce.is_ipv4();
    settings.set_network_types(vec![if v4 { NetworkType::Udp4 } else { NetworkType::Udp6 }]);
    settings.set_include_loopback_candidate(bound.is_loopback() || (bound.is_unspecified() && announce.is_loopback()));
    if bound.is_unspecified() {
        let chosen = Mutex::new(None::<IpAddr>);
        settings.set_ip_filter(Box::new(move |ip| {
            let mut chosen = chosen.lock().unwrap_or_else(|p| p.into_inner());
            ip.is_ipv4() == v4 && *chosen.get_or_insert(ip) == ip
        }));
    } else {
        settings.set_ip_filter(Box::new(move |ip| ip == bound));
    }
    if announce != bound {
        settings.set_nat_1to1_ips(vec![announce.to_string()], RTCIceCandidateType::Host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BTreeMap<String, String> {
        [
            ("ufrag", "abcd"),
            ("pwd", "abcdefghijklmnopqrstuvwx"),
            ("fingerprint", "sha-256 ab:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn the_params_the_client_sends_give_back_its_offer_facts() {
        let offer = sdp::parse_offer(crate::media::fake::FAKE_OFFER).unwrap();
        let params = offer.s2_params().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(offer_from_params(&params).unwrap(), offer);
    }

    #[test]
    fn absent_optional_params_take_chromiums_usual_values() {
        let p = offer_from_params(&params()).unwrap();
        assert_eq!((p.mid.as_str(), p.opus_pt, p.ext_audio_level, p.ext_mid), ("0", 111, Some(1), Some(4)));
        assert!(p.fingerprint.starts_with("sha-256 AB:CD"));
    }

    #[test]
    fn each_bad_param_gets_its_own_code_and_names_itself() {
        let mut p = params();
        p.insert("pwd".into(), "short".into());
        let e = offer_from_params(&p).unwrap_err();
        assert_eq!(e.code, code::BAD_ICE_CREDENTIALS);
        assert!(e.text.contains("pwd"), "{}", e.text);

        let mut p = params();
        p.insert("fingerprint".into(), "md5 00".into());
        assert_eq!(offer_from_params(&p).unwrap_err().code, code::BAD_FINGERPRINT);

        let mut p = params();
        p.insert("opus_pt".into(), "x".into());
        let e = offer_from_params(&p).unwrap_err();
        assert_eq!(e.code, code::BAD_PARAM);
        assert!(e.text.contains("opus_pt"), "{}", e.text);

        let mut p = params();
        p.remove("ufrag");
        assert!(offer_from_params(&p).unwrap_err().text.contains("ufrag is missing"));
    }
}
