//! The conference mixer: per party a jitter buffer and an Opus decoder with packet-loss
//! concealment; every 20 ms tick one frame per party, an N-1 mix through a limiter, Opus out.
//!
//! Invariant: a party never hears itself. The mix of the tick is the sum of the parties that
//! speak (power above [`SPEAKING_POWER`], with a hang-over); a speaker receives that sum minus its
//! own frame, encoded by its own encoder; everyone else receives the whole sum, encoded once and
//! shared. So the cost of a tick grows with the number of speakers, not of listeners.
//!
//! Every encoder sends Opus in-band FEC for the loss its listeners' receiver reports show: a
//! speaker's own encoder expects that party's loss, the shared one the highest loss among the
//! parties that hear it ([`shared_expected_loss`]); see docs/mixer.md.
//!
//! [`MixerCore`] is the pure part (no clock, no IO): the tests drive it tick by tick. [`Mixer`]
//! runs it on a thread of its own: control messages first, then the packets, a tick every 20 ms
//! while any party's media is connected (none at all otherwise), and each party's output handed
//! to that party's send task without waiting for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use webrtc::media::Sample;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

use crate::audio::opus_codec::Encoder;
use crate::audio::{mean_power, FRAME_DURATION, FRAME_SAMPLES};
use crate::media::playout::Playout;
use crate::media::rtcp::EXPECTED_LOSS_FLOOR;
use crate::wire::PartyId;

/// A frame with more mean power than this (about -50 dBFS) counts as speech.
pub const SPEAKING_POWER: f64 = 1e-5;
/// Frames a party stays a speaker after its last loud frame (500 ms).
pub const HANGOVER_FRAMES: u32 = 25;
/// Loud frames in a row after which a party is talking (`bTalking` 1): 60 ms.
pub const TALK_START_FRAMES: u32 = 3;
/// Frames without speech after which a talking party stops talking: 800 ms (within the 1 s
/// hang-over PROTOCOL.md §8 allows, and longer than a pause between words).
pub const TALK_STOP_FRAMES: u32 = 40;
/// Frames at least between two changes of one party's talking state: 300 ms, so at most about
/// three changes a second.
pub const TALK_MIN_SPACING_FRAMES: u32 = 15;
/// The limiter's ceiling, as a share of full scale.
pub const CEILING: f32 = 0.89;
/// The share of the remaining gain distance recovered per frame (about 0.5 s to recover).
pub const RELEASE: f32 = 0.08;

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

    #[cfg(test)]
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

/// Whether a party talks (`bTalking`), frame by frame, with hysteresis: it starts after
/// [`TALK_START_FRAMES`] loud frames in a row, stops after [`TALK_STOP_FRAMES`] frames without
/// one, and changes at most once per [`TALK_MIN_SPACING_FRAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TalkDetector {
    talking: bool,
    loud_run: u32,
    quiet_run: u32,
    since_change: u32,
}

impl Default for TalkDetector {
    fn default() -> Self {
        TalkDetector { talking: false, loud_run: 0, quiet_run: 0, since_change: TALK_MIN_SPACING_FRAMES }
    }
}

impl TalkDetector {
    /// One frame: whether it was loud (counted as speech, so mixed). Returns the new state
    /// when it changes.
    pub fn handle_frame(&mut self, loud: bool) -> Option<bool> {
        self.since_change = self.since_change.saturating_add(1);
        if loud {
            self.loud_run = self.loud_run.saturating_add(1);
            self.quiet_run = 0;
        } else {
            self.quiet_run = self.quiet_run.saturating_add(1);
            self.loud_run = 0;
        }
        let want = if self.talking { self.quiet_run < TALK_STOP_FRAMES } else { self.loud_run >= TALK_START_FRAMES };
        if want != self.talking && self.since_change >= TALK_MIN_SPACING_FRAMES {
            self.talking = want;
            self.since_change = 0;
            return Some(want);
        }
        None
    }

    /// Not talking, at once and without a report (the microphone went off: the registry knows).
    pub fn reset(&mut self) {
        *self = TalkDetector { since_change: self.since_change, ..TalkDetector::default() };
    }
}

struct Slot {
    /// `bMicOn`: off, the party's audio is read and dropped, never mixed.
    mic_on: bool,
    /// The party's adaptive jitter buffer and decoder (`media::playout`): one frame per tick.
    playout: Playout,
    encoder: Option<Encoder>,
    limiter: Limiter,
    hang: u32,
    talk: TalkDetector,
    frame: Vec<i16>,
    /// The packet loss the party's receiver reports show on the path to it, as the expected
    /// loss of an encoder, in percent ([`MixerCore::set_expected_loss`]).
    expected_loss: u8,
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
    /// Talking changes of the ticks so far, for [`MixerCore::take_talking`].
    talking: Vec<TalkingChange>,
}

impl MixerCore {
    pub fn add(&mut self, party: PartyId) -> Result<(), String> {
        let slot = Slot {
            mic_on: true,
            playout: Playout::new(true)?,
            encoder: None,
            limiter: Limiter::default(),
            hang: 0,
            talk: TalkDetector::default(),
            frame: vec![0; FRAME_SAMPLES],
            expected_loss: EXPECTED_LOSS_FLOOR,
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

    /// The party's microphone on or off: off, from the next tick its audio is read and dropped,
    /// never mixed (so it comes back without a backlog when turned on again).
    pub fn set_mic(&mut self, party: PartyId, on: bool) {
        if let Some(s) = self.slots.get_mut(&party) {
            s.mic_on = on;
            if !on {
                s.talk.reset();
            }
        }
    }

    /// The expected loss in percent on the path to the party (from its receiver reports, see
    /// `media::rtcp`): its own encoder uses it while it speaks, the shared encoder counts it while
    /// it listens. Until set, [`EXPECTED_LOSS_FLOOR`].
    pub fn set_expected_loss(&mut self, party: PartyId, percent: u8) {
        if let Some(s) = self.slots.get_mut(&party) {
            s.expected_loss = percent;
        }
    }

    /// The expected loss the party's own encoder has, while it has one (the party speaks).
    #[cfg(test)]
    pub fn encoder_expected_loss(&self, party: PartyId) -> Option<u8> {
        self.slots.get(&party)?.encoder.as_ref().map(Encoder::expected_loss)
    }

    /// The expected loss the shared encoder has, once it encoded a tick.
    #[cfg(test)]
    pub fn shared_encoder_expected_loss(&self) -> Option<u8> {
        self.shared_encoder.as_ref().map(Encoder::expected_loss)
    }

    /// The talking changes since the last call, in order.
    pub fn take_talking(&mut self) -> Vec<TalkingChange> {
        std::mem::take(&mut self.talking)
    }

    /// A packet from a party, with its RTP sequence number and timestamp, arrived at
    /// `arrival_ms` (from any epoch, the same for all); unknown parties' packets are dropped.
    pub fn push(&mut self, party: PartyId, seq: u16, ts: u32, payload: Bytes, arrival_ms: f64) {
        if let Some(s) = self.slots.get_mut(&party) {
            s.playout.push(seq, ts, payload, arrival_ms);
        }
    }

    /// One 20 ms tick: decode one frame per party, mix, encode; one packet per party.
    pub fn tick(&mut self) -> Vec<Output> {
        self.mix.clear();
        self.mix.resize(FRAME_SAMPLES, 0);
        for (party, slot) in self.slots.iter_mut() {
            slot.playout.next_frame(&mut slot.frame);
            if !slot.mic_on {
                slot.frame.fill(0);
            }
            let loud = slot.mic_on && mean_power(&slot.frame) > SPEAKING_POWER;
            slot.hang = if loud { HANGOVER_FRAMES } else { slot.hang.saturating_sub(1) };
            if let Some(talking) = slot.talk.handle_frame(loud) {
                self.talking.push(TalkingChange { party: *party, talking });
            }
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
        let shared_loss = shared_expected_loss(self.slots.values().filter(|s| !s.speaking()).map(|s| s.expected_loss));
        let shared = limit_and_encode(&mut self.shared_limiter, &mut self.shared_encoder, shared_loss, &self.mix, &mut self.pcm);
        self.own.resize(FRAME_SAMPLES, 0);
        for (party, slot) in self.slots.iter_mut() {
            let packet = if slot.speaking() {
                for ((o, &m), &s) in self.own.iter_mut().zip(&self.mix).zip(&slot.frame) {
                    *o = m - i32::from(s);
                }
                match limit_and_encode(&mut slot.limiter, &mut slot.encoder, slot.expected_loss, &self.own, &mut self.pcm) {
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

/// The expected loss of the shared encoder, from those of the parties that hear the shared mix
/// (those not speaking): the highest. One encoding goes to all of them, so it is protected for
/// the worst path among them; what that costs the others is bounded by the cap the expected loss
/// has (`media::rtcp::EXPECTED_LOSS_CAP`). [`EXPECTED_LOSS_FLOOR`] when nobody listens.
pub fn shared_expected_loss(listeners: impl IntoIterator<Item = u8>) -> u8 {
    listeners.into_iter().max().unwrap_or(EXPECTED_LOSS_FLOOR)
}

/// One output of a tick: the mix through its limiter, then its encoder (made on first use) told
/// to expect `loss` percent (a failed setting keeps the previous one until the next tick).
fn limit_and_encode(limiter: &mut Limiter, encoder: &mut Option<Encoder>, loss: u8, mix: &[i32], pcm: &mut Vec<i16>) -> Option<Bytes> {
    limiter.process(mix, pcm);
    let enc = match encoder {
        Some(e) => e,
        None => encoder.insert(Encoder::new().ok()?),
    };
    let _ = enc.set_expected_loss(loss);
    enc.encode(pcm).ok().map(Bytes::from)
}

/// How a mixer runs.
#[derive(Debug, Clone)]
pub struct MixerConfig {
    /// A name for the mixer's thread (`mixer-<conference>`).
    pub name: String,
    /// Packets from the parties that wait for the next tick; beyond this they are dropped
    /// (counted in [`MixerStats::packets_dropped`]).
    pub packet_queue: usize,
    /// A party's outgoing packets that wait for its send; beyond this a slow party's packets
    /// are dropped (counted in [`MixerStats::sends_dropped`]) and the tick goes on.
    pub send_queue: usize,
    /// A tick that starts this much after it was due counts as late.
    pub late_after: Duration,
    /// Where the speech detection reports each change of a party's talking state.
    pub talking: Option<tokio::sync::mpsc::UnboundedSender<TalkingChange>>,
}

/// A party started or stopped talking, as the mixer's speech detection decides (`bTalking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TalkingChange {
    /// The party.
    pub party: PartyId,
    /// Whether its audio is heard in the mix now.
    pub talking: bool,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig { name: "mixer".into(), packet_queue: 4096, send_queue: 8, late_after: FRAME_DURATION / 2, talking: None }
    }
}

/// What a mixer has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MixerStats {
    /// Ticks run (each decodes, mixes and encodes one 20 ms frame).
    pub ticks: u64,
    /// Ticks that started later than the late bound (10 ms by default) after they were due.
    pub late_ticks: u64,
    /// Ticks left out to catch up after the thread was held up for more than two frames.
    pub skipped_ticks: u64,
    /// Packets from the parties taken into the mix.
    pub packets: u64,
    /// Packets from the parties dropped because the queue to the mixer was full.
    pub packets_dropped: u64,
    /// Outgoing packets dropped because a party's send queue was full.
    pub sends_dropped: u64,
    /// Parties in the mixer.
    pub parties: u64,
    /// Parties whose media is connected; while there are none the mixer does not tick.
    pub connected: u64,
}

#[derive(Default)]
struct SharedStats {
    ticks: AtomicU64,
    late_ticks: AtomicU64,
    skipped_ticks: AtomicU64,
    packets: AtomicU64,
    packets_dropped: AtomicU64,
    sends_dropped: AtomicU64,
    parties: AtomicU64,
    connected: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> MixerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MixerStats {
            ticks: l(&self.ticks),
            late_ticks: l(&self.late_ticks),
            skipped_ticks: l(&self.skipped_ticks),
            packets: l(&self.packets),
            packets_dropped: l(&self.packets_dropped),
            sends_dropped: l(&self.sends_dropped),
            parties: l(&self.parties),
            connected: l(&self.connected),
        }
    }
}

/// What the mixer's thread is told, on the control channel (read before any packet).
enum Control {
    Add {
        party: PartyId,
        out: mpsc::Sender<Bytes>,
    },
    Remove {
        party: PartyId,
    },
    Connected {
        party: PartyId,
    },
    SetMic {
        party: PartyId,
        on: bool,
    },
    ExpectedLoss {
        party: PartyId,
        percent: u8,
    },
    /// A packet is queued while the mixer sleeps.
    Wake,
}

/// One packet from a party, on the packet channel.
struct Packet {
    party: PartyId,
    seq: u16,
    ts: u32,
    payload: Bytes,
    /// When it was read from the network.
    at: Instant,
}

struct Channels {
    control: std::sync::mpsc::Sender<Control>,
    packets: std::sync::mpsc::SyncSender<Packet>,
    idle: AtomicBool,
    stats: Arc<SharedStats>,
    send_queue: usize,
}

/// A conference's mixer: a handle to its thread, cheap to clone. The thread ticks every 20 ms
/// while a party's media is connected and sleeps otherwise; it ends when the last handle is
/// dropped.
///
/// Control messages ([`Mixer::add`], [`Mixer::remove`], [`Mixer::connected`]) go on an
/// unbounded channel that the thread reads before packets, so they are never lost behind media.
/// Packets ([`Mixer::packet`]) go on a bounded one and are dropped when it is full. Each
/// party's output goes to a task of its own that awaits `write_sample`; the thread hands it a
/// packet without waiting and drops it if that party's queue is full.
#[derive(Clone)]
pub struct Mixer {
    channels: Arc<Channels>,
    runtime: tokio::runtime::Handle,
}

impl Mixer {
    /// Starts a mixer's thread. Called within a tokio runtime: the parties' send tasks run on it.
    pub fn spawn(config: MixerConfig) -> Result<Mixer, String> {
        let (control, control_rx) = std::sync::mpsc::channel();
        let (packets, packets_rx) = std::sync::mpsc::sync_channel(config.packet_queue.max(1));
        let stats = Arc::new(SharedStats::default());
        let channels = Arc::new(Channels {
            control,
            packets,
            idle: AtomicBool::new(true),
            stats: stats.clone(),
            send_queue: config.send_queue.max(1),
        });
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("the mixer needs a tokio runtime: {e}"))?;
        let weak = Arc::downgrade(&channels);
        std::thread::Builder::new()
            .name(config.name.clone())
            .spawn(move || Worker::new(config, stats, weak).run(control_rx, packets_rx))
            .map_err(|e| format!("the mixer's thread: {e}"))?;
        Ok(Mixer { channels, runtime })
    }

    /// Adds a party; from now on its track is sent the mix without itself.
    pub fn add(&self, party: PartyId, track: Arc<TrackLocalStaticSample>) {
        let (out, mut rx) = mpsc::channel::<Bytes>(self.channels.send_queue);
        self.runtime.spawn(async move {
            while let Some(data) = rx.recv().await {
                let sample = Sample { data, duration: FRAME_DURATION, ..Default::default() };
                if track.write_sample(&sample).await.is_err() {
                    break;
                }
            }
        });
        let _ = self.channels.control.send(Control::Add { party, out });
    }

    /// Removes a party (its send task ends).
    pub fn remove(&self, party: PartyId) {
        let _ = self.channels.control.send(Control::Remove { party });
    }

    /// The party's media is up: it is sent the current mix at once, and the mixer ticks.
    pub fn connected(&self, party: PartyId) {
        let _ = self.channels.control.send(Control::Connected { party });
    }

    /// The party's microphone on or off (`SETMIC`), from the next tick.
    pub fn set_mic(&self, party: PartyId, on: bool) {
        let _ = self.channels.control.send(Control::SetMic { party, on });
    }

    /// The expected loss in percent on the path to the party, from its receiver reports
    /// ([`MixerCore::set_expected_loss`]), from the next tick.
    pub fn expected_loss(&self, party: PartyId, percent: u8) {
        let _ = self.channels.control.send(Control::ExpectedLoss { party, percent });
    }

    /// A packet from a party, with its RTP sequence number and timestamp, just read (its
    /// arrival time is taken now, for the jitter buffer); dropped if the queue is full.
    pub fn packet(&self, party: PartyId, seq: u16, ts: u32, payload: Bytes) {
        if self.channels.packets.try_send(Packet { party, seq, ts, payload, at: Instant::now() }).is_err() {
            self.channels.stats.packets_dropped.fetch_add(1, Ordering::Relaxed);
        } else if self.channels.idle.swap(false, Ordering::AcqRel) {
            let _ = self.channels.control.send(Control::Wake);
        }
    }

    /// What the mixer has done so far.
    pub fn stats(&self) -> MixerStats {
        self.channels.stats.snapshot()
    }
}

/// The mixer's thread.
struct Worker {
    config: MixerConfig,
    core: MixerCore,
    outs: HashMap<PartyId, mpsc::Sender<Bytes>>,
    connected: HashSet<PartyId>,
    stats: Arc<SharedStats>,
    channels: Weak<Channels>,
    /// Where the packets' arrival times are counted from.
    epoch: Instant,
}

impl Worker {
    fn new(config: MixerConfig, stats: Arc<SharedStats>, channels: Weak<Channels>) -> Self {
        let epoch = Instant::now();
        Worker { config, core: MixerCore::default(), outs: HashMap::new(), connected: HashSet::new(), stats, channels, epoch }
    }

    fn push(&mut self, p: Packet) {
        let arrival_ms = p.at.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0;
        self.core.push(p.party, p.seq, p.ts, p.payload, arrival_ms);
    }

    fn is_active(&self) -> bool {
        !self.connected.is_empty()
    }

    fn handle_control(&mut self, c: Control) {
        match c {
            Control::Add { party, out } => {
                if self.core.add(party).is_ok() {
                    self.outs.insert(party, out);
                }
            }
            Control::Remove { party } => {
                self.core.remove(party);
                self.outs.remove(&party);
                self.connected.remove(&party);
            }
            Control::Connected { party } => {
                if let Some(out) = self.outs.get(&party) {
                    self.connected.insert(party);
                    if let Some(packet) = self.core.last_shared() {
                        self.send(out.clone(), packet);
                    }
                }
            }
            Control::SetMic { party, on } => self.core.set_mic(party, on),
            Control::ExpectedLoss { party, percent } => self.core.set_expected_loss(party, percent),
            Control::Wake => {}
        }
        self.stats.parties.store(self.core.len() as u64, Ordering::Relaxed);
        self.stats.connected.store(self.connected.len() as u64, Ordering::Relaxed);
    }

    fn send(&self, out: mpsc::Sender<Bytes>, packet: Bytes) {
        if out.try_send(packet).is_err() {
            self.stats.sends_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_idle(&self, idle: bool) {
        if let Some(c) = self.channels.upgrade() {
            c.idle.store(idle, Ordering::Release);
        }
    }

    fn run(mut self, control: std::sync::mpsc::Receiver<Control>, packets: std::sync::mpsc::Receiver<Packet>) {
        let mut due = Instant::now();
        loop {
            // Control first, always.
            loop {
                match control.try_recv() {
                    Ok(c) => self.handle_control(c),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if !self.is_active() {
                // Nothing connected: sleep until told something, at no cost.
                self.set_idle(true);
                while let Ok(p) = packets.try_recv() {
                    self.push(p);
                }
                match control.recv() {
                    Ok(c) => self.handle_control(c),
                    Err(_) => return,
                }
                self.set_idle(false);
                due = Instant::now();
                continue;
            }
            let now = Instant::now();
            if now < due {
                match control.recv_timeout(due - now) {
                    Ok(c) => self.handle_control(c),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            let late = now - due;
            if late > self.config.late_after {
                self.stats.late_ticks.fetch_add(1, Ordering::Relaxed);
            }
            if late > FRAME_DURATION * 2 {
                // Held up (a loaded machine): play on from now rather than bursting to catch up.
                let skipped = (late.as_micros() / FRAME_DURATION.as_micros()) as u64;
                self.stats.skipped_ticks.fetch_add(skipped, Ordering::Relaxed);
                due = now;
            }
            due += FRAME_DURATION;
            let mut taken = 0;
            while let Ok(p) = packets.try_recv() {
                self.push(p);
                taken += 1;
            }
            self.stats.packets.fetch_add(taken, Ordering::Relaxed);
            for out in self.core.tick() {
                if let Some(tx) = self.outs.get(&out.party) {
                    self.send(tx.clone(), out.packet);
                }
            }
            for change in self.core.take_talking() {
                if let Some(t) = &self.config.talking {
                    let _ = t.send(change);
                }
            }
            self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::opus_codec::Decoder;

    /// A 20 ms packet of tick `t`, arriving on time.
    fn push(mixer: &mut MixerCore, party: PartyId, t: usize, packet: Bytes) {
        mixer.push(party, t as u16, (t * FRAME_SAMPLES) as u32, packet, t as f64 * 20.0);
    }
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
                push(&mut mixer, *p, t, s[t].clone());
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
    fn a_muted_party_is_out_of_every_mix_from_the_next_tick_and_back_when_unmuted() {
        let (a, b) = (PartyId(1), PartyId(2));
        let tone = packets(660.0, 150);
        let mut mixer = MixerCore::default();
        mixer.add(a).unwrap();
        mixer.add(b).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut heard = Vec::new();
        for (t, packet) in tone.iter().enumerate() {
            match t {
                50 => mixer.set_mic(a, false),
                100 => mixer.set_mic(a, true),
                _ => {}
            }
            push(&mut mixer, a, t, packet.clone());
            for out in mixer.tick().into_iter().filter(|o| o.party == b) {
                heard.push(dec.decode(Some(&out.packet)).unwrap());
            }
        }
        let share = |from: usize, to: usize| tone_share(&heard[from..to].concat(), 660.0);
        assert!(share(10, 50) > 0.5, "heard before the mute: {}", share(10, 50));
        // One tick for the mute to take effect, two frames of the decoder's tail.
        assert!(share(53, 100) < 0.02, "heard while muted: {}", share(53, 100));
        assert!(share(110, 150) > 0.5, "heard after the unmute: {}", share(110, 150));
    }

    /// Runs a party through the mixer, one frame per tick (`true`: a 440 Hz frame, `false`: a
    /// silent one), with another party listening; the ticks at which talking changed.
    fn talking_changes(frames: &[bool], mute_at: Option<usize>) -> Vec<(usize, bool)> {
        let (a, b) = (PartyId(1), PartyId(2));
        let mut src = AudioSource::tone(440.0).open().unwrap();
        let mut enc = Encoder::new().unwrap();
        let mut mixer = MixerCore::default();
        mixer.add(a).unwrap();
        mixer.add(b).unwrap();
        let mut changes = Vec::new();
        for (t, &loud) in frames.iter().enumerate() {
            if mute_at == Some(t) {
                mixer.set_mic(a, false);
            }
            let pcm = if loud { src.next_frame() } else { vec![0; FRAME_SAMPLES] };
            push(&mut mixer, a, t, Bytes::from(enc.encode(&pcm).unwrap()));
            mixer.tick();
            for c in mixer.take_talking() {
                assert_eq!(c.party, a, "the silent listener never talks");
                changes.push((t, c.talking));
            }
        }
        changes
    }

    #[test]
    fn a_tone_with_100_ms_gaps_stays_talking_without_flicker() {
        // 400 ms of tone, 100 ms of silence, for 4 s.
        let frames: Vec<bool> = (0..200).map(|t| t % 25 < 20).collect();
        let changes = talking_changes(&frames, None);
        assert_eq!(changes.len(), 1, "one change, to talking: {changes:?}");
        assert!(changes[0].1 && changes[0].0 <= 10, "talking within a few frames of the start: {changes:?}");
    }

    #[test]
    fn a_tone_that_stops_stops_talking_within_one_second() {
        let frames: Vec<bool> = (0..150).map(|t| t < 50).collect();
        let changes = talking_changes(&frames, None);
        assert_eq!(changes.iter().map(|c| c.1).collect::<Vec<_>>(), [true, false], "{changes:?}");
        let stopped_after = changes[1].0 - 50;
        assert!(stopped_after <= 50, "talking stopped {stopped_after} frames after the tone, more than 1 s");
        assert!(stopped_after >= 25, "talking stopped {stopped_after} frames after the tone: no hang-over for pauses");
    }

    #[test]
    fn silence_never_talks_and_a_muted_tone_stops_at_once_without_coming_back() {
        assert_eq!(talking_changes(&[false; 150], None), []);
        let changes = talking_changes(&[true; 150], Some(60));
        assert_eq!(changes.len(), 1, "talking, then muted: no report, never talking again while muted: {changes:?}");
    }

    #[test]
    fn talking_changes_at_most_about_three_times_a_second() {
        let mut d = TalkDetector::default();
        // Bursts of speech separated by just enough silence to stop.
        let mut changes = Vec::new();
        for t in 0..500u32 {
            let loud = t % (TALK_STOP_FRAMES + 4) < 4;
            if let Some(c) = d.handle_frame(loud) {
                changes.push((t, c));
            }
        }
        for w in changes.windows(2) {
            assert!(w[1].0 - w[0].0 >= TALK_MIN_SPACING_FRAMES, "two changes closer than 300 ms: {w:?}");
        }
        assert!(changes.len() >= 4, "{changes:?}");
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
    /// Opus packets of `ms` milliseconds of a tone.
    fn packets_of(hz: f32, ms: usize, total_ms: usize) -> Vec<Bytes> {
        let mut src = AudioSource::tone(hz).open().unwrap();
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let per = 48 * ms;
        let mut pcm: Vec<i16> = Vec::new();
        while pcm.len() < 48 * total_ms {
            pcm.extend(src.next_frame());
        }
        pcm.chunks_exact(per).map(|c| Bytes::from(enc.encode_vec(c, 4000).unwrap())).collect()
    }

    #[test]
    fn packets_of_10_40_and_60_ms_are_played_at_their_length() {
        for ms in [10usize, 40, 60] {
            let stream = packets_of(440.0, ms, 2000);
            let mut mixer = MixerCore::default();
            mixer.add(PartyId(1)).unwrap();
            mixer.add(PartyId(2)).unwrap();
            let mut decoder = Decoder::new().unwrap();
            let mut heard = Vec::new();
            let mut next = 0;
            for t in 0..100 {
                // The packets due by the end of this tick.
                while next < stream.len() && next * ms < (t + 1) * 20 {
                    mixer.push(PartyId(1), next as u16, (next * 48 * ms) as u32, stream[next].clone(), (next * ms) as f64);
                    next += 1;
                }
                for out in mixer.tick() {
                    if out.party == PartyId(2) {
                        heard.extend(decoder.decode(Some(&out.packet)).unwrap());
                    }
                }
            }
            let h = &heard[FRAME_SAMPLES * 10..FRAME_SAMPLES * 90];
            let share = tone_share(h, 440.0);
            assert!(share > 0.5, "{ms} ms packets: 440 Hz share {share}");
            // No gaps: every frame after the start holds the tone.
            for (i, f) in h.chunks(FRAME_SAMPLES).enumerate() {
                assert!(mean_power(f) > SPEAKING_POWER, "{ms} ms packets: frame {i} is silent");
            }
        }
    }

    #[test]
    fn the_shared_encoder_expects_the_worst_listeners_loss_and_a_speakers_own_encoder_its_own() {
        let (a, b, c) = (PartyId(1), PartyId(2), PartyId(3));
        let tone = packets(440.0, 40);
        let mut mixer = MixerCore::default();
        for p in [a, b, c] {
            mixer.add(p).unwrap();
        }
        mixer.set_expected_loss(a, 10);
        mixer.set_expected_loss(b, 5);
        mixer.set_expected_loss(c, 20);
        for (t, packet) in tone.iter().enumerate().take(20) {
            push(&mut mixer, a, t, packet.clone());
            mixer.tick();
        }
        assert_eq!(mixer.encoder_expected_loss(a), Some(10), "the speaker's own encoder: its own loss");
        assert_eq!(mixer.encoder_expected_loss(b), None, "a listener has no encoder of its own");
        assert_eq!(mixer.shared_encoder_expected_loss(), Some(20), "the shared encoder: the worst listener's");
        // The speaker's loss is not the shared mix's business; the listeners' changes are.
        mixer.set_expected_loss(a, 25);
        mixer.set_expected_loss(c, 3);
        for (t, packet) in tone.iter().enumerate().skip(20) {
            push(&mut mixer, a, t, packet.clone());
            mixer.tick();
        }
        assert_eq!(mixer.encoder_expected_loss(a), Some(25));
        assert_eq!(mixer.shared_encoder_expected_loss(), Some(5));
    }

    #[test]
    fn before_any_report_every_encoder_expects_the_floor_and_with_nobody_listening_the_shared_one_too() {
        assert_eq!(shared_expected_loss([]), EXPECTED_LOSS_FLOOR);
        assert_eq!(shared_expected_loss([4, 17, 9]), 17);
        let (a, b) = (PartyId(1), PartyId(2));
        let (ta, tb) = (packets(440.0, 30), packets(660.0, 30));
        let mut mixer = MixerCore::default();
        mixer.add(a).unwrap();
        mixer.add(b).unwrap();
        mixer.set_expected_loss(PartyId(9), 50); // unknown: ignored
        for t in 0..30 {
            push(&mut mixer, a, t, ta[t].clone());
            push(&mut mixer, b, t, tb[t].clone());
            mixer.tick();
        }
        // Both speak: nobody hears the shared mix.
        assert_eq!(mixer.encoder_expected_loss(a), Some(EXPECTED_LOSS_FLOOR));
        assert_eq!(mixer.encoder_expected_loss(b), Some(EXPECTED_LOSS_FLOOR));
        assert_eq!(mixer.shared_encoder_expected_loss(), Some(EXPECTED_LOSS_FLOOR));
    }

    #[test]
    fn a_listener_on_a_lossy_path_gets_fec_that_rebuilds_a_lost_packet_of_the_mix() {
        // The speaker's tone changes from 440 to 880 Hz at tick 30; the listener loses the first
        // packet of the mix with 880 Hz and rebuilds it from the next packet's FEC.
        let (a, b) = (PartyId(1), PartyId(2));
        let mut low = AudioSource::tone(440.0).open().unwrap();
        let mut high = AudioSource::tone(880.0).open().unwrap();
        let mut enc = Encoder::new().unwrap();
        let stream: Vec<Bytes> =
            (0..40).map(|t| if t < 30 { low.next_frame() } else { high.next_frame() }).map(|f| Bytes::from(enc.encode(&f).unwrap())).collect();
        let rebuilt = |loss: u8| {
            let mut mixer = MixerCore::default();
            mixer.add(a).unwrap();
            mixer.add(b).unwrap();
            mixer.set_expected_loss(b, loss);
            let mut heard = Vec::new();
            for (t, packet) in stream.iter().enumerate() {
                push(&mut mixer, a, t, packet.clone());
                heard.extend(mixer.tick().into_iter().filter(|o| o.party == b).map(|o| o.packet));
            }
            // The first packet of the mix that holds the new tone is the one lost (wherever the
            // jitter buffer's delay puts it).
            let mut reference = Decoder::new().unwrap();
            let frames: Vec<Vec<i16>> = heard.iter().map(|p| reference.decode(Some(p)).unwrap()).collect();
            let lost = frames.iter().position(|f| tone_share(f, 880.0) > 0.5).unwrap();
            assert!(lost + 1 < heard.len(), "the new tone came at the very end");
            let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
            let mut out = vec![0i16; FRAME_SAMPLES];
            for p in &heard[..lost] {
                dec.decode(p, &mut out, false).unwrap();
            }
            let n = dec.decode(&heard[lost + 1], &mut out, true).unwrap();
            // How far the rebuilt frame is from the frame as sent: the error's power over the frame's.
            let sent = &frames[lost];
            let error = out[..n].iter().zip(sent).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>();
            error / sent.iter().map(|&y| f64::from(y).powi(2)).sum::<f64>()
        };
        // With FEC the frame comes back nearly as sent; without, concealment goes on with the
        // old tone.
        let with = rebuilt(20);
        assert!(with < 0.1, "the frame rebuilt from FEC is off by {with} of its power");
        let without = rebuilt(0);
        assert!(without > 0.3, "expecting no loss, the mix had FEC anyway: concealment off by only {without}");
    }

    fn track() -> Arc<TrackLocalStaticSample> {
        let codec = webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability {
            mime_type: webrtc::api::media_engine::MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            ..Default::default()
        };
        Arc::new(TrackLocalStaticSample::new(codec, "mix".into(), "test".into()))
    }

    /// Polls `f` up to 200 times 10 ms.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mixer_sleeps_until_a_party_is_connected_and_again_when_none_is() {
        let mixer = Mixer::spawn(MixerConfig::default()).unwrap();
        mixer.add(PartyId(1), track());
        mixer.add(PartyId(2), track());
        assert!(eventually(|| mixer.stats().parties == 2).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(mixer.stats().ticks, 0, "no party connected: no tick");
        mixer.connected(PartyId(1));
        assert!(eventually(|| mixer.stats().ticks >= 5).await, "a connected party makes it tick: {:?}", mixer.stats());
        mixer.remove(PartyId(1));
        assert!(eventually(|| mixer.stats().connected == 0).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ticks = mixer.stats().ticks;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(mixer.stats().ticks, ticks, "none connected any more: no tick");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_messages_are_never_lost_behind_a_full_packet_queue() {
        let mixer = Mixer::spawn(MixerConfig { packet_queue: 4, ..MixerConfig::default() }).unwrap();
        // Idle, the mixer wakes for the first packet; flood it far past its queue meanwhile.
        for seq in 0..1000u16 {
            mixer.packet(PartyId(9), seq, u32::from(seq) * 960, Bytes::from_static(b"x"));
        }
        for p in 1..=50 {
            mixer.add(PartyId(p), track());
        }
        for seq in 0..1000u16 {
            mixer.packet(PartyId(9), seq, u32::from(seq) * 960, Bytes::from_static(b"x"));
        }
        for p in 1..=25 {
            mixer.remove(PartyId(p));
        }
        mixer.connected(PartyId(30));
        assert!(eventually(|| mixer.stats().parties == 25 && mixer.stats().connected == 1).await, "{:?}", mixer.stats());
        assert!(mixer.stats().packets_dropped > 0, "the packet queue overflowed: {:?}", mixer.stats());
    }
}
