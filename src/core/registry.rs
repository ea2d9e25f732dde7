//! The registry of the reference core: sessions, conferences, parties, who owns what, the roster
//! and its `conf.changed`.
//!
//! Plain code: no sockets, no tasks, no locks, no clock (the time is an argument). Every input is
//! a `handle_*` method that returns the [`Effect`]s the shell carries out, in order: frames to
//! send, sessions to close, mixers to start and end, media to start and stop. The registry holds
//! no mixer and no media object; it knows only each party's media state and its generation (a
//! number that changes with every CALLME_S1, so a late report about replaced media is ignored).
//!
//! ```text
//! shell ── handle_session_opened / handle_frame / handle_media_started / handle_media_ended /
//!          handle_login_checked / handle_talking / handle_tick / handle_session_closed
//!          ──▶ Registry ──▶ Vec<Effect> ──▶ shell (frames, mixers, media, password checks)
//! ```
//!
//! Logins (PROTOCOL.md §7): with accounts, nothing but the login query is served before a
//! login; the password is checked by the shell off its lock ([`Effect::CheckLogin`]) and the
//! outcome comes back by [`Registry::handle_login_checked`]. Failed logins are counted per IP
//! address, and answers to an address with many are delayed. Resume (§10): a party whose session
//! closes without `CALLME_BYE` is kept for `resume_grace_ms` and can be taken by a `cd.load`
//! with its `ResumeToken`, from a closed session or one still open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use super::accounts::Credential;
use super::party_media::offer_from_params;
use super::turn;
use super::{CoreConfig, TurnConfig};
use crate::media::sdp::OfferFacts;
use crate::wire::{
    class, close, code, login, retcode, Answer, ClusterId, Command, CommandLimits, ConfChanged, ConfEntry, ConfId, Disconnected, Incoming,
    InstantMsg, LoadAnswer, LoadList, Loaded, LoginAnswer, PartyData, PartyGone, PartyId, PartyRef, Refusal, SchemeId, ServDesc, ServUfrag,
    MAX_MSG_CHARS, RESUME_TOKEN,
};

/// The longest `sLogin`, in characters.
pub const MAX_LOGIN_CHARS: usize = 256;
/// The longest `sPassword`, in characters.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// The longest `color` of `INSTANTMSG`, in characters.
pub const MAX_COLOR_CHARS: usize = 32;
/// The longest `ResumeToken` a `cd.load` may give, in characters.
pub const MAX_TOKEN_CHARS: usize = 128;
/// Addresses whose failed logins are remembered at most (the oldest are forgotten first).
const MAX_THROTTLED_ADDRESSES: usize = 10_000;

/// One WebSocket session, numbered by the shell in the order they open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the registry decides by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The command reader's limits.
    pub limits: CommandLimits,
    /// Refusals a session may earn before it is closed with 1008.
    pub max_errors: u32,
    /// Sessions open at once; one more is closed with 1013.
    pub max_sessions: usize,
    /// Conferences one session may start (that are still running).
    pub max_conferences_per_session: usize,
    /// The longest display name (`NAME` of `cd.load`), in characters.
    pub max_name_len: usize,
    /// TURN for `servdesc`, minted per party.
    pub turn: Option<TurnConfig>,
    /// STUN for `servdesc` when there is no TURN.
    pub stun: Option<String>,
    /// The accounts; none: open mode (no login needed).
    pub accounts: Vec<AccountEntry>,
    /// How long a party whose session closed without `CALLME_BYE` is kept, in milliseconds.
    pub resume_grace_ms: u64,
    /// Failed logins from one address within the window after which answers are delayed.
    pub throttle_failures: u32,
    /// The window of counted failures, in milliseconds.
    pub throttle_window_ms: u64,
    /// The first delay, doubled with each further failure, in milliseconds.
    pub throttle_delay_ms: u64,
    /// The longest delay, in milliseconds.
    pub throttle_max_delay_ms: u64,
}

/// An account as the registry uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    /// `sLogin`.
    pub login: String,
    /// How the password is checked (by the shell, outside the lock).
    pub credential: Credential,
    /// Admin: controls conferences.
    pub control: bool,
    /// The display name.
    pub name: String,
}

/// A password on its way to the check: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The password itself, for the check only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl RegistryConfig {
    /// The registry's part of the core's configuration.
    pub fn from_core(c: &CoreConfig) -> Self {
        RegistryConfig {
            limits: CommandLimits { max_frame_bytes: c.max_frame_bytes },
            max_errors: c.max_errors,
            max_sessions: c.max_sessions,
            max_conferences_per_session: c.max_conferences_per_session,
            max_name_len: c.max_name_len,
            turn: c.turn.clone(),
            stun: c.stun.clone(),
            accounts: c
                .accounts
                .iter()
                .filter_map(|a| {
                    let credential = a.credential().ok()?;
                    let control = a.role().ok()?.is_control();
                    Some(AccountEntry { login: a.login.clone(), credential, control, name: a.name.clone() })
                })
                .collect(),
            resume_grace_ms: c.resume_grace_ms,
            throttle_failures: c.login_throttle_failures,
            throttle_window_ms: c.login_throttle_window_ms,
            throttle_delay_ms: c.login_throttle_delay_ms,
            throttle_max_delay_ms: c.login_throttle_max_delay_ms,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self::from_core(&CoreConfig::default())
    }
}

/// What the shell is to do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this frame to the session (dropped if the session is gone).
    Send {
        /// The addressee.
        session: SessionId,
        /// The answer or event.
        frame: Incoming,
    },
    /// Close the session's WebSocket with this code and reason.
    Close {
        /// The session.
        session: SessionId,
        /// RFC 6455 close code ([`crate::wire::close`]).
        code: u16,
        /// A sentence for the close frame.
        reason: String,
    },
    /// A conference started: give it a mixer.
    ConferenceStarted {
        /// The conference.
        conf: ConfId,
    },
    /// A conference ended (its last party left): end its mixer.
    ConferenceEnded {
        /// The conference.
        conf: ConfId,
    },
    /// Start the party's media from its offer; report the outcome with
    /// [`Registry::handle_media_started`], and its end with [`Registry::handle_media_ended`].
    StartMedia {
        /// The party's conference (whose mixer it joins).
        conf: ConfId,
        /// The party.
        party: PartyId,
        /// The media generation to report back.
        generation: u64,
        /// The client's offer, from CALLME_S2.
        offer: OfferFacts,
    },
    /// Take the party out of its conference's mixer and close any media it has.
    StopMedia {
        /// The party's conference.
        conf: ConfId,
        /// The party.
        party: PartyId,
    },
    /// The party's microphone on or off in its conference's mixer (`SETMIC`).
    SetMic {
        /// The party's conference.
        conf: ConfId,
        /// The party.
        party: PartyId,
        /// On: mixed; off: out of every mix.
        on: bool,
    },
    /// Check a login's password (off the lock: it may take tens of milliseconds), after
    /// waiting `delay_ms` (the throttle of an address with failed logins), then report with
    /// [`Registry::handle_login_checked`].
    CheckLogin {
        /// The session logging in.
        session: SessionId,
        /// The account's credential; `None`: no such login (spend the time of a check and fail).
        credential: Option<Credential>,
        /// The password given.
        password: Secret,
        /// Wait this long before the check, in milliseconds.
        delay_ms: u64,
    },
}

/// Counts of what the registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Open sessions.
    pub sessions: usize,
    /// Running conferences.
    pub conferences: usize,
    /// Loaded parties.
    pub parties: usize,
    /// Parties whose media runs.
    pub parties_with_media: usize,
}

#[derive(Debug, Default)]
struct SessionRec {
    /// Refusals earned.
    errors: u32,
    /// The parties it holds.
    parties: BTreeSet<(ConfId, PartyId)>,
    /// Running conferences it started.
    started: usize,
    /// A close was decided: nothing more is handled for it.
    closing: bool,
    /// The address it came from (failed logins are counted by it).
    ip: Option<IpAddr>,
    /// Where its login stands.
    login: LoginState,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum LoginState {
    #[default]
    None,
    /// The password is being checked; the answer goes to this command (its password removed).
    Checking {
        answer_to: Command,
        login: String,
        account: Option<usize>,
    },
    In {
        control: bool,
        name: String,
    },
}

impl SessionRec {
    fn is_control(&self) -> bool {
        matches!(self.login, LoginState::In { control: true, .. })
    }

    fn is_logged_in(&self) -> bool {
        matches!(self.login, LoginState::In { .. })
    }
}

#[derive(Debug)]
struct Conf {
    id: ConfId,
    cluster: ClusterId,
    scheme: SchemeId,
    starter: SessionId,
    next_index: u64,
    parties: BTreeMap<PartyId, PartyRec>,
}

#[derive(Debug)]
struct PartyRec {
    id: PartyId,
    index: u64,
    name: String,
    /// The session holding it (a closed one while it is kept for a resume).
    session: SessionId,
    media: MediaState,
    mic_on: bool,
    talking: bool,
    /// `CALLME_BYE` was the last media command: its session's close frees it at once.
    bye: bool,
    /// What a `cd.load` gives to come back as this party.
    token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaState {
    None,
    /// CALLME_S1 accepted; waiting for CALLME_S2.
    Offered {
        generation: u64,
    },
    /// CALLME_S2 accepted; the shell is starting the media.
    Starting {
        generation: u64,
    },
    Running {
        generation: u64,
    },
}

impl MediaState {
    fn is_running(self) -> bool {
        matches!(self, MediaState::Running { .. })
    }
}

impl PartyRec {
    fn data(&self) -> PartyData {
        let state = if self.media.is_running() { PartyData::CONNECTED } else { PartyData::LOADED };
        PartyData { state, mic_on: self.mic_on, talking: self.talking, ..PartyData::new(self.id, self.index, &self.name) }
    }
}

/// The registry; see the module documentation.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    sessions: BTreeMap<SessionId, SessionRec>,
    confs: BTreeMap<ConfId, Conf>,
    by_scheme: HashMap<(ClusterId, SchemeId), ConfId>,
    /// CALLME_S2 commands whose media is being started, by party and generation.
    pending_s2: HashMap<(PartyId, u64), (SessionId, Command)>,
    next_conf: u64,
    next_party: u64,
    next_generation: u64,
    /// Each party's resume token.
    tokens: HashMap<String, (ConfId, PartyId)>,
    /// Parties kept for a resume, with the time (ms) they are removed at.
    kept: BTreeMap<(ConfId, PartyId), u64>,
    /// Failed logins by address: their times (unix seconds).
    failures: HashMap<IpAddr, Vec<u64>>,
    new_token: TokenSource,
}

/// Where resume tokens come from: random by default, a fixed sequence in tests.
pub struct TokenSource(Box<dyn FnMut() -> String + Send>);

impl TokenSource {
    /// 32 random characters from the generator webrtc-rs makes ICE credentials with.
    pub fn random() -> Self {
        TokenSource(Box::new(|| webrtc::ice::rand::generate_crypto_random_string(32, TOKEN_RUNES)))
    }

    /// Tokens from `f`.
    #[cfg(test)]
    pub fn from_fn(f: impl FnMut() -> String + Send + 'static) -> Self {
        TokenSource(Box::new(f))
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource")
    }
}

const TOKEN_RUNES: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

type Handled = Result<Vec<Effect>, Refusal>;

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self::with_tokens(config, TokenSource::random())
    }

    /// An empty registry whose resume tokens come from `tokens`.
    pub fn with_tokens(config: RegistryConfig, tokens: TokenSource) -> Self {
        Registry {
            config,
            sessions: BTreeMap::new(),
            confs: BTreeMap::new(),
            by_scheme: HashMap::new(),
            pending_s2: HashMap::new(),
            next_conf: 0,
            next_party: 0,
            next_generation: 0,
            tokens: HashMap::new(),
            kept: BTreeMap::new(),
            failures: HashMap::new(),
            new_token: tokens,
        }
    }

    /// What the registry holds now.
    pub fn stats(&self) -> RegistryStats {
        let parties = self.confs.values().map(|c| c.parties.len()).sum();
        let parties_with_media = self.confs.values().flat_map(|c| c.parties.values()).filter(|p| p.media.is_running()).count();
        RegistryStats { sessions: self.sessions.len(), conferences: self.confs.len(), parties, parties_with_media }
    }

    /// The roster of the running conference `scheme` of `cluster`, ordered by `Index`, as the
    /// clients' `conf.changed` should leave theirs (empty when it is not running).
    pub fn roster(&self, cluster: ClusterId, scheme: SchemeId) -> Vec<PartyData> {
        let Some(c) = self.by_scheme.get(&(cluster, scheme)).and_then(|id| self.confs.get(id)) else { return Vec::new() };
        let mut list: Vec<PartyData> = c.parties.values().map(PartyRec::data).collect();
        list.sort_by_key(|p| p.index);
        list
    }

    /// Whether the session is open here (and not being closed).
    pub fn is_open(&self, session: SessionId) -> bool {
        self.sessions.get(&session).is_some_and(|s| !s.closing)
    }

    /// A WebSocket session opened from `ip`. Above `max_sessions` it is closed at once with
    /// 1013 and not registered.
    pub fn handle_session_opened(&mut self, session: SessionId, ip: Option<IpAddr>) -> Vec<Effect> {
        if self.sessions.len() >= self.config.max_sessions {
            tracing::info!(%session, max_sessions = self.config.max_sessions, "session refused: the core is full");
            let reason = format!("the core serves its maximum of {} sessions: try again later", self.config.max_sessions);
            return vec![Effect::Close { session, code: close::TRY_AGAIN_LATER, reason }];
        }
        self.sessions.insert(session, SessionRec { ip, ..SessionRec::default() });
        tracing::info!(%session, "session opened");
        Vec::new()
    }

    /// A text frame from the session: read, handled, answered.
    pub fn handle_frame(&mut self, session: SessionId, text: &str, now_unix: u64) -> Vec<Effect> {
        if !self.is_open(session) {
            return Vec::new();
        }
        match Command::parse(text, &self.config.limits) {
            Ok(c) => self.handle_command(session, c, now_unix),
            Err(e) => {
                tracing::debug!(%session, error = %e, "bad frame");
                let mut out = vec![Effect::Send { session, frame: e.reply() }];
                self.count_error(session, &mut out);
                out
            }
        }
    }

    /// A command from the session (already read).
    pub fn handle_command(&mut self, session: SessionId, c: Command, now_unix: u64) -> Vec<Effect> {
        if !self.is_open(session) {
            return Vec::new();
        }
        let must_log_in = !self.config.accounts.is_empty() && !self.sessions.get(&session).is_some_and(SessionRec::is_logged_in);
        let result = match (c.obj.as_str(), c.cmd.as_str()) {
            (_, login::CMD) => self.query(session, &c, now_unix),
            ("cd" | "conf", _) if must_log_in => Err(Refusal::new(
                code::LOGIN_REQUIRED,
                class::AUTH,
                format!("cmd {:?}: this core has accounts: log in first with the query {}", c.cmd, login::QUERY),
            )),
            ("cd", "load") => self.load(session, &c),
            ("cd", "loadlist") => self.loadlist(session, &c),
            ("conf", "CALLME_S1") => self.s1(session, &c, now_unix),
            ("conf", "CALLME_S2") => self.s2(session, &c),
            ("conf", "CALLME_BYE") => self.bye(session, &c),
            ("conf", "SETMIC") => self.set_mic(session, &c),
            ("conf", "INSTANTMSG") => self.instant_msg(session, &c, now_unix),
            ("conf", "DELPARTY") => self.del_party(session, &c),
            ("cd" | "conf", other) => Err(Refusal::proto(code::UNKNOWN_CMD, format!("cmd: {other:?} is not a command of obj {:?}", c.obj))),
            (other, _) => Err(Refusal::proto(code::UNKNOWN_OBJ, format!("obj: {other:?} is not known (cd or conf)"))),
        };
        match result {
            Ok(effects) => effects,
            Err(r) => {
                tracing::debug!(%session, cmd = %c.cmd, refusal = %r, "command refused");
                let mut out = vec![Effect::Send { session, frame: reply_refusal(&c, &r) }];
                self.count_error(session, &mut out);
                out
            }
        }
    }

    /// The shell started (or failed to start) the media of [`Effect::StartMedia`]. Returns
    /// whether the shell keeps the media (else it closes it at once), and what follows.
    pub fn handle_media_started(
        &mut self,
        conf: ConfId,
        party: PartyId,
        generation: u64,
        started: Result<ServUfrag, String>,
    ) -> (bool, Vec<Effect>) {
        let pending = self.pending_s2.remove(&(party, generation));
        let mut out = Vec::new();
        let current = self.confs.get_mut(&conf).and_then(|c| c.parties.get_mut(&party));
        let (Some(p), Some((session, c))) = (current, pending.clone()) else {
            // The party left meanwhile.
            if let Some((session, c)) = pending {
                let r = Refusal::new(code::NO_PARTY, class::CONF, format!("party {party} left or reconnected during CALLME_S2"));
                self.send(&mut out, session, reply_refusal(&c, &r));
            }
            out.push(Effect::StopMedia { conf, party });
            return (false, out);
        };
        if p.media != (MediaState::Starting { generation }) {
            // A new CALLME_S1 replaced this media meanwhile.
            let replaced_by_running = p.media.is_running();
            let r = Refusal::new(code::NO_PARTY, class::CONF, format!("party {party} left or reconnected during CALLME_S2"));
            self.send(&mut out, session, reply_refusal(&c, &r));
            if !replaced_by_running {
                out.push(Effect::StopMedia { conf, party });
            }
            return (false, out);
        }
        let _span = tracing::info_span!("party", %conf, id = %party).entered();
        match started {
            Ok(ufrag) => {
                let before = p.data();
                p.media = MediaState::Running { generation };
                let mic_on = p.mic_on;
                let cluster = self.confs[&conf].cluster;
                tracing::info!(generation, "media started");
                if !mic_on {
                    // Before servufrag: no packet of a muted party can reach the mix.
                    out.push(Effect::SetMic { conf, party, on: false });
                }
                if c.seq > 0 {
                    self.send(&mut out, session, Incoming::Answer(Answer::positive(&c)));
                }
                let at = PartyRef { cluster, conf, party };
                self.send(&mut out, session, Incoming::Event(ufrag.to_event(at)));
                self.tell_update(&mut out, conf, party, before);
                (true, out)
            }
            Err(e) => {
                p.media = MediaState::Offered { generation };
                tracing::info!(generation, error = %e, "media could not start");
                let r = Refusal::new(code::MEDIA_FAILED, class::MEDIA, format!("media for party {party} could not start: {e}"));
                self.send(&mut out, session, reply_refusal(&c, &r));
                (false, out)
            }
        }
    }

    /// The party's running media ended on the core's side (ICE/DTLS failure, timeout): the
    /// party stays loaded, its session is told with `conf.webrtc.Disconnected`.
    pub fn handle_media_ended(&mut self, conf: ConfId, party: PartyId, generation: u64, reason: &str) -> Vec<Effect> {
        let Some(c) = self.confs.get_mut(&conf) else { return Vec::new() };
        let cluster = c.cluster;
        let Some(p) = c.parties.get_mut(&party) else { return Vec::new() };
        if p.media != (MediaState::Running { generation }) {
            return Vec::new(); // replaced or stopped meanwhile
        }
        let before = p.data();
        p.media = MediaState::None;
        p.talking = false;
        let session = p.session;
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), generation, %reason, "media ended");
        let mut out = vec![Effect::StopMedia { conf, party }];
        let event = Disconnected::transient(PartyRef { cluster, conf, party }, Some(reason.to_owned())).to_event();
        self.send(&mut out, session, Incoming::Event(event));
        self.tell_update(&mut out, conf, party, before);
        out
    }

    /// The session's WebSocket closed at `now_ms` (the shell's clock, in milliseconds): a party
    /// whose last media command was `CALLME_BYE` leaves (the others are told with
    /// `delParties`, an emptied conference ends); every other party is kept, out of the mix
    /// (`State` 1), for `resume_grace_ms`, to be resumed by its token or removed by
    /// [`Registry::handle_tick`].
    pub fn handle_session_closed(&mut self, session: SessionId, now_ms: u64) -> Vec<Effect> {
        let Some(rec) = self.sessions.remove(&session) else { return Vec::new() };
        tracing::info!(%session, parties = rec.parties.len(), "session closed");
        let mut out = Vec::new();
        let mut leaving = Vec::new();
        for (conf, party) in rec.parties {
            let Some(p) = self.confs.get_mut(&conf).and_then(|c| c.parties.get_mut(&party)) else { continue };
            if p.bye || self.config.resume_grace_ms == 0 {
                leaving.push((conf, party));
                continue;
            }
            let before = p.data();
            p.media = MediaState::None;
            p.talking = false;
            let until = now_ms.saturating_add(self.config.resume_grace_ms);
            self.kept.insert((conf, party), until);
            tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), grace_ms = self.config.resume_grace_ms, "party kept for a resume");
            out.push(Effect::StopMedia { conf, party });
            self.tell_update(&mut out, conf, party, before);
        }
        self.pending_s2.retain(|_, (s, _)| *s != session);
        self.remove_parties(&mut out, leaving);
        out
    }

    /// The shell's clock (milliseconds) moved on: kept parties whose grace time is over leave.
    pub fn handle_tick(&mut self, now_ms: u64) -> Vec<Effect> {
        let expired: Vec<(ConfId, PartyId)> = self.kept.iter().filter(|(_, until)| **until <= now_ms).map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for k in &expired {
            tracing::info!(parent: &tracing::info_span!("party", conf = %k.0, id = %k.1), "grace time over: the kept party leaves");
        }
        self.remove_parties(&mut out, expired);
        out
    }

    /// The mixer's speech detection: the party started or stopped talking. A party whose media
    /// does not run, or whose microphone is off, never talks.
    pub fn handle_talking(&mut self, conf: ConfId, party: PartyId, talking: bool) -> Vec<Effect> {
        let Some(p) = self.confs.get_mut(&conf).and_then(|c| c.parties.get_mut(&party)) else { return Vec::new() };
        let talking = talking && p.mic_on && p.media.is_running();
        if p.talking == talking {
            return Vec::new();
        }
        let before = p.data();
        p.talking = talking;
        let mut out = Vec::new();
        self.tell_update(&mut out, conf, party, before);
        out
    }

    /// The core stops: every party's media stops, every conference ends, every session is
    /// forgotten (the shell closes the sockets itself).
    pub fn handle_shutdown(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        let confs: Vec<ConfId> = self.confs.keys().copied().collect();
        for conf in confs {
            if let Some(c) = self.confs.get(&conf) {
                out.extend(c.parties.keys().map(|&party| Effect::StopMedia { conf, party }));
            }
            self.end_conference(conf, &mut out);
        }
        self.sessions.clear();
        self.pending_s2.clear();
        self.tokens.clear();
        self.kept.clear();
        out
    }

    // -----------------------------------------------------------------------------------------
    // Commands

    fn load(&mut self, session: SessionId, c: &Command) -> Handled {
        let cluster = ClusterId(c.number("ClusterID")?);
        let scheme = SchemeId(c.number("SchemeID")?);
        if scheme.0 == 0 {
            return Err(Refusal::proto(code::BAD_PARAM, "param SchemeID is 0: conference numbers start at 1"));
        }
        let given = c.text("NAME").unwrap_or("").to_owned();
        let name_len = given.chars().count();
        if name_len > self.config.max_name_len {
            return Err(Refusal::proto(
                code::BAD_PARAM,
                format!("param NAME is {name_len} characters long, at most {} are allowed", self.config.max_name_len),
            ));
        }
        if given.chars().any(char::is_control) {
            return Err(Refusal::proto(code::BAD_PARAM, "param NAME contains a control character"));
        }
        let token = c.text(RESUME_TOKEN);
        if let Some(t) = token {
            let n = t.chars().count();
            if n > MAX_TOKEN_CHARS {
                return Err(Refusal::proto(
                    code::TOO_LONG,
                    format!("param {RESUME_TOKEN} is {n} characters long, at most {MAX_TOKEN_CHARS} are allowed"),
                ));
            }
        }
        // With accounts, the account's name is the party's (a NAME param does not override it);
        // an open core's login names the party when no NAME is given.
        let (control, name) = match self.sessions.get(&session).map(|s| &s.login) {
            Some(LoginState::In { control, name }) if !self.config.accounts.is_empty() => (*control, name.clone()),
            Some(LoginState::In { control, name }) if given.is_empty() => (*control, name.clone()),
            Some(LoginState::In { control, .. }) => (*control, given),
            _ => (false, given),
        };
        let mut out = Vec::new();
        let conf_id = match self.by_scheme.get(&(cluster, scheme)) {
            Some(id) => *id,
            None => {
                let started = self.sessions.get(&session).map_or(0, |s| s.started);
                if started >= self.config.max_conferences_per_session {
                    return Err(Refusal::new(
                        code::TOO_MANY_CONFERENCES,
                        class::LIMIT,
                        format!(
                            "param SchemeID: conference {scheme} is not running, and this session already started {started} running conferences, the most one session may start"
                        ),
                    ));
                }
                self.next_conf += 1;
                let id = ConfId(self.next_conf);
                self.confs.insert(id, Conf { id, cluster, scheme, starter: session, next_index: 0, parties: BTreeMap::new() });
                self.by_scheme.insert((cluster, scheme), id);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.started += 1;
                }
                tracing::info!(conf = %id, %cluster, %scheme, %session, "conference started");
                out.push(Effect::ConferenceStarted { conf: id });
                id
            }
        };
        let created = matches!(out.first(), Some(Effect::ConferenceStarted { .. }));
        if !self.confs.contains_key(&conf_id) {
            return Err(Refusal::new(code::NO_CONFERENCE, class::CONF, "param SchemeID: the conference ended"));
        }
        let own = self.confs[&conf_id].parties.values().find(|p| p.session == session).map(|p| p.id);
        let resumed = match (own, token.and_then(|t| self.tokens.get(t)).copied()) {
            (None, Some((conf, party))) if conf == conf_id => Some(party),
            _ => None,
        };
        let (party, code) = match (own, resumed) {
            (Some(p), _) => (p, code::LOAD_ALREADY_CONNECTED),
            (None, Some(party)) => {
                self.resume(&mut out, session, conf_id, party);
                (party, code::LOAD_CONNECTED)
            }
            (None, None) => {
                self.next_party += 1;
                let id = PartyId(self.next_party);
                let conf = self.confs.get_mut(&conf_id).expect("checked above");
                let index = conf.next_index;
                conf.next_index += 1;
                let token = (self.new_token.0)();
                self.tokens.insert(token.clone(), (conf_id, id));
                let rec = PartyRec { id, index, name, session, media: MediaState::None, mic_on: true, talking: false, bye: false, token };
                conf.parties.insert(id, rec);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.parties.insert((conf_id, id));
                }
                tracing::info!(parent: &tracing::info_span!("party", conf = %conf_id, %id), %session, index, "party loaded");
                let added = vec![self.confs[&conf_id].parties[&id].data()];
                let event = ConfChanged { cluster, conf: conf_id, add: added, ..ConfChanged::default() }.to_event();
                // The loader has its own party in its answer's `parties`.
                self.broadcast(&mut out, conf_id, Some(session), &Incoming::Event(event));
                (id, if created { code::OK } else { code::LOAD_CONNECTED })
            }
        };
        let conf = &self.confs[&conf_id];
        let parties: Vec<PartyData> = conf.parties.values().map(PartyRec::data).collect();
        let me = &conf.parties[&party];
        let answer = LoadAnswer {
            loaded: Loaded { cluster, conf: conf_id, party, control, code },
            index: me.index,
            parties,
            resume_token: Some(me.token.clone()),
        };
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(answer.to_answer(c)));
        }
        Ok(out)
    }

    /// Moves a party to `session` (a `cd.load` with its token): out of the kept set, or taken
    /// from a session still open (a connection the core has not seen cut yet), which is closed.
    /// Its media, if any, stops (the new session sends CALLME_S1); the token is renewed.
    fn resume(&mut self, out: &mut Vec<Effect>, session: SessionId, conf: ConfId, party: PartyId) {
        self.kept.remove(&(conf, party));
        let new_token = (self.new_token.0)();
        let Some(p) = self.confs.get_mut(&conf).and_then(|c| c.parties.get_mut(&party)) else { return };
        let old = p.session;
        let before = p.data();
        let had_media = p.media != MediaState::None;
        p.media = MediaState::None;
        p.talking = false;
        p.bye = false;
        p.session = session;
        self.tokens.remove(&p.token);
        p.token = new_token.clone();
        self.tokens.insert(new_token, (conf, party));
        if had_media {
            out.push(Effect::StopMedia { conf, party });
        }
        self.pending_s2.retain(|(q, _), _| *q != party);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.parties.insert((conf, party));
        }
        if let Some(o) = self.sessions.get_mut(&old) {
            o.parties.remove(&(conf, party));
            if !o.closing {
                o.closing = true;
                tracing::info!(session = %old, "session closed: its party was resumed by another session");
                out.push(Effect::Close {
                    session: old,
                    code: close::POLICY,
                    reason: format!("party {party} was resumed by another session"),
                });
            }
        }
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), %session, from = %old, "party resumed");
        // The resuming session has the party in its load answer.
        self.tell_update_except(out, conf, party, before, Some(session));
    }

    fn loadlist(&mut self, session: SessionId, c: &Command) -> Handled {
        let cluster = ClusterId(c.number("ClusterID")?);
        let list = self
            .confs
            .values()
            .filter(|conf| conf.cluster == cluster)
            .map(|conf| ConfEntry { cluster: conf.cluster, conf: conf.id, scheme: conf.scheme, parties: conf.parties.len() as u64 })
            .collect();
        let mut out = Vec::new();
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(LoadList { list }.to_answer(c)));
        }
        Ok(out)
    }

    /// The party a CALLME command names, checked to be the session's own.
    fn own_party(&self, session: SessionId, c: &Command) -> Result<(ConfId, PartyId), Refusal> {
        c.number("ClusterID")?;
        if self.sessions.get(&session).is_none_or(|s| s.parties.is_empty()) {
            return Err(Refusal::new(code::NOT_AUTHORISED, class::AUTH, "this session holds no party: send cd.load first"));
        }
        let conf = ConfId(c.number("ID")?);
        let party = PartyId(c.number("PartyID")?);
        let rec = self
            .confs
            .get(&conf)
            .ok_or_else(|| Refusal::new(code::NO_CONFERENCE, class::CONF, format!("param ID: no running conference {conf}")))?;
        let p = rec
            .parties
            .get(&party)
            .ok_or_else(|| Refusal::new(code::NO_PARTY, class::CONF, format!("param PartyID: no party {party} in conference {conf}")))?;
        if p.session != session {
            return Err(Refusal::new(code::NOT_OWN_PARTY, class::AUTH, format!("param PartyID: party {party} is not this session's own")));
        }
        Ok((conf, party))
    }

    fn party_mut(&mut self, conf: ConfId, party: PartyId) -> Result<(ClusterId, &mut PartyRec), Refusal> {
        let c = self
            .confs
            .get_mut(&conf)
            .ok_or_else(|| Refusal::new(code::NO_CONFERENCE, class::CONF, format!("param ID: no running conference {conf}")))?;
        let cluster = c.cluster;
        let p = c
            .parties
            .get_mut(&party)
            .ok_or_else(|| Refusal::new(code::NO_PARTY, class::CONF, format!("param PartyID: no party {party} in conference {conf}")))?;
        Ok((cluster, p))
    }

    fn s1(&mut self, session: SessionId, c: &Command, now_unix: u64) -> Handled {
        let (conf, party) = self.own_party(session, c)?;
        self.next_generation += 1;
        let generation = self.next_generation;
        let (cluster, p) = self.party_mut(conf, party)?;
        let had_media = matches!(p.media, MediaState::Running { .. } | MediaState::Starting { .. });
        let before = p.data();
        p.media = MediaState::Offered { generation };
        p.bye = false;
        p.talking = false;
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), generation, replaces_media = had_media, "CALLME_S1 accepted");
        let mut out = Vec::new();
        if had_media {
            out.push(Effect::StopMedia { conf, party }); // a reconnect replaces the old media
        }
        let desc = match (&self.config.turn, &self.config.stun) {
            (Some(t), _) => {
                let cred = turn::mint(&t.secret, &format!("party{party}"), now_unix, t.ttl_secs);
                ServDesc { serveraddr: t.url.clone(), username: cred.username, credential: cred.credential }
            }
            (None, Some(stun)) => ServDesc { serveraddr: stun.clone(), username: String::new(), credential: String::new() },
            (None, None) => ServDesc { serveraddr: String::new(), username: String::new(), credential: String::new() },
        };
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(Answer::positive(c)));
        }
        self.send(&mut out, session, Incoming::Event(desc.to_event(PartyRef { cluster, conf, party })));
        self.tell_update(&mut out, conf, party, before);
        Ok(out)
    }

    fn s2(&mut self, session: SessionId, c: &Command) -> Handled {
        let (conf, party) = self.own_party(session, c)?;
        let (_, p) = self.party_mut(conf, party)?;
        let MediaState::Offered { generation } = p.media else {
            return Err(Refusal::new(
                code::S2_BEFORE_S1,
                class::CONF,
                format!("party {party} has no CALLME_S1 under way: send CALLME_S1 first"),
            ));
        };
        let offer = offer_from_params(&c.params)?;
        p.media = MediaState::Starting { generation };
        self.pending_s2.insert((party, generation), (session, c.clone()));
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), generation, "CALLME_S2 accepted: starting media");
        Ok(vec![Effect::StartMedia { conf, party, generation, offer }])
    }

    fn bye(&mut self, session: SessionId, c: &Command) -> Handled {
        let (conf, party) = self.own_party(session, c)?;
        let (_, p) = self.party_mut(conf, party)?;
        let before = p.data();
        p.media = MediaState::None;
        p.talking = false;
        p.bye = true;
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), "CALLME_BYE: media stopped");
        let mut out = vec![Effect::StopMedia { conf, party }];
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(Answer::positive(c)));
        }
        self.tell_update(&mut out, conf, party, before);
        Ok(out)
    }

    /// The login query (`q_cplxLogin`).
    fn query(&mut self, session: SessionId, c: &Command, now_unix: u64) -> Handled {
        let Some(q) = &c.query else {
            return Err(Refusal::proto(code::BAD_FRAME, "query: missing"));
        };
        if q.name != login::QUERY {
            let shown: String = q.name.chars().take(64).collect();
            return Err(Refusal::proto(
                code::UNKNOWN_QUERY,
                format!("query.name: {shown:?} is not a query of this core (only {})", login::QUERY),
            ));
        }
        let rec = self.sessions.get(&session).expect("open");
        match rec.login {
            LoginState::None => {}
            LoginState::Checking { .. } => {
                return Err(Refusal::new(code::ALREADY_LOGGED_IN, class::AUTH, "query.name: a login of this session is being checked"))
            }
            LoginState::In { .. } => {
                return Err(Refusal::new(
                    code::ALREADY_LOGGED_IN,
                    class::AUTH,
                    "query.name: this session has logged in already (one login per session)",
                ))
            }
        }
        let text = |key: &str, max: usize| -> Result<String, Refusal> {
            let field = format!("query.params.{key}");
            let v = q.params.get(key).ok_or_else(|| Refusal::proto(code::BAD_PARAM, format!("{field} is missing")))?;
            let n = v.chars().count();
            if n > max {
                return Err(Refusal::proto(code::TOO_LONG, format!("{field} is {n} characters long, at most {max} are allowed")));
            }
            Ok(v.clone())
        };
        let user = text(login::LOGIN, MAX_LOGIN_CHARS)?;
        let password = text(login::PASSWORD, MAX_PASSWORD_CHARS)?;
        if user.is_empty() {
            return Err(Refusal::proto(code::BAD_PARAM, format!("query.params.{} is empty", login::LOGIN)));
        }
        let answer_to = Command { query: None, params: BTreeMap::new(), ..c.clone() };
        let mut out = Vec::new();
        if self.config.accounts.is_empty() {
            // Open mode: any login is a user named by its login.
            tracing::info!(%session, login = %user, "logged in (open core)");
            let answer = LoginAnswer { retcode: retcode::USER, name: user.clone() };
            if let Some(s) = self.sessions.get_mut(&session) {
                s.login = LoginState::In { control: false, name: user };
            }
            if c.seq > 0 {
                self.send(&mut out, session, Incoming::Answer(answer.to_answer(&answer_to)));
            }
            return Ok(out);
        }
        let account = self.config.accounts.iter().position(|a| a.login == user);
        let delay_ms = rec.ip.map_or(0, |ip| self.throttle_delay(ip, now_unix));
        let credential = account.map(|i| self.config.accounts[i].credential.clone());
        if let Some(s) = self.sessions.get_mut(&session) {
            s.login = LoginState::Checking { answer_to, login: user, account };
        }
        out.push(Effect::CheckLogin { session, credential, password: Secret(password), delay_ms });
        Ok(out)
    }

    /// The shell checked the password of [`Effect::CheckLogin`]: the answer, and after a failed
    /// login a close with 1008 (the failure counts against the session's address).
    pub fn handle_login_checked(&mut self, session: SessionId, ok: bool, now_unix: u64) -> Vec<Effect> {
        let Some(rec) = self.sessions.get_mut(&session) else { return Vec::new() };
        let LoginState::Checking { answer_to, login, account } = std::mem::take(&mut rec.login) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let entry = account.and_then(|i| self.config.accounts.get(i)).filter(|_| ok);
        match entry {
            Some(a) => {
                let retcode = if a.control { retcode::ADMIN } else { retcode::USER };
                tracing::info!(%session, %login, control = a.control, "logged in");
                rec.login = LoginState::In { control: a.control, name: a.name.clone() };
                let answer = LoginAnswer { retcode, name: a.name.clone() };
                if answer_to.seq > 0 {
                    self.send(&mut out, session, Incoming::Answer(answer.to_answer(&answer_to)));
                }
            }
            None => {
                let ip = rec.ip;
                rec.closing = true;
                tracing::info!(%session, %login, "login refused");
                if let Some(ip) = ip {
                    self.record_failure(ip, now_unix);
                }
                let answer = LoginAnswer { retcode: retcode::LOGIN_ERROR, name: String::new() };
                if answer_to.seq > 0 {
                    self.send(&mut out, session, Incoming::Answer(answer.to_answer(&answer_to)));
                }
                let reason = "login error: unknown login or wrong password".to_owned();
                out.push(Effect::Close { session, code: close::POLICY, reason });
            }
        }
        out
    }

    /// How long a login answer to `ip` waits: nothing until `throttle_failures` failures within
    /// the window, then the first delay, doubled with each further failure up to the longest.
    fn throttle_delay(&self, ip: IpAddr, now_unix: u64) -> u64 {
        let window_s = self.config.throttle_window_ms.div_ceil(1000);
        let recent = self.failures.get(&ip).map_or(0, |f| f.iter().filter(|&&t| now_unix.saturating_sub(t) < window_s).count());
        let Some(over) = recent.checked_sub(self.config.throttle_failures as usize) else { return 0 };
        let over = over.min(16);
        self.config.throttle_delay_ms.saturating_mul(1 << over).min(self.config.throttle_max_delay_ms)
    }

    fn record_failure(&mut self, ip: IpAddr, now_unix: u64) {
        let window_s = self.config.throttle_window_ms.div_ceil(1000);
        if self.failures.len() >= MAX_THROTTLED_ADDRESSES && !self.failures.contains_key(&ip) {
            self.failures.retain(|_, f| f.last().is_some_and(|&t| now_unix.saturating_sub(t) < window_s));
            if self.failures.len() >= MAX_THROTTLED_ADDRESSES {
                let oldest = self.failures.iter().min_by_key(|(_, f)| f.last().copied()).map(|(ip, _)| *ip);
                if let Some(o) = oldest {
                    self.failures.remove(&o);
                }
            }
        }
        let f = self.failures.entry(ip).or_default();
        f.retain(|&t| now_unix.saturating_sub(t) < window_s);
        f.push(now_unix);
        // A bounded record: more than enough to reach the longest delay.
        if f.len() > 64 {
            f.remove(0);
        }
    }

    /// The conference and party a `SETMIC`/`DELPARTY` names, checked: the session holds a party
    /// in the conference, and the named party is its own or the session controls.
    fn acted_on(&self, session: SessionId, c: &Command) -> Result<(ClusterId, ConfId, PartyId), Refusal> {
        let (cluster, conf) = self.member_of(session, c)?;
        let party = PartyId(c.number("PartyID")?);
        let p = self.confs[&conf]
            .parties
            .get(&party)
            .ok_or_else(|| Refusal::new(code::NO_PARTY, class::CONF, format!("param PartyID: no party {party} in conference {conf}")))?;
        let controls = self.sessions.get(&session).is_some_and(SessionRec::is_control);
        if p.session != session && !controls {
            return Err(Refusal::new(
                code::NOT_OWN_PARTY,
                class::AUTH,
                format!("param PartyID: party {party} is not this session's own, and this session does not control the conference"),
            ));
        }
        Ok((cluster, conf, party))
    }

    /// The conference a command names, checked to hold a party of the session.
    fn member_of(&self, session: SessionId, c: &Command) -> Result<(ClusterId, ConfId), Refusal> {
        let cluster = ClusterId(c.number("ClusterID")?);
        let conf = ConfId(c.number("ID")?);
        let rec = self.confs.get(&conf).filter(|r| r.cluster == cluster).ok_or_else(|| {
            Refusal::new(code::NO_CONFERENCE, class::CONF, format!("param ID: no running conference {conf} in cluster {cluster}"))
        })?;
        if !rec.parties.values().any(|p| p.session == session) {
            return Err(Refusal::new(
                code::NOT_AUTHORISED,
                class::AUTH,
                format!("param ID: this session holds no party in conference {conf}: send cd.load first"),
            ));
        }
        Ok((cluster, conf))
    }

    fn set_mic(&mut self, session: SessionId, c: &Command) -> Handled {
        let (_, conf, party) = self.acted_on(session, c)?;
        let on = match c.text("bMicOn") {
            None => return Err(Refusal::proto(code::BAD_PARAM, "param bMicOn is missing")),
            Some("1") => true,
            Some("0") => false,
            Some(v) => {
                let shown: String = v.chars().take(16).collect();
                return Err(Refusal::proto(code::BAD_PARAM, format!("param bMicOn is {shown:?}, not \"0\" or \"1\"")));
            }
        };
        let (_, p) = self.party_mut(conf, party)?;
        let before = p.data();
        p.mic_on = on;
        if !on {
            p.talking = false;
        }
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), mic_on = on, by = %session, "SETMIC");
        let mut out = vec![Effect::SetMic { conf, party, on }];
        self.tell_update(&mut out, conf, party, before);
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(Answer::positive(c)));
        }
        Ok(out)
    }

    fn instant_msg(&mut self, session: SessionId, c: &Command, now_unix: u64) -> Handled {
        let (cluster, conf) = self.member_of(session, c)?;
        let msg = c.text("msg").ok_or_else(|| Refusal::proto(code::BAD_PARAM, "param msg is missing"))?;
        let n = msg.chars().count();
        if n == 0 {
            return Err(Refusal::proto(code::BAD_PARAM, "param msg is empty"));
        }
        if n > MAX_MSG_CHARS {
            return Err(Refusal::proto(code::TOO_LONG, format!("param msg is {n} characters long, at most {MAX_MSG_CHARS} are allowed")));
        }
        let color = c.text("color").unwrap_or("");
        let n = color.chars().count();
        if n > MAX_COLOR_CHARS {
            return Err(Refusal::proto(
                code::TOO_LONG,
                format!("param color is {n} characters long, at most {MAX_COLOR_CHARS} are allowed"),
            ));
        }
        if color.chars().any(char::is_control) {
            return Err(Refusal::proto(code::BAD_PARAM, "param color contains a control character"));
        }
        let sender = self.confs[&conf].parties.values().find(|p| p.session == session).expect("member_of checked it");
        let event = InstantMsg {
            cluster,
            conf,
            sender: Some(sender.id),
            username: sender.name.clone(),
            msg: msg.to_owned(),
            color: color.to_owned(),
            time: now_unix,
        }
        .to_event();
        tracing::debug!(%conf, sender = %sender.id, chars = n, "INSTANTMSG");
        let mut out = Vec::new();
        self.broadcast(&mut out, conf, None, &Incoming::Event(event));
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(Answer::positive(c)));
        }
        Ok(out)
    }

    fn del_party(&mut self, session: SessionId, c: &Command) -> Handled {
        let (cluster, conf, party) = self.acted_on(session, c)?;
        let by = self.confs[&conf].parties.values().find(|p| p.session == session).map(|p| p.name.clone()).unwrap_or_default();
        let (target_session, index) = {
            let p = &self.confs[&conf].parties[&party];
            (p.session, p.index)
        };
        let reason = if target_session == session {
            "left the conference (DELPARTY)".to_owned()
        } else if by.is_empty() {
            format!("removed by party of session {session}")
        } else {
            format!("removed by {by}")
        };
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), by = %session, "DELPARTY");
        let mut out = vec![Effect::StopMedia { conf, party }];
        let answer = (c.seq > 0).then(|| Incoming::Answer(Answer::positive(c)));
        let own = target_session == session;
        // A removal of the own party answers before the party's session hears that its media ended.
        if let (true, Some(a)) = (own, &answer) {
            self.send(&mut out, session, a.clone());
        }
        let event = Disconnected { at: PartyRef { cluster, conf, party }, reason: Some(reason), final_: true }.to_event();
        self.send(&mut out, target_session, Incoming::Event(event));
        // The removed party's session hears of it too, though it holds the party no more.
        let still_there = self.confs[&conf].parties.values().any(|p| p.session == target_session && p.id != party);
        if !still_there {
            let del = vec![PartyGone { id: party, index }];
            let event = ConfChanged { cluster, conf, del, ..ConfChanged::default() }.to_event();
            self.send(&mut out, target_session, Incoming::Event(event));
        }
        self.remove_parties(&mut out, vec![(conf, party)]);
        if let (false, Some(a)) = (own, answer) {
            self.send(&mut out, session, a);
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Helpers

    /// Tells every session of the conference (the party's own included) with `updParties`
    /// when the party's data differ from `before`.
    fn tell_update(&self, out: &mut Vec<Effect>, conf: ConfId, party: PartyId, before: PartyData) {
        self.tell_update_except(out, conf, party, before, None);
    }

    fn tell_update_except(&self, out: &mut Vec<Effect>, conf: ConfId, party: PartyId, before: PartyData, except: Option<SessionId>) {
        let Some(c) = self.confs.get(&conf) else { return };
        let Some(p) = c.parties.get(&party) else { return };
        let now = p.data();
        if now == before {
            return;
        }
        let upd = vec![PartyData { old_index: Some(before.index), ..now }];
        let event = ConfChanged { cluster: c.cluster, conf, upd, ..ConfChanged::default() }.to_event();
        self.broadcast(out, conf, except, &Incoming::Event(event));
    }

    /// The parties leave: media stopped, tokens forgotten, the others told with `delParties`
    /// (one event per conference), an emptied conference ended.
    fn remove_parties(&mut self, out: &mut Vec<Effect>, parties: Vec<(ConfId, PartyId)>) {
        let mut gone: BTreeMap<ConfId, Vec<PartyGone>> = BTreeMap::new();
        for (conf, party) in parties {
            let Some(c) = self.confs.get_mut(&conf) else { continue };
            let Some(p) = c.parties.remove(&party) else { continue };
            tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), "party left");
            self.tokens.remove(&p.token);
            self.kept.remove(&(conf, party));
            self.pending_s2.retain(|(q, _), _| *q != party);
            if let Some(s) = self.sessions.get_mut(&p.session) {
                s.parties.remove(&(conf, party));
            }
            out.push(Effect::StopMedia { conf, party });
            gone.entry(conf).or_default().push(PartyGone { id: party, index: p.index });
        }
        for (conf, del) in gone {
            let Some(c) = self.confs.get(&conf) else { continue };
            if c.parties.is_empty() {
                self.end_conference(conf, out);
            } else {
                let event = ConfChanged { cluster: c.cluster, conf, del, ..ConfChanged::default() }.to_event();
                self.broadcast(out, conf, None, &Incoming::Event(event));
            }
        }
    }

    fn send(&self, out: &mut Vec<Effect>, session: SessionId, frame: Incoming) {
        if self.sessions.contains_key(&session) {
            out.push(Effect::Send { session, frame });
        }
    }

    /// Sends `frame` to every session holding a party in `conf`, except `except`.
    fn broadcast(&self, out: &mut Vec<Effect>, conf: ConfId, except: Option<SessionId>, frame: &Incoming) {
        let Some(c) = self.confs.get(&conf) else { return };
        let to: BTreeSet<SessionId> = c.parties.values().map(|p| p.session).filter(|s| Some(*s) != except).collect();
        for session in to {
            self.send(out, session, frame.clone());
        }
    }

    fn end_conference(&mut self, conf: ConfId, out: &mut Vec<Effect>) {
        let Some(c) = self.confs.remove(&conf) else { return };
        self.by_scheme.remove(&(c.cluster, c.scheme));
        if let Some(s) = self.sessions.get_mut(&c.starter) {
            s.started = s.started.saturating_sub(1);
        }
        tracing::info!(%conf, cluster = %c.cluster, scheme = %c.scheme, "conference ended");
        out.push(Effect::ConferenceEnded { conf });
    }

    fn count_error(&mut self, session: SessionId, out: &mut Vec<Effect>) {
        let max = self.config.max_errors;
        let Some(s) = self.sessions.get_mut(&session) else { return };
        s.errors = s.errors.saturating_add(1);
        if s.errors > max && !s.closing {
            s.closing = true;
            tracing::info!(%session, errors = s.errors, "session closed: too many bad frames");
            out.push(Effect::Close { session, code: close::POLICY, reason: "too many bad frames".into() });
        }
    }
}

/// A refusal as the reply to `c`: a negative answer, or a `session.error` when `seq` is 0.
fn reply_refusal(c: &Command, r: &Refusal) -> Incoming {
    if c.seq > 0 {
        Incoming::Answer(Answer::negative(c, r))
    } else {
        Incoming::Event(crate::wire::SessionError(r.clone()).to_event())
    }
}

#[cfg(test)]
mod tests;
