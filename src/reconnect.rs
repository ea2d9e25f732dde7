//! Bringing a call back by itself: when the WebSocket is lost, the media fails or goes silent,
//! or the core ends the media for a transient reason, the call's task reconnects and the
//! application keeps its [`Connected`](crate::Connected).
//!
//! ```text
//! cause                                   what the task does, per attempt
//! WebSocket closed, or silent too long    Resume::connect (new session, login again, cd.load with
//!                                         the ResumeToken: the same party, or a new one when the
//!                                         core no longer knows it, e.g. it restarted), then 3–19
//! PeerConnection failed (ICE, DTLS)       a new CALLME_S1 on the same session, then 4–19
//! no media from the core for too long     the same
//! conf.webrtc.Disconnected, transient     the same
//! ```
//!
//! Attempts are bounded ([`ReconnectPolicy::max_attempts`]); between them the task waits an
//! exponential backoff with jitter. The first attempt starts at once. A removal by a controller
//! (`conf.webrtc.Disconnected` with `final`), a refused login, and a refusal of `cd.load` or
//! `CALLME_S1` are final: the call ends with that error, not retried. When every attempt fails
//! the call ends with [`Cause::ReconnectFailed`](crate::Cause::ReconnectFailed), which names
//! each attempt and why it failed.
//!
//! While reconnecting, the local audio is still read every 20 ms (nothing backs up), and the
//! heard stream goes on (silence, see [`crate::media::RtcMedia`]); commands the application sends
//! wait until the call is back (or fail with their answer timeout).

use std::fmt;
use std::time::Duration;

/// How a call reconnects; [`Default`] is on.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Whether the call reconnects at all (off: the first failure ends it, as before).
    pub enabled: bool,
    /// Attempts before giving up.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles for each later one.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// Each wait is moved at random by up to this share of it, either way (0.0–1.0), so many
    /// parties of one core do not come back in step.
    pub jitter: f64,
    /// No media packet from the core for this long counts as failed media.
    pub media_silence: Duration,
    /// Nothing at all on the WebSocket (no frame, ping or pong) for this long counts as a lost
    /// socket. The SDK pings every third of it.
    pub socket_silence: Duration,
    /// The longest an attempt waits for a media step (the remote track, above all): ICE
    /// gives up on a path that stays dark after a few seconds, so an attempt made during a
    /// blackout is cut short and the next one starts on time.
    pub attempt_media_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_millis(1600),
            jitter: 0.2,
            media_silence: Duration::from_secs(3),
            socket_silence: Duration::from_secs(6),
            attempt_media_timeout: Duration::from_secs(4),
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: the call ends at the first failure.
    pub fn off() -> Self {
        ReconnectPolicy { enabled: false, ..Default::default() }
    }

    /// With at most `n` attempts.
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// With these backoff bounds.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// With this bound on silent media.
    pub fn with_media_silence(mut self, d: Duration) -> Self {
        self.media_silence = d;
        self
    }

    /// With this bound on a silent WebSocket.
    pub fn with_socket_silence(mut self, d: Duration) -> Self {
        self.socket_silence = d;
        self
    }

    /// The wait before attempt `attempt` (1-based; the first is immediate), with `unit` a
    /// number in 0..1 that picks the jitter.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = (attempt - 2).min(16);
        let base = self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        let spread = self.jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(1.0 + spread)
    }
}

/// Why a call is reconnecting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectCause {
    /// The WebSocket closed, or nothing came on it for [`ReconnectPolicy::socket_silence`]:
    /// the party comes back by its `ResumeToken` on a new session.
    SocketLost {
        /// How it was lost.
        reason: String,
    },
    /// The PeerConnection failed (ICE or DTLS) or its reader stopped: a new CALLME_S1.
    MediaFailed {
        /// What failed.
        reason: String,
    },
    /// No media packet came from the core for this long ([`ReconnectPolicy::media_silence`]).
    MediaSilent {
        /// How long nothing came.
        after: Duration,
    },
    /// The core ended the media (`conf.webrtc.Disconnected` without `final`).
    Disconnected {
        /// The core's reason.
        reason: String,
    },
}

impl ReconnectCause {
    /// Whether the WebSocket has to be opened again.
    pub fn needs_session(&self) -> bool {
        matches!(self, ReconnectCause::SocketLost { .. })
    }

    /// A word for the kind, as outages and the command line show it.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconnectCause::SocketLost { .. } => "socket lost",
            ReconnectCause::MediaFailed { .. } => "media failed",
            ReconnectCause::MediaSilent { .. } => "media silent",
            ReconnectCause::Disconnected { .. } => "core disconnected",
        }
    }
}

impl fmt::Display for ReconnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconnectCause::SocketLost { reason } => write!(f, "the WebSocket was lost: {reason}"),
            ReconnectCause::MediaFailed { reason } => write!(f, "the media failed: {reason}"),
            ReconnectCause::MediaSilent { after } => write!(f, "no media from the core for {} ms", after.as_millis()),
            ReconnectCause::Disconnected { reason } => write!(f, "the core ended the media: {reason}"),
        }
    }
}

/// A small seeded generator for the backoff's jitter (splitmix64): no shared state between
/// calls, and a test can give the seed.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter(seed)
    }

    /// A number in 0..1.
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_starts_at_once_doubles_and_stops_at_its_cap() {
        let p = ReconnectPolicy { jitter: 0.0, ..Default::default() };
        let waits: Vec<u128> = (1..=7).map(|a| p.backoff(a, 0.5).as_millis()).collect();
        assert_eq!(waits, [0, 250, 500, 1000, 1600, 1600, 1600]);
    }

    #[test]
    fn the_jitter_stays_within_its_share_and_spreads() {
        let p = ReconnectPolicy::default();
        let mut j = Jitter::new(7);
        let waits: Vec<f64> = (0..1000).map(|_| p.backoff(5, j.unit()).as_secs_f64()).collect();
        assert!(waits.iter().all(|w| (1.28..=1.92).contains(w)), "{:?}", waits.iter().fold((9.0f64, 0.0f64), |a, w| (a.0.min(*w), a.1.max(*w))));
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        assert!((mean - 1.6).abs() < 0.05, "{mean}");
    }

    #[test]
    fn only_a_lost_socket_needs_a_new_session() {
        assert!(ReconnectCause::SocketLost { reason: "x".into() }.needs_session());
        assert!(!ReconnectCause::MediaSilent { after: Duration::from_secs(3) }.needs_session());
        assert!(!ReconnectCause::Disconnected { reason: "no media".into() }.needs_session());
    }
}
