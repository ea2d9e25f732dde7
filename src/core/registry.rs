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
//!          handle_session_closed ──▶ Registry ──▶ Vec<Effect> ──▶ shell (frames, mixers, media)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::party_media::offer_from_params;
use super::turn;
use super::{CoreConfig, TurnConfig};
use crate::media::sdp::OfferFacts;
use crate::wire::{
    class, close, code, Answer, ClusterId, Command, CommandLimits, ConfChanged, ConfEntry, ConfId, Disconnected, Incoming, LoadAnswer,
    LoadList, Loaded, PartyData, PartyGone, PartyId, PartyRef, Refusal, SchemeId, ServDesc, ServUfrag,
};

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
    session: SessionId,
    media: MediaState,
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
        PartyData { state, ..PartyData::new(self.id, self.index, &self.name) }
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
}

type Handled = Result<Vec<Effect>, Refusal>;

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry {
            config,
            sessions: BTreeMap::new(),
            confs: BTreeMap::new(),
            by_scheme: HashMap::new(),
            pending_s2: HashMap::new(),
            next_conf: 0,
            next_party: 0,
            next_generation: 0,
        }
    }

    /// What the registry holds now.
    pub fn stats(&self) -> RegistryStats {
        let parties = self.confs.values().map(|c| c.parties.len()).sum();
        let parties_with_media = self.confs.values().flat_map(|c| c.parties.values()).filter(|p| p.media.is_running()).count();
        RegistryStats { sessions: self.sessions.len(), conferences: self.confs.len(), parties, parties_with_media }
    }

    /// Whether the session is open here (and not being closed).
    pub fn is_open(&self, session: SessionId) -> bool {
        self.sessions.get(&session).is_some_and(|s| !s.closing)
    }

    /// A WebSocket session opened. Above `max_sessions` it is closed at once with 1013 and not
    /// registered.
    pub fn handle_session_opened(&mut self, session: SessionId) -> Vec<Effect> {
        if self.sessions.len() >= self.config.max_sessions {
            tracing::info!(%session, max_sessions = self.config.max_sessions, "session refused: the core is full");
            let reason = format!("the core serves its maximum of {} sessions: try again later", self.config.max_sessions);
            return vec![Effect::Close { session, code: close::TRY_AGAIN_LATER, reason }];
        }
        self.sessions.insert(session, SessionRec::default());
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
        let result = match (c.obj.as_str(), c.cmd.as_str()) {
            ("cd", "load") => self.load(session, &c),
            ("cd", "loadlist") => self.loadlist(session, &c),
            ("conf", "CALLME_S1") => self.s1(session, &c, now_unix),
            ("conf", "CALLME_S2") => self.s2(session, &c),
            ("conf", "CALLME_BYE") => self.bye(session, &c),
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
                p.media = MediaState::Running { generation };
                let cluster = self.confs[&conf].cluster;
                tracing::info!(generation, "media started");
                if c.seq > 0 {
                    self.send(&mut out, session, Incoming::Answer(Answer::positive(&c)));
                }
                let at = PartyRef { cluster, conf, party };
                self.send(&mut out, session, Incoming::Event(ufrag.to_event(at)));
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
        p.media = MediaState::None;
        let session = p.session;
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), generation, %reason, "media ended");
        let mut out = vec![Effect::StopMedia { conf, party }];
        let event = Disconnected { at: PartyRef { cluster, conf, party }, reason: Some(reason.to_owned()) }.to_event();
        self.send(&mut out, session, Incoming::Event(event));
        out
    }

    /// The session's WebSocket closed: its parties leave (the others are told with
    /// `delParties`), an emptied conference ends.
    pub fn handle_session_closed(&mut self, session: SessionId) -> Vec<Effect> {
        let Some(rec) = self.sessions.remove(&session) else { return Vec::new() };
        tracing::info!(%session, parties = rec.parties.len(), "session closed");
        let mut out = Vec::new();
        let mut gone: BTreeMap<ConfId, Vec<PartyGone>> = BTreeMap::new();
        for (conf, party) in rec.parties {
            let Some(c) = self.confs.get_mut(&conf) else { continue };
            if let Some(p) = c.parties.remove(&party) {
                tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), "party left");
                out.push(Effect::StopMedia { conf, party });
                gone.entry(conf).or_default().push(PartyGone { id: party, index: p.index });
            }
        }
        self.pending_s2.retain(|_, (s, _)| *s != session);
        for (conf, del) in gone {
            let Some(c) = self.confs.get(&conf) else { continue };
            if c.parties.is_empty() {
                self.end_conference(conf, &mut out);
            } else {
                let event = ConfChanged { cluster: c.cluster, conf, del, ..ConfChanged::default() }.to_event();
                self.broadcast(&mut out, conf, None, &Incoming::Event(event));
            }
        }
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
        let name = c.text("NAME").unwrap_or("").to_owned();
        let name_len = name.chars().count();
        if name_len > self.config.max_name_len {
            return Err(Refusal::proto(
                code::BAD_PARAM,
                format!("param NAME is {name_len} characters long, at most {} are allowed", self.config.max_name_len),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Refusal::proto(code::BAD_PARAM, "param NAME contains a control character"));
        }
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
        let conf = self
            .confs
            .get_mut(&conf_id)
            .ok_or_else(|| Refusal::new(code::NO_CONFERENCE, class::CONF, "param SchemeID: the conference ended"))?;
        let (party, index, code) = match conf.parties.values().find(|p| p.session == session) {
            Some(p) => (p.id, p.index, code::LOAD_ALREADY_CONNECTED),
            None => {
                self.next_party += 1;
                let id = PartyId(self.next_party);
                let index = conf.next_index;
                conf.next_index += 1;
                conf.parties.insert(id, PartyRec { id, index, name, session, media: MediaState::None });
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.parties.insert((conf_id, id));
                }
                tracing::info!(parent: &tracing::info_span!("party", conf = %conf_id, %id), %session, index, "party loaded");
                (id, index, if created { code::OK } else { code::LOAD_CONNECTED })
            }
        };
        let conf = &self.confs[&conf_id];
        let parties: Vec<PartyData> = conf.parties.values().map(PartyRec::data).collect();
        if code != code::LOAD_ALREADY_CONNECTED {
            let added = parties.iter().find(|p| p.id == party).cloned().into_iter().collect();
            let event = ConfChanged { cluster, conf: conf_id, add: added, ..ConfChanged::default() }.to_event();
            self.broadcast(&mut out, conf_id, Some(session), &Incoming::Event(event));
        }
        let answer =
            LoadAnswer { loaded: Loaded { cluster, conf: conf_id, party, control: false, code }, index, parties, resume_token: None };
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(answer.to_answer(c)));
        }
        Ok(out)
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
        p.media = MediaState::Offered { generation };
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
        p.media = MediaState::None;
        tracing::info!(parent: &tracing::info_span!("party", %conf, id = %party), "CALLME_BYE: media stopped");
        let mut out = vec![Effect::StopMedia { conf, party }];
        if c.seq > 0 {
            self.send(&mut out, session, Incoming::Answer(Answer::positive(c)));
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Helpers

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
