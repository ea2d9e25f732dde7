//! The one error type: which step failed, and why.
//!
//! [`Error`] is a value (`Clone`, `PartialEq`): the [`Stage`] and the [`Cause`]. Its `Debug`
//! prints the same sentence as its `Display`, so `main() -> Result<(), callme::Error>` shows the
//! readable message; `{:#?}` shows the structure. Where a typed cause exists (the core's
//! [`Refusal`], a [`WireError`], an IO or TLS error of the transport) it is reachable through
//! [`std::error::Error::source`].
//!
//! A transition of the join that fails while the WebSocket is still usable gives the party back
//! in its [`JoinError`], so an application can try again on the same session.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::signaling::Party;
use crate::wire::{Refusal, WireError};

/// Where in the life of a join an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Opening the WebSocket.
    Open,
    /// The login query (`q_cplxLogin`).
    Login,
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
            Stage::Open | Stage::Login | Stage::Load => 0,
            Stage::Step(n) => n,
            Stage::InCall => 20,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Open => write!(f, "opening the WebSocket"),
            Stage::Login => write!(f, "the login (q_cplxLogin)"),
            Stage::Load => write!(f, "cd.load"),
            Stage::Step(n) => write!(f, "step {n} ({})", crate::spec::step(*n).text),
            Stage::InCall => write!(f, "in the call"),
        }
    }
}

/// A lower-level error kept as the source of a [`Cause`] (an IO, TLS or WebSocket error, a
/// webrtc-rs error). Two sources compare equal when their messages do.
#[derive(Clone)]
pub struct Source(Arc<dyn std::error::Error + Send + Sync>);

impl Source {
    /// Wraps an error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Source(Arc::new(e))
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

/// Why it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// The core answered negatively.
    #[error("refused by the core: {0}")]
    Refused(#[source] Refusal),
    /// The core answered the login with a `RETCODE` that is not a login.
    #[error("login refused: RETCODE {retcode} ({meaning}){}", closed_after(.closed))]
    LoginFailed {
        /// `RETCODE` (`4` unknown login or wrong password, `5` low privileges, ...).
        retcode: i64,
        /// What it means, in words.
        meaning: String,
        /// How the core then closed the WebSocket (`close code 1008 ...`), when that was seen.
        closed: Option<String>,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    TimedOut {
        /// What was awaited, in words (`the answer to CALLME_S1 (seq 2)`).
        waiting_for: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// The WebSocket closed, or the core ended the media session (`conf.webrtc.Disconnected`).
    #[error("disconnected: {reason}")]
    Disconnected {
        /// What ended it, with the close code or the core's reason when there is one.
        reason: String,
    },
    /// A frame or field from the core could not be used.
    #[error("malformed frame from the core: {0}")]
    Malformed(#[source] WireError),
    /// A media call failed.
    #[error("{call} failed: {reason}")]
    Media {
        /// The call, as the seed names it (`createOffer`).
        call: &'static str,
        /// Why, in words.
        reason: String,
    },
    /// The audio source could not be opened (step 1; nothing was sent to the core).
    #[error("audio source unavailable: {reason}")]
    Source {
        /// Why, in words (naming the file, say).
        reason: String,
    },
    /// The offer lacks what CALLME_S2 needs (step 9).
    #[error("offer unusable: {0}")]
    Offer(#[source] WireError),
    /// The WebSocket could not be opened or written.
    #[error("transport: {reason}")]
    Transport {
        /// What failed, in words.
        reason: String,
        /// The underlying error (IO, TLS, WebSocket), when there is one.
        #[source]
        source: Option<Source>,
    },
    /// The call could not be brought back: every reconnection attempt failed.
    #[error("reconnecting after {cause} failed, {} attempts: {}", .attempts.len(), .attempts.join("; "))]
    ReconnectFailed {
        /// What made the call reconnect.
        cause: String,
        /// Each attempt's error, in order (`attempt 1: ...`).
        attempts: Vec<String>,
    },
    /// The caller passed something unusable (a bad URL, say).
    #[error("invalid argument: {reason}")]
    Invalid {
        /// What is wrong with it.
        reason: String,
    },
}

/// The end of [`Cause::LoginFailed`]'s sentence: the close that followed, if seen.
fn closed_after(closed: &Option<String>) -> String {
    match closed {
        Some(how) => format!("; the core then closed the WebSocket ({how})"),
        None => String::new(),
    }
}

impl Cause {
    /// A transport failure with its underlying error.
    pub fn transport(reason: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause::Transport { reason: reason.into(), source: Some(Source::new(source)) }
    }

    /// A transport failure known only by its description.
    pub fn transport_text(reason: impl Into<String>) -> Self {
        Cause::Transport { reason: reason.into(), source: None }
    }
}

/// A failed join or call: the stage (for the sequence, the step 1–19) and the cause.
///
/// By the time an application sees this error the PeerConnection is closed, every task the join
/// started has stopped, and, if the core held state for the party, the core was told.
#[derive(Clone, PartialEq, thiserror::Error)]
#[error("{stage}: {cause}")]
#[non_exhaustive]
pub struct Error {
    /// Where it happened.
    pub stage: Stage,
    /// Why.
    #[source]
    pub cause: Cause,
}

/// The readable sentence, as `Display` gives it, so that `main() -> Result<(), callme::Error>`
/// prints it; `{:#?}` gives the structure.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_struct("Error").field("stage", &self.stage).field("cause", &self.cause).finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl Error {
    /// An error at `stage` for `cause`.
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

    /// The core's refusal, when the core answered negatively.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.cause {
            Cause::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// A transition of the join that failed: the [`Error`], and the [`Party`] when its session can
/// still be used (the WebSocket is open), so the application can try again without a new
/// WebSocket. It reads as the error it holds (`Deref`, `Display`, `Debug`), and `?` turns it
/// into an [`Error`].
///
/// ```no_run
/// # use callme::{AudioSource, Party};
/// # async fn f(mut party: Party) -> Result<(), callme::Error> {
/// let call = loop {
///     match party.join(AudioSource::tone(440.0)).await {
///         Ok(call) => break call,
///         // The session still works: the same party tries again after a pause.
///         Err(failed) => {
///             eprintln!("join failed, trying again: {failed}");
///             party = failed.into_party()?; // the error itself when the socket is gone
///             tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///         }
///     }
/// };
/// # let _ = call; Ok(()) }
/// ```
pub struct JoinError {
    error: Error,
    party: Option<Party>,
}

impl JoinError {
    pub(crate) fn new(error: Error, party: Option<Party>) -> Self {
        JoinError { error, party }
    }

    /// The error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// Whether the party came back with the error (its WebSocket is still open).
    pub fn has_party(&self) -> bool {
        self.party.is_some()
    }

    /// The party, to try again on the same session; the error when the session is gone.
    pub fn into_party(self) -> Result<Party, Error> {
        self.party.ok_or(self.error)
    }

    /// The error and, when the session is still usable, the party.
    pub fn into_parts(self) -> (Error, Option<Party>) {
        (self.error, self.party)
    }
}

impl Deref for JoinError {
    type Target = Error;
    fn deref(&self) -> &Error {
        &self.error
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error.cause)
    }
}

impl From<JoinError> for Error {
    fn from(e: JoinError) -> Error {
        e.error
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_the_sentence_and_the_alternate_form_the_structure() {
        let e = Error::new(Stage::Load, Cause::Invalid { reason: "scheme 0".into() });
        assert_eq!(format!("{e:?}"), "cd.load: invalid argument: scheme 0");
        assert!(format!("{e:#?}").contains("Invalid"));
    }

    #[test]
    fn a_refusal_is_the_source_of_the_error() {
        use std::error::Error as _;
        let r = Refusal { code: 202, class: "auth".into(), text: "not yours".into() };
        let e = Error::new(Stage::Step(4), Cause::Refused(r.clone()));
        let cause = e.source().expect("the cause");
        let refusal = cause.source().expect("the refusal").downcast_ref::<Refusal>().expect("typed");
        assert_eq!(refusal, &r);
    }

    #[test]
    fn a_transport_error_keeps_the_io_error_as_its_source() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(Stage::Open, Cause::transport("ws://127.0.0.1:9/ws", io));
        let src = e.source().and_then(|c| c.source()).expect("the io error");
        assert_eq!(src.to_string(), "refused");
    }
}
