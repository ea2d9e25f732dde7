//! The SDK's receive path: a reader task per PeerConnection hands the remote track's packets to
//! one play-out task that lives from the first step 19 to [`super::RtcMedia::close`], so the heard
//! stream outlives reconnections.
//!
//! With the jitter buffer on, the play-out task gives the application a frame every 20 ms by its
//! own clock, whatever arrives ([`super::playout`]): through loss it holds FEC-rebuilt and
//! concealed audio, through an outage silence (after a 160 ms fade), and between two
//! PeerConnections silence too. With it off (the naive path, kept for comparison) each packet is
//! decoded as it arrives, gaps of up to five packets are concealed, and late or repeated packets
//! are dropped; nothing is heard while nothing arrives.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::track::track_remote::TrackRemote;

use super::playout::{Counters, Playout};
use crate::audio::opus_codec::Decoder;
use crate::audio::{Frame, FRAME_DURATION};
use crate::stats::{level_dbfs, ReceiveStats, StatsCell};

/// Packets queued between a reader and the play-out task (2 s of 20 ms packets).
const QUEUE: usize = 100;

enum Rx {
    Packet { seq: u16, ts: u32, payload: Bytes, at: Instant },
    /// A new PeerConnection: a new stream.
    NewStream,
}

/// The play-out task, and where readers send it packets.
pub(super) struct Receive {
    to: mpsc::Sender<Rx>,
    task: JoinHandle<()>,
}

impl Receive {
    /// Starts the play-out task: frames go to `heard`, measurements into `stats`.
    pub(super) fn spawn(heard: broadcast::Sender<Frame>, jitter_buffer: bool, fec: bool, stats: StatsCell) -> Result<Receive, String> {
        let (to, from) = mpsc::channel(QUEUE);
        let task = if jitter_buffer {
            tokio::spawn(play_out(Playout::new(fec)?, from, heard, stats))
        } else {
            tokio::spawn(naive(Decoder::new()?, from, heard, stats))
        };
        Ok(Receive { to, task })
    }

    /// Starts reading a new PeerConnection's remote track; the task ends with the track. A read
    /// that fails for a reason other than a close is reported on `failure`.
    pub(super) fn read(&self, remote: std::sync::Arc<TrackRemote>, stats: StatsCell, failure: watch::Sender<Option<String>>) -> JoinHandle<()> {
        let to = self.to.clone();
        let _ = to.try_send(Rx::NewStream);
        tokio::spawn(async move {
            loop {
                match remote.read_rtp().await {
                    Ok((packet, _)) => {
                        stats.update(|s| {
                            s.received.packets += 1;
                            s.received.bytes += packet.payload.len() as u64;
                        });
                        let h = &packet.header;
                        let rx = Rx::Packet { seq: h.sequence_number, ts: h.timestamp, payload: packet.payload, at: Instant::now() };
                        // A play-out task that lags loses packets (counted lost there), never
                        // blocks the reader.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = to.try_send(rx) {
                            break;
                        }
                    }
                    Err(e) => {
                        if let Some(reason) = super::guard::reader_failure(&e) {
                            let _ = failure.send(Some(reason));
                        }
                        break;
                    }
                }
            }
        })
    }

    /// Stops the play-out task.
    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The jitter buffer's task: packets in as they come, a frame out every 20 ms.
async fn play_out(mut playout: Playout, mut from: mpsc::Receiver<Rx>, heard: broadcast::Sender<Frame>, stats: StatsCell) {
    let epoch = Instant::now();
    let mut tick = tokio::time::interval(FRAME_DURATION);
    // Behind after a stall, the missed frames are given at once: the stream keeps its rate.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut frame = Vec::with_capacity(crate::audio::FRAME_SAMPLES);
    loop {
        tokio::select! {
            biased;
            rx = from.recv() => match rx {
                Some(Rx::Packet { seq, ts, payload, at }) => {
                    playout.push(seq, ts, payload, at.saturating_duration_since(epoch).as_secs_f64() * 1000.0);
                }
                Some(Rx::NewStream) => playout.new_stream(),
                None => break,
            },
            _ = tick.tick() => {
                playout.next_frame(&mut frame);
                let level = level_dbfs(&frame);
                stats.update(|s| fill(&mut s.received, playout.counters(), level));
                // Without a listener the frame is dropped; play-out goes on.
                let _ = heard.send(frame.clone());
            }
        }
    }
}

/// Copies the play-out's counters into the receive stats (the reader counts arrivals itself).
fn fill(r: &mut ReceiveStats, c: &Counters, level: f32) {
    r.lost = c.lost;
    r.recovered_fec = c.recovered_fec;
    r.concealed = c.concealed;
    r.late = c.late;
    r.dropped = c.dropped;
    r.duplicates = c.duplicates;
    r.dtx = c.dtx;
    r.frames_played = c.frames;
    r.jitter = std::time::Duration::from_secs_f64(c.jitter_ms.max(0.0) / 1000.0);
    r.buffer_delay = std::time::Duration::from_secs_f64(c.delay_ms.max(0.0) / 1000.0);
    r.target_delay = std::time::Duration::from_secs_f64(c.target_ms.max(0.0) / 1000.0);
    r.level_dbfs = level;
}

/// The naive path: decode in arrival order.
async fn naive(mut decoder: Decoder, mut from: mpsc::Receiver<Rx>, heard: broadcast::Sender<Frame>, stats: StatsCell) {
    let mut last_seq: Option<u16> = None;
    let mut frame = Vec::with_capacity(crate::audio::FRAME_SAMPLES);
    while let Some(rx) = from.recv().await {
        let (seq, payload) = match rx {
            Rx::Packet { seq, payload, .. } => (seq, payload),
            Rx::NewStream => {
                last_seq = None;
                continue;
            }
        };
        let out = |frame: &Vec<i16>, what: fn(&mut ReceiveStats)| {
            let level = level_dbfs(frame);
            stats.update(|s| {
                what(&mut s.received);
                s.received.frames_played += 1;
                s.received.level_dbfs = level;
            });
            let _ = heard.send(frame.clone());
        };
        if let Some(last) = last_seq {
            let gap = seq.wrapping_sub(last);
            if gap == 0 {
                stats.update(|s| s.received.duplicates += 1);
                continue;
            }
            if gap > 0x8000 {
                stats.update(|s| s.received.late += 1);
                continue;
            }
            stats.update(|s| s.received.lost += u64::from(gap - 1));
            // Up to five lost packets (100 ms) are concealed; a longer gap is a pause.
            for _ in 1..gap.min(6) {
                if decoder.conceal_into(crate::audio::FRAME_SAMPLES, &mut frame).is_ok() {
                    out(&frame, |r| r.concealed += 1);
                }
            }
        }
        last_seq = Some(seq);
        if payload.is_empty() {
            continue;
        }
        match decoder.decode_into(Some(&payload), &mut frame) {
            Ok(()) => out(&frame, |_| {}),
            Err(e) => tracing::debug!("undecodable Opus packet {seq}: {e}"),
        }
    }
}
