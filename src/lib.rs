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
//! let call = MediaReady::acquire(AudioSource::tone(440.0)).await? // steps 1–2
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
//! ## In the call
//!
//! [`Connected`] has two outputs that never block each other, and a task of its own that reads
//! the WebSocket (answering the core's pings) and watches the media whether or not the
//! application reads either:
//!
//! - the audio: [`Connected::next_frame`] (or the stream [`Connected::audio`]) gives the
//!   decoded mix, 20 ms at a time; `None` once the call has ended and the frames already heard
//!   are read;
//! - the events: [`Connected::next_event`] (or [`Connected::events`]) gives [`CallEvent`]s in
//!   order: the roster's changes, chat lines, the core's clock, any other event for this party
//!   or its conference (passed on as read), a frame that could not be read, and last
//!   [`CallEvent::Ended`] with the reason, which [`Connected::end_reason`] keeps.
//!
//! Both take `&self`, so one loop can wait on both:
//!
//! ```no_run
//! # async fn run(call: callme::Connected) {
//! use callme::CallEvent;
//! loop {
//!     tokio::select! {
//!         frame = call.next_frame() => match frame {
//!             Some(pcm) => { /* 960 samples of the mix: play, record, analyse */ let _ = pcm; }
//!             None => break, // the call has ended
//!         },
//!         Some(event) = call.next_event() => match event {
//!             CallEvent::Core(e) => println!("the core says {}", e.name()),
//!             CallEvent::Ended(why) => println!("the call ended: {why}"),
//!             other => println!("{other:?}"),
//!         },
//!     }
//! }
//! println!("ended: {:?}", call.end_reason());
//! # }
//! ```
//!
//! ## Logging in
//!
//! A core with accounts wants a login before anything else (the `q_cplxLogin` query).
//! [`Session::login`] consumes the session and gives a [`LoggedIn`], whose only next step is
//! [`LoggedIn::load`]; its [`Account`] says the [`Role`] (user, admin, system administrator;
//! the last two control the conference) and the display name, which names the party when no
//! name is given to `load`.
//!
//! ```no_run
//! use callme::{ClusterId, Role, SchemeId, Session};
//!
//! # async fn run() -> Result<(), callme::Error> {
//! let logged_in = Session::connect("ws://127.0.0.1:8080/ws").await?.login("alice", "secret").await?;
//! println!("{} ({})", logged_in.account().name, logged_in.account().role);
//! let controls = logged_in.account().role == Role::Admin;
//! let party = logged_in.load(ClusterId(1), SchemeId(7), "").await?; // named after the account
//! assert_eq!(party.loaded().control, controls);
//! # Ok(()) }
//! ```
//!
//! A refused login is an [`Error`] at [`Stage::Login`] with [`Cause::LoginFailed`]: the
//! `RETCODE`, what it means, and the close code with which the core then closed the socket. The
//! password is sent once, in the query, and is in no transcript, log or `Debug` print
//! ([`Password`]). A [`Party`] has no `login`: loading before the login does not compile.
//!
//! ```compile_fail,E0599
//! # async fn f(session: callme::Session) -> Result<(), callme::Error> {
//! let party = session.load(callme::ClusterId(1), callme::SchemeId(7), "bot").await?;
//! let late = party.login("alice", "secret").await; // Party has no login
//! # Ok(()) }
//! ```
//!
//! ## The roster and its events
//!
//! [`Party::roster`] and [`Connected::roster`] give the conference's parties ([`Roster`] of
//! [`Member`]s: id, index, name, state, mic, talking, and the rest of `partydata`), from the
//! `cd.load` answer on, with every `conf.changed` applied in order as PROTOCOL §8 says, also
//! while the join's steps run and whether or not the application reads events. Each change is
//! also a [`CallEvent::Roster`]: who joined, left, switched the mic, started or stopped
//! talking, changed state, name or place; a `conf.changed` that does not fit (a deletion of an
//! unknown party, say) is a [`RosterChange::Anomaly`], never a corrupted roster.
//!
//! ```
//! use callme::wire::{ConfChanged, ConfId, PartyData, PartyGone, PartyId};
//! use callme::{Roster, RosterChange};
//!
//! let mut roster = Roster::new(ConfId(7), &[PartyData::new(PartyId(3), 0, "me"), PartyData::new(PartyId(4), 1, "Bob")]);
//! let mut bob = PartyData::new(PartyId(4), 1, "Bob");
//! (bob.old_index, bob.talking) = (Some(1), true);
//! let changes = roster.apply(&ConfChanged { conf: ConfId(7), upd: vec![bob], ..ConfChanged::default() });
//! assert!(matches!(&changes[..], [RosterChange::TalkingStarted(m)] if m.name == "Bob"));
//! let gone = ConfChanged { conf: ConfId(7), del: vec![PartyGone { id: PartyId(9), index: 5 }], ..ConfChanged::default() };
//! assert!(matches!(&roster.apply(&gone)[..], [RosterChange::Anomaly(_)]));
//! assert_eq!(roster.len(), 2);
//! ```
//!
//! In the call:
//!
//! ```no_run
//! # async fn run(call: callme::Connected) {
//! use callme::{CallEvent, RosterChange};
//! while let Some(event) = call.next_event().await {
//!     match event {
//!         CallEvent::Roster(RosterChange::Joined(m)) => println!("{} joined", m.name),
//!         CallEvent::Roster(RosterChange::TalkingStarted(m)) => println!("{} talks", m.name),
//!         CallEvent::Roster(change) => println!("{change}"),
//!         CallEvent::Chat(line) => println!("<{}> {}", line.username, line.msg),
//!         CallEvent::Clock { unix } => println!("the core's clock: {unix}"),
//!         CallEvent::Ended(why) => println!("ended: {why}"),
//!         other => println!("{other:?}"), // any other event, as read
//!     }
//! }
//! # }
//! ```
//!
//! ## Acting
//!
//! Each is one awaited call; a refusal is an [`Error`] with the core's code, class and text
//! ([`Error::refusal`]). [`Connected::set_mic`] switches one's own microphone: muted, the media
//! sends silence instead of the source (as a browser's disabled track), from before the core
//! answers. [`Connected::say`] sends a chat line. With control of the conference (an admin's
//! login): [`Connected::set_mic_of`] and [`Connected::remove`] for another party.
//!
//! ```no_run
//! # async fn run(call: callme::Connected) -> Result<(), callme::Error> {
//! call.set_mic(false).await?; // nothing of the source is sent from now on
//! call.say("back in a minute").await?;
//! call.set_mic(true).await?;
//! if let Some(bob) = call.roster().by_name("Bob") {
//!     if let Err(e) = call.remove(bob.id).await {
//!         eprintln!("not removed: {:?}", e.refusal()); // code 202, class auth without control
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Being removed by a controller ends the call: [`CallEvent::Ended`] carries the core's reason.
//!
//! ## Coming back
//!
//! The core gives a [`ResumeToken`] with the load ([`Party::resume_token`]). When the WebSocket
//! is lost, [`Connected::resumer`] (usable after the end) opens a new session to the same URL
//! with the same options, logs in again if the first session did, loads with the token and
//! says whether the party is the same ([`Resumed::Same`]) or the core made a new one
//! ([`Resumed::New`], after its grace time); then the party joins the media again.
//!
//! ```no_run
//! # async fn run(call: callme::Connected) -> Result<(), callme::Error> {
//! use callme::{AudioSource, Resumed};
//! let resume = call.resumer();
//! let why = call.ended().await;
//! eprintln!("lost: {why}");
//! let party = match resume.connect().await? {
//!     Resumed::Same(party) => party,
//!     Resumed::New { party, lost } => {
//!         eprintln!("party {} is gone; now {}", lost.0, party.id().0);
//!         party
//!     }
//! };
//! let call = party.join(AudioSource::tone(440.0)).await?;
//! # let _ = call; Ok(()) }
//! ```
//!
//! ## How a call ends
//!
//! - The core ends the party's media (`conf.webrtc.Disconnected`, with its reason), the
//!   WebSocket closes, or the PeerConnection fails: the call has ended; [`CallEvent::Ended`]
//!   says why, the media is closed, `next_frame` returns `None` without waiting.
//! - [`Connected::hang_up`]: the media closes, the core gets `CALLME_BYE`, and the [`Party`]
//!   comes back for a new CALLME_S1 on the same WebSocket.
//! - [`Connected::leave`]: the same, and the WebSocket closes.
//! - Dropping the `Connected`: the call's task does what `leave` does, in the background.
//!
//! Dropping a state before [`Connected`] (an [`S1Accepted`], say) closes its PeerConnection and,
//! with the [`Party`] it holds, the WebSocket: the core frees the party when it sees the socket
//! close, and tells the others.
//!
//! ## Trying again, reconnecting by hand
//!
//! A transition that fails while the WebSocket is open gives the party back in its
//! [`JoinError`]; [`JoinError::into_party`] gives the party, or the error when the socket is gone.
//!
//! ```no_run
//! # async fn run() -> Result<(), callme::Error> {
//! use std::time::Duration;
//! use callme::{AudioSource, ClusterId, SchemeId, Session};
//!
//! let mut party = Session::connect("ws://127.0.0.1:8080/ws").await?.load(ClusterId(1), SchemeId(7), "bot").await?;
//! for attempt in 1.. {
//!     let call = match party.join(AudioSource::tone(440.0)).await {
//!         Ok(call) => call,
//!         Err(failed) if attempt < 5 => {
//!             eprintln!("attempt {attempt}: {failed}");
//!             party = failed.into_party()?; // the same session, the same party
//!             tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
//!             continue;
//!         }
//!         Err(failed) => return Err(failed.into()),
//!     };
//!     let why = call.ended().await; // in the call until it ends
//!     eprintln!("the call ended: {why}; joining again");
//!     party = call.hang_up().await?; // the media is gone; the WebSocket is still open
//!     if party.session().is_closed() {
//!         party = Session::connect("ws://127.0.0.1:8080/ws").await?.load(ClusterId(1), SchemeId(7), "bot").await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Debug builds of an application
//!
//! The media work (webrtc-rs's DTLS and SRTP, libopus) is slow without optimisation: in a debug
//! build it can fall behind real time. This crate's own `[profile.dev.package."*"]` does not
//! reach a crate that depends on it; an application sets it in its own `Cargo.toml`:
//!
//! ```toml
//! [profile.dev.package."*"]
//! opt-level = 2
//! ```
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
//! | [`signaling`] | a session over any `Sink`/`Stream` of frames: `seq`, answers, event routing, timeouts; the login and the roster's updates |
//! | [`roster`] | the conference's parties, kept by `conf.changed` |
//! | `login`, `resume` | [`LoggedIn`] and [`Account`]; [`Resume`] and [`ResumeToken`] |
//! | [`media`] | the browser-like calls as a trait; webrtc-rs behind it; SDP read and written |
//! | `steps` | the typestates ([`MediaReady`] … [`S2Accepted`]) |
//! | `call` | [`Connected`]: the call's task, its audio and its events |
//! | [`transcript`] | the record of a join, and its redaction |
//! | [`spec`] | the seed's table as data, and the checker |
//! | [`audio`] | sources, WAV, Opus, tone analysis |
//! | [`testing`] | a scripted core for sequence tests |
//! | `netem` (feature `core`) | a UDP relay on loopback for tests: a 1:1 NAT in front of the core, with injection and a seeded network emulator (loss, bursts, jitter, reordering, duplication, blackouts) |
//! | `core` (feature `core`) | the reference core: the server side with real media |
//!
//! ## Panics, errors and peer input
//!
//! Everything the core or the network sends is input: a frame that cannot be used is an
//! [`Error`] (or, in the call, a [`CallEvent::Malformed`]) naming the field and the reason, never
//! a panic. A panic in this crate is a bug in it; the few `expect`s that remain state the
//! invariant that makes them unreachable.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's code compiles as written (a doctest of the README; not part of the API).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod audio;
mod call;
mod connect;
#[cfg(feature = "core")]
#[cfg_attr(docsrs, doc(cfg(feature = "core")))]
pub mod core;
mod error;
mod login;
pub mod media;
#[cfg(feature = "core")]
pub mod netem;
mod resume;
pub mod reconnect;
pub mod roster;
pub mod signaling;
pub mod spec;
pub mod stats;
mod steps;
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transcript;
pub mod wire;

pub use audio::AudioSource;
pub use call::{CallEvent, ChatMessage, Connected};
pub use connect::ConnectOptions;
pub use error::{Cause, Error, JoinError, Result, Source, Stage};
pub use login::{Account, LoggedIn, Password, Role};
pub use resume::{Resume, ResumeToken, Resumed};
pub use reconnect::{ReconnectCause, ReconnectPolicy};
pub use roster::{Member, MemberState, Roster, RosterChange};
pub use signaling::{Party, Session, Timeouts};
pub use stats::{CallStats, Outage, ReceiveStats, SendStats};
pub use steps::{MediaReady, Offered, S1Accepted, S2Accepted};
#[cfg(feature = "tls")]
pub use tls::{TlsError, TlsOptions};
pub use transcript::{Render, Transcript};
pub use wire::{ClusterId, ConfId, PartyId, SchemeId};
