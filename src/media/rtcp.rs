//! What the RTCP receiver reports about our outgoing stream say, and what the Opus encoder makes
//! of it: pure, no clock, no IO; the SDK's send path and the core's per-party send path both use
//! it.
//!
//! The drive loop: a task reads the RTCP of an `RTCRtpSender` (`sender.read(&mut buf)` returns
//! the packets already parsed), takes the time of arrival as [`ntp_middle`]`(SystemTime::now())`
//! and hands both to [`SenderFeedback::handle_rtcp`]. When that returns a new expected loss the
//! encode loop applies it (`opus_codec::Encoder::set_expected_loss`); the accessors give the
//! figures for `SendStats`.
//!
//! What arrives there. webrtc-rs demultiplexes incoming RTCP by each packet's destination SSRCs
//! (`srtp::session`): a receiver report (RR) whose report block names our SSRC reaches our
//! sender's reader, and so does a sender report (SR) that carries such a block. With the
//! interceptors `configure_rtcp_reports` registers, each side sends an SR per outgoing stream
//! and an RR per incoming stream once a second (`interceptor::report`). The RR's report block
//! holds RFC 3550 §6.4.1's fields: `fraction_lost` (an 8-bit fixed-point fraction of the packets
//! expected since the previous report that did not arrive), `last_sender_report` (LSR: the middle
//! 32 bits of the NTP time of the last SR the reporter received from us) and `delay` (DLSR: the
//! time from that SR to this report, in units of 1/65536 s). The receiver-report interceptor
//! learns of our SR only when the reporter reads the RTCP of its `RTCRtpReceiver` (its RTCP
//! reader sees the SR there); until then LSR is zero and no round trip can be computed.
//!
//! Loss to expected loss, the mapping:
//! - Each report's fraction lost (0–1) is smoothed: towards a higher value by [`LOSS_RISE`] of
//!   the distance (the loss of a bad path shows after one or two reports), towards a lower one by
//!   [`LOSS_FALL`] (protection stays for about ten seconds after the loss stops).
//! - The target is the smoothed loss in percent, rounded up, at least [`EXPECTED_LOSS_FLOOR`]
//!   (libopus adds no in-band FEC at all while its expected loss is 0: the floor keeps a little
//!   ready for the first loss) and at most [`EXPECTED_LOSS_CAP`] (beyond that one packet's
//!   redundancy no longer covers the bursts such a path has, and the bits come out of the primary
//!   encoding).
//! - Hysteresis: the value the encoder has changes only when the target moves by
//!   [`EXPECTED_LOSS_DEADBAND`] points or more, or reaches the floor or the cap exactly, so a
//!   loss that wobbles around a value does not touch the encoder at every report.
//! - Without FEC ([`LossEstimator::new`]`(false)`) the expected loss is 0 whatever the reports
//!   say: the plain encoder, for comparison.
//!
//! Round-trip time (RFC 3550 §6.4.1): with A the arrival time of the report in the same
//! middle-32-bit NTP units, RTT = A − LSR − DLSR, computed modulo 2³². A block with LSR 0 (no SR
//! received yet), or a result that is negative by more than rounding or longer than
//! [`MAX_ROUND_TRIP`], gives none: the last good value stays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use webrtc::rtcp::packet::Packet;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::reception_report::ReceptionReport;
use webrtc::rtcp::sender_report::SenderReport;

use crate::stats::SendStats;

/// The least expected loss while FEC is on, in percent: libopus sends no in-band FEC at 0.
pub const EXPECTED_LOSS_FLOOR: u8 = 2;
/// The most expected loss the encoder is told, in percent.
pub const EXPECTED_LOSS_CAP: u8 = 25;
/// The least change of the target, in percentage points, that is applied (except at the floor
/// and the cap).
pub const EXPECTED_LOSS_DEADBAND: u8 = 2;
/// The share of the distance the smoothed loss moves towards a higher reported loss.
pub const LOSS_RISE: f32 = 0.5;
/// The share of the distance the smoothed loss moves towards a lower reported loss (with one
/// report a second, most of a loss is forgotten after about ten seconds).
pub const LOSS_FALL: f32 = 0.125;
/// A longer round trip than this is taken for a bad report block, not a measurement.
pub const MAX_ROUND_TRIP: Duration = Duration::from_secs(10);
/// How far A − LSR may fall short of DLSR (rounding of the 1/65536 s units on both sides) and
/// still count, as a round trip of zero: 1 ms.
const ROUNDING_SLACK: u32 = 66;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The smoothed loss of one outgoing stream and the expected loss it gives the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LossEstimator {
    fec: bool,
    smoothed: Option<f32>,
    last: f32,
    applied: u8,
}

impl LossEstimator {
    /// An estimator before any report; `fec` is whether the encoder sends in-band FEC (without
    /// it the expected loss stays 0). It starts at [`EXPECTED_LOSS_FLOOR`] with FEC.
    pub fn new(fec: bool) -> Self {
        LossEstimator { fec, smoothed: None, last: 0.0, applied: if fec { EXPECTED_LOSS_FLOOR } else { 0 } }
    }

    /// One report's `fraction_lost` (RFC 3550: lost / expected × 256). Returns the new expected
    /// loss in percent when the encoder should change to it.
    pub fn handle_fraction_lost(&mut self, fraction_lost: u8) -> Option<u8> {
        let reported = f32::from(fraction_lost) / 256.0;
        self.last = reported;
        let smoothed = match self.smoothed {
            None => reported,
            Some(s) if reported > s => s + (reported - s) * LOSS_RISE,
            Some(s) => s + (reported - s) * LOSS_FALL,
        };
        self.smoothed = Some(smoothed);
        if !self.fec {
            return None;
        }
        let target = target_percent(smoothed);
        let moved = target.abs_diff(self.applied) >= EXPECTED_LOSS_DEADBAND;
        let at_bound = target == EXPECTED_LOSS_FLOOR || target == EXPECTED_LOSS_CAP;
        if target != self.applied && (moved || at_bound) {
            self.applied = target;
            return Some(target);
        }
        None
    }

    /// The expected loss the encoder should have now, in percent.
    pub fn expected_loss_percent(&self) -> u8 {
        self.applied
    }

    /// The smoothed loss (0.0–1.0); 0 before any report.
    pub fn smoothed_loss(&self) -> f32 {
        self.smoothed.unwrap_or(0.0)
    }

    /// The loss the last report gave (0.0–1.0); 0 before any report.
    pub fn last_fraction_lost(&self) -> f32 {
        self.last
    }
}

/// The smoothed loss (0.0–1.0) as an expected loss in percent: rounded up, within the floor and
/// the cap.
fn target_percent(smoothed: f32) -> u8 {
    // A little below a whole percent (float error of the smoothing) does not round up to the next.
    let percent = (smoothed.clamp(0.0, 1.0) * 100.0 - 1e-3).ceil();
    (percent as u8).clamp(EXPECTED_LOSS_FLOOR, EXPECTED_LOSS_CAP)
}

/// The middle 32 bits of the 64-bit NTP time of `t` (16 bits of seconds, 16 of fraction), the
/// unit of LSR and of the arrival time A; a time before 1970 counts as 1970.
pub fn ntp_middle(t: SystemTime) -> u32 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (((seconds << 32) | fraction) >> 16) as u32
}

/// RFC 3550's round trip from a report block that arrived at `arrival` (see [`ntp_middle`]):
/// A − LSR − DLSR. `None` when LSR is 0 (the reporter had no SR of ours yet) or the result is not
/// plausible (A before LSR, DLSR longer than A − LSR by more than rounding, or longer than
/// [`MAX_ROUND_TRIP`]).
pub fn round_trip(arrival: u32, last_sender_report: u32, delay: u32) -> Option<Duration> {
    if last_sender_report == 0 {
        return None;
    }
    let since_sr = arrival.wrapping_sub(last_sender_report);
    if since_sr > u32::MAX / 2 {
        return None; // the arrival is before our own SR: not a report on it
    }
    let units = if since_sr >= delay {
        since_sr - delay
    } else if delay - since_sr <= ROUNDING_SLACK {
        0
    } else {
        return None;
    };
    let rtt = Duration::from_nanos(u64::from(units) * 1_000_000_000 / 65_536);
    (rtt <= MAX_ROUND_TRIP).then_some(rtt)
}

/// The report blocks about `ssrc` in a batch of RTCP packets (from receiver and sender reports),
/// in order.
pub fn report_blocks_for(packets: &[Box<dyn Packet + Send + Sync>], ssrc: u32) -> Vec<&ReceptionReport> {
    let mut blocks = Vec::new();
    for p in packets {
        let reports = if let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() {
            &rr.reports
        } else if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
            &sr.reports
        } else {
            continue;
        };
        blocks.extend(reports.iter().filter(|b| b.ssrc == ssrc));
    }
    blocks
}

/// What the reports on one outgoing stream said so far: the loss, the encoder's expected loss
/// and the round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderFeedback {
    ssrc: u32,
    loss: LossEstimator,
    round_trip: Option<Duration>,
    reports: u64,
}

impl SenderFeedback {
    /// Feedback for the stream sent with `ssrc`, by an encoder with in-band FEC (`fec`) or not.
    pub fn new(ssrc: u32, fec: bool) -> Self {
        SenderFeedback { ssrc, loss: LossEstimator::new(fec), round_trip: None, reports: 0 }
    }

    /// A batch of RTCP packets read from the sender, which arrived at `arrival` (see
    /// [`ntp_middle`]); blocks about other streams are ignored. Returns the new expected loss in
    /// percent when the encoder should change to it.
    pub fn handle_rtcp(&mut self, packets: &[Box<dyn Packet + Send + Sync>], arrival: u32) -> Option<u8> {
        let mut change = None;
        for block in report_blocks_for(packets, self.ssrc) {
            change = self.handle_report_block(block, arrival).or(change);
        }
        change
    }

    /// One report block about our stream (its SSRC is not checked), which arrived at `arrival`.
    /// Returns the new expected loss in percent when the encoder should change to it.
    pub fn handle_report_block(&mut self, block: &ReceptionReport, arrival: u32) -> Option<u8> {
        self.reports += 1;
        if let Some(rtt) = round_trip(arrival, block.last_sender_report, block.delay) {
            self.round_trip = Some(rtt);
        }
        self.loss.handle_fraction_lost(block.fraction_lost)
    }

    /// The SSRC whose reports count.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The loss the last report gave (0.0–1.0).
    pub fn remote_fraction_lost(&self) -> f32 {
        self.loss.last_fraction_lost()
    }

    /// The smoothed loss (0.0–1.0).
    pub fn smoothed_loss(&self) -> f32 {
        self.loss.smoothed_loss()
    }

    /// The expected loss the encoder should have now, in percent.
    pub fn expected_loss_percent(&self) -> u8 {
        self.loss.expected_loss_percent()
    }

    /// The last plausible round trip, when a report block gave one.
    pub fn round_trip(&self) -> Option<Duration> {
        self.round_trip
    }

    /// Report blocks about our stream handled so far.
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// Writes what the reports said into the send stats (the counters and the level are the
    /// encode loop's).
    pub fn fill(&self, stats: &mut SendStats) {
        stats.remote_fraction_lost = self.remote_fraction_lost();
        stats.expected_loss_percent = self.expected_loss_percent();
        stats.round_trip = self.round_trip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: u32 = 0x1234_5678;

    fn block(ssrc: u32, fraction_lost: u8, lsr: u32, dlsr: u32) -> ReceptionReport {
        ReceptionReport { ssrc, fraction_lost, last_sender_report: lsr, delay: dlsr, ..Default::default() }
    }

    fn rr(blocks: Vec<ReceptionReport>) -> Box<dyn Packet + Send + Sync> {
        Box::new(ReceiverReport { ssrc: 7, reports: blocks, ..Default::default() })
    }

    /// `percent` of 256, as a report's fraction lost.
    fn fraction(percent: f32) -> u8 {
        (percent / 100.0 * 256.0).round() as u8
    }

    #[test]
    fn the_round_trip_is_arrival_minus_lsr_minus_dlsr_in_units_of_1_65536_s() {
        // Our SR left at 100 s, the reporter held it 0.5 s, the report arrived 0.55 s after it.
        let lsr = 100 << 16;
        let dlsr = 1 << 15;
        let arrival = lsr + (1 << 15) + 3277; // + 50 ms
        let rtt = round_trip(arrival, lsr, dlsr).unwrap();
        assert!(rtt.abs_diff(Duration::from_millis(50)) < Duration::from_micros(100), "{rtt:?}");
    }

    #[test]
    fn the_round_trip_is_computed_across_the_wrap_of_the_middle_32_bits() {
        let lsr = u32::MAX - 1000;
        let arrival = 2000u32; // 3001 units later, past the wrap
        let rtt = round_trip(arrival, lsr, 1).unwrap();
        assert_eq!(rtt, Duration::from_nanos(3000 * 1_000_000_000 / 65_536));
    }

    #[test]
    fn no_round_trip_without_an_echoed_sender_report_or_from_an_implausible_block() {
        assert_eq!(round_trip(5 << 16, 0, 0), None, "LSR 0: no SR of ours reached the reporter");
        assert_eq!(round_trip(100, 200, 0), None, "arrival before our own SR");
        assert_eq!(round_trip(1000, 500, 900), None, "DLSR far longer than the time since our SR");
        assert_eq!(round_trip(1000, 500, 520), Some(Duration::ZERO), "a little rounding is a round trip of zero");
        assert_eq!(round_trip(500 + (11 << 16), 500, 0), None, "11 s is not a round trip");
    }

    #[test]
    fn ntp_middle_counts_seconds_since_1900_and_fractions_of_1_65536() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        let secs = (NTP_UNIX_OFFSET + 1) as u32;
        assert_eq!(ntp_middle(t), (secs << 16) | 0x8000);
        // A quarter second later is 0x4000 units later.
        assert_eq!(ntp_middle(t + Duration::from_millis(250)).wrapping_sub(ntp_middle(t)), 0x4000);
    }

    #[test]
    fn steady_loss_gives_its_percent_rounded_up_within_the_floor_and_the_cap() {
        // Fractions of 256: 1.2 %, 10.2 %, 12.5 %, 25.0 %, 59.8 %.
        for (fraction_lost, want) in [(0, EXPECTED_LOSS_FLOOR), (3, EXPECTED_LOSS_FLOOR), (26, 11), (32, 13), (64, 25), (153, EXPECTED_LOSS_CAP)] {
            let mut e = LossEstimator::new(true);
            for _ in 0..60 {
                e.handle_fraction_lost(fraction_lost);
            }
            assert_eq!(e.expected_loss_percent(), want, "{fraction_lost}/256 lost");
        }
    }

    #[test]
    fn loss_is_followed_fast_upwards_and_slowly_back_down() {
        let mut e = LossEstimator::new(true);
        assert_eq!(e.expected_loss_percent(), EXPECTED_LOSS_FLOOR, "FEC ready before any report");
        e.handle_fraction_lost(0);
        assert_eq!(e.handle_fraction_lost(fraction(20.0)), Some(10), "half way up after one report");
        assert_eq!(e.handle_fraction_lost(fraction(20.0)), Some(15));
        for _ in 0..10 {
            e.handle_fraction_lost(fraction(20.0));
        }
        assert_eq!(e.expected_loss_percent(), 20);
        // The loss stops: after three reports most of the protection is still there.
        for _ in 0..3 {
            e.handle_fraction_lost(0);
        }
        assert!(e.expected_loss_percent() >= 12, "{}", e.expected_loss_percent());
        for _ in 0..40 {
            e.handle_fraction_lost(0);
        }
        assert_eq!(e.expected_loss_percent(), EXPECTED_LOSS_FLOOR, "back at the floor in the end");
    }

    #[test]
    fn a_loss_that_wobbles_by_a_point_does_not_change_the_encoder() {
        let mut e = LossEstimator::new(true);
        for _ in 0..30 {
            e.handle_fraction_lost(fraction(10.0));
        }
        assert_eq!(e.expected_loss_percent(), 11, "26/256 is 10.2 %, rounded up");
        let changes = (0..100).filter_map(|i| e.handle_fraction_lost(fraction(if i % 2 == 0 { 10.4 } else { 9.2 }))).count();
        assert_eq!(changes, 0, "changes for a loss between 9.4 and 10.6 %");
        // A real change does.
        let up: Vec<u8> = (0..5).filter_map(|_| e.handle_fraction_lost(fraction(16.0))).collect();
        assert!(!up.is_empty() && up.windows(2).all(|w| w[1] >= w[0] + EXPECTED_LOSS_DEADBAND), "{up:?}");
    }

    #[test]
    fn without_fec_the_expected_loss_stays_zero_but_the_loss_is_still_measured() {
        let mut e = LossEstimator::new(false);
        assert_eq!(e.expected_loss_percent(), 0);
        for _ in 0..10 {
            assert_eq!(e.handle_fraction_lost(fraction(30.0)), None);
        }
        assert_eq!(e.expected_loss_percent(), 0);
        assert!((e.last_fraction_lost() - 0.3).abs() < 0.01);
        assert!(e.smoothed_loss() > 0.25);
    }

    #[test]
    fn only_the_blocks_about_our_stream_count_from_receiver_and_sender_reports() {
        let sr: Box<dyn Packet + Send + Sync> =
            Box::new(SenderReport { ssrc: 9, reports: vec![block(OURS, fraction(50.0), 0, 0)], ..Default::default() });
        let packets = vec![rr(vec![block(99, 255, 0, 0), block(OURS, fraction(20.0), 0, 0)]), sr];
        let blocks = report_blocks_for(&packets, OURS);
        assert_eq!(blocks.iter().map(|b| b.fraction_lost).collect::<Vec<_>>(), [fraction(20.0), fraction(50.0)]);
        assert!(report_blocks_for(&packets, 5).is_empty());
    }

    #[test]
    fn sender_feedback_fills_the_send_stats_from_a_receiver_report() {
        let mut f = SenderFeedback::new(OURS, true);
        let lsr = 3000 << 16;
        let arrival = lsr + (1 << 16) + 6554; // 1.1 s after our SR
        let packets = vec![rr(vec![block(OURS, 32, lsr, 1 << 16)]), rr(vec![block(42, 200, lsr, 0)])];
        assert_eq!(f.handle_rtcp(&packets, arrival), Some(13), "12.5 % rounded up");
        assert_eq!(f.reports(), 1, "the block about another stream is not ours");
        let mut stats = SendStats::default();
        f.fill(&mut stats);
        assert_eq!(stats.remote_fraction_lost, 0.125);
        assert_eq!(stats.expected_loss_percent, 13);
        let rtt = stats.round_trip.unwrap();
        assert!(rtt.abs_diff(Duration::from_millis(100)) < Duration::from_micros(100), "{rtt:?}");
        // A later block without LSR keeps the last round trip.
        f.handle_rtcp(&[rr(vec![block(OURS, 32, 0, 0)])], arrival + 65_536);
        assert_eq!(f.round_trip(), Some(rtt));
    }

    #[test]
    fn a_batch_without_reports_changes_nothing() {
        let mut f = SenderFeedback::new(OURS, true);
        let before = f.clone();
        let pli: Box<dyn Packet + Send + Sync> =
            Box::new(webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication { sender_ssrc: 1, media_ssrc: OURS });
        assert_eq!(f.handle_rtcp(&[pli], 12345), None);
        assert_eq!(f, before);
    }
}
