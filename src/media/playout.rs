//! The receive path's play-out: an adaptive jitter buffer in front of an Opus decoder, giving
//! one 20 ms frame per call whatever the network did. The SDK calls it every 20 ms for what the
//! application hears; the core's mixer calls it once per party per tick.
//!
//! What it does, by case, when a frame is asked for ([`Playout::next_frame`]):
//!
//! - **The packet due is held**: decoded and played.
//! - **It is missing, and the next one is held**: with FEC on and that packet carrying in-band
//!   FEC (`opus_packet_has_lbrr`), the lost frame is rebuilt from it; otherwise it is concealed
//!   (Opus PLC). Either way it counts as lost.
//! - **Nothing is held at all** (a late packet, or a burst): concealed, and the play-out point
//!   does not move, so the delay grows by a frame. If the packet then comes, it plays (the
//!   buffer is deeper now); if a later one comes first, the frames already concealed stand for
//!   the missing ones. Concealment fades to silence over [`FADE_FRAMES`] (160 ms); after that
//!   the frames are silence and play-out starts again, at the target delay, when packets come
//!   back (a new talk spurt, or the end of an outage).
//! - **The sender is in DTX** (the last packet was a DTX frame, or the next packet's timestamp
//!   is ahead of the play-out point while its sequence number follows on): silence, not loss.
//!
//! The target delay follows the measured delay variation: the 95th percentile of each packet's
//! delay relative to the fastest of the last [`WINDOW`] packets (5 s), plus a frame of slack,
//! bounded to [`MIN_DELAY_FEC_MS`] (two frames with FEC: the next packet must be there when one is
//! lost) to [`MAX_DELAY_MS`]. A packet that arrives after its play-out time makes it use the maximum
//! instead of the 95th percentile for the next [`LATE_HOLD_MS`] (it grows after late bursts and
//! shrinks back when they stop). When the buffer holds more than the target by
//! [`DRAIN_MARGIN_MS`], a decoded frame is dropped: a quiet one first, any one when the excess is
//! over [`DRAIN_FORCE_MS`]; at most one in [`DRAIN_SPACING`] frames.
//!
//! The type is pure (no clock, no IO): arrival times are given in milliseconds from any epoch,
//! so the tests drive it packet by packet.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::audio::opus_codec::Decoder;
use crate::audio::{mean_power, FRAME_SAMPLES};

/// The lowest target delay without FEC: one frame.
pub const MIN_DELAY_MS: f64 = 20.0;
/// The lowest target delay with FEC: two frames, so the packet after a lost one is there.
pub const MIN_DELAY_FEC_MS: f64 = 40.0;
/// The highest target delay.
pub const MAX_DELAY_MS: f64 = 200.0;
/// Concealed frames over which concealment fades to silence (160 ms).
pub const FADE_FRAMES: u32 = 8;
/// Packets whose delays set the target (5 s of 20 ms packets).
pub const WINDOW: usize = 250;
/// How long a late packet keeps the target at the window's maximum delay.
pub const LATE_HOLD_MS: f64 = 5_000.0;
/// How far above the target the buffer may be before a frame is dropped.
pub const DRAIN_MARGIN_MS: f64 = 40.0;
/// How far above the target the buffer may be before a loud frame is dropped too.
pub const DRAIN_FORCE_MS: f64 = 100.0;
/// Frames over the margin after which a loud frame is dropped too (2 s): a steady tone or
/// speech without pauses still drains.
pub const DRAIN_PATIENCE: u32 = 100;
/// Frames at least between two drops.
pub const DRAIN_SPACING: u32 = 5;
/// Mean power under which a frame is quiet enough to drop unheard (about -45 dBFS).
pub const QUIET_POWER: f64 = 3e-5;
/// A jump in sequence number beyond which the stream is taken as a new one.
pub const NEW_STREAM_JUMP: u64 = 3_000;
/// Opus packets this short carry no audio: DTX (comfort noise) frames.
pub const DTX_MAX_BYTES: usize = 2;

/// Samples per millisecond (48 kHz).
const PER_MS: f64 = 48.0;

/// What one frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Played {
    /// Decoded from the packet due.
    Audio,
    /// Rebuilt from the next packet's in-band FEC.
    Recovered,
    /// Made up by concealment (faded).
    Concealed,
    /// Silence while the sender is in DTX.
    Dtx,
    /// Silence: nothing to play (before the first packet, after an outage, while filling).
    Silence,
}

/// What the play-out counted, as the receive stats want it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Packets pushed (duplicates and late ones included).
    pub packets: u64,
    /// Packets missing when due (those recovered by FEC included).
    pub lost: u64,
    /// Lost packets rebuilt from in-band FEC.
    pub recovered_fec: u64,
    /// Frames made up by concealment.
    pub concealed: u64,
    /// Packets that came after their play-out time.
    pub late: u64,
    /// Frames dropped to bring the delay down.
    pub dropped: u64,
    /// Packets pushed twice.
    pub duplicates: u64,
    /// Frames played as DTX silence.
    pub dtx: u64,
    /// Frames given out.
    pub frames: u64,
    /// RFC 3550 interarrival jitter, in milliseconds.
    pub jitter_ms: f64,
    /// Audio held ahead of the play-out point now, in milliseconds.
    pub delay_ms: f64,
    /// The target delay now, in milliseconds.
    pub target_ms: f64,
}

struct Held {
    ts: i64,
    payload: Bytes,
}

/// One incoming stream's jitter buffer and decoder.
pub struct Playout {
    decoder: Decoder,
    fec: bool,
    packets: BTreeMap<u64, Held>,
    /// The highest extended sequence number and extended timestamp pushed.
    highest: Option<(u64, i64)>,
    /// The sequence number due next, while playing.
    next_seq: Option<u64>,
    /// The stream time (RTP timestamp) of the next sample to play.
    play_ts: i64,
    playing: bool,
    /// Decoded samples not yet given out (packets longer than 20 ms).
    pending: Vec<i16>,
    scratch: Vec<i16>,
    /// Frames concealed while nothing was held, not yet matched to a missing packet.
    stretch: u32,
    /// Concealed (or silent) frames in a row, for the fade.
    run: u32,
    /// The gain the last frame ended at (fading).
    gain: f32,
    /// The last [`HISTORY`] samples given to play, for concealment.
    history: Vec<i16>,
    /// The pitch period being repeated, while concealing a periodic signal.
    periodic: Option<Periodic>,
    /// Whether the last packet decoded was a DTX frame.
    in_dtx: bool,
    since_drop: u32,
    /// Frames in a row the buffer held more than the target by [`DRAIN_MARGIN_MS`].
    excess_frames: u32,
    /// Relative delays (arrival minus stream time, ms) of the last [`WINDOW`] packets.
    delays: Vec<f64>,
    delays_at: usize,
    sorted: Vec<f64>,
    last_late_at: Option<f64>,
    last_arrival: Option<(f64, i64)>,
    counters: Counters,
}

impl Playout {
    /// A play-out for one stream; `fec`: rebuild lost packets from in-band FEC.
    pub fn new(fec: bool) -> Result<Self, String> {
        let mut p = Playout {
            decoder: Decoder::new()?,
            fec,
            packets: BTreeMap::new(),
            highest: None,
            next_seq: None,
            play_ts: 0,
            playing: false,
            pending: Vec::with_capacity(FRAME_SAMPLES * 7),
            scratch: Vec::with_capacity(FRAME_SAMPLES * 6),
            stretch: 0,
            run: FADE_FRAMES,
            gain: 0.0,
            in_dtx: false,
            history: Vec::with_capacity(HISTORY),
            periodic: None,
            since_drop: DRAIN_SPACING,
            excess_frames: 0,
            delays: Vec::with_capacity(WINDOW),
            delays_at: 0,
            sorted: Vec::with_capacity(WINDOW),
            last_late_at: None,
            last_arrival: None,
            counters: Counters::default(),
        };
        p.counters.target_ms = p.min_delay();
        Ok(p)
    }

    fn min_delay(&self) -> f64 {
        if self.fec {
            MIN_DELAY_FEC_MS
        } else {
            MIN_DELAY_MS
        }
    }

    /// What it counted so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Forgets the stream (a new PeerConnection, a new SSRC): the packets held, the sequence and
    /// the delay history. The counters go on, and what plays fades out as after a burst.
    pub fn new_stream(&mut self) {
        self.packets.clear();
        self.highest = None;
        self.next_seq = None;
        self.playing = false;
        self.stretch = 0;
        self.delays.clear();
        self.delays_at = 0;
        self.last_late_at = None;
        self.last_arrival = None;
        self.counters.delay_ms = 0.0;
    }

    /// A packet arrived at `arrival_ms` (any epoch, the same for every call).
    pub fn push(&mut self, seq: u16, ts: u32, payload: Bytes, arrival_ms: f64) {
        self.counters.packets += 1;
        if self.highest.is_some_and(|(hs, _)| unwrap_u16(hs, seq).abs_diff(hs) > NEW_STREAM_JUMP) {
            self.new_stream();
        }
        let (seq, ts) = match self.highest {
            None => (u64::from(seq) + (1 << 16), i64::from(ts) + (1 << 32)),
            Some((hs, hts)) => (unwrap_u16(hs, seq), unwrap_u32(hts, ts)),
        };
        if self.stretch > 0 {
            // Play-out is waiting on a packet that did not come in time: the delay grows, and
            // the target follows the late ones for a while.
            self.last_late_at = Some(arrival_ms);
        }
        if self.next_seq.is_some_and(|n| seq < n) {
            self.counters.late += 1;
            self.last_late_at = Some(arrival_ms);
            self.record_delay(ts, arrival_ms);
            return;
        }
        if self.packets.contains_key(&seq) {
            self.counters.duplicates += 1;
            return;
        }
        self.jitter(ts, arrival_ms);
        self.record_delay(ts, arrival_ms);
        if self.highest.is_none_or(|(hs, _)| seq > hs) {
            self.highest = Some((seq, ts));
        }
        self.packets.insert(seq, Held { ts, payload });
        self.counters.delay_ms = self.held_ms();
    }

    /// RFC 3550 §6.4.1, in milliseconds, over packets in arrival order.
    fn jitter(&mut self, ts: i64, arrival_ms: f64) {
        if let Some((a, t)) = self.last_arrival {
            let d = (arrival_ms - a) - (ts - t) as f64 / PER_MS;
            self.counters.jitter_ms += (d.abs() - self.counters.jitter_ms) / 16.0;
        }
        self.last_arrival = Some((arrival_ms, ts));
    }

    fn record_delay(&mut self, ts: i64, arrival_ms: f64) {
        let d = arrival_ms - ts as f64 / PER_MS;
        if self.delays.len() < WINDOW {
            self.delays.push(d);
        } else {
            self.delays[self.delays_at] = d;
        }
        self.delays_at = (self.delays_at + 1) % WINDOW;
        // The target moves slowly, so it need not be worked out at every packet.
        if self.delays.len() < 16 || self.delays_at % 8 == 0 {
            self.counters.target_ms = self.target(arrival_ms);
        }
    }

    fn target(&mut self, now_ms: f64) -> f64 {
        self.sorted.clear();
        self.sorted.extend_from_slice(&self.delays);
        self.sorted.sort_by(f64::total_cmp);
        let Some(&fastest) = self.sorted.first() else { return self.min_delay() };
        let late = self.last_late_at.is_some_and(|at| now_ms - at < LATE_HOLD_MS);
        let at = if late { self.sorted.len() - 1 } else { (self.sorted.len() - 1) * 95 / 100 };
        let variation = self.sorted[at] - fastest;
        (variation + 20.0).clamp(self.min_delay(), MAX_DELAY_MS)
    }

    /// Audio held from the play-out point to the end of the newest packet, in milliseconds.
    fn held_ms(&self) -> f64 {
        let Some((_, hts)) = self.highest else { return 0.0 };
        let from = if self.playing {
            self.play_ts
        } else {
            match self.packets.values().next() {
                Some(h) => h.ts,
                None => return 0.0,
            }
        };
        ((hts + FRAME_SAMPLES as i64 - from) as f64 / PER_MS).max(0.0)
    }

    /// The next 20 ms (exactly [`FRAME_SAMPLES`] samples, into `out`).
    pub fn next_frame(&mut self, out: &mut Vec<i16>) -> Played {
        self.counters.frames += 1;
        self.since_drop = self.since_drop.saturating_add(1);
        let played = self.fill();
        out.clear();
        match played {
            Played::Audio | Played::Recovered => {
                let n = self.pending.len().min(FRAME_SAMPLES);
                out.extend(self.pending.drain(..n));
                self.run = 0;
                self.ramp(out, 1.0);
            }
            Played::Concealed => {
                let n = self.pending.len().min(FRAME_SAMPLES);
                out.extend(self.pending.drain(..n));
                self.run += 1;
                let gain = 1.0 - self.run as f32 / FADE_FRAMES as f32;
                self.ramp(out, gain.max(0.0));
            }
            Played::Dtx | Played::Silence => {
                self.gain = 0.0;
                self.history.clear();
                self.periodic = None;
            }
        }
        out.resize(FRAME_SAMPLES, 0);
        self.counters.delay_ms = self.held_ms();
        let over = self.playing && self.counters.delay_ms - self.counters.target_ms > DRAIN_MARGIN_MS;
        self.excess_frames = if over { self.excess_frames.saturating_add(1) } else { 0 };
        played
    }

    /// Scales `frame` from the last frame's gain to `to`, linearly.
    fn ramp(&mut self, frame: &mut [i16], to: f32) {
        let from = self.gain;
        self.gain = to;
        if from == 1.0 && to == 1.0 {
            return;
        }
        let n = frame.len().max(1) as f32;
        for (i, s) in frame.iter_mut().enumerate() {
            let g = from + (to - from) * (i as f32 / n);
            *s = (f32::from(*s) * g) as i16;
        }
    }

    fn fill(&mut self) -> Played {
        if self.pending.len() >= FRAME_SAMPLES {
            return Played::Audio;
        }
        if !self.playing {
            let Some((&first, held)) = self.packets.iter().next() else { return self.nothing_held() };
            if self.held_ms() + 0.5 < self.counters.target_ms {
                return self.nothing_held();
            }
            if let Some(n) = self.next_seq {
                // Back after a pause or an outage: what was skipped never came.
                self.counters.lost += first.saturating_sub(n);
            }
            self.play_ts = held.ts;
            self.next_seq = Some(first);
            self.playing = true;
            self.stretch = 0;
        }
        let mut outcome = Played::Audio;
        while self.pending.len() < FRAME_SAMPLES {
            let next = self.next_seq.expect("set while playing");
            let Some((&first, held)) = self.packets.iter().next() else {
                if self.pending.is_empty() {
                    return self.nothing_held();
                }
                // Part of a frame decoded (short packets) and the rest missing: conceal the rest.
                self.conceal(FRAME_SAMPLES - self.pending.len());
                return Played::Concealed;
            };
            if first == next {
                if held.ts > self.play_ts + FRAME_SAMPLES as i64 / 2 {
                    // The sequence follows on but the time jumped: the sender paused (DTX).
                    self.play_ts += FRAME_SAMPLES as i64;
                    self.counters.dtx += 1;
                    return Played::Dtx;
                }
                let held = self.packets.remove(&first).expect("just seen");
                self.next_seq = Some(next + 1);
                self.stretch = 0;
                if held.payload.len() <= DTX_MAX_BYTES {
                    self.in_dtx = true;
                    self.play_ts = held.ts + FRAME_SAMPLES as i64;
                    let _ = self.decoder.decode_into(Some(&held.payload), &mut self.scratch);
                    self.counters.dtx += 1;
                    return Played::Dtx;
                }
                self.in_dtx = false;
                if self.decoder.decode_into(Some(&held.payload), &mut self.scratch).is_err() {
                    self.play_ts = held.ts + FRAME_SAMPLES as i64;
                    self.conceal(FRAME_SAMPLES - self.pending.len());
                    outcome = Played::Concealed;
                    continue;
                }
                self.play_ts = held.ts + self.scratch.len() as i64;
                if self.should_drop() {
                    self.counters.dropped += 1;
                    self.since_drop = 0;
                    continue;
                }
                self.append_decoded();
            } else {
                // `next` is missing and later packets are held: it is lost.
                self.counters.lost += 1;
                self.next_seq = Some(next + 1);
                self.play_ts += FRAME_SAMPLES as i64;
                if self.stretch > 0 {
                    // Already concealed while nothing was held.
                    self.stretch -= 1;
                    continue;
                }
                let lacking = FRAME_SAMPLES - self.pending.len();
                if self.fec && first == next + 1 && has_fec(&held.payload) {
                    let payload = held.payload.clone();
                    if self.decoder.decode_fec_into(&payload, lacking, &mut self.scratch).is_ok() {
                        self.counters.recovered_fec += 1;
                        self.append_decoded();
                        outcome = Played::Recovered;
                        continue;
                    }
                }
                self.conceal(lacking);
                outcome = Played::Concealed;
            }
        }
        outcome
    }

    /// Whether the frame just decoded is to be dropped, to bring the delay down.
    fn should_drop(&self) -> bool {
        if self.since_drop < DRAIN_SPACING || !self.pending.is_empty() || self.scratch.len() < FRAME_SAMPLES {
            return false;
        }
        let excess = self.held_ms() - self.counters.target_ms;
        excess > DRAIN_FORCE_MS
            || excess > DRAIN_MARGIN_MS && (self.excess_frames > DRAIN_PATIENCE || mean_power(&self.scratch) < QUIET_POWER)
    }

    /// Conceals `samples` samples: by the Opus decoder's PLC, or, when what played last is
    /// periodic (a tone, a held vowel), by repeating the last pitch period, which keeps the
    /// phase where the codec's PLC drifts ([`Periodic`]).
    fn conceal(&mut self, samples: usize) {
        self.counters.concealed += 1;
        if self.periodic.is_none() {
            self.periodic = Periodic::find(&self.history);
        }
        // The decoder conceals either way, so its state follows the loss (skipped, its next
        // frames overshoot); its output is used only when nothing periodic is.
        let plc = self.decoder.conceal_into(samples, &mut self.scratch);
        match self.periodic {
            Some(p) => {
                self.scratch.clear();
                p.extend(&self.history, samples, &mut self.scratch);
            }
            None if plc.is_ok() => {}
            None => {
                self.scratch.clear();
                self.scratch.resize(samples, 0);
            }
        }
        self.pending.extend_from_slice(&self.scratch);
        remember(&mut self.history, &self.scratch);
    }

    /// Appends the decoded `scratch` to what is to play. After a periodic concealment the
    /// decoded frame is first brought to the level of the repeated period ([`match_level`]: the
    /// decoder's first frame after its own PLC starts at that PLC's level and ramps up), then the
    /// two are merged: the repeated period goes on into the decoded frame up to the point
    /// (within its first [`MERGE_SEARCH`] samples) where they match best, and crosses into it
    /// there over [`SEAM`] samples, so the seam falls where the waveforms agree.
    fn append_decoded(&mut self) {
        if let Some(p) = self.periodic.take() {
            match_level(&p, &self.history, &mut self.scratch);
            let span = (MERGE_SEARCH + SEAM).min(self.scratch.len());
            if span > SEAM {
                let mut cont = Vec::with_capacity(span);
                p.extend(&self.history, span, &mut cont);
                let mismatch = |at: usize| -> f64 {
                    (at..at + SEAM).map(|i| (f64::from(cont[i]) - f64::from(self.scratch[i])).powi(2)).sum::<f64>()
                };
                let at = (0..=span - SEAM).step_by(4).min_by(|&a, &b| mismatch(a).total_cmp(&mismatch(b))).unwrap_or(0);
                for (i, (d, c)) in self.scratch.iter_mut().zip(&cont).take(at + SEAM).enumerate() {
                    let w = if i < at { 0.0 } else { (i - at) as f32 / SEAM as f32 };
                    *d = (f32::from(*d) * w + f32::from(*c) * (1.0 - w)) as i16;
                }
            }
        }
        self.pending.extend_from_slice(&self.scratch);
        remember(&mut self.history, &self.scratch);
    }

    /// Nothing to decode: concealment while the fade lasts (the packet may be late), then
    /// silence; DTX silence while the sender is in DTX.
    fn nothing_held(&mut self) -> Played {
        if !self.playing {
            return Played::Silence;
        }
        if self.in_dtx {
            self.play_ts += FRAME_SAMPLES as i64;
            self.counters.dtx += 1;
            return Played::Dtx;
        }
        if self.run < FADE_FRAMES {
            self.stretch += 1;
            self.conceal(FRAME_SAMPLES);
            return Played::Concealed;
        }
        // Faded out: a pause or an outage. Play-out starts again at the target delay.
        self.playing = false;
        self.stretch = 0;
        Played::Silence
    }
}

/// Samples of what played kept for concealment (40 ms).
pub const HISTORY: usize = 2 * FRAME_SAMPLES;
/// Samples over which play crosses from a repeated period back to decoded audio (2 ms).
pub const SEAM: usize = 96;
/// Samples at each end of the first decoded frame after a periodic concealment whose level is
/// matched (5 ms).
pub const LEVEL_SPAN: usize = 240;
/// Samples of the first decoded frame after a periodic concealment searched for the best
/// point to merge into it (5 ms).
pub const MERGE_SEARCH: usize = 240;
/// The normalised correlation at which the last 10 ms count as periodic.
pub const PERIODIC: f64 = 0.9;

fn remember(history: &mut Vec<i16>, samples: &[i16]) {
    history.extend_from_slice(samples);
    if history.len() > HISTORY {
        history.drain(..history.len() - HISTORY);
    }
}

/// A pitch period found in what played last, to repeat while concealing (the waveform
/// substitution of ITU-T G.711 Appendix I, which keeps a tone's phase where a codec's PLC
/// drifts). Found by normalised autocorrelation, coarse at 12 kHz, then refined at 48 kHz.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Periodic {
    /// The period in samples (48 kHz), to a fraction of a sample: 1 ms to 15 ms.
    lag: f64,
}

impl Periodic {
    const MIN_LAG: usize = 48;
    const MAX_LAG: usize = 720;
    const WINDOW: usize = 480;

    fn find(history: &[i16]) -> Option<Periodic> {
        if history.len() < Self::MAX_LAG + Self::WINDOW + 1 {
            return None;
        }
        let end = history.len();
        let corr = |lag: usize, step: usize| -> f64 {
            let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
            let mut i = end - Self::WINDOW;
            while i < end {
                let (x, y) = (f64::from(history[i]), f64::from(history[i - lag]));
                xy += x * y;
                xx += x * x;
                yy += y * y;
                i += step;
            }
            if xx < 1.0 || yy < 1.0 {
                return 0.0;
            }
            xy / (xx * yy).sqrt()
        };
        let coarse = (Self::MIN_LAG / 4..=Self::MAX_LAG / 4).map(|l| l * 4).max_by(|&a, &b| corr(a, 4).total_cmp(&corr(b, 4)))?;
        let lo = coarse.saturating_sub(4).max(Self::MIN_LAG + 1);
        let hi = (coarse + 4).min(Self::MAX_LAG - 1);
        let lag = (lo..=hi).max_by(|&a, &b| corr(a, 1).total_cmp(&corr(b, 1)))?;
        let (l, c, r) = (corr(lag - 1, 1), corr(lag, 1), corr(lag + 1, 1));
        if c < PERIODIC {
            return None;
        }
        // The peak between the three, by a parabola through them: the period to a fraction of
        // a sample, so a repeated tone keeps its pitch and phase.
        let curve = l - 2.0 * c + r;
        let shift = if curve < 0.0 { (0.5 * (l - r) / curve).clamp(-0.5, 0.5) } else { 0.0 };
        Some(Periodic { lag: lag as f64 + shift })
    }

    /// Appends `n` more samples of the repeated period to `out`, going on from `history`
    /// (which ends with what was repeated so far); between samples, linearly interpolated.
    fn extend(&self, history: &[i16], n: usize, out: &mut Vec<i16>) {
        let start = out.len();
        let base = history.len() as f64;
        for i in 0..n {
            // One period back, in the history or in what this call made so far.
            let x = base + i as f64 - self.lag;
            let at = |k: usize| -> f64 {
                if k < history.len() {
                    f64::from(history[k])
                } else {
                    f64::from(out[start + k - history.len()])
                }
            };
            let k = x.floor() as usize;
            let t = x - x.floor();
            out.push((at(k) * (1.0 - t) + at(k + 1) * t) as i16);
        }
    }
}

/// Scales `frame`, the first decoded after a periodic concealment, to the level the repeated
/// period would have had: the gain that matches the first [`LEVEL_SPAN`] samples at the start,
/// the one that matches the last at the end, a straight line between (a smooth gain; one that
/// moved from block to block would modulate the audio). Each gain is bounded to a quarter to
/// four times.
fn match_level(p: &Periodic, history: &[i16], frame: &mut [i16]) {
    let n = frame.len();
    if n < 2 * LEVEL_SPAN {
        return;
    }
    let mut cont = Vec::with_capacity(n);
    p.extend(history, n, &mut cont);
    let rms = |x: &[i16]| (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt();
    let gain = |r: std::ops::Range<usize>| {
        let (c, d) = (rms(&cont[r.clone()]), rms(&frame[r]));
        if d < 1.0 {
            1.0
        } else {
            (c / d).clamp(0.25, 4.0)
        }
    };
    let (g0, g1) = (gain(0..LEVEL_SPAN), gain(n - LEVEL_SPAN..n));
    for (i, s) in frame.iter_mut().enumerate() {
        let t = i as f64 / (n - 1) as f64;
        *s = (f64::from(*s) * (g0 + (g1 - g0) * t)).clamp(-32768.0, 32767.0) as i16;
    }
}

/// Whether an Opus packet carries in-band FEC for the frame before it.
pub fn has_fec(packet: &[u8]) -> bool {
    let Ok(len) = i32::try_from(packet.len()) else { return false };
    // SAFETY: the pointer and length describe `packet`, which libopus only reads.
    unsafe { opusic_sys::opus_packet_has_lbrr(packet.as_ptr(), len) == 1 }
}

/// The extended number closest to `highest` with these low 16 bits.
fn unwrap_u16(highest: u64, low: u16) -> u64 {
    let base = highest & !0xFFFF;
    [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
        .into_iter()
        .map(|b| b | u64::from(low))
        .min_by_key(|c| c.abs_diff(highest))
        .expect("three candidates")
}

/// The extended timestamp closest to `highest` with these low 32 bits.
fn unwrap_u32(highest: i64, low: u32) -> i64 {
    let base = highest & !0xFFFF_FFFF;
    [base - (1 << 32), base, base + (1 << 32)]
        .into_iter()
        .map(|b| b | i64::from(low))
        .min_by_key(|c| c.abs_diff(highest))
        .expect("three candidates")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::opus_codec::Encoder;
    use crate::audio::{tone_share, AudioSource};

    /// `n` packets of a 440 Hz tone, FEC on and expecting `loss` percent.
    fn stream(n: usize, loss: u8) -> Vec<Bytes> {
        let mut enc = Encoder::new().unwrap();
        enc.set_expected_loss(loss).unwrap();
        let mut src = AudioSource::tone(440.0).open().unwrap();
        (0..n).map(|_| Bytes::from(enc.encode(&src.next_frame()).unwrap())).collect()
    }

    /// Plays `packets`, packet `i` arriving at `arrival(i)` ms (`None`: lost), one frame asked for
    /// every 20 ms from 0 to `ms`: every frame and what it was.
    fn run(p: &mut Playout, packets: &[Bytes], arrival: impl Fn(usize) -> Option<f64>, ms: usize) -> Vec<(Played, Vec<i16>)> {
        let mut due: Vec<(f64, usize)> = (0..packets.len()).filter_map(|i| arrival(i).map(|a| (a, i))).collect();
        due.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut due = due.into_iter().peekable();
        let mut out = Vec::new();
        for t in (0..ms).step_by(20) {
            while let Some(&(a, i)) = due.peek() {
                if a > t as f64 {
                    break;
                }
                p.push(i as u16, (i * FRAME_SAMPLES) as u32, packets[i].clone(), a);
                due.next();
            }
            let mut f = Vec::new();
            let what = p.next_frame(&mut f);
            assert_eq!(f.len(), FRAME_SAMPLES);
            out.push((what, f));
        }
        out
    }

    fn share(frames: &[(Played, Vec<i16>)]) -> f64 {
        let all: Vec<i16> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
        tone_share(&all, 440.0)
    }

    #[test]
    fn a_clean_stream_plays_every_packet_once_after_the_target_delay() {
        let packets = stream(100, 0);
        let mut p = Playout::new(true).unwrap();
        let frames = run(&mut p, &packets, |i| Some(i as f64 * 20.0 + 1.0), 2_040);
        let c = p.counters();
        assert_eq!((c.lost, c.concealed, c.late, c.dropped), (0, 0, 0, 0), "{c:?}");
        let audio = frames.iter().filter(|(w, _)| *w == Played::Audio).count();
        assert_eq!(audio, 100);
        // Play-out starts once two frames are held (the FEC minimum).
        assert_eq!(frames.iter().position(|(w, _)| *w == Played::Audio), Some(2));
        assert!(share(&frames[5..100]) > 0.9);
    }

    #[test]
    fn a_lost_packet_is_rebuilt_from_the_next_ones_fec() {
        let packets = stream(60, 20);
        // SILK sends FEC only for frames its voice detector finds active: a steady tone stops
        // being active after about 600 ms, so the loss is early in it.
        let with: Vec<bool> = packets.iter().map(|p| has_fec(p)).collect();
        assert!(with[11], "the encoder sent FEC: {with:?}");
        let mut p = Playout::new(true).unwrap();
        let frames = run(&mut p, &packets, |i| (i != 10).then_some(i as f64 * 20.0), 1_220);
        let c = p.counters();
        assert_eq!((c.lost, c.recovered_fec, c.concealed), (1, 1, 0), "{c:?}");
        assert!(frames.iter().any(|(w, _)| *w == Played::Recovered));
    }

    #[test]
    fn without_fec_a_lost_packet_is_concealed() {
        let packets = stream(60, 20);
        let mut p = Playout::new(false).unwrap();
        run(&mut p, &packets, |i| (i != 10).then_some(i as f64 * 20.0), 1_200);
        let c = p.counters();
        assert_eq!((c.lost, c.recovered_fec, c.concealed), (1, 0, 1), "{c:?}");
    }

    #[test]
    fn a_burst_is_concealed_fading_to_silence_and_the_stream_goes_on_a_frame_every_20_ms() {
        let packets = stream(100, 0);
        let mut p = Playout::new(true).unwrap();
        // 20 packets (400 ms) lost.
        let frames = run(&mut p, &packets, |i| (!(40..60).contains(&i)).then_some(i as f64 * 20.0), 2_020);
        assert_eq!(frames.len(), 101);
        let concealed: Vec<usize> = frames.iter().enumerate().filter(|(_, (w, _))| *w == Played::Concealed).map(|(i, _)| i).collect();
        assert_eq!(concealed.len(), FADE_FRAMES as usize, "{concealed:?}");
        // The last concealed frame ends faded to nothing, and silence follows.
        let last = &frames[*concealed.last().unwrap()].1;
        assert!(last[FRAME_SAMPLES - 10..].iter().all(|s| s.abs() < 200), "{:?}", &last[FRAME_SAMPLES - 10..]);
        let after = concealed.last().unwrap() + 1;
        assert!(frames[after].1.iter().all(|&s| s == 0));
        // It comes back, and the packets that never came are lost.
        assert!(share(&frames[70..]) > 0.8);
        assert_eq!(p.counters().lost, 20);
    }

    #[test]
    fn a_late_packet_is_played_and_the_target_grows_then_shrinks_back() {
        let packets = stream(600, 0);
        let mut p = Playout::new(true).unwrap();
        // A delay spike: packets 100..106 are held up and come together 120 ms after 100 was
        // sent (a queue that drains), then all is clean again.
        let arrival = |i: usize| if (100..107).contains(&i) { 2_120.0 } else { i as f64 * 20.0 };
        let mut targets = Vec::new();
        let mut frames = Vec::new();
        for chunk in 0..12 {
            let from = chunk * 1_000;
            let f = run_from(&mut p, &packets, |i| Some(arrival(i)), from, from + 1_000);
            targets.push(p.counters().target_ms);
            frames.extend(f);
        }
        assert!(targets[0] < 45.0, "{targets:?}");
        assert!(targets[2] > 100.0, "the spike raised the target: {targets:?}");
        assert!(targets[11] < 45.0, "it shrank back: {targets:?}");
        let c = p.counters().clone();
        // The delayed packets were played, not lost; the extra delay was drained later.
        assert_eq!(c.lost, 0, "{c:?}");
        assert!(c.dropped >= 1, "{c:?}");
        assert!(c.delay_ms < 100.0, "{c:?}");
    }

    /// As `run`, from `from` ms to `to` ms, pushing only the packets arriving in that time.
    fn run_from(p: &mut Playout, packets: &[Bytes], arrival: impl Fn(usize) -> Option<f64>, from: usize, to: usize) -> Vec<(Played, Vec<i16>)> {
        let mut out = Vec::new();
        let mut due: Vec<(f64, usize)> =
            (0..packets.len()).filter_map(|i| arrival(i).map(|a| (a, i))).filter(|&(a, _)| a > from as f64 - 20.0 && a <= to as f64).collect();
        due.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut due = due.into_iter().peekable();
        for t in (from..to).step_by(20) {
            while let Some(&(a, i)) = due.peek() {
                if a > t as f64 {
                    break;
                }
                p.push(i as u16, (i * FRAME_SAMPLES) as u32, packets[i].clone(), a);
                due.next();
            }
            let mut f = Vec::new();
            out.push((p.next_frame(&mut f), f));
        }
        out
    }

    #[test]
    fn jittered_reordered_packets_play_in_order_with_a_target_above_the_jitter() {
        let packets = stream(500, 0);
        let mut p = Playout::new(true).unwrap();
        // A deterministic 0–30 ms delay per packet: reorders some.
        let delay = |i: usize| ((i * 7919) % 31) as f64;
        let frames = run(&mut p, &packets, |i| Some(i as f64 * 20.0 + delay(i)), 10_400);
        let c = p.counters();
        assert_eq!((c.lost, c.late), (0, 0), "{c:?}");
        assert!(c.target_ms >= 45.0 && c.target_ms <= 60.0, "{c:?}");
        assert!(c.jitter_ms > 3.0, "{c:?}");
        assert!(share(&frames[10..500]) > 0.9);
    }

    #[test]
    fn duplicates_and_packets_after_their_time_are_counted_and_dropped() {
        let packets = stream(50, 0);
        let mut p = Playout::new(true).unwrap();
        let mut f = Vec::new();
        for i in 0..20 {
            p.push(i, u32::from(i) * 960, packets[usize::from(i)].clone(), f64::from(i) * 20.0);
            if i == 5 {
                p.push(i, u32::from(i) * 960, packets[5].clone(), 101.0);
            }
            p.next_frame(&mut f);
        }
        p.push(3, 3 * 960, packets[3].clone(), 400.0);
        let c = p.counters();
        assert_eq!((c.duplicates, c.late, c.packets), (1, 1, 22), "{c:?}");
    }

    #[test]
    fn dtx_is_silence_not_loss() {
        // 20 packets of tone, then DTX frames every 400 ms (seq follows on, time jumps), then tone.
        let tone = stream(40, 0);
        let mut p = Playout::new(true).unwrap();
        let mut seq = 0u16;
        let mut ts = 0u32;
        let mut f = Vec::new();
        let mut plan: Vec<(f64, u16, u32, Bytes)> = Vec::new();
        for packet in &tone[..20] {
            plan.push((f64::from(ts) / 48.0, seq, ts, packet.clone()));
            seq += 1;
            ts += 960;
        }
        for _ in 0..3 {
            plan.push((f64::from(ts) / 48.0, seq, ts, Bytes::from_static(&[0xF8])));
            seq += 1;
            ts += 960 * 20;
        }
        for packet in &tone[20..40] {
            plan.push((f64::from(ts) / 48.0, seq, ts, packet.clone()));
            seq += 1;
            ts += 960;
        }
        let end = f64::from(ts) / 48.0;
        let mut plan = plan.into_iter().peekable();
        let mut t = 0.0;
        let mut kinds = Vec::new();
        while t < end {
            while let Some((a, s, ts, b)) = plan.peek().cloned() {
                if a > t {
                    break;
                }
                p.push(s, ts, b, a);
                plan.next();
            }
            kinds.push(p.next_frame(&mut f));
            t += 20.0;
        }
        let c = p.counters();
        assert_eq!((c.lost, c.concealed), (0, 0), "{c:?} {kinds:?}");
        assert!(c.dtx >= 55, "{c:?}");
    }

    #[test]
    fn a_new_stream_starts_over_without_counting_the_jump_as_loss() {
        let packets = stream(40, 0);
        let mut p = Playout::new(true).unwrap();
        let mut f = Vec::new();
        for i in 0..20u16 {
            p.push(i, u32::from(i) * 960, packets[usize::from(i)].clone(), f64::from(i) * 20.0);
            p.next_frame(&mut f);
        }
        for i in 0..20u16 {
            let seq = 40_000 + i;
            p.push(seq, 7_000_000 + u32::from(i) * 960, packets[usize::from(20 + i)].clone(), 400.0 + f64::from(i) * 20.0);
            p.next_frame(&mut f);
        }
        let c = p.counters();
        assert_eq!(c.lost, 0, "{c:?}");
        assert!(c.frames == 40);
    }

    /// A tone at `hz` through `loss` random loss and 0–30 ms of jitter (seeded): the share of
    /// frames after the first second that hold it (more than half their power).
    fn tone_through_loss(hz: f32, loss: f64, seconds: usize) -> f64 {
        let n = seconds * 50;
        let mut enc = Encoder::new().unwrap();
        enc.set_expected_loss((loss * 100.0) as u8).unwrap();
        let mut src = AudioSource::tone(hz).open().unwrap();
        let packets: Vec<Bytes> = (0..n).map(|_| Bytes::from(enc.encode(&src.next_frame()).unwrap())).collect();
        let mut x: u64 = 2026;
        let mut uniform = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let plan: Vec<Option<f64>> = (0..n).map(|i| (uniform() >= loss).then(|| i as f64 * 20.0 + 30.0 * uniform())).collect();
        let mut p = Playout::new(true).unwrap();
        let frames = run(&mut p, &packets, |i| plan[i], n * 20);
        let good = frames[50..].iter().filter(|(_, f)| tone_share(f, hz) > 0.5).count();
        good as f64 / (frames.len() - 50) as f64
    }

    #[test]
    fn a_tone_through_ten_percent_loss_and_jitter_stays_a_tone_in_nearly_every_frame() {
        // The concealment repeats the tone's period and merges back into the decoded audio at
        // the tone's level; Opus's own PLC alone left about 8 % of these frames off the tone.
        for hz in [440.0, 660.0] {
            let share = tone_through_loss(hz, 0.1, 60);
            assert!(share >= 0.995, "{hz} Hz: {share}");
        }
    }

    #[test]
    fn a_periodic_signal_has_its_period_found_to_a_fraction_of_a_sample() {
        let mut src = AudioSource::tone(660.0).open().unwrap();
        let history: Vec<i16> = (0..2).flat_map(|_| src.next_frame()).collect();
        let p = Periodic::find(&history).expect("a tone is periodic");
        let expected = 48_000.0 / 660.0;
        // The period or a multiple of it.
        let k = (p.lag / expected).round();
        assert!((p.lag - k * expected).abs() < 0.05, "{p:?}");
        let mut x: u64 = 7;
        let noise: Vec<i16> = (0..1920)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 52) as i16 - 2048
            })
            .collect();
        assert_eq!(Periodic::find(&noise), None);
    }

    #[test]
    fn sequence_numbers_and_timestamps_unwrap() {
        assert_eq!(unwrap_u16(0x1_FFFF, 0x0001), 0x2_0001);
        assert_eq!(unwrap_u16(0x2_0001, 0xFFFF), 0x1_FFFF);
        assert_eq!(unwrap_u32(0x1_FFFF_FF00, 0x10), 0x2_0000_0010);
    }
}
