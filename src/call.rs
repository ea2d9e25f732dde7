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

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::audio::{self, Frame};
use crate::error::{Cause, Error, Result, Stage};
use crate::reconnect::{Jitter, ReconnectCause, ReconnectPolicy};
use crate::stats::{CallStats, StatsCell};
use crate::login::Account;
use crate::media::sdp::OfferFacts;
use crate::resume::{Resume, ResumeToken};
use crate::roster::{Roster, RosterChange};
use crate::signaling::{End, InCall, Party, SharedRoster};
use crate::steps::{self, Join, Joined};
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
    /// The call is reconnecting (see [`crate::reconnect`]): attempt `attempt` (from 1) is about
    /// to start. The audio goes on as silence meanwhile.
    Reconnecting {
        /// Why the call reconnects.
        cause: ReconnectCause,
        /// Which attempt starts now.
        attempt: u32,
    },
    /// The call is back: the media plays again.
    Reconnected {
        /// From when the trouble began (the last packet, for silent media; when it was seen,
        /// otherwise) until the media plays again.
        outage: Duration,
        /// Attempts it took.
        attempts: u32,
        /// One's own party now: the same, unless the core no longer knew it and loaded a new one.
        party: PartyId,
    },
    /// What the call has measured ([`Connected::stats`]), once a second.
    Stats(Box<CallStats>),
    /// The call ended: `conf.webrtc.Disconnected` with `final` (a removal), a refused login or
    /// command while reconnecting, every reconnection attempt failed, or, with reconnection
    /// off, the first failure. Always the last event. The same error is
    /// [`Connected::end_reason`].
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
    current: Arc<std::sync::Mutex<Current>>,
    audio: Mutex<AudioRx>,
    events: Mutex<broadcast::Receiver<CallEvent>>,
    ended: watch::Receiver<Option<Error>>,
    control: mpsc::UnboundedSender<Control>,
    task: Option<JoinHandle<Option<Party>>>,
    answer_timeout: Duration,
    muted: Arc<AtomicBool>,
    stats: StatsCell,
    /// Set by a hang-up, dropped with the call: stops a reconnection under way.
    hang: watch::Sender<bool>,
}

/// What changes when the call reconnects; the accessors read it.
#[derive(Clone)]
struct Current {
    party: PartyId,
    loaded: Loaded,
    transcript: Transcript,
    offer: OfferFacts,
    core: ServUfrag,
    roster: Option<SharedRoster>,
    resume: Resume,
    account: Option<Account>,
}

impl Current {
    fn of(party: &Party, transcript: Transcript, offer: OfferFacts, core: ServUfrag) -> Self {
        Current {
            party: party.id(),
            loaded: party.loaded().clone(),
            transcript,
            offer,
            core,
            roster: party.session.shared_roster(),
            resume: party.resumer(),
            account: party.account().cloned(),
        }
    }
}

impl Connected {
    /// Starts the call's task; the join hands over its media and its party (step 19 done).
    pub(crate) fn start(join: Join, mut party: Party, offer: OfferFacts, core: ServUfrag, heard: broadcast::Receiver<Frame>) -> Connected {
        let (events_tx, events_rx) = broadcast::channel(EVENT_QUEUE);
        let (ended_tx, ended_rx) = watch::channel(None);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let answer_timeout = party.session.timeouts().answer;
        let current = Arc::new(std::sync::Mutex::new(Current::of(&party, join.transcript.clone(), offer, core)));
        // What was read during the steps is told first: nothing is lost.
        for e in party.session.take_early() {
            let _ = events_tx.send(e);
        }
        let muted = Arc::new(AtomicBool::new(false));
        let stats = join.media.stats().unwrap_or_default();
        let call = CallTask {
            join,
            party: Some(party),
            events: Some(events_tx),
            ended: ended_tx,
            muted: muted.clone(),
            current: current.clone(),
            stats: stats.clone(),
            pending: HashMap::new(),
            deferred: VecDeque::new(),
        };
        let (hang, hang_rx) = watch::channel(false);
        let task = tokio::spawn(call.run(control_rx, hang_rx));
        Connected {
            current,
            audio: Mutex::new(AudioRx { heard, ended: ended_rx.clone() }),
            events: Mutex::new(events_rx),
            ended: ended_rx,
            control: control_tx,
            task: Some(task),
            answer_timeout,
            muted,
            stats,
            hang,
        }
    }

    fn now(&self) -> Current {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the call has measured so far: packets, loss, FEC, concealment, jitter, the jitter
    /// buffer, round-trip time, levels, outages and reconnections. Empty with a media layer
    /// that does not measure.
    pub fn stats(&self) -> CallStats {
        self.stats.snapshot()
    }

    /// The conference's parties now, one's own included: kept by the call's task from every
    /// `conf.changed` it reads, whether or not the application reads the events.
    pub fn roster(&self) -> Roster {
        self.now().roster.as_ref().map(|r| crate::signaling::lock(r).clone()).unwrap_or_default()
    }

    /// The account the session logged in as, if it did.
    pub fn account(&self) -> Option<Account> {
        self.now().account
    }

    /// The `ResumeToken` the core gave (the newest, after a reconnection), if it gives one.
    pub fn resume_token(&self) -> Option<ResumeToken> {
        self.now().resume.token
    }

    /// What a new session needs to come back as this party after the WebSocket is lost
    /// ([`Resume::connect`]); usable after the call has ended.
    pub fn resumer(&self) -> Resume {
        self.now().resume
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
        self.act(Command::set_mic(self.now().loaded.at(), on)).await?;
        if on {
            self.set_sending(true).await?;
        }
        Ok(())
    }

    /// Switches another party's microphone (`SETMIC`); the core accepts it only from a session
    /// that controls the conference. The party's `bMicOn` comes back as a roster change.
    pub async fn set_mic_of(&self, party: PartyId, on: bool) -> Result<()> {
        if party == self.party_id() {
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
        let loaded = self.now().loaded;
        self.act(Command::instant_msg(loaded.cluster, loaded.conf, msg, color)).await
    }

    /// Removes a party from the conference (`DELPARTY`); the core accepts it for another party
    /// only from a session that controls the conference. The party leaves the roster when the
    /// core's `delParties` comes.
    pub async fn remove(&self, party: PartyId) -> Result<()> {
        self.act(Command::del_party(self.at(party))).await
    }

    fn at(&self, party: PartyId) -> PartyRef {
        PartyRef { party, ..self.now().loaded.at() }
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

    /// One's own party (a new one after a reconnection to a core that no longer knew it).
    pub fn party_id(&self) -> PartyId {
        self.now().party
    }

    /// What `cd.load` said (the newest, after a reconnection): the conference, one's own party,
    /// whether the session controls it.
    pub fn loaded(&self) -> Loaded {
        self.now().loaded
    }

    /// The record of the join and of the call so far, reconnections included (the call's
    /// frames are kept bounded).
    pub fn transcript(&self) -> Transcript {
        self.now().transcript
    }

    /// What step 9 pulled out of the offer (the newest offer's, after a reconnection).
    pub fn offer(&self) -> OfferFacts {
        self.now().offer
    }

    /// What `conf.webrtc.servufrag` said (the newest, after a reconnection).
    pub fn servufrag(&self) -> ServUfrag {
        self.now().core
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
    /// new CALLME_S1 or other commands. An error when there is no session to give back: the
    /// call was reconnecting without one (the attempt under way is dropped), or its WebSocket
    /// is closed.
    pub async fn hang_up(mut self) -> Result<Party> {
        let _ = self.control.send(Control::HangUp);
        let _ = self.hang.send(true);
        let task = self.task.take().expect("the task is taken only here, by value");
        // The task does not panic (nothing in it unwraps); it is cancelled only when the runtime
        // shuts down, and then this future is dropped with it.
        let party = task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        party.filter(|p| !p.session.is_closed()).ok_or_else(|| {
            self.end_reason().unwrap_or_else(|| Error::new(Stage::InCall, Cause::Disconnected { reason: "the session is gone".into() }))
        })
    }

    /// Hangs up and closes the WebSocket.
    pub async fn leave(self) {
        if let Ok(mut party) = self.hang_up().await {
            party.session.close().await;
        }
    }
}

/// A stop of the media packets at least this long is an outage in the stats.
const GAP: Duration = Duration::from_millis(250);

/// Why the in-call loop stopped.
enum Stop {
    /// The application hung up (`detached`: it dropped its `Connected` instead).
    HangUp { detached: bool },
    /// Something failed that a reconnection may mend; the error is the end without one.
    Lost(ReconnectCause, Error),
    /// The call is over for good.
    Over(Error),
}

/// The call's task: reads the session, watches the media, serves the application's commands,
/// and reconnects when the call is lost.
struct CallTask {
    join: Join,
    /// `None` only while a reconnection has no session.
    party: Option<Party>,
    /// Dropped once the end is delivered, so the application's event stream ends.
    events: Option<broadcast::Sender<CallEvent>>,
    ended: watch::Sender<Option<Error>>,
    muted: Arc<AtomicBool>,
    current: Arc<std::sync::Mutex<Current>>,
    stats: StatsCell,
    pending: HashMap<u64, oneshot::Sender<Result<Answer>>>,
    /// Commands that came while reconnecting, served once the call is back.
    deferred: VecDeque<Control>,
}

impl CallTask {
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>, mut hang: watch::Receiver<bool>) -> Option<Party> {
        let policy = self.party.as_ref().map(|p| p.session.reconnect).unwrap_or_default();
        let started = Instant::now();
        let mut jitter = Jitter::new(self.party.as_ref().map_or(1, |p| p.id().0));
        let (detached, end) = loop {
            match self.in_call(&mut control, &policy, started).await {
                Stop::HangUp { detached } => break (detached, None),
                Stop::Over(e) => break (false, Some(e)),
                Stop::Lost(_, e) if !policy.enabled => break (false, Some(e)),
                Stop::Lost(cause, _) => match self.reconnect(cause, &policy, &mut hang, &mut jitter, started).await {
                    Ok(()) => continue,
                    Err(Some(e)) => break (false, Some(e)),
                    Err(None) => break (hang.has_changed().is_err(), None),
                },
            }
        };
        let detached = match end {
            None => {
                self.join.call(20, "close", "");
                self.join.media.close().await;
                let _ = self.ended.send(Some(Error::new(Stage::InCall, Cause::Disconnected { reason: "hung up".into() })));
                detached
            }
            Some(e) => {
                self.end(e.clone()).await;
                // Over: every later request gets the end, until the application hangs up.
                loop {
                    match control.recv().await {
                        None => break true,
                        Some(Control::HangUp) => break false,
                        Some(Control::Command { reply, .. }) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Some(Control::Sending { done, .. }) => {
                            let _ = done.send(Err(e.clone()));
                        }
                    }
                }
            }
        };
        if let Some(party) = self.party.as_mut() {
            let bye = party.callme("CALLME_BYE");
            party.session.send_quietly(Stage::InCall, bye).await;
            if detached {
                party.session.close().await;
            }
        }
        self.party
    }

    /// The call as it goes: until it is hung up, lost, or over.
    async fn in_call(&mut self, control: &mut mpsc::UnboundedReceiver<Control>, policy: &ReconnectPolicy, started: Instant) -> Stop {
        while let Some(c) = self.deferred.pop_front() {
            if let Some(stop) = self.serve(c).await {
                return stop;
            }
        }
        if self.party.as_ref().is_none_or(|p| p.session.is_closed()) {
            let reason = "the WebSocket is closed".to_owned();
            return Stop::Lost(ReconnectCause::SocketLost { reason: reason.clone() }, Error::new(Stage::InCall, Cause::Disconnected { reason }));
        }
        let every = |d: Duration| {
            let mut i = tokio::time::interval_at(Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut keepalive = every(policy.socket_silence / 3);
        let mut watchdog = every(Duration::from_millis(250));
        let mut report = every(Duration::from_secs(1));
        let (mut packets, mut since, mut gap) = (self.stats.update(|s| s.received.packets), Instant::now(), false);
        loop {
            let party = self.party.as_mut().expect("checked above; only a reconnection takes it");
            tokio::select! {
                c = control.recv() => match c {
                    None => return Stop::HangUp { detached: true },
                    Some(c) => if let Some(stop) = self.serve(c).await {
                        return stop;
                    },
                },
                item = party.session.next_in_call() => match item {
                    InCall::Event(_, typed) => {
                        for e in typed {
                            self.follow_mic(&e).await;
                            deliver(&self.events, e);
                        }
                    }
                    InCall::Malformed(w) => deliver(&self.events, CallEvent::Malformed(w)),
                    InCall::Answer(a) => {
                        if let Some(reply) = self.pending.remove(&a.seq) {
                            let _ = reply.send(Ok(a));
                        }
                    }
                    InCall::Ended(e, how) => {
                        let reason = match &e.cause {
                            Cause::Disconnected { reason } => reason.clone(),
                            other => other.to_string(),
                        };
                        return match how {
                            End::Final => Stop::Over(e),
                            End::Socket => Stop::Lost(ReconnectCause::SocketLost { reason }, e),
                            End::Transient => Stop::Lost(ReconnectCause::Disconnected { reason }, e),
                        };
                    }
                },
                reason = self.join.media.ended() => {
                    let e = Error::new(Stage::InCall, Cause::Disconnected { reason: reason.clone() });
                    return Stop::Lost(ReconnectCause::MediaFailed { reason }, e);
                }
                _ = watchdog.tick() => {
                    let now = self.stats.update(|s| s.received.packets);
                    if now != packets {
                        if gap {
                            self.stats.outage_ended(started.elapsed());
                            gap = false;
                        }
                        (packets, since) = (now, Instant::now());
                    } else if !gap && since.elapsed() >= GAP {
                        self.stats.outage_started(since.saturating_duration_since(started), "media gap");
                        gap = true;
                    }
                    if now == packets && policy.enabled && since.elapsed() >= policy.media_silence {
                        let after = since.elapsed();
                        let e = Error::new(Stage::InCall, Cause::Disconnected { reason: format!("no media from the core for {} ms", after.as_millis()) });
                        return Stop::Lost(ReconnectCause::MediaSilent { after }, e);
                    }
                }
                _ = keepalive.tick() => {
                    let party = self.party.as_mut().expect("present in the call");
                    party.session.keepalive().await;
                    let quiet = party.session.silent_for();
                    if party.session.pings() && quiet >= policy.socket_silence {
                        let reason = format!("nothing came on the WebSocket for {} ms", quiet.as_millis());
                        let e = Error::new(Stage::InCall, Cause::Disconnected { reason: reason.clone() });
                        return Stop::Lost(ReconnectCause::SocketLost { reason }, e);
                    }
                }
                _ = report.tick() => {
                    let mut s = self.stats.snapshot();
                    s.elapsed = started.elapsed();
                    deliver(&self.events, CallEvent::Stats(Box::new(s)));
                }
            }
        }
    }

    /// Serves one request of the application; `Some` when it ends the loop.
    async fn serve(&mut self, c: Control) -> Option<Stop> {
        match c {
            Control::HangUp => return Some(Stop::HangUp { detached: false }),
            Control::Sending { on, done } => {
                self.join.call(20, "setSending", if on { "on: the local audio is sent" } else { "off: silence is sent instead" });
                let result = self.join.media.set_sending(on).await.map_err(|reason| Error::new(Stage::InCall, Cause::Media { call: "setSending", reason }));
                let _ = done.send(result);
            }
            Control::Command { cmd, reply } => {
                self.pending.retain(|_, r| !r.is_closed());
                let Some(party) = self.party.as_mut() else {
                    self.deferred.push_back(Control::Command { cmd, reply });
                    return None;
                };
                match party.session.send(Stage::InCall, cmd, true).await {
                    Ok(seq) => {
                        self.pending.insert(seq, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        None
    }

    /// One's microphone switched by a controller: the media follows.
    async fn follow_mic(&mut self, e: &CallEvent) {
        let Some(party) = self.party.as_ref() else { return };
        if let CallEvent::Roster(RosterChange::MicChanged(m)) = e {
            if m.id == party.id() && m.mic_on == self.muted.load(Ordering::SeqCst) {
                self.join.call(20, "setSending", if m.mic_on { "on: the roster shows the microphone on" } else { "off: the roster shows the microphone off" });
                if self.join.media.set_sending(m.mic_on).await.is_ok() {
                    self.muted.store(!m.mic_on, Ordering::SeqCst);
                }
            }
        }
    }

    /// Brings the call back: attempts with backoff until one joins again, one fails for good,
    /// or none are left. `Err(None)`: the application hung up meanwhile.
    async fn reconnect(
        &mut self,
        cause: ReconnectCause,
        policy: &ReconnectPolicy,
        hang: &mut watch::Receiver<bool>,
        jitter: &mut Jitter,
        started: Instant,
    ) -> std::result::Result<(), Option<Error>> {
        let lost = match &cause {
            ReconnectCause::MediaSilent { after } => Instant::now() - *after,
            _ => Instant::now(),
        };
        self.stats.outage_started(lost.saturating_duration_since(started), cause.kind());
        self.join.record(20, Side::Local, What::Reconnect { detail: format!("because {cause}") });
        let failed = Error::new(Stage::InCall, Cause::Disconnected { reason: format!("reconnecting: {cause}") });
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(failed.clone()));
        }
        let mut needs_session = cause.needs_session();
        let mut failures = Vec::new();
        for attempt in 1..=policy.max_attempts {
            deliver(&self.events, CallEvent::Reconnecting { cause: cause.clone(), attempt });
            let wait = policy.backoff(attempt, jitter.unit());
            let how = if needs_session || self.party.as_ref().is_none_or(|p| p.session.is_closed()) { "resume by token" } else { "CALLME_S1 again" };
            self.join.record(20, Side::Local, What::Reconnect { detail: format!("attempt {attempt} after {} ms: {how}", wait.as_millis()) });
            let attempt_result = tokio::select! {
                biased;
                _ = hang.changed() => return Err(None),
                r = async {
                    tokio::time::sleep(wait).await;
                    self.attempt(&mut needs_session, policy.attempt_media_timeout).await
                } => r,
            };
            match attempt_result {
                Ok(joined) => {
                    self.back(joined, started);
                    let outage = lost.elapsed();
                    self.stats.outage_ended(started.elapsed());
                    self.stats.update(|s| s.reconnects += 1);
                    let party = self.party.as_ref().map(Party::id).unwrap_or_default();
                    self.join.record(20, Side::Local, What::Reconnect { detail: format!("back as party {} after {attempt} attempt(s)", party.0) });
                    deliver(&self.events, CallEvent::Reconnected { outage, attempts: attempt, party });
                    return Ok(());
                }
                Err(e) if is_final(&e) => {
                    failures.push(format!("attempt {attempt}: {e}"));
                    return Err(Some(e));
                }
                Err(e) => failures.push(format!("attempt {attempt}: {e}")),
            }
        }
        Err(Some(Error::new(Stage::InCall, Cause::ReconnectFailed { cause: cause.to_string(), attempts: failures })))
    }

    /// One attempt: a new session when needed (resume by token, or a fresh load), then the
    /// media again on it.
    async fn attempt(&mut self, needs_session: &mut bool, media_bound: Duration) -> Result<Joined> {
        if *needs_session || self.party.as_ref().is_none_or(|p| p.session.is_closed()) {
            let resume = self.current.lock().unwrap_or_else(|p| p.into_inner()).resume.clone();
            self.party = None;
            let mut party = resume.connect().await?.into_party();
            // The new session records on into the call's transcript: one record.
            party.session.adopt_transcript(self.join.transcript.clone());
            self.party = Some(party);
            *needs_session = false;
        }
        self.join.call(20, "restart", "the PeerConnection closes; the local audio and the heard stream go on");
        let _ = self.join.media.restart().await;
        let party = self.party.take().expect("a session was opened above");
        let heard = self.join.heard.clone().expect("the first join made the heard stream");
        let media = std::mem::replace(&mut self.join.media, Box::new(steps::Placeholder));
        let (media, result) = steps::rejoin(media, self.join.transcript.clone(), heard, party, media_bound).await;
        self.join.media = media;
        match result {
            Ok(joined) => Ok(joined),
            Err(e) => {
                let (e, party) = e.into_parts();
                *needs_session |= party.is_none();
                self.party = party;
                Err(e)
            }
        }
    }

    /// The call is back: take over what the rejoin made.
    fn back(&mut self, joined: Joined, _started: Instant) {
        let Joined { join, mut party, offer, core, heard: _ } = joined;
        self.join.transcript = join.transcript;
        let early = party.session.take_early();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Current::of(&party, self.join.transcript.clone(), offer, core);
        self.party = Some(party);
        for e in early {
            deliver(&self.events, e);
        }
    }

    /// The call ended: record why, close the media, tell the application (the last event).
    async fn end(&mut self, e: Error) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(e.clone()));
        }
        self.join.record(20, Side::Local, What::Failed { error: e.to_string() });
        self.join.call(20, "close", "");
        self.join.media.close().await;
        let _ = self.ended.send(Some(e.clone()));
        deliver(&self.events.take(), CallEvent::Ended(e));
    }
}

/// Errors a reconnection does not retry: the core said no.
fn is_final(e: &Error) -> bool {
    matches!(e.cause, Cause::LoginFailed { .. } | Cause::Refused(_) | Cause::Invalid { .. } | Cause::Source { .. } | Cause::Offer(_))
}

/// Passes an event on, unless the call has ended.
fn deliver(events: &Option<broadcast::Sender<CallEvent>>, e: CallEvent) {
    if let Some(tx) = events {
        let _ = tx.send(e);
    }
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
