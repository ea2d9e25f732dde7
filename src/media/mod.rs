//! The media layer: the browser-like calls the seed names, behind one trait.
//!
//! [`MediaEngine`] is what the typestates call, one method per media row of the seed's table.
//! [`RtcMedia`] implements it with webrtc-rs over real UDP and libopus; [`fake::FakeMedia`]
//! implements it in memory for the sequence tests. [`sdp`] reads the offer (step 9) and writes
//! the core's answer (step 15); neither the engine nor the SDP code knows about signaling.
//! [`rtcp`] turns the receiver reports on an outgoing stream into the encoder's expected loss and
//! the round-trip time, for the SDK and the core alike; [`playout`] is the receive path's
//! adaptive jitter buffer, FEC recovery and concealment, for both as well.

pub mod fake;
pub mod guard;
pub mod playout;
mod receive;
pub mod rtc;
pub mod rtcp;
pub mod sdp;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::audio::{AudioSource, Frame};
use crate::stats::StatsCell;

pub use rtc::{RtcMedia, RtcOptions};

/// An ICE server for the PeerConnection, from `conf.webrtc.servdesc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `turn:`/`stun:` URL.
    pub url: String,
    /// TURN user name; empty when none.
    pub username: String,
    /// TURN password; empty when none.
    pub credential: String,
}

/// The calls the seed makes on the browser's media APIs. Errors are a reason in words; the
/// typestates add the step.
#[async_trait]
pub trait MediaEngine: Send {
    /// Steps 1–2: open the audio source; returns a description of the local stream.
    async fn get_user_media(&mut self, source: AudioSource) -> Result<String, String>;
    /// Step 6: create the PeerConnection with these ICE servers and add the local audio track.
    async fn create_peer_connection(&mut self, ice_servers: &[IceServer]) -> Result<(), String>;
    /// Steps 7–8: create the offer; returns its SDP.
    async fn create_offer(&mut self) -> Result<String, String>;
    /// Steps 10–11: apply the offer locally.
    async fn set_local_description(&mut self, sdp: &str) -> Result<(), String>;
    /// Steps 16–17: apply the core's answer.
    async fn set_remote_description(&mut self, sdp: &str) -> Result<(), String>;
    /// Step 18: resolves when the remote audio track arrives; returns a description of it.
    async fn remote_track(&mut self) -> Result<String, String>;
    /// Step 19: start sending the local audio and decoding the remote track; every decoded
    /// 20 ms frame goes to `heard` (a receiver that lags loses the oldest frames, not the newest).
    async fn play(&mut self, heard: broadcast::Sender<Frame>) -> Result<(), String>;
    /// In the call: stop (`false`) or resume (`true`) sending the local audio, as a browser's
    /// track is disabled: the RTP stream goes on with silence, so the timing, the SSRC and the
    /// path stay as they were.
    async fn set_sending(&mut self, on: bool) -> Result<(), String>;
    /// In the call: resolves with a reason when the media session ends (ICE or DTLS failed, closed).
    async fn ended(&mut self) -> String;
    /// For a reconnection: closes the PeerConnection and stops its tasks, but keeps the local
    /// audio (still read every 20 ms, so a pushed source keeps feeding and nothing backs up)
    /// and the heard stream, so steps 6–19 can run again on this engine; idempotent.
    async fn restart(&mut self) -> Result<(), String>;
    /// Closes the PeerConnection and stops every task; idempotent.
    async fn close(&mut self);
    /// Where the media layer keeps its measurements, if it measures (the fake does not).
    fn stats(&self) -> Option<StatsCell> {
        None
    }
}
