//! What a call measures about its media: [`CallStats`], read with `Connected::stats()` and sent
//! as a periodic event.
//!
//! The media layer's tasks (the receive path, the send path, the RTCP reader) and the call's
//! task each update their own part of one [`StatsCell`]; a read takes a copy of the whole.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The receive side: what arrived from the core and what the jitter buffer made of it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReceiveStats {
    /// RTP packets that arrived (duplicates and late ones included).
    pub packets: u64,
    /// Payload bytes that arrived.
    pub bytes: u64,
    /// Packets that never arrived by the time they were due (RFC 3550's cumulative lost, as
    /// counted at play-out); those recovered by FEC count here too.
    pub lost: u64,
    /// Lost packets whose audio was rebuilt from the next packet's in-band FEC.
    pub recovered_fec: u64,
    /// 20 ms frames made up by packet-loss concealment (PLC), faded in bursts.
    pub concealed: u64,
    /// Packets that arrived after their play-out time (dropped, already concealed).
    pub late: u64,
    /// Packets the jitter buffer dropped to bring its delay back down.
    pub dropped: u64,
    /// Packets that arrived twice.
    pub duplicates: u64,
    /// 20 ms frames played as silence because the sender was in DTX (not counted as lost).
    pub dtx: u64,
    /// Frames handed to the application.
    pub frames_played: u64,
    /// Interarrival jitter (RFC 3550 §6.4.1), smoothed.
    pub jitter: Duration,
    /// The jitter buffer's delay now (packets held ahead of play-out).
    pub buffer_delay: Duration,
    /// The jitter buffer's target delay now (from the measured jitter).
    pub target_delay: Duration,
    /// The level of the audio played, RMS of the last frame in dBFS (-127 for digital silence).
    pub level_dbfs: f32,
}

/// The send side: what went to the core, and what its receiver reports say about the path.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SendStats {
    /// RTP packets sent.
    pub packets: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// The level of the audio sent, RMS of the last frame in dBFS (-127 for digital silence).
    pub level_dbfs: f32,
    /// The loss the core's last receiver report gave for our stream (0.0–1.0).
    pub remote_fraction_lost: f32,
    /// The packet loss the Opus encoder is told to expect, in percent (sets how much in-band
    /// FEC it adds).
    pub expected_loss_percent: u8,
    /// Round-trip time from the core's receiver reports (RFC 3550 LSR/DLSR), when one came.
    pub round_trip: Option<Duration>,
}

/// One time the media from the core stopped, or the call was reconnecting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outage {
    /// When it started, from the start of the call.
    pub at: Duration,
    /// How long it lasted (until audio was heard again); `None` while it goes on.
    pub length: Option<Duration>,
    /// What it was: `"media gap"` for a stop in the packets of at least 250 ms that ended by
    /// itself, or the reconnection's cause (`"media silent"`, `"socket lost"`, ...).
    pub kind: String,
}

/// A copy of what a call has measured so far.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CallStats {
    /// Since the call started (step 19).
    pub elapsed: Duration,
    /// What arrived.
    pub received: ReceiveStats,
    /// What was sent.
    pub sent: SendStats,
    /// The outages so far, oldest first (the newest 64 are kept).
    pub outages: Vec<Outage>,
    /// Reconnections completed.
    pub reconnects: u32,
}

/// Outages kept in [`CallStats::outages`].
pub const MAX_OUTAGES: usize = 64;

/// Where the parts of a call's stats are kept; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatsCell(Arc<Mutex<CallStats>>);

impl StatsCell {
    /// A new, empty cell.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> CallStats {
        self.lock().clone()
    }

    /// Changes the stats under the lock (kept short: counters only).
    pub fn update<R>(&self, f: impl FnOnce(&mut CallStats) -> R) -> R {
        f(&mut self.lock())
    }

    /// Records the start of an outage, ended by [`StatsCell::outage_ended`]. While the newest
    /// is still open it goes on, under the new kind (a media gap that turns into a
    /// reconnection is one outage).
    pub fn outage_started(&self, at: Duration, kind: impl Into<String>) {
        let mut s = self.lock();
        if let Some(open) = s.outages.last_mut().filter(|o| o.length.is_none()) {
            open.kind = kind.into();
            return;
        }
        if s.outages.len() == MAX_OUTAGES {
            s.outages.remove(0);
        }
        s.outages.push(Outage { at, length: None, kind: kind.into() });
    }

    /// Ends the newest open outage, if any.
    pub fn outage_ended(&self, now: Duration) -> Option<Duration> {
        let mut s = self.lock();
        let open = s.outages.iter_mut().rev().find(|o| o.length.is_none())?;
        let length = now.saturating_sub(open.at);
        open.length = Some(length);
        Some(length)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallStats> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The RMS level of a frame in dBFS; -127 for digital silence (as RFC 6464's lowest level).
pub fn level_dbfs(frame: &[i16]) -> f32 {
    let power = crate::audio::mean_power(frame);
    if power <= 0.0 {
        return -127.0;
    }
    (10.0 * power.log10()).max(-127.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_open_until_ended_and_only_the_newest_are_kept() {
        let cell = StatsCell::new();
        cell.outage_started(Duration::from_secs(1), "media gap");
        assert_eq!(cell.snapshot().outages[0].length, None);
        cell.outage_started(Duration::from_secs(3), "media silent");
        assert_eq!(cell.snapshot().outages.len(), 1, "an open outage goes on under the new kind");
        assert_eq!(cell.snapshot().outages[0].kind, "media silent");
        assert_eq!(cell.outage_ended(Duration::from_millis(3500)), Some(Duration::from_millis(2500)));
        assert_eq!(cell.outage_ended(Duration::from_secs(4)), None);
        for i in 0..100 {
            cell.outage_started(Duration::from_secs(i), "x");
            cell.outage_ended(Duration::from_secs(i));
        }
        let s = cell.snapshot();
        assert_eq!(s.outages.len(), MAX_OUTAGES);
        assert_eq!(s.outages[0].at, Duration::from_secs(100 - MAX_OUTAGES as u64));
    }

    #[test]
    fn levels_of_a_full_scale_square_and_of_silence() {
        assert!((level_dbfs(&[i16::MAX; 960]) - 0.0).abs() < 0.01);
        assert_eq!(level_dbfs(&[0; 960]), -127.0);
    }
}
