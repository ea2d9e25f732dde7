//! In the call: after step 19, the audio and the events, both delivered whatever the
//! application reads.
//!
//! ```text
//!                ┌──────────── the call's task (one per call) ─────────────┐
//! WebSocket ───▶ │ reads every frame (pings answered), routes it:          │ ──▶ events   (next_event)
//!                │   own/conference events → events; answers → commands;   │
//!                │   conf.webrtc.Disconnected or a closed socket → the end │
//! media     ───▶ │ watches the PeerConnection: failed or closed → the end  │
//!                └──────────────────────────────────────────────────────────┘
//! decoded mix ──────────────────────────────────────────────────────────────▶ audio    (next_frame)
//! ```
//!
//! The task owns the session and the media from step 19 until the call is hung up or dropped.
//! When the call ends for any reason it records why, closes the media, delivers
//! [`CallEvent::Ended`] as the last event and makes [`Connected::next_frame`] return `None` as
//! soon as the frames already heard are read: it never waits once the call has ended.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::audio::{self, Frame};
use crate::error::{Cause, Error, Result, Stage};
use crate::login::Account;
use crate::media::sdp::OfferFacts;
use crate::resume::{Resume, ResumeToken};
use crate::roster::{Roster, RosterChange};
use crate::signaling::{InCall, Party, SharedRoster};
use crate::steps::Join;
use crate::transcript::{Side, Transcript, What};
use crate::wire::{self, Answer, Command, Event, InstantMsg, Loaded, PartyId, PartyRef, ServUfrag, WireError};

/// Events kept for an application that does not read them; past that the oldest go and the
/// application is told how many with [`CallEvent::Lagged`].
const EVENT_QUEUE: usize = 1024;

/// A chat line (`conf.instantmsg`), the sender's own included.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatMessage {
    /// The sender's party, when the core names it (`SenderID`).
    pub from: Option<PartyId>,
    /// `username`: the sender party's `NAME`.
    pub username: String,
    /// `msg`: the text.
    pub msg: String,
    /// `color`: as the sender gave it (empty when none).
    pub color: String,
    /// `time`: unix seconds, when the core received it (0 when absent).
    pub time: u64,
}

impl ChatMessage {
    pub(crate) fn from_wire(m: InstantMsg) -> Self {
        ChatMessage { from: m.sender, username: m.username, msg: m.msg, color: m.color, time: m.time }
    }
}

/// What happens in the call, in the order it happens. What was read during the join's steps
/// comes first, when the call starts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CallEvent {
    /// A change of the conference's roster (from `conf.changed`, already applied to
    /// [`Connected::roster`]), one's own party's included; one event per change.
    Roster(RosterChange),
    /// A chat line (`conf.instantmsg`).
    Chat(ChatMessage),
    /// The core's clock (`timer.time`).
    Clock {
        /// Unix seconds.
        unix: u64,
    },
    /// Any other event from the core for this party or its conference, passed on as read (also
    /// a `conf.changed` of another conference).
    Core(Event),
    /// A frame from the core that could not be read; the call goes on.
    Malformed(WireError),
    /// The application did not read events for so long that this many were dropped.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// The call ended: `conf.webrtc.Disconnected`, the WebSocket closed, or the PeerConnection
    /// failed. Always the last event. The same error is [`Connected::end_reason`].
    Ended(Error),
}

/// What the application asks of the call's task.
enum Control {
    /// Send a command and give back its answer.
    Command { cmd: Command, reply: oneshot::Sender<Result<Answer>> },
    /// Stop or resume sending one's audio.
    Sending { on: bool, done: oneshot::Sender<Result<()>> },
    /// Close the media, tell the core, and give the party back.
    HangUp,
}

/// The decoded mix, and the watch that says the call has ended.
struct AudioRx {
    heard: broadcast::Receiver<Frame>,
    ended: watch::Receiver<Option<Error>>,
}

impl AudioRx {
    /// The next frame: one already heard at once, else the next one to come, else (once the call
    /// has ended) `None` without waiting.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.heard.try_recv() {
                Ok(f) => return Some(f),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(broadcast::error::TryRecvError::Closed) => return None,
                Err(broadcast::error::TryRecvError::Empty) => {}
            }
            if self.ended.borrow().is_some() || self.ended.has_changed().is_err() {
                return None;
            }
            tokio::select! {
                biased;
                f = self.heard.recv() => match f {
                    Ok(f) => return Some(f),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.ended.changed() => continue,
            }
        }
    }
}

/// Steps 15–19 done: in the call, hearing the conference mix.
///
/// Two outputs that never block each other: [`Connected::next_frame`] (or
/// [`Connected::audio`]) gives the decoded mix, [`Connected::next_event`] (or
/// [`Connected::events`]) what the core says and how the call ends. Both take `&self`, so one
/// `tokio::select!` can wait on both. Reading neither is fine too: the call's task reads the
/// WebSocket (answering the core's pings) and watches the media all the same.
///
/// Ending: [`Connected::hang_up`] gives the party back for a new CALLME_S1;
/// [`Connected::leave`] also closes the WebSocket. Dropping a `Connected` does what `leave`
/// does, in the background: the call's task closes the media, sends `CALLME_BYE` and closes the
/// WebSocket (if the runtime is shutting down and the task cannot run, the socket simply
/// closes, and the core frees the party when it sees that).
#[must_use = "a call ends when its Connected is dropped"]
pub struct Connected {
    party: PartyId,
    loaded: Loaded,
    transcript: Transcript,
    offer: OfferFacts,
    core: ServUfrag,
    audio: Mutex<AudioRx>,
    events: Mutex<broadcast::Receiver<CallEvent>>,
    ended: watch::Receiver<Option<Error>>,
    control: mpsc::UnboundedSender<Control>,
    task: Option<JoinHandle<Party>>,
    answer_timeout: Duration,
    roster: Option<SharedRoster>,
    resume: Resume,
    account: Option<Account>,
    muted: Arc<AtomicBool>,
}

impl Connected {
    /// Starts the call's task; the join hands over its media and its party (step 19 done).
    pub(crate) fn start(join: Join, mut party: Party, offer: OfferFacts, core: ServUfrag, heard: broadcast::Receiver<Frame>) -> Connected {
        let (events_tx, events_rx) = broadcast::channel(EVENT_QUEUE);
        let (ended_tx, ended_rx) = watch::channel(None);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let transcript = join.transcript.clone();
        let answer_timeout = party.session.timeouts().answer;
        let (id, loaded) = (party.id(), party.loaded().clone());
        let (roster, resume, account) = (party.session.shared_roster(), party.resumer(), party.account().cloned());
        // What was read during the steps is told first: nothing is lost.
        for e in party.session.take_early() {
            let _ = events_tx.send(e);
        }
        let muted = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(drive(join, party, events_tx, ended_tx, control_rx, muted.clone()));
        Connected {
            party: id,
            loaded,
            transcript,
            offer,
            core,
            audio: Mutex::new(AudioRx { heard, ended: ended_rx.clone() }),
            events: Mutex::new(events_rx),
            ended: ended_rx,
            control: control_tx,
            task: Some(task),
            answer_timeout,
            roster,
            resume,
            account,
            muted,
        }
    }

    /// The conference's parties now, one's own included: kept by the call's task from every
    /// `conf.changed` it reads, whether or not the application reads the events.
    pub fn roster(&self) -> Roster {
        self.roster.as_ref().map(|r| crate::signaling::lock(r).clone()).unwrap_or_default()
    }

    /// The account the session logged in as, if it did.
    pub fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// The `ResumeToken` the core gave, if it gives one.
    pub fn resume_token(&self) -> Option<&ResumeToken> {
        self.resume.token.as_ref()
    }

    /// What a new session needs to come back as this party after the WebSocket is lost
    /// ([`Resume::connect`]); usable after the call has ended.
    pub fn resumer(&self) -> Resume {
        self.resume.clone()
    }

    /// Whether one's own audio is not being sent: after [`Connected::set_mic`] off, or while
    /// the roster shows one's microphone off (a controller turned it off: the media follows,
    /// as a browser's disabled track would).
    pub fn is_muted(&self) -> bool {
        self.muted.load(Ordering::SeqCst)
    }

    /// Switches one's own microphone (`SETMIC` for oneself). Off: the media stops sending at
    /// once, before the core answers, and stays so even if the core refuses (what a person
    /// muted is never sent); on: sending resumes once the core has accepted. A refusal is an
    /// error with the core's code, class and text ([`Cause::Refused`]).
    pub async fn set_mic(&self, on: bool) -> Result<()> {
        if !on {
            self.set_sending(false).await?;
        }
        self.act(Command::set_mic(self.loaded.at(), on)).await?;
        if on {
            self.set_sending(true).await?;
        }
        Ok(())
    }

    /// Switches another party's microphone (`SETMIC`); the core accepts it only from a session
    /// that controls the conference. The party's `bMicOn` comes back as a roster change.
    pub async fn set_mic_of(&self, party: PartyId, on: bool) -> Result<()> {
        if party == self.party {
            return self.set_mic(on).await;
        }
        self.act(Command::set_mic(self.at(party), on)).await
    }

    /// Sends a chat line to the conference (`INSTANTMSG`); it comes back to everyone, oneself
    /// included, as [`CallEvent::Chat`]. An empty `msg` or one longer than
    /// [`wire::MAX_MSG_CHARS`] characters is refused here, naming `msg`.
    pub async fn say(&self, msg: &str) -> Result<()> {
        self.say_in(msg, None).await
    }

    /// [`Connected::say`] with a `color` for the line.
    pub async fn say_in(&self, msg: &str, color: Option<&str>) -> Result<()> {
        let chars = msg.chars().count();
        if chars == 0 || chars > wire::MAX_MSG_CHARS {
            let reason = format!("msg: {chars} characters; a chat line has 1 to {} characters", wire::MAX_MSG_CHARS);
            return Err(Error::new(Stage::InCall, Cause::Invalid { reason }));
        }
        self.act(Command::instant_msg(self.loaded.cluster, self.loaded.conf, msg, color)).await
    }

    /// Removes a party from the conference (`DELPARTY`); the core accepts it for another party
    /// only from a session that controls the conference. The party leaves the roster when the
    /// core's `delParties` comes.
    pub async fn remove(&self, party: PartyId) -> Result<()> {
        self.act(Command::del_party(self.at(party))).await
    }

    fn at(&self, party: PartyId) -> PartyRef {
        PartyRef { party, ..self.loaded.at() }
    }

    /// Sends a command and turns a negative answer into an error.
    async fn act(&self, cmd: Command) -> Result<()> {
        let answer = self.command(cmd).await?;
        match answer.refusal(&[wire::code::OK]) {
            Some(r) => Err(Error::new(Stage::InCall, Cause::Refused(r))),
            None => Ok(()),
        }
    }

    /// Tells the media to stop or resume sending.
    async fn set_sending(&self, on: bool) -> Result<()> {
        let gone = || Error::new(Stage::InCall, Cause::Disconnected { reason: "the call has been hung up".into() });
        let (done, result) = oneshot::channel();
        self.control.send(Control::Sending { on, done }).map_err(|_| gone())?;
        result.await.map_err(|_| gone())??;
        self.muted.store(!on, Ordering::SeqCst);
        Ok(())
    }

    /// One's own party.
    pub fn party_id(&self) -> PartyId {
        self.party
    }

    /// What `cd.load` said: the conference, one's own party, whether the session controls it.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The record of the join and of the call so far (the call's frames are kept bounded).
    pub fn transcript(&self) -> Transcript {
        self.transcript.clone()
    }

    /// What step 9 pulled out of the offer.
    pub fn offer(&self) -> &OfferFacts {
        &self.offer
    }

    /// What `conf.webrtc.servufrag` said.
    pub fn servufrag(&self) -> &ServUfrag {
        &self.core
    }

    /// The next 20 ms of heard audio (48 kHz mono), or `None` once the call has ended and the
    /// frames already heard are read. Up to 2 s are kept while the application does not read;
    /// past that the oldest frames are dropped.
    pub async fn next_frame(&self) -> Option<Frame> {
        self.audio.lock().await.next().await
    }

    /// The heard audio as a stream of 20 ms frames; it ends when the call ends.
    pub fn audio(&self) -> impl Stream<Item = Frame> + '_ {
        futures::stream::unfold(self, |call| async move { call.next_frame().await.map(|f| (f, call)) })
    }

    /// Drops the heard audio kept so far, so the next frame is the newest.
    pub async fn skip_heard(&self) {
        let mut audio = self.audio.lock().await;
        audio.heard = audio.heard.resubscribe();
    }

    /// The next thing that happens in the call, in order; [`CallEvent::Ended`] is the last, then
    /// `None`. Heard audio is not consumed.
    pub async fn next_event(&self) -> Option<CallEvent> {
        let mut events = self.events.lock().await;
        match events.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(CallEvent::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The events as a stream; it ends after [`CallEvent::Ended`].
    pub fn events(&self) -> impl Stream<Item = CallEvent> + '_ {
        futures::stream::unfold(self, |call| async move { call.next_event().await.map(|e| (e, call)) })
    }

    /// Why the call ended, once it has.
    pub fn end_reason(&self) -> Option<Error> {
        self.ended.borrow().clone()
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Waits until the call ends and gives the reason.
    pub async fn ended(&self) -> Error {
        let mut ended = self.ended.clone();
        loop {
            if let Some(e) = ended.borrow_and_update().clone() {
                return e;
            }
            if ended.changed().await.is_err() {
                return Error::new(Stage::InCall, Cause::Disconnected { reason: "the call's task stopped".into() });
            }
        }
    }

    /// Sends a command of one's own in the call and waits for its answer (any code; a negative
    /// one is in [`Answer::refusal`]). The frames go into the transcript like every other.
    pub async fn command(&self, cmd: Command) -> Result<Answer> {
        let gone = || Error::new(Stage::InCall, Cause::Disconnected { reason: "the call has been hung up".into() });
        let (reply, answer) = oneshot::channel();
        let waiting_for = format!("the answer to {}", cmd.cmd);
        self.control.send(Control::Command { cmd, reply }).map_err(|_| gone())?;
        match tokio::time::timeout(self.answer_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(Error::new(Stage::InCall, Cause::TimedOut { waiting_for, after: self.answer_timeout })),
        }
    }

    /// Collects what is heard during the next `duration` (audio kept from before is skipped);
    /// fails if the call ends meanwhile. Events go on to [`Connected::next_event`] as ever.
    pub async fn listen(&self, duration: Duration) -> Result<Vec<i16>> {
        self.skip_heard().await;
        let deadline = tokio::time::sleep(duration);
        tokio::pin!(deadline);
        let mut heard = Vec::with_capacity((duration.as_secs_f64() * f64::from(audio::SAMPLE_RATE)) as usize);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(heard),
                f = self.next_frame() => match f {
                    Some(f) => heard.extend_from_slice(&f),
                    None => return Err(self.end_reason().unwrap_or_else(|| {
                        Error::new(Stage::InCall, Cause::Disconnected { reason: "the media closed".into() })
                    })),
                },
            }
        }
    }

    /// [`Connected::listen`], then writes what was heard to a WAV file.
    pub async fn record(&self, duration: Duration, path: &Path) -> Result<Vec<i16>> {
        let heard = self.listen(duration).await?;
        audio::write_wav(path, &heard).map_err(|reason| Error::new(Stage::InCall, Cause::Invalid { reason }))?;
        Ok(heard)
    }

    /// Hangs up: closes the media, tells the core (`CALLME_BYE`), and gives the party back for a
    /// new CALLME_S1 (a reconnect) or other commands.
    pub async fn hang_up(mut self) -> Party {
        let _ = self.control.send(Control::HangUp);
        let task = self.task.take().expect("the task is taken only here, by value");
        // The task does not panic (nothing in it unwraps); it is cancelled only when the runtime
        // shuts down, and then this future is dropped with it.
        task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Hangs up and closes the WebSocket.
    pub async fn leave(self) {
        let mut party = self.hang_up().await;
        party.session.close().await;
    }
}

/// The call's task: reads the session, watches the media, serves the application's commands.
async fn drive(
    mut join: Join,
    mut party: Party,
    events_tx: broadcast::Sender<CallEvent>,
    ended: watch::Sender<Option<Error>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    muted: Arc<AtomicBool>,
) -> Party {
    let mut pending: HashMap<u64, oneshot::Sender<Result<Answer>>> = HashMap::new();
    // Dropped once the end is delivered, so the application's event stream ends.
    let mut events = Some(events_tx);
    let mut over = false;
    let detached = loop {
        tokio::select! {
            c = control.recv() => match c {
                None => break true,
                Some(Control::HangUp) => break false,
                Some(Control::Sending { on, done }) => {
                    join.call(20, "setSending", if on { "on: the local audio is sent" } else { "off: silence is sent instead" });
                    let result = join.media.set_sending(on).await.map_err(|reason| Error::new(Stage::InCall, Cause::Media { call: "setSending", reason }));
                    let _ = done.send(result);
                }
                Some(Control::Command { cmd, reply }) => {
                    pending.retain(|_, r| !r.is_closed());
                    match party.session.send(Stage::InCall, cmd, true).await {
                        Ok(seq) => { pending.insert(seq, reply); }
                        Err(e) => { let _ = reply.send(Err(e)); }
                    }
                }
            },
            item = party.session.next_in_call(), if !party.session.is_closed() => match item {
                InCall::Event(_, typed) => {
                    for e in typed {
                        // One's microphone switched by a controller: the media follows.
                        if let CallEvent::Roster(RosterChange::MicChanged(m)) = &e {
                            if m.id == party.id() && m.mic_on == muted.load(Ordering::SeqCst) {
                                join.call(20, "setSending", if m.mic_on { "on: the roster shows the microphone on" } else { "off: the roster shows the microphone off" });
                                if join.media.set_sending(m.mic_on).await.is_ok() {
                                    muted.store(!m.mic_on, Ordering::SeqCst);
                                }
                            }
                        }
                        deliver(&events, e);
                    }
                }
                InCall::Malformed(w) => deliver(&events, CallEvent::Malformed(w)),
                InCall::Answer(a) => {
                    if let Some(reply) = pending.remove(&a.seq) {
                        let _ = reply.send(Ok(a));
                    }
                }
                InCall::Ended(e) => {
                    for (_, reply) in pending.drain() {
                        let _ = reply.send(Err(e.clone()));
                    }
                    if !over {
                        over = true;
                        end(&mut join, events.take(), &ended, e).await;
                    }
                }
            },
            reason = join.media.ended(), if !over => {
                over = true;
                let e = Error::new(Stage::InCall, Cause::Disconnected { reason });
                end(&mut join, events.take(), &ended, e).await;
            }
        }
    };
    if !over {
        join.call(20, "close", "");
        join.media.close().await;
        let _ = ended.send(Some(Error::new(Stage::InCall, Cause::Disconnected { reason: "hung up".into() })));
    }
    let bye = party.callme("CALLME_BYE");
    party.session.send_quietly(Stage::InCall, bye).await;
    if detached {
        party.session.close().await;
    }
    party
}

/// Passes an event on, unless the call has ended.
fn deliver(events: &Option<broadcast::Sender<CallEvent>>, e: CallEvent) {
    if let Some(tx) = events {
        let _ = tx.send(e);
    }
}

/// The call ended: record why, close the media, tell the application (the last event).
async fn end(join: &mut Join, events: Option<broadcast::Sender<CallEvent>>, ended: &watch::Sender<Option<Error>>, e: Error) {
    join.record(20, Side::Local, What::Failed { error: e.to_string() });
    join.call(20, "close", "");
    join.media.close().await;
    let _ = ended.send(Some(e.clone()));
    deliver(&events, CallEvent::Ended(e));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn next_frame_gives_the_frames_already_heard_then_none_once_ended() {
        let (tx, rx) = broadcast::channel(10);
        let (end_tx, end_rx) = watch::channel(None);
        let mut audio = AudioRx { heard: rx, ended: end_rx };
        tx.send(vec![1; 4]).unwrap();
        end_tx.send(Some(Error::new(Stage::InCall, Cause::Disconnected { reason: "test".into() }))).unwrap();
        assert_eq!(audio.next().await, Some(vec![1; 4]));
        // The sender is still alive: the end alone makes it return.
        assert_eq!(audio.next().await, None);
        drop(tx);
    }

    #[tokio::test]
    async fn next_frame_waiting_for_audio_returns_none_when_the_call_ends() {
        let (_tx, rx) = broadcast::channel::<Frame>(10);
        let (end_tx, end_rx) = watch::channel(None);
        let mut audio = AudioRx { heard: rx, ended: end_rx };
        let mut next = tokio_test::task::spawn(async move { audio.next().await });
        tokio_test::assert_pending!(next.poll());
        end_tx.send(Some(Error::new(Stage::InCall, Cause::Disconnected { reason: "test".into() }))).unwrap();
        assert!(next.is_woken());
        tokio_test::assert_ready_eq!(next.poll(), None);
    }
}
