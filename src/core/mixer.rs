//! The conference mixer: per party a jitter buffer and an Opus decoder with packet-loss
//! concealment; every 20 ms tick one frame per party, an N-1 mix through a limiter, Opus out.
//!
//! Invariant: a party never hears itself. The mix of the tick is the sum of the parties that
//! speak (power above [`SPEAKING_POWER`], with a hang-over); a speaker receives that sum minus its
//! own frame, encoded by its own encoder; everyone else receives the whole sum, encoded once and
//! shared. So the cost of a tick grows with the number of speakers, not of listeners.
//!
//! [`MixerCore`] is the pure part (no clock, no IO): the tests drive it tick by tick. [`run`] is
//! the task that feeds it packets, ticks it every 20 ms and writes its output to the parties'
//! tracks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use webrtc::media::Sample;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

use crate::audio::opus_codec::{Decoder, Encoder};
use crate::audio::{mean_power, FRAME_DURATION, FRAME_SAMPLES};
use crate::wire::PartyId;

/// A frame with more mean power than this (about -50 dBFS) counts as speech.
pub const SPEAKING_POWER: f64 = 1e-5;
/// Frames a party stays a speaker after its last loud frame (500 ms).
pub const HANGOVER_FRAMES: u32 = 25;
/// Lost frames concealed in a row before the party counts as silent (100 ms).
pub const MAX_CONCEALED: u32 = 5;
/// Packets held before the oldest are dropped to catch up (500 ms).
pub const JITTER_MAX: usize = 25;
/// Packets held before play-out starts, at the start and after running dry (40 ms).
pub const JITTER_TARGET: usize = 2;
/// The limiter's ceiling, as a share of full scale.
pub const CEILING: f32 = 0.89;
/// The share of the remaining gain distance recovered per frame (about 0.5 s to recover).
pub const RELEASE: f32 = 0.08;

/// What the jitter buffer gives for one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pop {
    Packet(Bytes),
    /// The packet due now is missing but later ones came: conceal it.
    Lost,
    /// Nothing due and nothing later: the party is not sending.
    Empty,
}

/// Orders packets by RTP sequence number and hands out one per tick.
#[derive(Debug, Default)]
pub struct JitterBuffer {
    packets: BTreeMap<u64, Bytes>,
    highest: Option<u64>,
    next: Option<u64>,
    /// Whether play-out runs; it stops when the buffer runs dry and starts again once
    /// [`JITTER_TARGET`] packets are held, so a late burst does not run dry at once again.
    playing: bool,
}

impl JitterBuffer {
    /// Stores a packet; late (already played) and duplicate packets are dropped.
    pub fn push(&mut self, seq: u16, payload: Bytes) {
        let ext = match self.highest {
            None => u64::from(seq) + (1 << 16),
            Some(h) => {
                // The extended number closest to the highest seen with these low 16 bits.
                let base = h & !0xFFFF;
                [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
                    .into_iter()
                    .map(|b| b | u64::from(seq))
                    .min_by_key(|c| c.abs_diff(h))
                    .expect("three candidates")
            }
        };
        if self.next.is_some_and(|n| ext < n) {
            return;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.packets.insert(ext, payload);
        if self.packets.len() > JITTER_MAX {
            // Fell behind: keep the newest few.
            let keep_from = *self.packets.keys().nth_back(2).expect("more than 3");
            self.packets = self.packets.split_off(&keep_from);
            self.next = Some(keep_from);
        }
    }

    /// The packet due at this tick.
    pub fn pop(&mut self) -> Pop {
        if !self.playing && self.packets.len() < JITTER_TARGET {
            return Pop::Empty;
        }
        let Some(&first) = self.packets.keys().next() else {
            self.playing = false;
            return Pop::Empty;
        };
        self.playing = true;
        let next = match self.next {
            // After a long gap (or at the start) resume at the first packet held.
            Some(n) if first.saturating_sub(n) <= u64::from(MAX_CONCEALED) => n,
            _ => first,
        };
        self.next = Some(next + 1);
        match self.packets.remove(&next) {
            Some(p) => Pop::Packet(p),
            None => Pop::Lost,
        }
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

/// A gain that drops at once to keep peaks under [`CEILING`] and recovers smoothly, then a soft
/// knee for anything that still exceeds it: the mix never clips hard.
#[derive(Debug)]
pub struct Limiter {
    gain: f32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { gain: 1.0 }
    }
}

impl Limiter {
    pub fn process(&mut self, mix: &[i32], out: &mut Vec<i16>) {
        let ceiling = CEILING * 32767.0;
        let peak = mix.iter().map(|&x| x.unsigned_abs()).max().unwrap_or(0) as f32;
        let target = if peak * self.gain > ceiling { ceiling / peak } else { 1.0 };
        let (from, to) = if target < self.gain {
            (target, target) // attack: the whole frame at the lower gain
        } else {
            (self.gain, self.gain + (target - self.gain) * RELEASE)
        };
        self.gain = to;
        out.clear();
        let n = mix.len().max(1) as f32;
        out.extend(mix.iter().enumerate().map(|(i, &x)| {
            let g = from + (to - from) * (i as f32 / n);
            soft_knee(x as f32 * g)
        }));
    }

    pub fn gain(&self) -> f32 {
        self.gain
    }
}

/// Identity below the ceiling; above it, a tanh curve that approaches full scale but never
/// reaches it.
fn soft_knee(x: f32) -> i16 {
    let c = CEILING * 32767.0;
    let a = x.abs();
    let y = if a <= c { a } else { c + (32767.0 - c) * ((a - c) / (32767.0 - c)).tanh() };
    (y.copysign(x)).round().clamp(-32767.0, 32767.0) as i16
}

struct Slot {
    jitter: JitterBuffer,
    decoder: Decoder,
    encoder: Option<Encoder>,
    limiter: Limiter,
    hang: u32,
    concealed: u32,
    frame: Vec<i16>,
}

impl Slot {
    fn speaking(&self) -> bool {
        self.hang > 0
    }
}

/// What one tick produced for one party.
#[derive(Debug, Clone)]
pub struct Output {
    pub party: PartyId,
    pub packet: Bytes,
}

/// The pure mixer: add and remove parties, push their packets, tick.
#[derive(Default)]
pub struct MixerCore {
    slots: BTreeMap<PartyId, Slot>,
    shared_encoder: Option<Encoder>,
    shared_limiter: Limiter,
    /// The shared mix of the last tick, for a party whose media just came up.
    last_shared: Option<Bytes>,
    mix: Vec<i32>,
    /// A speaker's N-1 mix, reused every tick.
    own: Vec<i32>,
    pcm: Vec<i16>,
}

impl MixerCore {
    pub fn add(&mut self, party: PartyId) -> Result<(), String> {
        let slot = Slot {
            jitter: JitterBuffer::default(),
            decoder: Decoder::new()?,
            encoder: None,
            limiter: Limiter::default(),
            hang: 0,
            concealed: 0,
            frame: vec![0; FRAME_SAMPLES],
        };
        self.slots.insert(party, slot);
        Ok(())
    }

    pub fn remove(&mut self, party: PartyId) {
        self.slots.remove(&party);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A packet from a party (unknown parties' packets are dropped).
    pub fn push(&mut self, party: PartyId, seq: u16, payload: Bytes) {
        if let Some(s) = self.slots.get_mut(&party) {
            s.jitter.push(seq, payload);
        }
    }

    /// The parties speaking at the last tick.
    pub fn speakers(&self) -> Vec<PartyId> {
        self.slots.iter().filter(|(_, s)| s.speaking()).map(|(p, _)| *p).collect()
    }

    /// One 20 ms tick: decode one frame per party, mix, encode; one packet per party.
    pub fn tick(&mut self) -> Vec<Output> {
        self.mix.clear();
        self.mix.resize(FRAME_SAMPLES, 0);
        for slot in self.slots.values_mut() {
            let decoded = match slot.jitter.pop() {
                Pop::Packet(p) => {
                    slot.concealed = 0;
                    slot.decoder.decode_into(Some(&p), &mut slot.frame)
                }
                Pop::Lost if slot.concealed < MAX_CONCEALED => {
                    slot.concealed += 1;
                    slot.decoder.decode_into(None, &mut slot.frame)
                }
                Pop::Empty if slot.speaking() && slot.concealed < MAX_CONCEALED => {
                    slot.concealed += 1;
                    slot.decoder.decode_into(None, &mut slot.frame)
                }
                _ => Err(String::new()),
            };
            if decoded.is_err() {
                slot.frame.clear(); // silent this tick
            }
            slot.frame.resize(FRAME_SAMPLES, 0);
            slot.hang = if mean_power(&slot.frame) > SPEAKING_POWER { HANGOVER_FRAMES } else { slot.hang.saturating_sub(1) };
            if slot.speaking() {
                for (m, &s) in self.mix.iter_mut().zip(&slot.frame) {
                    *m += i32::from(s);
                }
            } else {
                slot.encoder = None;
            }
        }

        let mut outputs = Vec::with_capacity(self.slots.len());
        // The shared mix is made every tick, even when everyone speaks: a party whose media
        // just came up is sent it at once (`Input::Connected`).
        let shared = limit_and_encode(&mut self.shared_limiter, &mut self.shared_encoder, &self.mix, &mut self.pcm);
        self.own.resize(FRAME_SAMPLES, 0);
        for (party, slot) in self.slots.iter_mut() {
            let packet = if slot.speaking() {
                for ((o, &m), &s) in self.own.iter_mut().zip(&self.mix).zip(&slot.frame) {
                    *o = m - i32::from(s);
                }
                match limit_and_encode(&mut slot.limiter, &mut slot.encoder, &self.own, &mut self.pcm) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                match &shared {
                    Some(p) => p.clone(),
                    None => continue,
                }
            };
            outputs.push(Output { party: *party, packet });
        }
        if shared.is_some() {
            self.last_shared = shared;
        }
        outputs
    }

    /// The shared mix of the last tick: what a party that is not speaking hears right now.
    pub fn last_shared(&self) -> Option<Bytes> {
        self.last_shared.clone()
    }
}

/// One output of a tick: the mix through its limiter, then its encoder (made on first use).
fn limit_and_encode(limiter: &mut Limiter, encoder: &mut Option<Encoder>, mix: &[i32], pcm: &mut Vec<i16>) -> Option<Bytes> {
    limiter.process(mix, pcm);
    let enc = match encoder {
        Some(e) => e,
        None => encoder.insert(Encoder::new().ok()?),
    };
    enc.encode(pcm).ok().map(Bytes::from)
}

/// What the mixer task is told.
pub enum Input {
    Add {
        party: PartyId,
        track: Arc<TrackLocalStaticSample>,
    },
    Remove {
        party: PartyId,
    },
    /// The party's DTLS is up: send it the current mix now rather than at the next tick, so its
    /// first audio does not wait for the tick.
    Connected {
        party: PartyId,
    },
    Packet {
        party: PartyId,
        seq: u16,
        payload: Bytes,
    },
}

/// The mixer task of one conference: runs until every sender is dropped.
pub async fn run(mut rx: mpsc::Receiver<Input>) {
    let mut core = MixerCore::default();
    let mut tracks: HashMap<PartyId, Arc<TrackLocalStaticSample>> = HashMap::new();
    let mut tick = tokio::time::interval(FRAME_DURATION);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            input = rx.recv() => match input {
                None => return,
                Some(Input::Add { party, track }) => {
                    if core.add(party).is_ok() {
                        tracks.insert(party, track);
                    }
                }
                Some(Input::Remove { party }) => {
                    core.remove(party);
                    tracks.remove(&party);
                }
                Some(Input::Connected { party }) => {
                    if let (Some(track), Some(packet)) = (tracks.get(&party), core.last_shared()) {
                        let sample = Sample { data: packet, duration: FRAME_DURATION, ..Default::default() };
                        let _ = track.write_sample(&sample).await;
                    }
                }
                Some(Input::Packet { party, seq, payload }) => core.push(party, seq, payload),
            },
            _ = tick.tick() => {
                for out in core.tick() {
                    if let Some(track) = tracks.get(&out.party) {
                        let sample = Sample { data: out.packet, duration: FRAME_DURATION, ..Default::default() };
                        let _ = track.write_sample(&sample).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{tone_share, AudioSource};

    fn packets(hz: f32, frames: usize) -> Vec<Bytes> {
        let mut src = AudioSource::tone(hz).open().unwrap();
        let mut enc = Encoder::new().unwrap();
        (0..frames).map(|_| Bytes::from(enc.encode(&src.next_frame()).unwrap())).collect()
    }

    #[test]
    fn each_party_hears_every_other_tone_and_not_its_own() {
        let tones = [(PartyId(1), 440.0), (PartyId(2), 660.0), (PartyId(3), 880.0)];
        let streams: Vec<Vec<Bytes>> = tones.iter().map(|(_, hz)| packets(*hz, 50)).collect();
        let mut mixer = MixerCore::default();
        for (p, _) in tones {
            mixer.add(p).unwrap();
        }
        mixer.add(PartyId(4)).unwrap(); // a silent listener
        let mut decoders: HashMap<PartyId, Decoder> = (1..=4).map(|i| (PartyId(i), Decoder::new().unwrap())).collect();
        let mut heard: HashMap<PartyId, Vec<i16>> = HashMap::new();
        for t in 0..50 {
            for ((p, _), s) in tones.iter().zip(&streams) {
                mixer.push(*p, t as u16, s[t].clone());
            }
            for out in mixer.tick() {
                let f = decoders.get_mut(&out.party).unwrap().decode(Some(&out.packet)).unwrap();
                heard.entry(out.party).or_default().extend(f);
            }
        }
        for (p, own) in tones {
            let h = &heard[&p][FRAME_SAMPLES * 10..];
            for (q, other) in tones {
                let share = tone_share(h, other);
                if q == p {
                    assert!(share < 0.02, "party {p} hears its own {own} Hz: {share}");
                } else {
                    assert!(share > 0.25, "party {p} misses {other} Hz: {share}");
                }
            }
        }
        let listener = &heard[&PartyId(4)][FRAME_SAMPLES * 10..];
        for (_, hz) in tones {
            assert!(tone_share(listener, hz) > 0.2, "the listener misses {hz} Hz");
        }
    }

    #[test]
    fn a_lost_packet_is_concealed_and_late_packets_are_dropped() {
        let mut jb = JitterBuffer::default();
        jb.push(65534, Bytes::from_static(b"a"));
        jb.push(0, Bytes::from_static(b"c")); // wrapped, 65535 missing
        assert_eq!(jb.pop(), Pop::Packet(Bytes::from_static(b"a")));
        assert_eq!(jb.pop(), Pop::Lost);
        jb.push(65535, Bytes::from_static(b"b")); // too late now
        assert_eq!(jb.pop(), Pop::Packet(Bytes::from_static(b"c")));
        assert_eq!(jb.pop(), Pop::Empty);
    }

    #[test]
    fn the_limiter_keeps_a_loud_sum_under_full_scale_without_flat_tops() {
        let mut lim = Limiter::default();
        let mut out = Vec::new();
        // Four full-scale tones in phase: four times full scale.
        let mix: Vec<i32> = (0..FRAME_SAMPLES).map(|i| ((i as f32 * 0.05).sin() * 4.0 * 32767.0) as i32).collect();
        for _ in 0..3 {
            lim.process(&mix, &mut out);
        }
        let peak = out.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak < 32767, "peak {peak}");
        let at_peak = out.iter().filter(|s| s.unsigned_abs() == peak).count();
        assert!(at_peak < 10, "{at_peak} samples sit at the peak: hard clipping");
        assert!(lim.gain() < 0.3);
    }
}
