//! # callme
//!
//! Join a conference core's audio over WebRTC by the core's two-step join sequence. No SDP
//! crosses the wire: the client sends the core what it needs from its offer (CALLME_S2) and
//! writes the core's answer itself from what the core sends back (`conf.webrtc.servufrag`).
//!
//! The sequence is the 19 steps of the origin design note, and each group of steps is a type.
//! A transition consumes its state and returns the next one, so a step cannot be skipped,
//! repeated or reordered: the program that tries does not compile.
//!
//! ```text
//! Session::connect(url) ─ load ─▶ Party
//! MediaReady::acquire(source)      steps 1–2    getUserMedia
//!   .call_me_s1(party)   ─▶ S1Accepted   3–5    CALLME_S1, answer, conf.webrtc.servdesc
//!   .create_offer()      ─▶ Offered      6–11   PeerConnection, offer, ufrag/pwd/fingerprint, setLocalDescription
//!   .call_me_s2()        ─▶ S2Accepted   12–14  CALLME_S2, answer, conf.webrtc.servufrag
//!   .connect()           ─▶ Connected    15–19  answer SDP written, setRemoteDescription, ontrack, playback
//! ```
//!
//! ## The whole join
//!
//! ```no_run
//! use std::time::Duration;
//! use callme::{AudioSource, ClusterId, MediaReady, SchemeId, Session};
//!
//! # async fn join() -> Result<(), callme::Error> {
//! let party = Session::connect("ws://127.0.0.1:8080/ws").await?   // the WebSocket
//!     .load(ClusterId(1), SchemeId(7), "bot").await?;              // cd.load: one's own PartyID
//! let mut call = MediaReady::acquire(AudioSource::tone(440.0)).await? // steps 1–2
//!     .call_me_s1(party).await?                                    // steps 3–5
//!     .create_offer().await?                                       // steps 6–11
//!     .call_me_s2().await?                                         // steps 12–14
//!     .connect().await?;                                           // steps 15–19
//! let heard = call.listen(Duration::from_secs(2)).await?;          // the mix, without oneself
//! println!("{}", call.transcript().render(callme::Render::Full));  // what went over the wire
//! call.leave().await;
//! # Ok(()) }
//! ```
//!
//! An application that wants the call and not the steps writes
//! `party.join(AudioSource::tone(440.0)).await?` ([`Party::join`]): the same five transitions,
//! the same errors and transcript.
//!
//! ## Step by step
//!
//! **Before the sequence.** [`Session::connect`] opens the WebSocket with the sub-protocol
//! `PalladaWSData`; [`Session::load`] sends `cd.load` and returns the [`Party`]: the session's
//! own `PartyID` in the running conference, "the participant (oneself)" of every later step.
//!
//! **Steps 1–2, getUserMedia.** [`MediaReady::acquire`] opens the [`AudioSource`]: a tone, a WAV
//! file, silence, or frames the application pushes. If it fails the join gives up with step 1
//! and nothing has been sent to the core.
//!
//! **Steps 3–5, CALLME_S1.** [`MediaReady::call_me_s1`] sends `conf CALLME_S1` with `ClusterID`,
//! `ID` and `PartyID`, waits for the answer matched by `seq` (a negative one gives up with the
//! core's code, class and text), then for `conf.webrtc.servdesc`: the TURN/STUN server.
//!
//! **Steps 6–11, the offer.** [`S1Accepted::create_offer`] creates the PeerConnection (webrtc-rs)
//! with servdesc's server as its ICE server, calls createOffer, pulls out of the offer what
//! CALLME_S2 carries ([`media::sdp::parse_offer`]: ufrag, pwd, fingerprint, and the mid, Opus
//! payload type, extension ids, SSRC and CNAME), and sets it as the local description.
//!
//! **Steps 12–14, CALLME_S2.** [`Offered::call_me_s2`] sends those facts, waits for the answer,
//! then for `conf.webrtc.servufrag`: the core's ufrag, pwd, DTLS fingerprint and port.
//!
//! **Steps 15–19, connect.** [`S2Accepted::connect`] writes the core's answer
//! ([`media::sdp::build_answer`]: ICE-lite, `a=setup:passive`, the offer's mid, one host
//! candidate at `addr:port`), sets it as the remote description, waits for the remote track,
//! and attaches it to playback: from then on [`Connected::next_frame`] gives 20 ms of decoded
//! 48 kHz audio, the conference mix without one's own voice.
//!
//! ## Misuse does not compile
//!
//! A state has only its own next step. Skipping CALLME_S1:
//!
//! ```compile_fail,E0599
//! # async fn f(ready: callme::MediaReady) {
//! let offered = ready.create_offer().await; // MediaReady has no create_offer
//! # }
//! ```
//!
//! Repeating a step: the state was consumed by the first call.
//!
//! ```compile_fail,E0382
//! # async fn f(s1: callme::S1Accepted) {
//! let a = s1.create_offer().await;
//! let b = s1.create_offer().await; // use of moved value
//! # }
//! ```
//!
//! Reordering: CALLME_S2 before the offer exists.
//!
//! ```compile_fail,E0599
//! # async fn f(s1: callme::S1Accepted) {
//! let s2 = s1.call_me_s2().await; // S1Accepted has no call_me_s2
//! # }
//! ```
//!
//! Connecting before the core's answer came:
//!
//! ```compile_fail,E0599
//! # async fn f(offered: callme::Offered) {
//! let call = offered.connect().await; // Offered has no connect
//! # }
//! ```
//!
//! ## Failures
//!
//! Every failure is one [`Error`]: the [`Stage`] (for the sequence, the step 1–19) and the
//! [`Cause`]: refused (with the core's code, class and text), timed out (naming the wait),
//! disconnected, malformed (naming the field), or a media call that failed. When the error
//! reaches the application the PeerConnection is closed, nothing the join started is running,
//! and the core has been sent `CALLME_BYE` if it may hold media state for the party.
//!
//! ## The transcript
//!
//! Every frame sent and received and every media call is recorded, in order, with its step:
//! [`Transcript`]. [`spec::check`] verifies a transcript against the seed's table, which lives
//! in the code as [`spec::SEQUENCE`]. The sequence tests store one redacted transcript per path
//! in `snapshots/`, to be read like a protocol trace.
//!
//! ## Layers
//!
//! | module | owns |
//! |---|---|
//! | [`wire`] | the frames of the protocol, strict parsing whose errors name the field |
//! | [`signaling`] | a session over any `Sink`/`Stream` of frames: `seq`, answers, event routing, timeouts |
//! | [`media`] | the browser-like calls as a trait; webrtc-rs behind it; SDP read and written |
//! | [`steps`] | the typestates |
//! | [`transcript`] | the record of a join, and its redaction |
//! | [`spec`] | the seed's table as data, and the checker |
//! | [`audio`] | sources, WAV, Opus, tone analysis |
//! | [`testing`] | a scripted core for sequence tests |
//! | `core` (feature `core`, on by default) | the reference core: the server side with real media |

pub mod audio;
mod connect;
#[cfg(feature = "core")]
pub mod core;
pub mod error;
pub mod media;
pub mod signaling;
pub mod spec;
pub mod steps;
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transcript;
pub mod wire;

pub use audio::AudioSource;
pub use connect::ConnectOptions;
pub use error::{Cause, Error, Result, Stage};
pub use signaling::{Party, Session, Timeouts};
pub use steps::{CallEvent, Connected, MediaReady, Offered, S1Accepted, S2Accepted};
#[cfg(feature = "tls")]
pub use tls::{TlsError, TlsOptions};
pub use transcript::{Render, Transcript};
pub use wire::{ClusterId, ConfId, PartyId, SchemeId};
