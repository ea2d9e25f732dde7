//! A signaling session with the core over any transport of text frames.
//!
//! The session owns the transport; nothing runs in the background. Each wait reads frames until
//! the one it waits for arrives or its deadline passes, and routes every other frame on the way:
//! answers are matched to commands by `seq`, events by `obj.evt.evttype` and `PartyID`. An event
//! the sequence will need later (`servdesc` before the answer to CALLME_S1, say) is kept and used
//! when its step comes; an unrelated one (`timer.time`, `conf.changed`), one for another party or
//! a duplicate is recorded and passed over. Every frame goes into the [`Transcript`].
//!
//! [`Session::connect`] opens a WebSocket (tokio-tungstenite, sub-protocol `PalladaWSData`);
//! [`Session::over`] takes any `Sink<String>` + `Stream<Item = Inbound>`, which is how the
//! sequence tests script the core in memory.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use crate::reconnect::ReconnectPolicy;

use crate::call::{CallEvent, ChatMessage};
use crate::connect::ConnectOptions;
use crate::error::{Cause, Error, Result, Stage};
use crate::login::{self, Account, Credentials, LoggedIn, Password, Role};
use crate::resume::{Reopen, Resume, ResumeToken};
use crate::roster::Roster;
use crate::transcript::{Routing, Side, Transcript, What};
use crate::wire::{
    self, Answer, ClusterId, Command, ConfChanged, Event, Incoming, InstantMsg, LoadAnswer, Loaded, LoginAnswer, PartyId, SchemeId,
    TimerTime, WireError,
};

/// What a transport yields: a text frame, or the end of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// A text frame.
    Text(String),
    /// The connection ended.
    Closed {
        /// The close code and reason, or the error that ended it.
        reason: String,
    },
    /// The connection showed it is alive without a frame for the session (a WebSocket ping
    /// or pong).
    Alive,
}

/// What the session writes to ask a transport for a keep-alive: a WebSocket transport sends a
/// ping frame instead; it is never a text frame of the protocol (it is not JSON).
pub(crate) const KEEPALIVE: &str = "\u{0}callme-keepalive";

/// Any duplex channel of text frames: a WebSocket, or an in-memory scripted core.
pub trait Transport: Sink<String, Error = String> + Stream<Item = Inbound> + Send + Unpin {}
impl<T> Transport for T where T: Sink<String, Error = String> + Stream<Item = Inbound> + Send + Unpin {}

/// How long each kind of wait may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Opening the WebSocket.
    pub open: Duration,
    /// An answer to a command.
    pub answer: Duration,
    /// An event the sequence waits for (`servdesc`, `servufrag`).
    pub event: Duration,
    /// A media call, and the remote track (step 18).
    pub media: Duration,
}

impl Timeouts {
    /// With this time for opening the WebSocket.
    pub fn with_open(mut self, d: Duration) -> Self {
        self.open = d;
        self
    }
    /// With this time for an answer.
    pub fn with_answer(mut self, d: Duration) -> Self {
        self.answer = d;
        self
    }
    /// With this time for an event the sequence waits for.
    pub fn with_event(mut self, d: Duration) -> Self {
        self.event = d;
        self
    }
    /// With this time for a media call and the remote track.
    pub fn with_media(mut self, d: Duration) -> Self {
        self.media = d;
        self
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            open: Duration::from_secs(5),
            answer: Duration::from_secs(5),
            event: Duration::from_secs(5),
            media: Duration::from_secs(10),
        }
    }
}

/// Events the sequence waits for, and so keeps when they come early.
const SEQUENCE_EVENTS: [&str; 2] = [wire::ServDesc::EVENT, wire::ServUfrag::EVENT];
/// The event that ends a party's media session.
pub const DISCONNECTED: &str = "conf.webrtc.Disconnected";
/// Events read during the steps kept for the call's event stream; past that the oldest go.
const EARLY_KEPT: usize = 1024;

/// The roster, shared by the session that keeps it and the call that shows it.
pub(crate) type SharedRoster = Arc<Mutex<Roster>>;

/// Locks the roster (a panic elsewhere cannot leave it half-applied: `apply` does not panic).
pub(crate) fn lock(r: &SharedRoster) -> std::sync::MutexGuard<'_, Roster> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// A signaling session: one WebSocket (or other transport) to the core.
pub struct Session {
    transport: Pin<Box<dyn Transport>>,
    next_seq: u64,
    /// Sequence events that arrived before their step, with the step they arrived in.
    kept: VecDeque<(u8, Event)>,
    /// Sequence events already used in the current media session.
    used: HashSet<String>,
    own_party: Option<PartyId>,
    closed: Option<String>,
    transcript: Transcript,
    timeouts: Timeouts,
    host: Option<String>,
    /// The roster, from `cd.load` on.
    roster: Option<SharedRoster>,
    /// What the application will be told when the call starts: read during the steps.
    early: VecDeque<CallEvent>,
    /// How many of those were dropped to keep `early` bounded.
    early_missed: u64,
    /// How to open another session like this one (for a resume).
    pub(crate) reopen: Option<Reopen>,
    /// The login, kept for a resume.
    credentials: Option<Credentials>,
    /// The account logged in as.
    account: Option<Account>,
    /// When the transport last gave anything (a frame, a ping, a pong).
    last_read: Instant,
    /// Whether the transport turns [`KEEPALIVE`] into a ping (a WebSocket does).
    pings: bool,
    /// How a call on this session reconnects.
    pub(crate) reconnect: ReconnectPolicy,
}

impl Session {
    /// Opens a WebSocket to `url` (`ws://HOST:PORT/ws`, or `wss://` with the system's roots)
    /// offering the `PalladaWSData` sub-protocol.
    pub async fn connect(url: &str) -> Result<Session> {
        Self::connect_with_options(url, &ConnectOptions::default()).await
    }

    /// [`Session::connect`] with chosen timeouts.
    pub async fn connect_with(url: &str, timeouts: Timeouts) -> Result<Session> {
        Self::connect_with_options(url, &ConnectOptions::default().with_timeouts(timeouts)).await
    }

    /// [`Session::connect`] with chosen timeouts and, for `wss://`, the roots to trust
    /// ([`ConnectOptions`]). A certificate the roots do not vouch for fails at
    /// [`Stage::Open`] with rustls's reason.
    pub async fn connect_with_options(url: &str, options: &ConnectOptions) -> Result<Session> {
        let mut session = Self::open(url, options).await?;
        session.reopen = Some(reopener(url.to_owned(), options.clone()));
        Ok(session)
    }

    async fn open(url: &str, options: &ConnectOptions) -> Result<Session> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;

        let (err, timeouts) = (|cause| Error::new(Stage::Open, cause), options.timeouts);
        let mut request = url.into_client_request().map_err(|e| err(Cause::Invalid { reason: format!("url {url:?}: {e}") }))?;
        let host = request.uri().host().map(|h| h.trim_matches(|c| c == '[' || c == ']').to_owned());
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(wire::SUBPROTOCOL));
        let opening = async {
            match request.uri().scheme_str() {
                #[cfg(feature = "tls")]
                Some("wss") => crate::tls::open(request, &options.tls).await.map(|ws| Session::over(websocket_transport(ws), timeouts).pinging().with_reconnect(options.reconnect)),
                #[cfg(not(feature = "tls"))]
                Some("wss") => Err(crate::connect::NO_TLS.to_owned()),
                _ => tokio_tungstenite::connect_async(request)
                    .await
                    .map(|(ws, _response)| Session::over(websocket_transport(ws), timeouts).pinging().with_reconnect(options.reconnect))
                    .map_err(|e| format!("{url}: {e}")),
            }
        };
        let mut session = tokio::time::timeout(timeouts.open, opening)
            .await
            .map_err(|_| err(Cause::TimedOut { waiting_for: format!("the WebSocket {url}"), after: timeouts.open }))?
            .map_err(|reason| err(Cause::transport_text(reason)))?;
        session.host = host;
        session.transcript.record(0, Side::Ws, What::Call { name: "open".into(), detail: url.to_owned() });
        Ok(session)
    }

    /// Gives a session made by [`Session::over`] a way to open another like it, so that the
    /// party can be resumed ([`crate::Resume`]); a session from [`Session::connect`] opens the
    /// same URL with the same options by itself.
    pub fn with_reopen(
        mut self,
        reopen: impl Fn() -> futures::future::BoxFuture<'static, Result<Session>> + Send + Sync + 'static,
    ) -> Self {
        self.reopen = Some(Arc::new(reopen));
        self
    }

    /// With this reconnection policy for its calls (by default they reconnect, see
    /// [`crate::reconnect`]).
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Marks the transport as one that turns [`KEEPALIVE`] into a ping.
    fn pinging(mut self) -> Self {
        self.pings = true;
        self
    }

    /// A session over any transport of text frames.
    pub fn over(transport: impl Transport + 'static, timeouts: Timeouts) -> Session {
        Session {
            transport: Box::pin(transport),
            next_seq: 1,
            kept: VecDeque::new(),
            used: HashSet::new(),
            own_party: None,
            closed: None,
            transcript: Transcript::new(),
            timeouts,
            host: None,
            roster: None,
            early: VecDeque::new(),
            early_missed: 0,
            reopen: None,
            credentials: None,
            account: None,
            last_read: Instant::now(),
            pings: false,
            reconnect: ReconnectPolicy::default(),
        }
    }

    /// Sets the host used for the core's candidate when `servufrag` has no `addr`.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The host of the WebSocket URL, if known.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// A handle to this session's transcript.
    pub fn transcript(&self) -> Transcript {
        self.transcript.clone()
    }

    /// Records into `t` from now on, with what this session recorded so far moved into it (in
    /// time order after `t`'s own): a reconnection's session continues the call's record.
    pub(crate) fn adopt_transcript(&mut self, t: Transcript) {
        t.absorb(&self.transcript);
        self.transcript = t;
    }

    /// The session's timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends a command and waits for its answer (any code). Frames on the way are routed.
    pub async fn request(&mut self, stage: Stage, cmd: Command) -> Result<Answer> {
        let seq = self.send(stage, cmd.clone(), true).await?;
        self.answer(stage, seq, &cmd.cmd).await
    }

    /// Logs in with the `q_cplxLogin` query (PROTOCOL §7), for a core with accounts; then
    /// [`LoggedIn::load`]. A `RETCODE` that is not a login (2, 3, 12) fails at
    /// [`Stage::Login`] with [`Cause::LoginFailed`] naming it and its meaning, and how the core
    /// closed the socket when that was seen; a negative answer to the query is
    /// [`Cause::Refused`]. The session is closed after a failure. The password goes on the
    /// wire once and nowhere else: the transcript shows [`wire::login::REDACTED`].
    pub async fn login(mut self, user: &str, password: impl Into<Password>) -> Result<LoggedIn> {
        let password = password.into();
        match self.login_inner(user, &password).await {
            Ok(account) => {
                self.credentials = Some(Credentials { user: user.to_owned(), password });
                self.account = Some(account.clone());
                Ok(LoggedIn { session: self, account })
            }
            Err(e) => {
                self.transcript.record(0, Side::Local, What::Failed { error: e.to_string() });
                self.close().await;
                Err(e)
            }
        }
    }

    async fn login_inner(&mut self, user: &str, password: &Password) -> Result<Account> {
        let stage = Stage::Login;
        let answer = self.request(stage, Command::login(user, password.expose())).await?;
        if let Some(refusal) = answer.refusal(&[wire::code::OK]) {
            return Err(Error::new(stage, Cause::Refused(refusal)));
        }
        let login = LoginAnswer::from_answer(&answer).map_err(|e| Error::new(stage, Cause::Malformed(e)))?;
        match Role::from_retcode(login.retcode) {
            Some(role) => Ok(Account { login: user.to_owned(), role, name: login.name }),
            None => {
                let closed = self.close_seen(stage).await;
                Err(login::failed(login.retcode, closed))
            }
        }
    }

    /// After a failed login the core closes the socket: waits a little for that, and says how.
    async fn close_seen(&mut self, stage: Stage) -> Option<String> {
        let after = self.timeouts.answer.min(Duration::from_secs(2));
        let deadline = Instant::now() + after;
        loop {
            match self.read_raw(stage, deadline, "the close after a failed login", after).await {
                Ok((frame, _)) => self.record_received(stage, frame, Routing::Stale),
                Err(_) => return self.closed.clone(),
            }
        }
    }

    /// The account this session logged in as, if it did.
    pub fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// `cd.load`: loads (or joins) the conference `scheme` and returns the session's own party,
    /// with the conference's roster from the answer's `parties`.
    pub async fn load(self, cluster: ClusterId, scheme: SchemeId, name: &str) -> Result<Party> {
        self.load_with(cluster, scheme, name, None).await
    }

    /// `cd.load`, with `ResumeToken` when coming back.
    pub(crate) async fn load_with(
        mut self,
        cluster: ClusterId,
        scheme: SchemeId,
        name: &str,
        token: Option<&ResumeToken>,
    ) -> Result<Party> {
        if let Some(t) = token {
            self.transcript.redact(t.as_str(), "resume-token");
        }
        let loaded = self.load_inner(cluster, scheme, name, token).await;
        match loaded {
            Ok(answer) => {
                let loaded = answer.loaded.clone();
                self.own_party = Some(loaded.party);
                self.roster = Some(Arc::new(Mutex::new(Roster::new(loaded.conf, &answer.parties))));
                let resume_token = answer.resume_token.map(ResumeToken::new);
                if let Some(t) = &resume_token {
                    self.transcript.redact(t.as_str(), "resume-token");
                }
                Ok(Party { session: self, loaded, scheme, name: name.to_owned(), resume_token })
            }
            Err(e) => {
                self.transcript.record(0, Side::Local, What::Failed { error: e.to_string() });
                self.close().await;
                Err(e)
            }
        }
    }

    async fn load_inner(&mut self, cluster: ClusterId, scheme: SchemeId, name: &str, token: Option<&ResumeToken>) -> Result<LoadAnswer> {
        let mut cmd = Command::new("cd", "load").param("ClusterID", cluster).param("SchemeID", scheme);
        if !name.is_empty() {
            cmd = cmd.param("NAME", name);
        }
        if let Some(t) = token {
            cmd = cmd.param(wire::RESUME_TOKEN, t.as_str());
        }
        let answer = self.request(Stage::Load, cmd).await?;
        let ok = [wire::code::OK, wire::code::LOAD_CONNECTED, wire::code::LOAD_ALREADY_CONNECTED];
        if let Some(refusal) = answer.refusal(&ok) {
            return Err(Error::new(Stage::Load, Cause::Refused(refusal)));
        }
        LoadAnswer::from_answer(&answer, cluster).map_err(|e| Error::new(Stage::Load, Cause::Malformed(e)))
    }

    /// The roster, from `cd.load` on (empty before).
    pub fn roster(&self) -> Roster {
        self.roster.as_ref().map(|r| lock(r).clone()).unwrap_or_default()
    }

    pub(crate) fn shared_roster(&self) -> Option<SharedRoster> {
        self.roster.clone()
    }

    /// What the application is to be told of an event: the roster's changes for a
    /// `conf.changed` of the own conference (applied to the roster now), a chat line, the
    /// clock, or the event itself.
    pub(crate) fn typed(&mut self, e: Event) -> Vec<CallEvent> {
        let conf = self.roster.as_ref().map(|r| lock(r).conf());
        match e.name().as_str() {
            ConfChanged::EVENT => match (&self.roster, ConfChanged::from_event(&e)) {
                (Some(r), Ok(c)) if Some(c.conf) == conf => lock(r).apply(&c).into_iter().map(CallEvent::Roster).collect(),
                (Some(_), Err(w)) => vec![CallEvent::Malformed(w)],
                _ => vec![CallEvent::Core(e)],
            },
            InstantMsg::EVENT => match InstantMsg::from_event(&e) {
                Ok(m) if Some(m.conf) == conf || conf.is_none() => vec![CallEvent::Chat(ChatMessage::from_wire(m))],
                Ok(_) => vec![CallEvent::Core(e)],
                Err(w) => vec![CallEvent::Malformed(w)],
            },
            TimerTime::EVENT => match TimerTime::from_event(&e) {
                Ok(t) => vec![CallEvent::Clock { unix: t.t }],
                Err(w) => vec![CallEvent::Malformed(w)],
            },
            _ => vec![CallEvent::Core(e)],
        }
    }

    /// Keeps what an event read during the steps means, for the call's event stream.
    fn keep_early(&mut self, e: Event) {
        for ce in self.typed(e) {
            if self.early.len() == EARLY_KEPT {
                self.early.pop_front();
                self.early_missed += 1;
            }
            self.early.push_back(ce);
        }
    }

    /// What was read during the steps, to be told first when the call starts.
    pub(crate) fn take_early(&mut self) -> Vec<CallEvent> {
        let mut out = Vec::with_capacity(self.early.len() + 1);
        if self.early_missed > 0 {
            out.push(CallEvent::Lagged { missed: std::mem::take(&mut self.early_missed) });
        }
        out.extend(self.early.drain(..));
        out
    }

    /// Sends a command; `seq` is allocated unless `want_answer` is false (then `seq` is 0).
    pub(crate) async fn send(&mut self, stage: Stage, mut cmd: Command, want_answer: bool) -> Result<u64> {
        let step = stage.transcript_step();
        if let Some(reason) = &self.closed {
            return Err(Error::new(stage, Cause::Disconnected { reason: reason.clone() }));
        }
        cmd.seq = if want_answer {
            let s = self.next_seq;
            self.next_seq += 1;
            s
        } else {
            0
        };
        if cmd.cmd == "CALLME_S1" {
            // A new media session: its events may come again.
            self.used.clear();
            self.kept.clear();
        }
        // The login's password is on the wire only, never in the transcript.
        self.transcript.record(step, Side::Ws, What::Sent { frame: cmd.to_shown_frame() });
        let frame = cmd.to_frame();
        self.transport.send(frame).await.map_err(|reason| Error::new(stage, Cause::transport_text(reason)))?;
        Ok(cmd.seq)
    }

    /// Best-effort send that records but never fails (for the clean-up after a failure).
    pub(crate) async fn send_quietly(&mut self, stage: Stage, cmd: Command) {
        if self.closed.is_none() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.send(stage, cmd, false)).await;
        }
    }

    /// Waits for the answer with this `seq`.
    pub(crate) async fn answer(&mut self, stage: Stage, seq: u64, cmd: &str) -> Result<Answer> {
        let deadline = Instant::now() + self.timeouts.answer;
        let waiting_for = format!("the answer to {cmd} (seq {seq})");
        loop {
            let (frame, incoming) = self.read(stage, deadline, &waiting_for, self.timeouts.answer).await?;
            match incoming {
                Incoming::Answer(a) if a.seq == seq => {
                    self.record_received(stage, frame, Routing::Answer);
                    return Ok(a);
                }
                Incoming::Answer(_) => self.record_received(stage, frame, Routing::Stale),
                Incoming::Event(e) => {
                    self.route_event(stage, frame, e, None)?;
                }
            }
        }
    }

    /// Waits for the event `name` addressed to the own party (or kept from an earlier step).
    pub(crate) async fn event(&mut self, stage: Stage, name: &str) -> Result<Event> {
        if let Some(i) = self.kept.iter().position(|(_, e)| e.name() == name) {
            let (from_step, e) = self.kept.remove(i).expect("position is in range");
            self.used.insert(name.to_owned());
            self.transcript.record(stage.transcript_step(), Side::Ws, What::Kept { name: name.to_owned(), from_step });
            return Ok(e);
        }
        let deadline = Instant::now() + self.timeouts.event;
        let waiting_for = format!("the event {name}");
        loop {
            let (frame, incoming) = self.read(stage, deadline, &waiting_for, self.timeouts.event).await?;
            match incoming {
                Incoming::Answer(_) => self.record_received(stage, frame, Routing::Stale),
                Incoming::Event(e) => {
                    if let Some(e) = self.route_event(stage, frame, e, Some(name))? {
                        return Ok(e);
                    }
                }
            }
        }
    }

    /// Reads and routes frames until the core ends the media session or the socket closes, and
    /// returns that as the error. For a step that waits on the media (step 18): raced against
    /// the media wait, it turns a `Disconnected` into a precise failure instead of a timeout.
    pub(crate) async fn until_ended(&mut self, stage: Stage) -> Error {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            let (frame, incoming) = match self.read(stage, far, "the end of the session", Duration::MAX).await {
                Ok(x) => x,
                Err(e) => return e,
            };
            match incoming {
                Incoming::Answer(_) => self.record_received(stage, frame, Routing::Stale),
                Incoming::Event(e) => {
                    if let Err(e) = self.route_event(stage, frame, e, None) {
                        return e;
                    }
                }
            }
        }
    }

    /// Routes an event read while waiting for `wanted` (or for an answer when `None`). Returns the
    /// event if it is the wanted one; fails on `Disconnected`.
    fn route_event(&mut self, stage: Stage, frame: String, e: Event, wanted: Option<&str>) -> Result<Option<Event>> {
        let name = e.name();
        if !self.is_own(&e) {
            self.record_received(stage, frame, Routing::OtherParty);
            return Ok(None);
        }
        if name == DISCONNECTED {
            self.record_received(stage, frame, Routing::Fatal);
            return Err(disconnected(stage, &e));
        }
        if wanted == Some(name.as_str()) {
            if self.used.insert(name) {
                self.record_received(stage, frame, Routing::Event);
                return Ok(Some(e));
            }
            self.record_received(stage, frame, Routing::Duplicate);
            return Ok(None);
        }
        if SEQUENCE_EVENTS.contains(&name.as_str()) {
            if self.used.contains(&name) || self.kept.iter().any(|(_, k)| k.name() == name) {
                self.record_received(stage, frame, Routing::Duplicate);
            } else {
                self.record_received(stage, frame, Routing::Early);
                self.kept.push_back((stage.transcript_step(), e));
            }
            return Ok(None);
        }
        self.record_received(stage, frame, Routing::Unrelated);
        self.keep_early(e);
        Ok(None)
    }

    fn is_own(&self, e: &Event) -> bool {
        match (e.party(), self.own_party) {
            (Some(p), Some(own)) => p == own,
            _ => true,
        }
    }

    fn record_received(&self, stage: Stage, frame: String, routing: Routing) {
        self.transcript.record(stage.transcript_step(), Side::Ws, What::Received { frame, routing });
    }

    /// Reads and parses the next frame before `deadline`; a frame that cannot be read ends the
    /// wait (recorded as fatal).
    async fn read(&mut self, stage: Stage, deadline: Instant, waiting_for: &str, after: Duration) -> Result<(String, Incoming)> {
        let (frame, parsed) = self.read_raw(stage, deadline, waiting_for, after).await?;
        match parsed {
            Ok(incoming) => Ok((frame, incoming)),
            Err(e) => {
                self.record_received(stage, frame, Routing::Fatal);
                Err(Error::new(stage, Cause::Malformed(e)))
            }
        }
    }

    /// Reads the next frame before `deadline`; the error is for a closed socket or the deadline,
    /// the inner result is the parse.
    async fn read_raw(
        &mut self,
        stage: Stage,
        deadline: Instant,
        waiting_for: &str,
        after: Duration,
    ) -> Result<(String, std::result::Result<Incoming, WireError>)> {
        if let Some(reason) = &self.closed {
            return Err(Error::new(stage, Cause::Disconnected { reason: reason.clone() }));
        }
        let inbound = loop {
            let next = tokio::time::timeout_at(deadline, self.transport.next()).await;
            self.last_read = Instant::now();
            match next {
                Err(_) => return Err(Error::new(stage, Cause::TimedOut { waiting_for: waiting_for.to_owned(), after })),
                Ok(None) => break Inbound::Closed { reason: "the connection ended".into() },
                Ok(Some(Inbound::Alive)) => continue,
                Ok(Some(i)) => break i,
            }
        };
        match inbound {
            Inbound::Closed { reason } => {
                self.transcript.record(stage.transcript_step(), Side::Ws, What::Closed { reason: reason.clone() });
                self.closed = Some(reason.clone());
                Err(Error::new(stage, Cause::Disconnected { reason: format!("the WebSocket closed ({reason})") }))
            }
            Inbound::Text(frame) => {
                let parsed = Incoming::parse(&frame);
                Ok((frame, parsed))
            }
            Inbound::Alive => unreachable!("passed over above"),
        }
    }

    /// Whether the transport pings (so [`Session::silent_for`] tells a dead connection).
    pub(crate) fn pings(&self) -> bool {
        self.pings
    }

    /// How long the transport has given nothing at all (no frame, ping or pong).
    pub(crate) fn silent_for(&self) -> Duration {
        self.last_read.elapsed()
    }

    /// Asks the transport to show the connection is alive (a WebSocket ping, answered by a
    /// pong); nothing for a transport that cannot. Not recorded: it is not a frame of the
    /// protocol.
    pub(crate) async fn keepalive(&mut self) {
        if self.pings && self.closed.is_none() {
            let _ = self.transport.send(KEEPALIVE.to_owned()).await;
        }
    }

    /// Reads the next thing that matters in the call (step 20): an event for the application,
    /// an answer to an in-call command, a frame that could not be read (the call goes on), or
    /// the end. Events for other parties and duplicates of the sequence's events are recorded
    /// and passed over. Cancel-safe: a frame is either wholly handled or not read.
    pub(crate) async fn next_in_call(&mut self) -> InCall {
        let stage = Stage::InCall;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            let (frame, parsed) = match self.read_raw(stage, far, "an event", Duration::MAX).await {
                Ok(x) => x,
                Err(e) => return InCall::Ended(e, End::Socket),
            };
            let e = match parsed {
                Ok(Incoming::Answer(a)) => {
                    self.record_received(stage, frame, Routing::Answer);
                    return InCall::Answer(a);
                }
                Ok(Incoming::Event(e)) => e,
                Err(w) => {
                    self.record_received(stage, frame, Routing::Malformed);
                    return InCall::Malformed(w);
                }
            };
            let name = e.name();
            if !self.is_own(&e) {
                self.record_received(stage, frame, Routing::OtherParty);
                continue;
            }
            if SEQUENCE_EVENTS.contains(&name.as_str()) && self.used.contains(&name) {
                self.record_received(stage, frame, Routing::Duplicate);
                continue;
            }
            if name == DISCONNECTED {
                self.record_received(stage, frame, Routing::Fatal);
                let end = match crate::wire::Disconnected::from_event(&e) {
                    Ok(d) if d.final_ => End::Final,
                    _ => End::Transient,
                };
                return InCall::Ended(disconnected(stage, &e), end);
            }
            self.record_received(stage, frame, Routing::Event);
            let typed = self.typed(e.clone());
            return InCall::Event(e, typed);
        }
    }

    /// Waits for the next event for this session's party or its conference (for an application
    /// that drives the session by hand; a [`crate::Connected`] reads its session itself). A
    /// `conf.changed` of its conference is applied to the roster on the way.
    /// `conf.webrtc.Disconnected` for the own party, a closed socket and a frame that cannot be
    /// read come back as errors; answers to no pending command are passed over.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            match self.next_in_call().await {
                InCall::Event(e, _) => return Ok(e),
                InCall::Answer(_) => continue,
                InCall::Malformed(w) => return Err(Error::new(Stage::InCall, Cause::Malformed(w))),
                InCall::Ended(e, _) => return Err(e),
            }
        }
    }

    /// Whether the WebSocket is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Closes the transport (best effort).
    pub async fn close(&mut self) {
        if self.closed.is_none() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.transport.close()).await;
            self.closed = Some("closed by us".into());
        }
    }
}

/// What the session reads in the call.
pub(crate) enum InCall {
    /// An event for the application: the own party's, or the conference's; as read, and what
    /// it means (roster changes already applied).
    Event(Event, Vec<CallEvent>),
    /// An answer to a command sent in the call.
    Answer(Answer),
    /// A frame that could not be read; recorded, and the call goes on.
    Malformed(WireError),
    /// The end: `conf.webrtc.Disconnected` for the own party, or the socket closed.
    Ended(Error, End),
}

/// How the session's part of a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The WebSocket closed.
    Socket,
    /// `conf.webrtc.Disconnected`, transient: the party may come back.
    Transient,
    /// `conf.webrtc.Disconnected` with `final`: the party was removed.
    Final,
}

/// The error for `conf.webrtc.Disconnected`, with the core's reason when it gives one.
fn disconnected(stage: Stage, e: &Event) -> Error {
    let reason = match e.result.get("reason").and_then(serde_json::Value::as_str) {
        Some(r) => format!("the core sent conf.webrtc.Disconnected: {r}"),
        None => "the core sent conf.webrtc.Disconnected".to_owned(),
    };
    Error::new(stage, Cause::Disconnected { reason })
}

/// The session's own party in a running conference, after `cd.load`, and the conference's
/// roster. It has no `login`: a session logs in before it loads ([`Session::login`]).
///
/// ```compile_fail,E0599
/// # async fn f(party: callme::Party) {
/// let logged_in = party.login("alice", "secret").await; // Party has no login: log in first
/// # }
/// ```
pub struct Party {
    pub(crate) session: Session,
    pub(crate) loaded: Loaded,
    pub(crate) scheme: SchemeId,
    pub(crate) name: String,
    pub(crate) resume_token: Option<ResumeToken>,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party").field("loaded", &self.loaded).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Party {
    /// One's own party (`SVPartyID`).
    pub fn id(&self) -> PartyId {
        self.loaded.party
    }
    /// What `cd.load` said.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }
    /// The conference's parties now: the `cd.load` answer's, with every `conf.changed` read
    /// since applied.
    pub fn roster(&self) -> Roster {
        self.session.roster()
    }
    /// The `ResumeToken` the core gave, if it gives one.
    pub fn resume_token(&self) -> Option<&ResumeToken> {
        self.resume_token.as_ref()
    }
    /// The account the session logged in as, if it did.
    pub fn account(&self) -> Option<&Account> {
        self.session.account()
    }
    /// What a new session needs to come back as this party ([`Resume::connect`]).
    pub fn resumer(&self) -> Resume {
        Resume {
            reopen: self.session.reopen.clone(),
            credentials: self.session.credentials.clone(),
            cluster: self.loaded.cluster,
            scheme: self.scheme,
            name: self.name.clone(),
            token: self.resume_token.clone(),
            party: self.loaded.party,
        }
    }
    /// The session's transcript.
    pub fn transcript(&self) -> Transcript {
        self.session.transcript()
    }
    /// The session, for commands of one's own between steps.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
    /// The params every CALLME command carries: `ClusterID`, `ID`, `PartyID`.
    pub(crate) fn callme(&self, cmd: &str) -> Command {
        Command::new("conf", cmd).param("ClusterID", self.loaded.cluster).param("ID", self.loaded.conf).param("PartyID", self.loaded.party)
    }
}

/// Opens a session to the same URL with the same options (the resume's reopen sets itself on
/// the new session).
fn reopener(url: String, options: ConnectOptions) -> Reopen {
    Arc::new(move || {
        let (url, options) = (url.clone(), options.clone());
        Box::pin(async move { Session::open(&url, &options).await })
    })
}

/// A tokio-tungstenite WebSocket as a [`Transport`].
fn websocket_transport<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> impl Transport
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Message;
    let (sink, stream) = ws.split();
    let sink = sink.sink_map_err(|e| e.to_string()).with(|text: String| {
        let m = if text == KEEPALIVE { Message::Ping(b"callme".to_vec().into()) } else { Message::text(text) };
        futures::future::ready(Ok::<_, String>(m))
    });
    let mut ended = false;
    let stream = stream
        .map(|m| match m {
            Ok(Message::Text(t)) => Some(Inbound::Text(t.to_string())),
            Ok(Message::Binary(b)) => Some(Inbound::Text(String::from_utf8_lossy(&b).into_owned())),
            Ok(Message::Close(frame)) => Some(Inbound::Closed {
                reason: match frame {
                    Some(f) => format!("close code {} {}", u16::from(f.code), f.reason),
                    None => "close frame without code".into(),
                },
            }),
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(Inbound::Alive),
            Ok(_) => None,
            Err(e) => Some(Inbound::Closed { reason: e.to_string() }),
        })
        .filter_map(futures::future::ready)
        .take_while(move |i| {
            let go = !ended;
            ended |= matches!(i, Inbound::Closed { .. });
            futures::future::ready(go)
        });
    Joined { sink: Box::pin(sink), stream: Box::pin(stream) }
}

/// A sink and a stream as one transport.
struct Joined<K, S> {
    sink: Pin<Box<K>>,
    stream: Pin<Box<S>>,
}

impl<K: Sink<String, Error = String>, S> Sink<String> for Joined<K, S> {
    type Error = String;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), String>> {
        self.sink.as_mut().poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: String) -> Result<(), String> {
        self.sink.as_mut().start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), String>> {
        self.sink.as_mut().poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), String>> {
        self.sink.as_mut().poll_close(cx)
    }
}

impl<K, S: Stream<Item = Inbound>> Stream for Joined<K, S> {
    type Item = Inbound;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Inbound>> {
        self.stream.as_mut().poll_next(cx)
    }
}
