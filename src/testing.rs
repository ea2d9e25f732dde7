//! A scripted core in memory, for sequence tests (ours, and an application's own).
//!
//! [`ScriptedCore`] answers `cd.load`, `CALLME_S1` and `CALLME_S2` as `docs/protocol.md` says,
//! with fixed values, synchronously as each frame is sent, and can be told to misbehave in every
//! way a real core or network can: refuse, stay silent, close the socket, send a malformed frame,
//! send an event before its answer or twice, interleave unrelated events, address an event to
//! another party, or end the media session. Nothing runs in the background, so with tokio's
//! paused clock a test is deterministic and a silent core is a timeout at once.
//!
//! For the life in the conference (PROTOCOL §7–10) it can also be given accounts
//! ([`ScriptedCore::with_account`]: a login is then required before `cd.load`, a failed one is
//! answered with `RETCODE` 4 and the socket closed with 1008), a roster
//! ([`ScriptedCore::with_roster`]: the load answer lists it and one's own party, and `SETMIC`,
//! `INSTANTMSG` and `DELPARTY` are answered and their events sent as the contract says), a
//! `ResumeToken` ([`ScriptedCore::with_resume_token`]: a load with it gives the same party
//! back), and `conf.changed` events to send after the load ([`ScriptedCore::after_load`]).
//! Each [`ScriptedCore::transport`] is a new connection to the same core, so a resume opens a
//! second one; [`ScriptedCore::push_event`] and [`ScriptedCore::cut`] act on the newest.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::{Sink, Stream};
use serde_json::Value;

use crate::signaling::Inbound;
use crate::wire::{
    class, code, Answer, ClusterId, Command, CommandLimits, ConfChanged, ConfId, Disconnected, Event, InstantMsg, LoadAnswer, Loaded,
    LoginAnswer, PartyData, PartyGone, PartyId, PartyRef, Refusal, ServDesc, ServUfrag, TimerTime,
};

/// The fixed values the scripted core uses.
pub mod values {
    /// `ClusterID`.
    pub const CLUSTER: u64 = 1;
    /// The running conference (`confdata.ID`).
    pub const CONF: u64 = 7;
    /// The session's own party (`SVPartyID`).
    pub const PARTY: u64 = 3;
    /// Another party of the conference.
    pub const OTHER_PARTY: u64 = 4;
    /// `servdesc.serveraddr`.
    pub const SERVERADDR: &str = "turn:127.0.0.1:3478?transport=udp";
    /// `servdesc.username` (a secret: redacted).
    pub const TURN_USER: &str = "1764000000:3";
    /// `servdesc.credential` (a secret: redacted).
    pub const TURN_PASS: &str = "aGVsbG8gdHVybiBzZWNyZXQ=";
    /// `servufrag.ufrag`.
    pub const CORE_UFRAG: &str = "CoRe";
    /// `servufrag.pwd`.
    pub const CORE_PWD: &str = "corepasswordcorepassword";
    /// `servufrag.fingerprint`.
    pub const CORE_FINGERPRINT: &str =
        "sha-256 C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E:C0:4E";
    /// `servufrag.port`.
    pub const CORE_PORT: u16 = 40000;
    /// `servufrag.addr`.
    pub const CORE_ADDR: &str = "127.0.0.1";
    /// The party a load gets when its `ResumeToken` is not (or no longer) known.
    pub const NEW_PARTY: u64 = 5;
    /// The clock of the scripted core (`timer.time`, `conf.instantmsg`'s `time`).
    pub const TIME: u64 = 1764000000;
}
use values::*;

/// Where in the exchange a fault applies: after the core receives this command (`"load"`,
/// `"CALLME_S1"`, `"CALLME_S2"`).
pub type On = &'static str;

/// One way for the core or the network to misbehave. In every variant `on` is the command after
/// which the fault applies (each time the core receives it).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(missing_docs)] // the fields: `on` as above; the rest as each variant's line says
pub enum Fault {
    /// A negative answer with this code, class and text.
    Refuse { on: On, code: i64, class: &'static str, text: &'static str },
    /// No answer at all (and no event).
    NoAnswer { on: On },
    /// The answer, but never the event that should follow.
    NoEvent { on: On },
    /// The socket closes instead of the answer.
    CloseBeforeAnswer { on: On },
    /// The socket closes after the answer, instead of the event.
    CloseBeforeEvent { on: On },
    /// The answer and the event, then the socket closes.
    CloseAfterEvent { on: On },
    /// The answer frame is broken: `result.code` is not an integer.
    MalformedAnswer { on: On },
    /// The answer frame is not JSON at all.
    GarbageFrame { on: On },
    /// The event's `EvtData` lacks or breaks a field (`field` is removed, or set to `value`).
    MalformedEvent { on: On, field: &'static str, value: Option<Value> },
    /// The event comes before the answer.
    EventBeforeAnswer { on: On },
    /// The event comes twice.
    DuplicateEvent { on: On },
    /// `timer.time` and `conf.changed` come before the answer and before the event.
    Interleaved { on: On },
    /// The event first comes addressed to another party, then to ours.
    OtherPartyFirst { on: On },
    /// `conf.webrtc.Disconnected` comes instead of the event.
    Disconnect { on: On },
    /// An answer with another `seq` comes before the right one.
    StaleAnswer { on: On },
    /// The answer and the event, then `timer.time` and `conf.changed`, then
    /// `conf.webrtc.Disconnected` (the core gave up on the media after its answer).
    DisconnectAfterEvent { on: On },
}

impl Fault {
    fn on(&self) -> On {
        match self {
            Fault::Refuse { on, .. }
            | Fault::NoAnswer { on }
            | Fault::NoEvent { on }
            | Fault::CloseBeforeAnswer { on }
            | Fault::CloseBeforeEvent { on }
            | Fault::CloseAfterEvent { on }
            | Fault::MalformedAnswer { on }
            | Fault::GarbageFrame { on }
            | Fault::MalformedEvent { on, .. }
            | Fault::EventBeforeAnswer { on }
            | Fault::DuplicateEvent { on }
            | Fault::Interleaved { on }
            | Fault::OtherPartyFirst { on }
            | Fault::Disconnect { on }
            | Fault::StaleAnswer { on }
            | Fault::DisconnectAfterEvent { on } => on,
        }
    }
}

/// One connection to the scripted core.
#[derive(Debug, Default)]
struct Conn {
    outbox: VecDeque<Inbound>,
    closed: bool,
    waker: Option<Waker>,
    /// `RETCODE` of this connection's successful login.
    login: Option<i64>,
    /// This connection's party, after its load.
    party: Option<u64>,
}

impl Conn {
    fn push(&mut self, i: Inbound) {
        self.outbox.push_back(i);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// An account of the scripted core.
#[derive(Debug, Clone)]
struct Account {
    login: String,
    password: String,
    retcode: i64,
    name: String,
}

#[derive(Debug, Default)]
struct State {
    faults: Vec<Fault>,
    received: Vec<Value>,
    conns: Vec<Conn>,
    accounts: Vec<Account>,
    keep_open_after_failed_login: bool,
    /// The conference's parties (v2: the load answer lists them, the in-call commands act).
    roster: Option<Vec<PartyData>>,
    resume_token: Option<String>,
    forget_resume: bool,
    refuse_logins: bool,
    after_load: Vec<Value>,
}

/// The scripted core: hand [`ScriptedCore::transport`] to [`crate::Session::over`], keep the
/// core to inspect what it received.
#[derive(Debug, Clone, Default)]
pub struct ScriptedCore(Arc<Mutex<State>>);

impl ScriptedCore {
    /// A core that behaves well.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fault.
    pub fn with(self, fault: Fault) -> Self {
        self.0.lock().unwrap().faults.push(fault);
        self
    }

    /// Adds an account: a login with `password` is answered with `retcode` (2 user, 3 admin,
    /// 12 system administrator) and `name`. With an account the core requires a login before
    /// `cd.load` (code 208, class `auth`); a wrong password or an unknown login is answered
    /// with `RETCODE` 4 and the socket closed with 1008.
    pub fn with_account(self, login: &str, password: &str, retcode: i64, name: &str) -> Self {
        let account = Account { login: login.into(), password: password.into(), retcode, name: name.into() };
        self.0.lock().unwrap().accounts.push(account);
        self
    }

    /// A core that does not close the socket after a failed login (not what the contract
    /// says; for the client's handling of it).
    pub fn keeping_open_after_failed_login(self) -> Self {
        self.0.lock().unwrap().keep_open_after_failed_login = true;
        self
    }

    /// The conference already holds these parties; the load adds one's own after them (at the
    /// next index, named by `NAME`) and lists them all. The in-call commands then act on it.
    pub fn with_roster(self, parties: Vec<PartyData>) -> Self {
        self.0.lock().unwrap().roster = Some(parties);
        self
    }

    /// The load answer carries this `ResumeToken`; a load with it gives the same party back
    /// (code 1), one with another token a new party ([`values::NEW_PARTY`]).
    pub fn with_resume_token(self, token: &str) -> Self {
        self.0.lock().unwrap().resume_token = Some(token.into());
        self
    }

    /// From now on the core no longer knows the token (its grace time has passed).
    pub fn forget_resume(&self) {
        self.0.lock().unwrap().forget_resume = true;
    }

    /// From now on every login is refused (the account's password was changed meanwhile).
    pub fn refuse_logins(&self) {
        self.0.lock().unwrap().accounts.clear();
        self.0.lock().unwrap().refuse_logins = true;
    }

    /// Events the core sends right after each positive load answer, in order.
    pub fn after_load(self, events: Vec<Value>) -> Self {
        self.0.lock().unwrap().after_load = events;
        self
    }

    /// The client's end of a new connection to this core.
    pub fn transport(&self) -> ScriptedTransport {
        let mut s = self.0.lock().unwrap();
        s.conns.push(Conn::default());
        ScriptedTransport(self.0.clone(), s.conns.len() - 1)
    }

    /// The core's list of the conference's parties now (with [`ScriptedCore::with_roster`]).
    pub fn roster(&self) -> Vec<PartyData> {
        self.0.lock().unwrap().roster.clone().unwrap_or_default()
    }

    /// The newest connection breaks without a close frame (a cut network).
    pub fn cut(&self) {
        let mut s = self.0.lock().unwrap();
        if let Some(c) = s.conns.last_mut() {
            c.push(Inbound::Closed { reason: "the connection ended".into() });
            c.closed = true;
        }
    }

    /// Every command the core received, parsed.
    pub fn received(&self) -> Vec<Value> {
        self.0.lock().unwrap().received.clone()
    }

    /// The `cmd` of every command received, in order.
    pub fn received_cmds(&self) -> Vec<String> {
        self.received().iter().filter_map(|v| v["cmd"].as_str().map(str::to_owned)).collect()
    }

    /// Whether the client closed its end (or the core closed the socket) of the newest
    /// connection.
    pub fn is_closed(&self) -> bool {
        self.0.lock().unwrap().conns.last().is_some_and(|c| c.closed)
    }

    /// Sends an event now on the newest connection (as a core would at any time).
    pub fn push_event(&self, event: Value) {
        let mut s = self.0.lock().unwrap();
        if let Some(c) = s.conns.last_mut() {
            c.push(Inbound::Text(event.to_string()));
        }
    }
}

/// `conf.webrtc.Disconnected` for a party, with the core's reason.
pub fn disconnected_with_reason(party: u64, reason: &str) -> Value {
    Disconnected::transient(at(party), Some(reason.into())).to_event().to_value()
}

/// `conf.webrtc.Disconnected` for a party that was removed (`final`: it must not come back).
pub fn removed_event(party: u64, reason: &str) -> Value {
    Disconnected { at: at(party), reason: Some(reason.into()), final_: true }.to_event().to_value()
}

/// A `conf.changed` of the scripted conference.
pub fn changed(add: Vec<PartyData>, upd: Vec<PartyData>, del: Vec<PartyGone>) -> Value {
    ConfChanged { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), add, upd, del }.to_event().to_value()
}

fn at(party: u64) -> PartyRef {
    PartyRef { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), party: PartyId(party) }
}

/// `timer.time`, as the core sends it periodically.
pub fn timer_event() -> Value {
    TimerTime { t: TIME }.to_event().to_value()
}

/// A `conf.changed` announcing another party.
pub fn conf_changed_event() -> Value {
    let other = PartyData::new(PartyId(OTHER_PARTY), 1, "other");
    ConfChanged { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), add: vec![other], ..ConfChanged::default() }.to_event().to_value()
}

/// `conf.webrtc.Disconnected` for a party.
pub fn disconnected_event(party: u64) -> Value {
    Disconnected::transient(at(party), None).to_event().to_value()
}

fn servdesc() -> ServDesc {
    ServDesc { serveraddr: SERVERADDR.into(), username: TURN_USER.into(), credential: TURN_PASS.into() }
}

fn servufrag() -> ServUfrag {
    ServUfrag {
        ufrag: CORE_UFRAG.into(),
        pwd: CORE_PWD.into(),
        fingerprint: CORE_FINGERPRINT.into(),
        port: CORE_PORT,
        addr: Some(CORE_ADDR.into()),
        candidates: Vec::new(),
    }
}

/// The event that follows a command's answer, addressed to a party.
fn followup_event(cmd: &str, party: u64) -> Option<Event> {
    match cmd {
        "CALLME_S1" => Some(servdesc().to_event(at(party))),
        "CALLME_S2" => Some(servufrag().to_event(at(party))),
        _ => None,
    }
}

/// What a well-behaved core does for a command: its answer, the events after it, and whether
/// it then closes the socket (with this reason).
struct Outcome {
    answer: Answer,
    after: Vec<Value>,
    close: Option<String>,
}

impl Outcome {
    fn answer(answer: Answer) -> Self {
        Outcome { answer, after: Vec::new(), close: None }
    }
}

impl State {
    /// The v2 commands and the load, as the contract says.
    fn outcome(&mut self, conn: usize, cmd: &Command) -> Outcome {
        let refuse = |r: Refusal| Outcome::answer(Answer::negative(cmd, &r));
        match cmd.cmd.as_str() {
            "query" => self.login(conn, cmd),
            "load" => {
                if !self.accounts.is_empty() && self.conns[conn].login.is_none() {
                    return refuse(Refusal::new(code::LOGIN_REQUIRED, class::AUTH, "log in first: this core has accounts (q_cplxLogin)"));
                }
                self.load(conn, cmd)
            }
            "SETMIC" | "DELPARTY" | "INSTANTMSG" if self.roster.is_none() => {
                refuse(Refusal::proto(code::UNKNOWN_CMD, format!("unknown command {}", cmd.cmd)))
            }
            "SETMIC" | "DELPARTY" => {
                let own = self.conns[conn].party.unwrap_or(PARTY);
                let target = match cmd.number("PartyID") {
                    Ok(p) => p,
                    Err(r) => return refuse(r),
                };
                let controls = self.conns[conn].login.is_some_and(crate::wire::retcode::controls);
                if target != own && !controls {
                    let text =
                        format!("param PartyID {target} is not this session's party, and the session does not control the conference");
                    return refuse(Refusal::new(code::NOT_OWN_PARTY, class::AUTH, text));
                }
                let roster = self.roster.get_or_insert_with(Vec::new);
                let Some(i) = roster.iter().position(|p| p.id.0 == target) else {
                    return refuse(Refusal::new(code::NO_PARTY, class::CONF, format!("param PartyID {target}: no such party")));
                };
                if cmd.cmd == "SETMIC" {
                    let on = cmd.text("bMicOn") == Some("1");
                    let mut p = roster[i].clone();
                    p.mic_on = on;
                    roster[i] = p.clone();
                    p.old_index = Some(p.index);
                    Outcome { answer: Answer::positive(cmd), after: vec![changed(vec![], vec![p], vec![])], close: None }
                } else {
                    let gone = roster.remove(i);
                    let mut after = Vec::new();
                    if target == own {
                        after.push(removed_event(target, "removed from the conference"));
                    }
                    after.push(changed(vec![], vec![], vec![PartyGone { id: gone.id, index: gone.index }]));
                    Outcome { answer: Answer::positive(cmd), after, close: None }
                }
            }
            "INSTANTMSG" => {
                let msg = cmd.text("msg").unwrap_or("");
                let chars = msg.chars().count();
                if chars == 0 || chars > crate::wire::MAX_MSG_CHARS {
                    return refuse(Refusal::proto(code::TOO_LONG, format!("param msg: {chars} characters, not 1 to 1000")));
                }
                let own = self.conns[conn].party.unwrap_or(PARTY);
                let username = self.roster.iter().flatten().find(|p| p.id.0 == own).map(|p| p.name.clone()).unwrap_or_default();
                let m = InstantMsg {
                    cluster: ClusterId(CLUSTER),
                    conf: ConfId(CONF),
                    sender: Some(PartyId(own)),
                    username,
                    msg: msg.to_owned(),
                    color: cmd.text("color").unwrap_or("").to_owned(),
                    time: TIME,
                };
                Outcome { answer: Answer::positive(cmd), after: vec![m.to_event().to_value()], close: None }
            }
            "CALLME_S1" | "CALLME_S2" | "CALLME_BYE" => Outcome::answer(Answer::positive(cmd)),
            name => refuse(Refusal::proto(code::UNKNOWN_CMD, format!("unknown command {name}"))),
        }
    }

    fn login(&mut self, conn: usize, cmd: &Command) -> Outcome {
        if self.accounts.is_empty() && !self.refuse_logins {
            return Outcome::answer(Answer::negative(
                cmd,
                &Refusal::proto(code::UNKNOWN_QUERY, "query q_cplxLogin: this core has no accounts"),
            ));
        }
        let (user, pass) = (cmd.query_text(crate::wire::login::LOGIN), cmd.query_text(crate::wire::login::PASSWORD));
        let found = self.accounts.iter().find(|a| Some(a.login.as_str()) == user && Some(a.password.as_str()) == pass).cloned();
        match found {
            Some(a) => {
                self.conns[conn].login = Some(a.retcode);
                Outcome::answer(LoginAnswer { retcode: a.retcode, name: a.name }.to_answer(cmd))
            }
            None => Outcome {
                answer: LoginAnswer { retcode: crate::wire::retcode::LOGIN_ERROR, name: String::new() }.to_answer(cmd),
                after: Vec::new(),
                close: (!self.keep_open_after_failed_login).then(|| "close code 1008 login failed".to_owned()),
            },
        }
    }

    fn load(&mut self, conn: usize, cmd: &Command) -> Outcome {
        let controls = self.conns[conn].login.is_some_and(crate::wire::retcode::controls);
        let Some(roster) = self.roster.as_mut() else {
            // v1: no roster, no token, as the sequence snapshots have it.
            self.conns[conn].party = Some(PARTY);
            let loaded = Loaded { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), party: PartyId(PARTY), control: controls, code: 0 };
            return Outcome::answer(LoadAnswer { loaded, index: 0, parties: Vec::new(), resume_token: None }.to_answer(cmd));
        };
        let token = cmd.text(crate::wire::RESUME_TOKEN);
        let resumed = token.is_some() && token == self.resume_token.as_deref() && !self.forget_resume;
        let party = match token {
            None => PARTY,
            Some(_) if resumed => PARTY,
            Some(_) => NEW_PARTY,
        };
        if token.is_some() && !resumed {
            // The old party's grace time is over: it is gone.
            roster.retain(|p| p.id.0 != PARTY);
        }
        let mut after = Vec::new();
        if !roster.iter().any(|p| p.id.0 == party) {
            let index = roster.iter().map(|p| p.index + 1).max().unwrap_or(0);
            let me = PartyData::new(PartyId(party), index, cmd.text("NAME").unwrap_or(""));
            roster.push(me.clone());
            after.push(changed(vec![me], vec![], vec![]));
        }
        self.conns[conn].party = Some(party);
        let index = roster.iter().find(|p| p.id.0 == party).map_or(0, |p| p.index);
        let code = if resumed { crate::wire::code::LOAD_CONNECTED } else { crate::wire::code::OK };
        let loaded = Loaded { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), party: PartyId(party), control: controls, code };
        let answer = LoadAnswer { loaded, index, parties: roster.clone(), resume_token: self.resume_token.clone() }.to_answer(cmd);
        after.extend(self.after_load.iter().cloned());
        Outcome { answer, after, close: None }
    }

    fn handle(&mut self, conn: usize, frame: &str) {
        let Ok(raw) = serde_json::from_str::<Value>(frame) else { return };
        self.received.push(raw);
        let limits = CommandLimits { max_frame_bytes: usize::MAX };
        let cmd = Command::parse(frame, &limits).unwrap_or_else(|e| Command {
            cmd: e.cmd,
            seq: e.seq.unwrap_or(0),
            obj: e.obj,
            params: Default::default(),
            query: None,
        });
        let name = cmd.cmd.clone();
        let seq = cmd.seq;
        let fault = self.faults.iter().find(|f| f.on() == name).cloned();
        // A refused command changes nothing in the core.
        let Outcome { answer: ok_answer, after, close } = match fault {
            Some(Fault::Refuse { .. }) => Outcome::answer(Answer::positive(&cmd)),
            _ => self.outcome(conn, &cmd),
        };
        let evt_of = |party: u64| followup_event(&name, party).map(|e| e.to_value());
        let mut out: Vec<Option<Value>> = Vec::new(); // None = close the socket
        let ans = ok_answer.to_value();
        // Events go to the connection's own party (a new one after a load the core did not resume).
        let own = self.conns[conn].party.unwrap_or(PARTY);
        let evt = evt_of(own);
        let unrelated = [timer_event(), conf_changed_event()];
        match fault {
            None => {
                let positive = ok_answer.code == 0 || name == "load";
                out.push(Some(ans));
                if positive {
                    out.extend(evt.map(Some));
                    out.extend(after.into_iter().map(Some));
                }
            }
            Some(Fault::Refuse { code, class, text, .. }) => {
                out.push(Some(Answer::negative(&cmd, &Refusal::new(code, class, text)).to_value()));
            }
            Some(Fault::NoAnswer { .. }) => {}
            Some(Fault::NoEvent { .. }) => out.push(Some(ans)),
            Some(Fault::CloseBeforeAnswer { .. }) => out.push(None),
            Some(Fault::CloseBeforeEvent { .. }) => {
                out.push(Some(ans));
                out.push(None);
            }
            Some(Fault::CloseAfterEvent { .. }) => {
                out.push(Some(ans));
                out.extend(evt.map(Some));
                out.push(None);
            }
            Some(Fault::MalformedAnswer { .. }) => {
                let mut broken = Answer::positive(&cmd).to_value();
                broken["ANSW"]["result"]["code"] = Value::from("zero");
                out.push(Some(broken));
            }
            Some(Fault::GarbageFrame { .. }) => {
                self.conns[conn].push(Inbound::Text("{\"ANSW\": {\"cmd\": ".into()));
            }
            Some(Fault::MalformedEvent { field, value, .. }) => {
                out.push(Some(ans));
                if let Some(mut e) = evt {
                    let data = &mut e["EVT"]["result"]["EvtData"];
                    match value {
                        Some(v) => data[field] = v,
                        None => {
                            if let Some(d) = data.as_object_mut() {
                                d.remove(field);
                            }
                        }
                    }
                    out.push(Some(e));
                }
            }
            Some(Fault::EventBeforeAnswer { .. }) => {
                out.extend(evt.map(Some));
                out.push(Some(ans));
            }
            Some(Fault::DuplicateEvent { .. }) => {
                out.push(Some(ans));
                out.extend(evt.clone().map(Some));
                out.extend(evt.map(Some));
            }
            Some(Fault::Interleaved { .. }) => {
                out.extend(unrelated.iter().cloned().map(Some));
                out.push(Some(ans));
                out.extend(unrelated.iter().cloned().map(Some));
                out.extend(evt.map(Some));
            }
            Some(Fault::OtherPartyFirst { .. }) => {
                out.push(Some(ans));
                out.extend(evt_of(OTHER_PARTY).map(Some));
                out.extend(evt.map(Some));
            }
            Some(Fault::Disconnect { .. }) => {
                out.push(Some(ans));
                out.push(Some(disconnected_event(PARTY)));
            }
            Some(Fault::DisconnectAfterEvent { .. }) => {
                out.push(Some(ans));
                out.extend(evt.map(Some));
                out.extend(unrelated.iter().cloned().map(Some));
                out.push(Some(disconnected_event(PARTY)));
            }
            Some(Fault::StaleAnswer { .. }) => {
                let stale = Command { seq: seq.saturating_add(100), ..cmd.clone() };
                out.push(Some(Answer::positive(&stale).to_value()));
                out.push(Some(ans));
                out.extend(evt.map(Some));
            }
        }
        if seq == 0 && name == "CALLME_BYE" {
            return;
        }
        let c = &mut self.conns[conn];
        for o in out {
            match o {
                Some(v) => c.push(Inbound::Text(v.to_string())),
                None => {
                    c.push(Inbound::Closed { reason: "close code 1001 core going away".into() });
                    c.closed = true;
                    return;
                }
            }
        }
        if let Some(reason) = close {
            c.push(Inbound::Closed { reason });
            c.closed = true;
        }
    }
}

/// The client's end of one connection to a [`ScriptedCore`].
#[derive(Debug)]
pub struct ScriptedTransport(Arc<Mutex<State>>, usize);

impl Sink<String> for ScriptedTransport {
    type Error = String;
    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, frame: String) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        if s.conns[self.1].closed {
            return Err("the scripted core closed the socket".into());
        }
        s.handle(self.1, &frame);
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.0.lock().unwrap().conns[self.1].closed = true;
        Poll::Ready(Ok(()))
    }
}

impl Stream for ScriptedTransport {
    type Item = Inbound;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let mut s = self.0.lock().unwrap();
        let c = &mut s.conns[self.1];
        match c.outbox.pop_front() {
            Some(i) => Poll::Ready(Some(i)),
            None if c.closed => Poll::Ready(None),
            None => {
                c.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
