//! The real media layer: a webrtc-rs PeerConnection over UDP, Opus by libopus.
//!
//! The PeerConnection offers one `sendrecv` audio section (Opus 48 kHz, the `ssrc-audio-level`
//! and `sdes:mid` header extensions) and is a full ICE agent; the core is ICE-lite. Loopback
//! candidates are gathered too, so a core on `127.0.0.1` is reached. After step 19 two tasks run
//! for the life of the media layer, through reconnections: the pump sends a 20 ms Opus frame of
//! the local source per tick on the current PeerConnection, and the play-out task (`receive`,
//! on [`super::playout`]) hands the application a frame every 20 ms from what the current
//! PeerConnection's reader gives it. [`RtcMedia::close`] stops both and closes the
//! PeerConnection.
//!
//! From step 6 a third task reads the RTCP the core sends on our stream: its receiver reports
//! set the encoder's expected loss, so the in-band FEC follows the path (with
//! [`RtcOptions::fec`]; see [`super::rtcp`] for the mapping), and the loss and round trip in
//! `SendStats`; the send task counts the packets and bytes it sends and the level of each frame.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine as RtcMediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use super::guard::{GuardedMux, SsrcBudget};
use super::receive::Receive;
use super::rtcp::{ntp_middle, LossEstimator, SenderFeedback};
use super::sdp::{EXT_AUDIO_LEVEL, EXT_SDES_MID};
use super::{IceServer, MediaEngine};
use crate::audio::opus_codec;
use crate::audio::{AudioSource, Frame, LocalAudio, FRAME_DURATION};
use crate::stats::{level_dbfs, StatsCell};

/// Choices for the real media layer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RtcOptions {
    /// Use only relayed (TURN) candidates, as `iceTransportPolicy: "relay"`.
    pub relay_only: bool,
    /// Gather loopback candidates (needed to reach a core on 127.0.0.1).
    pub loopback: bool,
    /// Gather only loopback candidates (a core on this machine): nothing leaves 127.0.0.0/8.
    pub loopback_only: bool,
    /// The Opus payload type offered.
    pub opus_pt: u8,
    /// The adaptive jitter buffer on the receive path (off: packets are decoded in arrival
    /// order, as they come, and late ones dropped: the naive path, for comparison).
    pub jitter_buffer: bool,
    /// Opus in-band FEC: sent (with the expected loss from the core's receiver reports) and
    /// used to rebuild a lost packet from the next one.
    pub fec: bool,
}

impl Default for RtcOptions {
    fn default() -> Self {
        RtcOptions { relay_only: false, loopback: true, loopback_only: false, opus_pt: 111, jitter_buffer: true, fec: true }
    }
}

/// webrtc-rs behind [`MediaEngine`].
pub struct RtcMedia {
    options: RtcOptions,
    local: Option<LocalAudio>,
    pc: Option<Arc<RTCPeerConnection>>,
    track: Option<Arc<TrackLocalStaticSample>>,
    remote_rx: Option<mpsc::Receiver<Arc<TrackRemote>>>,
    remote: Option<Arc<TrackRemote>>,
    state: Option<watch::Receiver<RTCPeerConnectionState>>,
    /// Set by the reader task when reading the remote track fails (not a clean close).
    reader: (watch::Sender<Option<String>>, watch::Receiver<Option<String>>),
    /// The tasks of the current PeerConnection.
    tasks: Vec<JoinHandle<()>>,
    /// The task that reads the local audio and encodes it every 20 ms, from the first step 19
    /// until [`RtcMedia::close`] (it outlives reconnections), and where it sends: the current
    /// PeerConnection's track, or nowhere.
    pump: Option<(watch::Sender<Option<Arc<TrackLocalStaticSample>>>, JoinHandle<()>)>,
    /// The play-out task (jitter buffer, decoder), from the first step 19 until
    /// [`RtcMedia::close`]: each PeerConnection's reader feeds it.
    receive: Option<Receive>,
    /// Whether the local audio is sent (else silence frames are).
    sending: Arc<AtomicBool>,
    /// What the media measures.
    stats: StatsCell,
    /// The packet loss the encoder is to expect, in percent: set from the core's receiver
    /// reports, applied by the encode loop before its next frame.
    expected_loss: Arc<AtomicU8>,
}

impl Default for RtcMedia {
    fn default() -> Self {
        Self::new(RtcOptions::default())
    }
}

impl RtcOptions {
    /// With relayed (TURN) candidates only, or not.
    pub fn relay_only(mut self, on: bool) -> Self {
        self.relay_only = on;
        self
    }

    /// Gathering only loopback candidates, or not.
    pub fn with_loopback_only(mut self, on: bool) -> Self {
        self.loopback_only = on;
        self
    }

    /// Offering this Opus payload type.
    pub fn with_opus_pt(mut self, pt: u8) -> Self {
        self.opus_pt = pt;
        self
    }

    /// With the adaptive jitter buffer, or without (the naive path).
    pub fn with_jitter_buffer(mut self, on: bool) -> Self {
        self.jitter_buffer = on;
        self
    }

    /// With Opus in-band FEC sent and used, or without.
    pub fn with_fec(mut self, on: bool) -> Self {
        self.fec = on;
        self
    }

    /// Only loopback candidates: for a core on this machine.
    pub fn loopback_only() -> Self {
        RtcOptions { loopback_only: true, ..Default::default() }
    }
}

impl RtcMedia {
    /// The media layer with these options.
    pub fn new(options: RtcOptions) -> Self {
        RtcMedia {
            local: None,
            pc: None,
            track: None,
            remote_rx: None,
            remote: None,
            state: None,
            reader: watch::channel(None),
            tasks: Vec::new(),
            pump: None,
            receive: None,
            sending: Arc::new(AtomicBool::new(true)),
            stats: StatsCell::new(),
            expected_loss: Arc::new(AtomicU8::new(LossEstimator::new(options.fec).expected_loss_percent())),
            options,
        }
    }

    fn opus_capability() -> RTCRtpCodecCapability {
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        }
    }

    fn pc(&self) -> Result<&Arc<RTCPeerConnection>, String> {
        self.pc.as_ref().ok_or_else(|| "no PeerConnection (step 6 did not run)".to_owned())
    }
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

#[async_trait]
impl MediaEngine for RtcMedia {
    async fn get_user_media(&mut self, source: AudioSource) -> Result<String, String> {
        let d = source.describe();
        self.local = Some(source.open()?);
        Ok(format!("48 kHz mono: {d}"))
    }

    async fn create_peer_connection(&mut self, ice_servers: &[IceServer]) -> Result<(), String> {
        let mut media = RtcMediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters { capability: Self::opus_capability(), payload_type: self.options.opus_pt, ..Default::default() },
                RTPCodecType::Audio,
            )
            .map_err(text)?;
        for uri in [EXT_AUDIO_LEVEL, EXT_SDES_MID] {
            media
                .register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.to_owned() }, RTPCodecType::Audio, None)
                .map_err(text)?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media).map_err(text)?;
        let mut settings = SettingEngine::default();
        settings.set_include_loopback_candidate(self.options.loopback || self.options.loopback_only);
        // One UDP socket of the call's own behind the datagram guard (`super::guard`): nothing
        // webrtc-rs cannot parse safely reaches it. It is bound to every interface (or to
        // loopback only) and offered as one host candidate: the core is ICE-lite, so the checks
        // always start here and leave by the kernel's route whatever address the candidate
        // names. TURN relay candidates, when asked for, keep sockets of their own.
        let bind: std::net::SocketAddr = if self.options.loopback_only { "127.0.0.1:0" } else { "0.0.0.0:0" }.parse().map_err(text)?;
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| format!("the media socket {bind}: {e}"))?;
        settings.set_udp_network(UDPNetwork::Muxed(GuardedMux::over_socket(Arc::new(socket), SsrcBudget::default())));
        settings.set_network_types(vec![NetworkType::Udp4]);
        let loopback_only = self.options.loopback_only;
        let chosen = std::sync::Mutex::new(None::<std::net::IpAddr>);
        settings.set_ip_filter(Box::new(move |ip| {
            let mut chosen = chosen.lock().unwrap_or_else(|p| p.into_inner());
            ip.is_ipv4() && (ip.is_loopback() || !loopback_only) && *chosen.get_or_insert(ip) == ip
        }));
        let api = APIBuilder::new().with_media_engine(media).with_interceptor_registry(registry).with_setting_engine(settings).build();
        let config = RTCConfiguration {
            ice_servers: ice_servers
                .iter()
                .map(|s| RTCIceServer { urls: vec![s.url.clone()], username: s.username.clone(), credential: s.credential.clone() })
                .collect(),
            ice_transport_policy: if self.options.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All },
            ..Default::default()
        };
        let pc = Arc::new(api.new_peer_connection(config).await.map_err(text)?);

        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        pc.on_peer_connection_state_change(Box::new(move |s| {
            let _ = state_tx.send(s);
            Box::pin(async {})
        }));
        let (track_tx, track_rx) = mpsc::channel(1);
        pc.on_track(Box::new(move |track, _receiver, _transceiver| {
            let tx = track_tx.clone();
            Box::pin(async move {
                let _ = tx.try_send(track);
            })
        }));

        let track = Arc::new(TrackLocalStaticSample::new(Self::opus_capability(), "audio".to_owned(), "callme".to_owned()));
        let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>).await.map_err(text)?;
        // RTCP for the sender must be read for the interceptors to work; the core's receiver
        // reports on our stream set the encoder's expected loss and the send stats.
        self.tasks.push(tokio::spawn(read_sender_rtcp(sender, self.options.fec, self.expected_loss.clone(), self.stats.clone())));
        self.pc = Some(pc);
        self.track = Some(track);
        self.remote_rx = Some(track_rx);
        self.state = Some(state_rx);
        Ok(())
    }

    async fn create_offer(&mut self) -> Result<String, String> {
        let offer = self.pc()?.create_offer(None).await.map_err(text)?;
        Ok(offer.sdp)
    }

    async fn set_local_description(&mut self, sdp: &str) -> Result<(), String> {
        let desc = RTCSessionDescription::offer(sdp.to_owned()).map_err(text)?;
        self.pc()?.set_local_description(desc).await.map_err(text)
    }

    async fn set_remote_description(&mut self, sdp: &str) -> Result<(), String> {
        let desc = RTCSessionDescription::answer(sdp.to_owned()).map_err(text)?;
        self.pc()?.set_remote_description(desc).await.map_err(text)
    }

    async fn remote_track(&mut self) -> Result<String, String> {
        let rx = self.remote_rx.as_mut().ok_or("no PeerConnection (step 6 did not run)")?;
        let track = rx.recv().await.ok_or("the PeerConnection closed before a track arrived")?;
        let codec = track.codec();
        let d = format!("{} {}/{} ssrc {}", track.kind(), codec.capability.mime_type, codec.capability.clock_rate, track.ssrc());
        self.remote = Some(track);
        Ok(d)
    }

    async fn play(&mut self, heard: broadcast::Sender<Frame>) -> Result<(), String> {
        let remote = self.remote.clone().ok_or("no remote track (step 18 did not run)")?;
        let track = self.track.clone().ok_or("no local track (step 6 did not run)")?;
        match &self.pump {
            Some((to, _)) => {
                let _ = to.send(Some(track));
            }
            None => {
                let local = self.local.take().ok_or("no local audio (steps 1–2 did not run)")?;
                let mut encoder = opus_codec::Encoder::new()?;
                encoder.set_inband_fec(self.options.fec)?;
                let (to, from) = watch::channel(Some(track));
                let shared = Shared { sending: self.sending.clone(), expected_loss: self.expected_loss.clone(), stats: self.stats.clone() };
                let task = tokio::spawn(pump(local, encoder, shared, from));
                self.pump = Some((to, task));
            }
        }
        if self.receive.is_none() {
            self.receive = Some(Receive::spawn(heard, self.options.jitter_buffer, self.options.fec, self.stats.clone())?);
        }
        let receive = self.receive.as_ref().expect("just set");
        self.tasks.push(receive.read(remote, self.stats.clone(), self.reader.0.clone()));
        Ok(())
    }

    async fn set_sending(&mut self, on: bool) -> Result<(), String> {
        self.sending.store(on, Ordering::Relaxed);
        Ok(())
    }

    async fn ended(&mut self) -> String {
        let Some(state) = self.state.as_mut() else { return "no PeerConnection".into() };
        let reader = &mut self.reader.1;
        loop {
            let s = *state.borrow_and_update();
            match s {
                RTCPeerConnectionState::Failed => return "the PeerConnection failed (ICE or DTLS)".into(),
                RTCPeerConnectionState::Closed => return "the PeerConnection closed".into(),
                _ => {}
            }
            if let Some(reason) = reader.borrow_and_update().clone() {
                return reason;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() {
                    return "the PeerConnection is gone".into();
                },
                _ = reader.changed() => {}
            }
        }
    }

    fn stats(&self) -> Option<StatsCell> {
        Some(self.stats.clone())
    }

    async fn restart(&mut self) -> Result<(), String> {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some((to, _)) = &self.pump {
            let _ = to.send(None);
        }
        if let Some(pc) = self.pc.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
        }
        self.track = None;
        self.remote = None;
        self.remote_rx = None;
        self.state = None;
        self.reader = watch::channel(None);
        Ok(())
    }

    async fn close(&mut self) {
        let _ = self.restart().await;
        if let Some((_, task)) = self.pump.take() {
            task.abort();
        }
        if let Some(r) = self.receive.take() {
            r.stop();
        }
    }
}

/// Reads the sender's RTCP until the sender stops (the interceptors need it read): each batch's
/// report blocks on our stream (see [`super::rtcp`]) set the expected loss the encode loop
/// applies, and the loss and round trip in the send stats.
async fn read_sender_rtcp(sender: Arc<RTCRtpSender>, fec: bool, expected_loss: Arc<AtomicU8>, stats: StatsCell) {
    let mut feedback = sender.get_parameters().await.encodings.first().map(|e| SenderFeedback::new(e.ssrc, fec));
    if let Some(f) = &feedback {
        stats.update(|s| f.fill(&mut s.sent));
    }
    let mut buf = vec![0u8; 1500];
    while let Ok((packets, _)) = sender.read(&mut buf).await {
        let Some(f) = feedback.as_mut() else { continue };
        if let Some(percent) = f.handle_rtcp(&packets, ntp_middle(SystemTime::now())) {
            expected_loss.store(percent, Ordering::Relaxed);
        }
        stats.update(|s| f.fill(&mut s.sent));
    }
}

impl RtcMedia {
    /// Where this media layer keeps its measurements.
    pub fn stats_cell(&self) -> StatsCell {
        self.stats.clone()
    }
}

/// What the pump shares with the media layer: whether to send, the loss the core's receiver
/// reports ask the encoder to expect, and the stats.
struct Shared {
    sending: Arc<AtomicBool>,
    expected_loss: Arc<std::sync::atomic::AtomicU8>,
    stats: StatsCell,
}

/// Reads the local audio every 20 ms and sends it, encoded, on the current track (while there
/// is one: between PeerConnections the frames are read and dropped, so the source stays in
/// time and a pushed source never backs up).
async fn pump(mut local: LocalAudio, mut encoder: opus_codec::Encoder, shared: Shared, mut to: watch::Receiver<Option<Arc<TrackLocalStaticSample>>>) {
    let mut tick = tokio::time::interval(FRAME_DURATION);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = vec![0i16; crate::audio::FRAME_SAMPLES];
    loop {
        tick.tick().await;
        // The source is read either way, so it stays in time; muted, silence is sent.
        let frame = local.next_frame();
        let Some(track) = to.borrow_and_update().clone() else { continue };
        let frame = if shared.sending.load(Ordering::Relaxed) { &frame } else { &silence };
        // A failed setting keeps the previous one; it is tried again at the next frame.
        let _ = encoder.set_expected_loss(shared.expected_loss.load(Ordering::Relaxed));
        let Ok(packet) = encoder.encode(frame) else { continue };
        let bytes = packet.len() as u64;
        let sample = Sample { data: Bytes::from(packet), duration: FRAME_DURATION, ..Default::default() };
        // A closed track is the end of its PeerConnection, not of the pump.
        if track.write_sample(&sample).await.is_ok() {
            let level = level_dbfs(frame);
            shared.stats.update(|s| {
                s.sent.packets += 1;
                s.sent.bytes += bytes;
                s.sent.level_dbfs = level;
            });
        }
    }
}

impl Drop for RtcMedia {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some((_, task)) = self.pump.take() {
            task.abort();
        }
        if let Some(pc) = self.pc.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = pc.close().await;
                });
            }
        }
    }
}
