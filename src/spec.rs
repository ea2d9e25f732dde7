//! The seed's table (`docs/sequence.md`) as data: the specification every transcript is checked
//! against.
//!
//! [`SEQUENCE`] holds the 19 rows of the join sequence (side, direction, what happens) and, for
//! each row, the transcript entries that perform it. [`check`] walks a transcript and says
//! whether it follows the table: steps never go backwards, every step up to the last one
//! reached performs exactly its entries in order, a finished join reaches step 19, and a failed
//! join ends with the failure recorded at the step that failed. Frames the sequence does not wait
//! for (unrelated events, events for other parties, duplicates) may appear anywhere, marked as
//! such.

use crate::transcript::{Entry, Routing, Side, What};

/// Which way a row goes, in the seed's notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dir {
    /// `<`: a call we make.
    Call,
    /// `>`: something we wait for.
    Wait,
    /// No direction: work on our side.
    Local,
}

/// What one transcript entry of a step must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expect {
    /// A frame sent with this `cmd`.
    Send(&'static str),
    /// The answer to this `cmd`.
    Answer(&'static str),
    /// An event of this name (used now or kept from earlier).
    Event(&'static str),
    /// A media call of this name.
    Call(&'static str),
    /// The result of a media call of this name.
    Returned(&'static str),
}

/// One row of the seed's table.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// The step's number, 1–19.
    pub number: u8,
    /// Where it happens: the WebSocket, the media layer, or on our side only.
    pub side: Side,
    /// Whether we act (`<`) or wait (`>`).
    pub dir: Dir,
    /// The row, in words.
    pub text: &'static str,
    /// The transcript entries that perform it, in order.
    pub entries: &'static [Expect],
}

use Dir::*;
use Expect as E;

/// The 19 steps of the join sequence, as the origin design note gives them.
pub const SEQUENCE: [StepSpec; 19] = [
    StepSpec {
        number: 1,
        side: Side::Media,
        dir: Call,
        text: "call getUserMedia (acquire the audio source)",
        entries: &[E::Call("getUserMedia")],
    },
    StepSpec { number: 2, side: Side::Media, dir: Wait, text: "receive the local audio stream", entries: &[E::Returned("getUserMedia")] },
    StepSpec { number: 3, side: Side::Ws, dir: Call, text: "send CALLME_S1 for oneself", entries: &[E::Send("CALLME_S1")] },
    StepSpec {
        number: 4,
        side: Side::Ws,
        dir: Wait,
        text: "wait for the positive answer to CALLME_S1",
        entries: &[E::Answer("CALLME_S1")],
    },
    StepSpec { number: 5, side: Side::Ws, dir: Wait, text: "wait for conf.webrtc.servdesc", entries: &[E::Event("conf.webrtc.servdesc")] },
    StepSpec {
        number: 6,
        side: Side::Media,
        dir: Call,
        text: "create the PeerConnection with servdesc's ICE server",
        entries: &[E::Call("createPeerConnection")],
    },
    StepSpec { number: 7, side: Side::Media, dir: Call, text: "call createOffer", entries: &[E::Call("createOffer")] },
    StepSpec { number: 8, side: Side::Media, dir: Wait, text: "receive the offer", entries: &[E::Returned("createOffer")] },
    StepSpec {
        number: 9,
        side: Side::Local,
        dir: Local,
        text: "pull ufrag, pwd and fingerprint out of the offer",
        entries: &[E::Returned("parseOffer")],
    },
    StepSpec { number: 10, side: Side::Media, dir: Call, text: "call setLocalDescription", entries: &[E::Call("setLocalDescription")] },
    StepSpec {
        number: 11,
        side: Side::Media,
        dir: Wait,
        text: "wait for setLocalDescription to complete",
        entries: &[E::Returned("setLocalDescription")],
    },
    StepSpec {
        number: 12,
        side: Side::Ws,
        dir: Call,
        text: "send CALLME_S2 with ufrag and pwd for oneself",
        entries: &[E::Send("CALLME_S2")],
    },
    StepSpec {
        number: 13,
        side: Side::Ws,
        dir: Wait,
        text: "wait for the positive answer to CALLME_S2",
        entries: &[E::Answer("CALLME_S2")],
    },
    StepSpec {
        number: 14,
        side: Side::Ws,
        dir: Wait,
        text: "wait for conf.webrtc.servufrag",
        entries: &[E::Event("conf.webrtc.servufrag")],
    },
    StepSpec {
        number: 15,
        side: Side::Local,
        dir: Local,
        text: "build the core's session description from servufrag",
        entries: &[E::Returned("buildAnswer")],
    },
    StepSpec { number: 16, side: Side::Media, dir: Call, text: "call setRemoteDescription", entries: &[E::Call("setRemoteDescription")] },
    StepSpec {
        number: 17,
        side: Side::Media,
        dir: Wait,
        text: "wait for setRemoteDescription to complete",
        entries: &[E::Returned("setRemoteDescription")],
    },
    StepSpec { number: 18, side: Side::Media, dir: Wait, text: "wait for the remote track (ontrack)", entries: &[E::Returned("ontrack")] },
    StepSpec { number: 19, side: Side::Media, dir: Call, text: "attach the incoming audio to playback", entries: &[E::Call("play")] },
];

/// The row of a step number (1–19).
pub fn step(number: u8) -> &'static StepSpec {
    &SEQUENCE[usize::from(number.clamp(1, 19)) - 1]
}

/// How a transcript departs from the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transcript entry {index} (step {step}): {reason}")]
pub struct Deviation {
    /// The entry's index in the transcript.
    pub index: usize,
    /// The entry's step.
    pub step: u8,
    /// What is wrong, in words.
    pub reason: String,
}

/// How the join the transcript records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every step up to 19 was performed.
    Connected,
    /// The join failed at this step (0: before the sequence, at `cd.load`), and the failure is
    /// the last sequence entry.
    FailedAt(u8),
}

/// Checks a transcript against [`SEQUENCE`] and says how the join ended.
pub fn check(entries: &[Entry]) -> Result<Outcome, Deviation> {
    let dev = |index: usize, step: u8, reason: String| Deviation { index, step, reason };
    let mut step = 0u8; // the step being performed
    let mut pos = 0usize; // the next expected entry within it
    let mut failed: Option<u8> = None;
    for (i, e) in entries.iter().enumerate() {
        if e.step == 0 && failed.is_none() {
            if let What::Failed { .. } = e.what {
                failed = Some(0);
                continue;
            }
            if step != 0 {
                return Err(dev(i, e.step, "a pre-sequence entry after the sequence began".into()));
            }
            continue;
        }
        if let Some(f) = failed {
            // After a failure only the clean-up may follow: closing media, telling the core.
            let cleanup = matches!(&e.what, What::Call { name, .. } if name == "close")
                || matches!(&e.what, What::Sent { frame } if frame.contains("\"CALLME_BYE\""))
                || matches!(&e.what, What::Closed { .. })
                || is_ignorable(e);
            if !cleanup || e.step != f {
                return Err(dev(i, e.step, format!("{:?} after the failure at step {f}", e.what)));
            }
            continue;
        }
        if e.step == 20 {
            if step != 19 || pos != step_len(19) {
                return Err(dev(i, e.step, "an in-call entry before step 19 finished".into()));
            }
            continue;
        }
        let fatal_frame = matches!(&e.what, What::Received { routing: Routing::Fatal, .. } | What::Closed { .. });
        if fatal_frame || matches!(e.what, What::Failed { .. }) {
            let next_ok = step == 0 || pos == step_len(step);
            if !(e.step == step || (next_ok && e.step == step + 1)) {
                return Err(dev(i, e.step, format!("failure recorded at step {} while at step {step}", e.step)));
            }
            if !fatal_frame {
                failed = Some(e.step);
            }
            continue;
        }
        if is_ignorable(e) {
            if e.step < step {
                return Err(dev(i, e.step, format!("entry tagged step {} while at step {step}", e.step)));
            }
            continue;
        }
        // The entry must be the next expected one: either the next in this step, or the first
        // of the following step (once this one is complete).
        if step == 0 || pos == step_len(step) {
            if e.step != step + 1 {
                let want = if step == 19 { "nothing (step 19 is the last)".to_owned() } else { format!("step {}", step + 1) };
                return Err(dev(i, e.step, format!("expected {want}, found {:?}", e.what)));
            }
            step += 1;
            pos = 0;
        } else if e.step != step {
            return Err(dev(i, e.step, format!("step {step} is not complete, found an entry of step {}", e.step)));
        }
        let want = SEQUENCE[usize::from(step) - 1].entries[pos];
        if !matches_expect(e, want) {
            return Err(dev(i, e.step, format!("expected {want:?}, found {:?}", e.what)));
        }
        let side = SEQUENCE[usize::from(step) - 1].side;
        if e.side != side {
            return Err(dev(i, e.step, format!("expected side {side:?}, found {:?}", e.side)));
        }
        pos += 1;
    }
    match failed {
        Some(f) => Ok(Outcome::FailedAt(f)),
        None if step == 19 && pos == step_len(19) => Ok(Outcome::Connected),
        None => Err(dev(entries.len(), step, format!("the transcript stops inside step {step} without a failure"))),
    }
}

fn step_len(step: u8) -> usize {
    SEQUENCE[usize::from(step) - 1].entries.len()
}

/// Frames that the sequence does not wait for and that may come at any time.
fn is_ignorable(e: &Entry) -> bool {
    matches!(
        &e.what,
        What::Received { routing: Routing::Unrelated | Routing::OtherParty | Routing::Duplicate | Routing::Early | Routing::Stale, .. }
    )
}

fn matches_expect(e: &Entry, want: Expect) -> bool {
    let frame_field = |frame: &str, path: &[&str]| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(frame).ok()?;
        let mut cur = &v;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_str().map(str::to_owned)
    };
    match (&e.what, want) {
        (What::Sent { frame }, E::Send(cmd)) => frame_field(frame, &["cmd"]).as_deref() == Some(cmd),
        (What::Received { frame, routing: Routing::Answer }, E::Answer(cmd)) => {
            frame_field(frame, &["ANSW", "cmd"]).as_deref() == Some(cmd)
        }
        (What::Received { frame, routing: Routing::Event }, E::Event(name)) => {
            let Ok(crate::wire::Incoming::Event(ev)) = crate::wire::Incoming::parse(frame) else { return false };
            ev.name() == name
        }
        (What::Kept { name, .. }, E::Event(want)) => name == want,
        (What::Call { name, .. }, E::Call(want)) => name == want,
        (What::Returned { name, .. }, E::Returned(want)) => name == want,
        _ => false,
    }
}
