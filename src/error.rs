//! The one error type: which step failed, and why.

use std::fmt;
use std::time::Duration;

use crate::wire::{Refusal, WireError};

/// Where in the life of a join an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening the WebSocket.
    Open,
    /// `cd.load`: getting one's own party.
    Load,
    /// A step of the seed's sequence, 1–19.
    Step(u8),
    /// After step 19, in the call.
    InCall,
}

impl Stage {
    /// The step number for the transcript (0 before the sequence, 20 after it).
    pub fn transcript_step(self) -> u8 {
        match self {
            Stage::Open | Stage::Load => 0,
            Stage::Step(n) => n,
            Stage::InCall => 20,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Open => write!(f, "opening the WebSocket"),
            Stage::Load => write!(f, "cd.load"),
            Stage::Step(n) => write!(f, "step {n} ({})", crate::spec::step(*n).text),
            Stage::InCall => write!(f, "in the call"),
        }
    }
}

/// Why it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// The core answered negatively.
    #[error("refused by the core: {0}")]
    Refused(Refusal),
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    TimedOut { waiting_for: String, after: Duration },
    /// The WebSocket closed, or the core ended the media session (`conf.webrtc.Disconnected`).
    #[error("disconnected: {reason}")]
    Disconnected { reason: String },
    /// A frame or field from the core could not be used.
    #[error("malformed frame from the core: {0}")]
    Malformed(WireError),
    /// A media call failed.
    #[error("{call} failed: {reason}")]
    Media { call: &'static str, reason: String },
    /// The audio source could not be opened (step 1; nothing was sent to the core).
    #[error("audio source unavailable: {reason}")]
    Source { reason: String },
    /// The offer lacks what CALLME_S2 needs (step 9).
    #[error("offer unusable: {0}")]
    Offer(WireError),
    /// The WebSocket could not be opened or written.
    #[error("transport: {reason}")]
    Transport { reason: String },
    /// The caller passed something unusable (a bad URL, say).
    #[error("invalid argument: {reason}")]
    Invalid { reason: String },
}

/// A failed join or call: the stage (for the sequence, the step 1–19) and the cause.
///
/// By the time an application sees this error the PeerConnection is closed, every task the join
/// started has stopped, and, if the core held state for the party, the core was told.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{stage}: {cause}")]
pub struct Error {
    pub stage: Stage,
    pub cause: Cause,
}

impl Error {
    pub fn new(stage: Stage, cause: Cause) -> Self {
        Error { stage, cause }
    }

    /// The failing step of the seed's sequence, if the failure was inside it.
    pub fn step(&self) -> Option<u8> {
        match self.stage {
            Stage::Step(n) => Some(n),
            _ => None,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
