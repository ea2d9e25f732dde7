//! The frames of the control protocol (`docs/protocol.md`): commands, answers, events and the
//! codes they carry. Pure data and parsing, no IO.
//!
//! Parsing is strict about what the protocol marks MUST and lenient where the contract says so
//! (numbers sent as strings and strings sent as numbers are both accepted). Every parse error
//! names the field by its path in the frame, e.g. `EVT.result.EvtData.port`, and the reason.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The WebSocket sub-protocol the client offers.
pub const SUBPROTOCOL: &str = "PalladaWSData";

/// A conference cluster number (`ClusterID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

/// A running conference (`confdata.ID`, the `ID` param of CALLME commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct ConfId(pub u64);

/// A party in a running conference (`SVPartyID`, `PartyID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct PartyId(pub u64);

/// The conference number a person dials (`SchemeID` of `cd.load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct SchemeId(pub u64);

macro_rules! display_id {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { self.0.fmt(f) }
        }
    )*};
}
display_id!(ClusterId, ConfId, PartyId, SchemeId);

/// Where a frame or one of its fields failed to parse: the field's path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    /// Path of the field inside the frame, e.g. `ANSW.result.code` (or `frame` for the whole).
    pub field: String,
    /// What is wrong with it, in words.
    pub reason: String,
}

impl WireError {
    /// An error naming `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        WireError { field: field.into(), reason: reason.into() }
    }
}

/// Codes of negative answers and of `cd.load` (see `docs/protocol.md`, "Codes").
pub mod code {
    /// Positive answer.
    pub const OK: i64 = 0;
    /// `cd.load`: the conference was already running and the party joined it.
    pub const LOAD_CONNECTED: i64 = 1;
    /// `cd.load`: this session already holds a party there.
    pub const LOAD_ALREADY_CONNECTED: i64 = 2;
    /// `cd.load`: no such conference.
    pub const LOAD_NOT_FOUND: i64 = 3;
    /// `cd.load`: denied.
    pub const LOAD_DENIED: i64 = 4;
    /// The frame is not a JSON object.
    pub const NOT_JSON: i64 = 100;
    /// The frame is larger than the configured limit.
    pub const TOO_LARGE: i64 = 101;
    /// `cmd`, `seq` or `obj` is missing or of the wrong type.
    pub const BAD_FRAME: i64 = 102;
    /// The command is not known for that `obj`.
    pub const UNKNOWN_CMD: i64 = 103;
    /// The `obj` is not known.
    pub const UNKNOWN_OBJ: i64 = 104;
    /// A param is missing or malformed (the text names it).
    pub const BAD_PARAM: i64 = 105;
    /// `query.name` is not a query the core knows (`q_cplxLogin` is the only one).
    pub const UNKNOWN_QUERY: i64 = 106;
    /// A param is longer than its limit (`msg`, `sLogin`, `sPassword`; the text names it).
    pub const TOO_LONG: i64 = 107;
    /// No such conference.
    pub const NO_CONFERENCE: i64 = 200;
    /// No such party in the conference.
    pub const NO_PARTY: i64 = 201;
    /// The party is not the session's own and the session does not control the conference.
    pub const NOT_OWN_PARTY: i64 = 202;
    /// CALLME_S2 for a party that has no CALLME_S1 under way.
    pub const S2_BEFORE_S1: i64 = 203;
    /// `fingerprint` is not `sha-256` followed by 32 colon-separated hex bytes.
    pub const BAD_FINGERPRINT: i64 = 204;
    /// `ufrag` or `pwd` is too short or has characters ICE does not allow.
    pub const BAD_ICE_CREDENTIALS: i64 = 205;
    /// The session has not loaded a conference, or may not do this.
    pub const NOT_AUTHORISED: i64 = 206;
    /// `cd.load` would start a conference, and the session has started as many as the core
    /// allows one session (`max_conferences_per_session`).
    pub const TOO_MANY_CONFERENCES: i64 = 207;
    /// The core has accounts and the session has not logged in (`q_cplxLogin`) yet.
    pub const LOGIN_REQUIRED: i64 = 208;
    /// The session has logged in already; one login per session.
    pub const ALREADY_LOGGED_IN: i64 = 209;
    /// The core could not set up media for the party.
    pub const MEDIA_FAILED: i64 = 300;
}

/// The WebSocket close codes the reference core uses (RFC 6455, section 7.4.1).
pub mod close {
    /// The core is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the WebSocket protocol (unmasked, reserved bits or opcode, bad framing).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The session broke a policy of the core: too many bad frames, an outbound queue that
    /// filled up because the client does not read, no frame and no pong for the idle time.
    pub const POLICY: u16 = 1008;
    /// A frame or message was larger than the WebSocket layer's limit.
    pub const TOO_BIG: u16 = 1009;
    /// The core serves its maximum number of sessions: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A command, client → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The command name, e.g. `CALLME_S1`.
    pub cmd: String,
    /// The transaction number echoed in the answer; `0`: no answer wanted.
    pub seq: u64,
    /// The addressee: `cd` or `conf` (empty for a `query`, which has none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub obj: String,
    /// The params, every value as a string (numbers sent as JSON numbers are read as their digits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The database query of `cmd` `query` (the login, `q_cplxLogin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Query>,
}

/// The `query` member of a `query` command: a named database query of the VSP core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The query's name, e.g. `q_cplxLogin`.
    pub name: String,
    /// Its params, every value a string.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// The login query (`docs/protocol.md`, "Logging in").
pub mod login {
    /// `cmd` of a query.
    pub const CMD: &str = "query";
    /// `query.name` of the login.
    pub const QUERY: &str = "q_cplxLogin";
    /// The login param.
    pub const LOGIN: &str = "sLogin";
    /// The password param: a secret, never written to a transcript or a log.
    pub const PASSWORD: &str = "sPassword";
    /// What a transcript shows in place of the password.
    pub const REDACTED: &str = "<redacted>";
}

/// `RETCODE` of the login answer.
pub mod retcode {
    /// Login OK, a user.
    pub const USER: i64 = 2;
    /// Login OK, an administrator (controls conferences).
    pub const ADMIN: i64 = 3;
    /// Login OK, a system administrator (controls conferences).
    pub const SYSADMIN: i64 = 12;
    /// Login error: unknown login or wrong password.
    pub const LOGIN_ERROR: i64 = 4;
    /// Low privileges.
    pub const LOW_PRIVILEGES: i64 = 5;

    /// Whether the code means logged in.
    pub fn is_ok(code: i64) -> bool {
        matches!(code, USER | ADMIN | SYSADMIN)
    }

    /// Whether the code means a login that controls conferences (`bControl`).
    pub fn controls(code: i64) -> bool {
        matches!(code, ADMIN | SYSADMIN)
    }

    /// What the code means, in words.
    pub fn meaning(code: i64) -> &'static str {
        match code {
            USER => "login OK (user)",
            ADMIN => "login OK (admin)",
            SYSADMIN => "login OK (system administrator)",
            LOGIN_ERROR => "login error: unknown login or wrong password",
            LOW_PRIVILEGES => "low privileges",
            _ => "a RETCODE this client does not know",
        }
    }
}

/// `cd.load`'s param for coming back as the same party.
pub const RESUME_TOKEN: &str = "ResumeToken";

/// The longest `msg` of `INSTANTMSG`, in characters.
pub const MAX_MSG_CHARS: usize = 1000;

/// What the core's command reader enforces besides the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    /// Frames larger than this many bytes are refused with [`code::TOO_LARGE`].
    pub max_frame_bytes: usize,
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits { max_frame_bytes: 16 * 1024 }
    }
}

/// A frame the core's command reader refused: the code, the field and the reason, and what of
/// the frame could be read (so the core can answer, or send a `session.error` when it cannot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CommandError {
    /// [`code::NOT_JSON`], [`code::TOO_LARGE`], [`code::BAD_FRAME`] or [`code::BAD_PARAM`].
    pub code: i64,
    /// The member named, e.g. `seq`, `obj`, `param ClusterID`, or `frame` for the whole.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// The `seq`, when it could be read.
    pub seq: Option<u64>,
    /// The `cmd`, when it could be read (else empty).
    pub cmd: String,
    /// The `obj`, when it could be read (else empty).
    pub obj: String,
}

impl CommandError {
    fn frame(code: i64, field: &str, reason: impl Into<String>) -> Self {
        CommandError { code, field: field.to_owned(), reason: reason.into(), seq: None, cmd: String::new(), obj: String::new() }
    }

    /// The refusal to send: class `proto`, the text naming the field.
    pub fn refusal(&self) -> Refusal {
        Refusal::proto(self.code, self.to_string())
    }

    /// How the core replies: a negative answer when a `seq` above 0 was read, else a
    /// `session.error` event.
    pub fn reply(&self) -> Incoming {
        match self.seq {
            Some(seq) if seq > 0 => {
                let at = Command { cmd: self.cmd.clone(), seq, obj: self.obj.clone(), params: BTreeMap::new(), query: None };
                Incoming::Answer(Answer::negative(&at, &self.refusal()))
            }
            _ => Incoming::Event(SessionError(self.refusal()).to_event()),
        }
    }
}

impl Command {
    /// A command with no params yet; `seq` is filled in by the session.
    pub fn new(obj: &str, cmd: &str) -> Self {
        Command { cmd: cmd.to_owned(), seq: 0, obj: obj.to_owned(), params: BTreeMap::new(), query: None }
    }

    /// The login query: `q_cplxLogin` with `sLogin` and `sPassword` (and the VSP core's other
    /// params at their web-login values).
    pub fn login(user: &str, password: &str) -> Self {
        let params = [(login::LOGIN, user), (login::PASSWORD, password), ("iWebLogin", "1"), ("sSSOSID", ""), ("iSSO_CREATE_ASSOC", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Command { query: Some(Query { name: login::QUERY.to_owned(), params }), ..Command::new("", login::CMD) }
    }

    /// `SETMIC`: the party's microphone on or off.
    pub fn set_mic(at: PartyRef, on: bool) -> Self {
        at.params(Command::new("conf", "SETMIC")).param("bMicOn", u8::from(on))
    }

    /// `INSTANTMSG`: a chat line to the conference.
    pub fn instant_msg(cluster: ClusterId, conf: ConfId, msg: &str, color: Option<&str>) -> Self {
        let c = Command::new("conf", "INSTANTMSG").param("ClusterID", cluster).param("ID", conf).param("msg", msg);
        match color {
            Some(color) => c.param("color", color),
            None => c,
        }
    }

    /// `DELPARTY`: the party leaves the conference.
    pub fn del_party(at: PartyRef) -> Self {
        at.params(Command::new("conf", "DELPARTY"))
    }

    /// A param of the query, if present.
    pub fn query_text(&self, key: &str) -> Option<&str> {
        self.query.as_ref().and_then(|q| q.params.get(key)).map(String::as_str)
    }

    /// The frame as it may be shown: the password of a login replaced by
    /// [`login::REDACTED`].
    pub fn to_shown_frame(&self) -> String {
        let mut shown = self.clone();
        if let Some(p) = shown.query.as_mut().and_then(|q| q.params.get_mut(login::PASSWORD)) {
            *p = login::REDACTED.to_owned();
        }
        shown.to_frame()
    }

    /// Adds a param; every value goes on the wire as a JSON string.
    pub fn param(mut self, key: &str, value: impl ToString) -> Self {
        self.params.insert(key.to_owned(), value.to_string());
        self
    }

    /// The frame text, as sent.
    pub fn to_frame(&self) -> String {
        serde_json::to_string(self).expect("a command always serialises")
    }

    /// Reads a command strictly, as the core does: size, JSON, `seq`, `cmd`, `obj`, `params`,
    /// in that order, the first problem deciding the error. Lenient where the contract says so:
    /// `seq` may be a string of digits, a param may be a JSON number (read as its digits), and
    /// `params` may be absent or `null`. Unknown top-level members (`dst`, `lng`) are ignored.
    pub fn parse(text: &str, limits: &CommandLimits) -> Result<Command, CommandError> {
        if text.len() > limits.max_frame_bytes {
            let reason = format!("{} bytes is larger than the limit of {} bytes", text.len(), limits.max_frame_bytes);
            return Err(CommandError::frame(code::TOO_LARGE, "frame", reason));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| CommandError::frame(code::NOT_JSON, "frame", format!("not valid JSON ({e})")))?;
        let Value::Object(o) = value else {
            return Err(CommandError::frame(code::NOT_JSON, "frame", "not a JSON object"));
        };
        let seq = match o.get("seq") {
            None => return Err(CommandError::frame(code::BAD_FRAME, "seq", "missing")),
            Some(s) => lenient_u64(s).ok_or_else(|| CommandError::frame(code::BAD_FRAME, "seq", "not a non-negative integer"))?,
        };
        let mut err = CommandError::frame(code::BAD_FRAME, "", "");
        err.seq = Some(seq);
        err.cmd = o.get("cmd").and_then(Value::as_str).unwrap_or("").to_owned();
        err.obj = o.get("obj").and_then(Value::as_str).unwrap_or("").to_owned();
        let fail = |code: i64, field: &str, reason: String| {
            let mut e = err.clone();
            e.code = code;
            e.field = field.to_owned();
            e.reason = reason;
            Err(e)
        };
        let is_query = err.cmd == login::CMD;
        for key in ["cmd", "obj"] {
            match o.get(key) {
                None if key == "obj" && is_query => {}
                None => return fail(code::BAD_FRAME, key, "missing".into()),
                Some(Value::String(_)) => {}
                Some(_) => return fail(code::BAD_FRAME, key, "not a string".into()),
            }
        }
        let params = match string_params(o.get("params"), "params", "param ") {
            Ok(p) => p,
            Err((code, field, reason)) => return fail(code, &field, reason),
        };
        let query = match (is_query, o.get("query")) {
            (false, _) => None,
            (true, None) => return fail(code::BAD_FRAME, "query", "missing".into()),
            (true, Some(Value::Object(q))) => {
                let name = match q.get("name") {
                    None => return fail(code::BAD_FRAME, "query.name", "missing".into()),
                    Some(Value::String(n)) => n.clone(),
                    Some(_) => return fail(code::BAD_FRAME, "query.name", "not a string".into()),
                };
                match string_params(q.get("params"), "query.params", "query.params.") {
                    Ok(params) => Some(Query { name, params }),
                    Err((code, field, reason)) => return fail(code, &field, reason),
                }
            }
            (true, Some(_)) => return fail(code::BAD_FRAME, "query", "not an object".into()),
        };
        Ok(Command { cmd: err.cmd, seq, obj: err.obj, params, query })
    }

    /// A numeric param: a non-negative integer, else a [`code::BAD_PARAM`] refusal naming it.
    pub fn number(&self, key: &str) -> Result<u64, Refusal> {
        let v = self.params.get(key).ok_or_else(|| Refusal::proto(code::BAD_PARAM, format!("param {key} is missing")))?;
        v.trim().parse::<u64>().map_err(|_| Refusal::proto(code::BAD_PARAM, format!("param {key} is {v:?}, not a non-negative integer")))
    }

    /// A param as given, if present.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Reads an object of params leniently (strings, or numbers as their digits); the error is the
/// code, the field (`prefix` + key) and the reason.
fn string_params(v: Option<&Value>, at: &str, prefix: &str) -> Result<BTreeMap<String, String>, (i64, String, String)> {
    let mut params = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            for (k, v) in p {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err((code::BAD_PARAM, format!("{prefix}{k}"), "not a string or number".into())),
                };
                params.insert(k.clone(), s);
            }
        }
        Some(_) => return Err((code::BAD_FRAME, at.to_owned(), "not an object".into())),
    }
    Ok(params)
}

/// A negative result of an answer: the core's code, class and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `result.code`, 100 and above (`code::*`).
    pub code: i64,
    /// A short machine word: `proto`, `auth`, `conf`, `media`, `limit`.
    pub class: String,
    /// A sentence a person can act on, naming the bad field.
    pub text: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {} ({}): {}", self.code, self.class, self.text)
    }
}

impl std::error::Error for Refusal {}

/// The `class` words of refusals (`docs/protocol.md`, "Codes").
pub mod class {
    /// The frame or a param is malformed.
    pub const PROTO: &str = "proto";
    /// A conference or party is not there, or not in the right state.
    pub const CONF: &str = "conf";
    /// The session may not do this.
    pub const AUTH: &str = "auth";
    /// The core could not set up media.
    pub const MEDIA: &str = "media";
    /// A limit of the core was reached.
    pub const LIMIT: &str = "limit";
}

impl Refusal {
    /// A refusal with this code, class and text.
    pub fn new(code: i64, class: &str, text: impl Into<String>) -> Self {
        Refusal { code, class: class.to_owned(), text: text.into() }
    }

    /// A refusal of class `proto`.
    pub fn proto(code: i64, text: impl Into<String>) -> Self {
        Refusal::new(code, class::PROTO, text)
    }

    /// `result` of a negative answer or a `session.error` event: `code`, `class`, `text`.
    fn to_result(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("code".into(), Value::from(self.code));
        m.insert("class".into(), Value::from(self.class.as_str()));
        m.insert("text".into(), Value::from(self.text.as_str()));
        m
    }
}

/// An answer, core → client, matched to its command by `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The command answered.
    pub cmd: String,
    /// The command's `seq`.
    pub seq: u64,
    /// The command's `obj`.
    pub obj: String,
    /// `result.code`: 0 positive, anything else negative (but see `cd.load`'s codes).
    pub code: i64,
    /// The whole `result` object, for runtime data next to `code`.
    pub result: Map<String, Value>,
    /// Members of `ANSW` besides `cmd`, `seq`, `obj` and `result` (a query's `fdefs` and
    /// `records`).
    pub extra: Map<String, Value>,
}

impl Answer {
    /// An answer to `c` with this `code` and nothing else in `result` yet.
    pub fn with_code(c: &Command, code: i64) -> Answer {
        let mut result = Map::new();
        result.insert("code".into(), Value::from(code));
        Answer { cmd: c.cmd.clone(), seq: c.seq, obj: c.obj.clone(), code, result, extra: Map::new() }
    }

    /// The positive answer to `c`: `{"code":0}`.
    pub fn positive(c: &Command) -> Answer {
        Answer::with_code(c, code::OK)
    }

    /// The negative answer to `c`: `{"code":..,"class":..,"text":..}`.
    pub fn negative(c: &Command, r: &Refusal) -> Answer {
        Answer { cmd: c.cmd.clone(), seq: c.seq, obj: c.obj.clone(), code: r.code, result: r.to_result(), extra: Map::new() }
    }

    /// Adds runtime data to `result` (the key `code` is kept as it is).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Answer {
        if key != "code" {
            self.result.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Adds a member of `ANSW` next to `result` (a query's `fdefs`, `records`).
    pub fn with_member(mut self, key: &str, value: impl Into<Value>) -> Answer {
        if !matches!(key, "cmd" | "seq" | "obj" | "result") {
            self.extra.insert(key.to_owned(), value.into());
        }
        self
    }

    /// The frame text, as the core sends it (members in alphabetical order).
    pub fn to_frame(&self) -> String {
        self.to_value().to_string()
    }

    /// The frame as a JSON value (no `obj` when it is empty, as for a query).
    pub fn to_value(&self) -> Value {
        let mut inner = self.extra.clone();
        inner.insert("cmd".into(), Value::from(self.cmd.as_str()));
        inner.insert("seq".into(), Value::from(self.seq));
        if !self.obj.is_empty() {
            inner.insert("obj".into(), Value::from(self.obj.as_str()));
        }
        inner.insert("result".into(), Value::Object(self.result.clone()));
        let mut top = Map::new();
        top.insert("ANSW".into(), Value::Object(inner));
        Value::Object(top)
    }

    /// The refusal this answer carries, if `code` is not one of `accepted`.
    pub fn refusal(&self, accepted: &[i64]) -> Option<Refusal> {
        if accepted.contains(&self.code) {
            return None;
        }
        let text = |k: &str| self.result.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Some(Refusal { code: self.code, class: text("class"), text: text("text") })
    }
}

/// An event, core → client, unsolicited.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `conf`, `timer`, `session`, ...
    pub obj: String,
    /// `webrtc`, `changed`, `time`, `error`, ...
    pub evt: String,
    /// `servdesc`, `servufrag`, `Disconnected`, ... when the event has a type.
    pub evttype: Option<String>,
    /// The whole `result` value.
    pub result: Value,
}

impl Event {
    /// An event with this name and `result`.
    pub fn new(obj: &str, evt: &str, evttype: Option<&str>, result: Value) -> Event {
        Event { obj: obj.to_owned(), evt: evt.to_owned(), evttype: evttype.map(str::to_owned), result }
    }

    /// The frame text, as the core sends it (members in alphabetical order; no `evttype` when
    /// there is none, no `result` when it is `null`).
    pub fn to_frame(&self) -> String {
        self.to_value().to_string()
    }

    /// The frame as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut inner = Map::new();
        inner.insert("obj".into(), Value::from(self.obj.as_str()));
        inner.insert("evt".into(), Value::from(self.evt.as_str()));
        if let Some(t) = &self.evttype {
            inner.insert("evttype".into(), Value::from(t.as_str()));
        }
        if !self.result.is_null() {
            inner.insert("result".into(), self.result.clone());
        }
        let mut top = Map::new();
        top.insert("EVT".into(), Value::Object(inner));
        Value::Object(top)
    }

    /// `obj.evt[.evttype]`, e.g. `conf.webrtc.servufrag`.
    pub fn name(&self) -> String {
        match &self.evttype {
            Some(t) => format!("{}.{}.{}", self.obj, self.evt, t),
            None => format!("{}.{}", self.obj, self.evt),
        }
    }

    /// The `PartyID` the event is addressed to, if it names one.
    pub fn party(&self) -> Option<PartyId> {
        self.result.get("PartyID").and_then(lenient_u64).map(PartyId)
    }

    /// `result.EvtData` (an empty object when absent).
    pub fn evt_data(&self) -> &Value {
        static EMPTY: Value = Value::Null;
        self.result.get("EvtData").unwrap_or(&EMPTY)
    }
}

/// One frame from the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `{"ANSW": ...}`.
    Answer(Answer),
    /// `{"EVT": ...}`.
    Event(Event),
}

impl Incoming {
    /// The frame text, as the core sends it.
    pub fn to_frame(&self) -> String {
        match self {
            Incoming::Answer(a) => a.to_frame(),
            Incoming::Event(e) => e.to_frame(),
        }
    }

    /// Parses one text frame strictly; the error names the field.
    pub fn parse(text: &str) -> Result<Incoming, WireError> {
        let value: Value = serde_json::from_str(text).map_err(|e| WireError::new("frame", format!("not valid JSON ({e})")))?;
        let Value::Object(top) = value else {
            return Err(WireError::new("frame", "not a JSON object"));
        };
        if let Some(answ) = top.get("ANSW") {
            return parse_answer(answ).map(Incoming::Answer);
        }
        if let Some(evt) = top.get("EVT") {
            return parse_event(evt).map(Incoming::Event);
        }
        Err(WireError::new("frame", "neither ANSW nor EVT"))
    }
}

fn parse_answer(v: &Value) -> Result<Answer, WireError> {
    let o = v.as_object().ok_or_else(|| WireError::new("ANSW", "not an object"))?;
    let seq = o
        .get("seq")
        .ok_or_else(|| WireError::new("ANSW.seq", "missing"))
        .and_then(|s| lenient_u64(s).ok_or_else(|| WireError::new("ANSW.seq", "not a non-negative integer")))?;
    let cmd = req_str(o, "ANSW", "cmd")?;
    let obj = o.get("obj").and_then(Value::as_str).unwrap_or("").to_owned();
    let result = o
        .get("result")
        .ok_or_else(|| WireError::new("ANSW.result", "missing"))?
        .as_object()
        .ok_or_else(|| WireError::new("ANSW.result", "not an object"))?
        .clone();
    let code = result
        .get("code")
        .ok_or_else(|| WireError::new("ANSW.result.code", "missing"))
        .and_then(|c| lenient_i64(c).ok_or_else(|| WireError::new("ANSW.result.code", "not an integer")))?;
    let extra =
        o.iter().filter(|(k, _)| !matches!(k.as_str(), "cmd" | "seq" | "obj" | "result")).map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Answer { cmd, seq, obj, code, result, extra })
}

fn parse_event(v: &Value) -> Result<Event, WireError> {
    let o = v.as_object().ok_or_else(|| WireError::new("EVT", "not an object"))?;
    let obj = req_str(o, "EVT", "obj")?;
    let evt = req_str(o, "EVT", "evt")?;
    let evttype = match o.get("evttype") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(WireError::new("EVT.evttype", "not a string")),
    };
    let result = o.get("result").cloned().unwrap_or(Value::Null);
    if !(result.is_object() || result.is_null()) {
        return Err(WireError::new("EVT.result", "not an object"));
    }
    Ok(Event { obj, evt, evttype, result })
}

fn req_str(o: &Map<String, Value>, at: &str, key: &str) -> Result<String, WireError> {
    match o.get(key) {
        None => Err(WireError::new(format!("{at}.{key}"), "missing")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(WireError::new(format!("{at}.{key}"), "not a string")),
    }
}

/// A non-negative integer given as a JSON number or as a string of digits.
pub fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An integer given as a JSON number or as a string of digits.
pub fn lenient_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads fields out of an event's `EvtData`, naming each bad one by its full path.
struct Fields<'a> {
    at: &'static str,
    data: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value, at: &'static str) -> Result<Self, WireError> {
        let data = v.as_object().ok_or_else(|| WireError::new(at, "missing or not an object"))?;
        Ok(Fields { at, data })
    }
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }
    fn string(&self, key: &str) -> Result<String, WireError> {
        match self.data.get(key) {
            None => Err(WireError::new(self.path(key), "missing")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(WireError::new(self.path(key), "not a string")),
        }
    }
    fn opt_string(&self, key: &str) -> Result<Option<String>, WireError> {
        match self.data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }
}

/// `conf.webrtc.servdesc`: the ICE server the client gives its PeerConnection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServDesc {
    /// TURN/STUN URL, empty when the core has none.
    pub serveraddr: String,
    /// TURN user name, empty when none.
    pub username: String,
    /// TURN password, empty when none.
    pub credential: String,
}

impl ServDesc {
    /// The event's name.
    pub const EVENT: &'static str = "conf.webrtc.servdesc";

    /// The event addressed to a party.
    pub fn to_event(&self, to: PartyRef) -> Event {
        let data = json!({"serveraddr": self.serveraddr, "username": self.username, "credential": self.credential});
        to.webrtc_event("servdesc", Some(data))
    }

    /// Reads the event's `EvtData`, checking every field.
    pub fn from_event(e: &Event) -> Result<ServDesc, WireError> {
        let f = Fields::of(e.evt_data(), "EVT.result.EvtData")?;
        let d = ServDesc { serveraddr: f.string("serveraddr")?, username: f.string("username")?, credential: f.string("credential")? };
        let scheme_ok = d.serveraddr.is_empty() || ["turn:", "turns:", "stun:", "stuns:"].iter().any(|p| d.serveraddr.starts_with(p));
        if !scheme_ok {
            return Err(WireError::new(f.path("serveraddr"), "not a turn:, turns:, stun: or stuns: URL"));
        }
        Ok(d)
    }
}

/// `conf.webrtc.servufrag`: what the client needs to write the core's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServUfrag {
    /// The core's ICE ufrag for the party.
    pub ufrag: String,
    /// The core's ICE password for the party.
    pub pwd: String,
    /// `"sha-256 AB:CD:..."`.
    pub fingerprint: String,
    /// The core's UDP media port.
    pub port: u16,
    /// Address for the candidate; the host of the WebSocket URL when absent.
    pub addr: Option<String>,
    /// Full `candidate:` lines, when the core gives more than one address.
    pub candidates: Vec<String>,
}

impl ServUfrag {
    /// The event's name.
    pub const EVENT: &'static str = "conf.webrtc.servufrag";

    /// The event addressed to a party (`addr` and `candidates` only when given).
    pub fn to_event(&self, to: PartyRef) -> Event {
        let mut data = Map::new();
        data.insert("ufrag".into(), Value::from(self.ufrag.as_str()));
        data.insert("pwd".into(), Value::from(self.pwd.as_str()));
        data.insert("fingerprint".into(), Value::from(self.fingerprint.as_str()));
        data.insert("port".into(), Value::from(self.port));
        if let Some(a) = &self.addr {
            data.insert("addr".into(), Value::from(a.as_str()));
        }
        if !self.candidates.is_empty() {
            data.insert("candidates".into(), Value::from(self.candidates.clone()));
        }
        to.webrtc_event("servufrag", Some(Value::Object(data)))
    }

    /// Reads the event's `EvtData`, checking every field.
    pub fn from_event(e: &Event) -> Result<ServUfrag, WireError> {
        let f = Fields::of(e.evt_data(), "EVT.result.EvtData")?;
        let ufrag = f.string("ufrag")?;
        check_ice_chars(&ufrag, 4).map_err(|r| WireError::new(f.path("ufrag"), r))?;
        let pwd = f.string("pwd")?;
        check_ice_chars(&pwd, 22).map_err(|r| WireError::new(f.path("pwd"), r))?;
        let fingerprint = f.string("fingerprint")?;
        check_fingerprint(&fingerprint).map_err(|r| WireError::new(f.path("fingerprint"), r))?;
        let port = match f.data.get("port") {
            None => return Err(WireError::new(f.path("port"), "missing")),
            Some(v) => lenient_u64(v)
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| WireError::new(f.path("port"), "not a port number (1-65535)"))? as u16,
        };
        let addr = f.opt_string("addr")?;
        let candidates = match f.data.get("candidates") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, c)| match c.as_str() {
                    // RFC 8839's grammar, no line break or foreign attribute can ride along.
                    Some(s) => crate::media::sdp::check_candidate(s)
                        .map(|()| s.to_owned())
                        .map_err(|r| WireError::new(format!("{}[{i}]", f.path("candidates")), r)),
                    None => Err(WireError::new(format!("{}[{i}]", f.path("candidates")), "not a candidate: line")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(WireError::new(f.path("candidates"), "not an array of strings")),
        };
        Ok(ServUfrag { ufrag, pwd, fingerprint, port, addr, candidates })
    }
}

/// Checks an ICE ufrag or pwd: at least `min` characters of `ALPHA / DIGIT / "+" / "/"`.
pub fn check_ice_chars(s: &str, min: usize) -> Result<(), String> {
    if s.len() < min {
        return Err(format!("{} characters, at least {min} needed", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '+' || *c == '/')) {
        return Err(format!("character {c:?} is not allowed in ICE credentials"));
    }
    Ok(())
}

/// Checks a fingerprint of the form `sha-256 AB:CD:...` (32 hex bytes).
pub fn check_fingerprint(s: &str) -> Result<(), String> {
    let Some((algo, hex)) = s.split_once(' ') else {
        return Err("not of the form \"sha-256 AB:CD:...\"".into());
    };
    if !algo.eq_ignore_ascii_case("sha-256") {
        return Err(format!("hash {algo:?} is not sha-256"));
    }
    let bytes: Vec<&str> = hex.split(':').collect();
    if bytes.len() != 32 || !bytes.iter().all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())) {
        return Err("not 32 colon-separated hex bytes".into());
    }
    Ok(())
}

/// What `cd.load` gives back: the session's own party in a running conference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    /// The cluster asked for.
    pub cluster: ClusterId,
    /// The running conference (`confdata.ID`).
    pub conf: ConfId,
    /// The session's own party (`SVPartyID`).
    pub party: PartyId,
    /// Whether the session controls the conference (`bControl`).
    pub control: bool,
    /// `0` loaded, `1` connected, `2` already connected.
    pub code: i64,
}

impl Loaded {
    /// Where the party is, for events addressed to it.
    pub fn at(&self) -> PartyRef {
        PartyRef { cluster: self.cluster, conf: self.conf, party: self.party }
    }

    /// Reads a `cd.load` answer; `cluster` is the one asked for.
    pub fn from_answer(a: &Answer, cluster: ClusterId) -> Result<Loaded, WireError> {
        let party = a
            .result
            .get("SVPartyID")
            .ok_or_else(|| WireError::new("ANSW.result.SVPartyID", "missing"))
            .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new("ANSW.result.SVPartyID", "not an integer")))?;
        let conf = a
            .result
            .get("confdata")
            .and_then(|c| c.get("ID"))
            .ok_or_else(|| WireError::new("ANSW.result.confdata.ID", "missing"))
            .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new("ANSW.result.confdata.ID", "not an integer")))?;
        let control = a.result.get("bControl").and_then(lenient_u64).unwrap_or(0) != 0;
        Ok(Loaded { cluster, conf: ConfId(conf), party: PartyId(party), control, code: a.code })
    }
}

/// Where an event about a party goes: `ClusterID`, `ID`, `PartyID` of its `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartyRef {
    /// `ClusterID`.
    pub cluster: ClusterId,
    /// `ID`.
    pub conf: ConfId,
    /// `PartyID`.
    pub party: PartyId,
}

impl PartyRef {
    /// Adds the `ClusterID`, `ID` and `PartyID` params that name the party in a command.
    pub fn params(&self, c: Command) -> Command {
        c.param("ClusterID", self.cluster).param("ID", self.conf).param("PartyID", self.party)
    }

    fn result(&self) -> Map<String, Value> {
        let mut r = Map::new();
        r.insert("ClusterID".into(), Value::from(self.cluster.0));
        r.insert("ID".into(), Value::from(self.conf.0));
        r.insert("PartyID".into(), Value::from(self.party.0));
        r
    }

    fn webrtc_event(&self, evttype: &str, data: Option<Value>) -> Event {
        let mut r = self.result();
        if let Some(d) = data {
            r.insert("EvtData".into(), d);
        }
        Event::new("conf", "webrtc", Some(evttype), Value::Object(r))
    }

    fn from_result(e: &Event) -> Result<PartyRef, WireError> {
        let num = |k: &str| {
            let field = format!("EVT.result.{k}");
            e.result
                .get(k)
                .ok_or_else(|| WireError::new(&field, "missing"))
                .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new(&field, "not an integer")))
        };
        Ok(PartyRef { cluster: ClusterId(num("ClusterID")?), conf: ConfId(num("ID")?), party: PartyId(num("PartyID")?) })
    }
}

fn expect_event(e: &Event, name: &str) -> Result<(), WireError> {
    if e.name() == name {
        Ok(())
    } else {
        Err(WireError::new("EVT", format!("{} is not {name}", e.name())))
    }
}

/// `conf.webrtc.Disconnected`: the core ended the party's media session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected {
    /// The party whose media ended.
    pub at: PartyRef,
    /// Why, when the core says (the reference core always does).
    pub reason: Option<String>,
    /// `final` (an addition of this core, PROTOCOL §9 as implemented): the party was removed
    /// and must not come back by itself; absent (false) when the end is transient (a media
    /// timeout, ICE failed), so a client reconnects.
    pub final_: bool,
}

impl Disconnected {
    /// A transient end (the client may reconnect), with the core's reason.
    pub fn transient(at: PartyRef, reason: Option<String>) -> Self {
        Disconnected { at, reason, final_: false }
    }

    /// The event's name.
    pub const EVENT: &'static str = "conf.webrtc.Disconnected";

    /// The event (no `EvtData`; `reason` in `result` when given).
    pub fn to_event(&self) -> Event {
        let mut e = self.at.webrtc_event("Disconnected", None);
        if let (Some(reason), Value::Object(r)) = (&self.reason, &mut e.result) {
            r.insert("reason".into(), Value::from(reason.as_str()));
        }
        if let (true, Value::Object(r)) = (self.final_, &mut e.result) {
            r.insert("final".into(), Value::from(1));
        }
        e
    }

    /// Reads the event.
    pub fn from_event(e: &Event) -> Result<Disconnected, WireError> {
        expect_event(e, Self::EVENT)?;
        let reason = match e.result.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(WireError::new("EVT.result.reason", "not a string")),
        };
        let final_ = match e.result.get("final") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => n.as_u64() == Some(1),
            Some(_) => return Err(WireError::new("EVT.result.final", "not 0, 1, true or false")),
        };
        Ok(Disconnected { at: PartyRef::from_result(e)?, reason, final_ })
    }
}

/// One party in a roster (`partydata`, layer 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyData {
    /// `PARTY_ID`.
    pub id: PartyId,
    /// `Index`: its place in the conference's list.
    pub index: u64,
    /// `OldIndex`: in `updParties`, the place it had.
    pub old_index: Option<u64>,
    /// `layer` (3: with `NAME`).
    pub layer: u64,
    /// `State`: 1 loaded without audio, 2 audio connected.
    pub state: u64,
    /// `bMicOn`.
    pub mic_on: bool,
    /// `NAME`: the display name.
    pub name: String,
    /// `bTalking` *(v2)*: the party's audio is heard in the mix (absent: `false`).
    pub talking: bool,
    /// Every other member the core sent, kept as read.
    pub extra: Map<String, Value>,
}

impl PartyData {
    /// `State` of a party loaded without audio.
    pub const LOADED: u64 = 1;
    /// `State` of a party whose audio is connected.
    pub const CONNECTED: u64 = 2;

    /// The members this type reads; every other member goes to [`PartyData::extra`].
    pub const KNOWN: [&'static str; 8] = ["PARTY_ID", "Index", "OldIndex", "layer", "State", "bMicOn", "NAME", "bTalking"];

    /// A party at `index` with `name`: layer 3, loaded, microphone on, not talking.
    pub fn new(id: PartyId, index: u64, name: &str) -> PartyData {
        PartyData {
            id,
            index,
            old_index: None,
            layer: 3,
            state: Self::LOADED,
            mic_on: true,
            name: name.to_owned(),
            talking: false,
            extra: Map::new(),
        }
    }

    /// The JSON object.
    pub fn to_value(&self) -> Value {
        let mut m = self.extra.clone();
        m.insert("PARTY_ID".into(), Value::from(self.id.0));
        m.insert("Index".into(), Value::from(self.index));
        if let Some(o) = self.old_index {
            m.insert("OldIndex".into(), Value::from(o));
        }
        m.insert("layer".into(), Value::from(self.layer));
        m.insert("State".into(), Value::from(self.state));
        m.insert("bMicOn".into(), Value::from(u64::from(self.mic_on)));
        m.insert("NAME".into(), Value::from(self.name.as_str()));
        m.insert("bTalking".into(), Value::from(u64::from(self.talking)));
        Value::Object(m)
    }

    /// Reads one entry; `at` is its path for errors.
    pub fn from_value(v: &Value, at: &str) -> Result<PartyData, WireError> {
        let o = v.as_object().ok_or_else(|| WireError::new(at, "not an object"))?;
        let num = |k: &str| -> Result<u64, WireError> {
            let field = format!("{at}.{k}");
            o.get(k)
                .ok_or_else(|| WireError::new(&field, "missing"))
                .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new(&field, "not an integer")))
        };
        let old_index = if o.contains_key("OldIndex") { Some(num("OldIndex")?) } else { None };
        let name = match o.get("NAME") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(WireError::new(format!("{at}.NAME"), "not a string")),
        };
        let talking = if o.contains_key("bTalking") { num("bTalking")? != 0 } else { false };
        let extra = o.iter().filter(|(k, _)| !Self::KNOWN.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(PartyData {
            id: PartyId(num("PARTY_ID")?),
            index: num("Index")?,
            old_index,
            layer: num("layer")?,
            state: num("State")?,
            mic_on: num("bMicOn")? != 0,
            name,
            talking,
            extra,
        })
    }
}

/// One party gone from a roster (`delParties` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyGone {
    /// `ID`.
    pub id: PartyId,
    /// `index`: the place it had.
    pub index: u64,
}

/// `conf.changed`: the roster of a conference changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfChanged {
    /// `ClusterID`.
    pub cluster: ClusterId,
    /// `ID`.
    pub conf: ConfId,
    /// `addParties`: loaded parties.
    pub add: Vec<PartyData>,
    /// `updParties`: changed parties (with `OldIndex`).
    pub upd: Vec<PartyData>,
    /// `delParties`: parties that left.
    pub del: Vec<PartyGone>,
}

impl ConfChanged {
    /// The event's name.
    pub const EVENT: &'static str = "conf.changed";

    /// The event; only the non-empty lists are written.
    pub fn to_event(&self) -> Event {
        let mut r = Map::new();
        r.insert("ClusterID".into(), Value::from(self.cluster.0));
        r.insert("ID".into(), Value::from(self.conf.0));
        if !self.add.is_empty() {
            r.insert("addParties".into(), Value::Array(self.add.iter().map(PartyData::to_value).collect()));
        }
        if !self.upd.is_empty() {
            r.insert("updParties".into(), Value::Array(self.upd.iter().map(PartyData::to_value).collect()));
        }
        if !self.del.is_empty() {
            r.insert("delParties".into(), Value::Array(self.del.iter().map(|d| json!({"ID": d.id.0, "index": d.index})).collect()));
        }
        Event::new("conf", "changed", None, Value::Object(r))
    }

    /// Reads the event.
    pub fn from_event(e: &Event) -> Result<ConfChanged, WireError> {
        expect_event(e, Self::EVENT)?;
        let num = |v: Option<&Value>, field: &str| -> Result<u64, WireError> {
            v.ok_or_else(|| WireError::new(field, "missing"))
                .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new(field, "not an integer")))
        };
        fn list<'a>(e: &'a Event, k: &str) -> Result<&'a [Value], WireError> {
            match e.result.get(k) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(a)) => Ok(a.as_slice()),
                Some(_) => Err(WireError::new(format!("EVT.result.{k}"), "not an array")),
            }
        }
        let parties = |k: &str| -> Result<Vec<PartyData>, WireError> {
            list(e, k)?.iter().enumerate().map(|(i, v)| PartyData::from_value(v, &format!("EVT.result.{k}[{i}]"))).collect()
        };
        let del = list(e, "delParties")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!("EVT.result.delParties[{i}]");
                Ok(PartyGone { id: PartyId(num(v.get("ID"), &format!("{at}.ID"))?), index: num(v.get("index"), &format!("{at}.index"))? })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ConfChanged {
            cluster: ClusterId(num(e.result.get("ClusterID"), "EVT.result.ClusterID")?),
            conf: ConfId(num(e.result.get("ID"), "EVT.result.ID")?),
            add: parties("addParties")?,
            upd: parties("updParties")?,
            del,
        })
    }
}

/// `timer.time`: the core's clock in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerTime {
    /// `t`.
    pub t: u64,
}

impl TimerTime {
    /// The event's name.
    pub const EVENT: &'static str = "timer.time";

    /// The event.
    pub fn to_event(&self) -> Event {
        Event::new("timer", "time", None, json!({"t": self.t}))
    }

    /// Reads the event.
    pub fn from_event(e: &Event) -> Result<TimerTime, WireError> {
        expect_event(e, Self::EVENT)?;
        let t = e.result.get("t").ok_or_else(|| WireError::new("EVT.result.t", "missing"))?;
        Ok(TimerTime { t: lenient_u64(t).ok_or_else(|| WireError::new("EVT.result.t", "not an integer"))? })
    }
}

/// `session.error`: a refusal the core could not send as an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError(pub Refusal);

impl SessionError {
    /// The event's name.
    pub const EVENT: &'static str = "session.error";

    /// The event.
    pub fn to_event(&self) -> Event {
        Event::new("session", "error", None, Value::Object(self.0.to_result()))
    }

    /// Reads the event.
    pub fn from_event(e: &Event) -> Result<SessionError, WireError> {
        expect_event(e, Self::EVENT)?;
        let code =
            e.result.get("code").and_then(lenient_i64).ok_or_else(|| WireError::new("EVT.result.code", "missing or not an integer"))?;
        let text = |k: &str| e.result.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Ok(SessionError(Refusal { code, class: text("class"), text: text("text") }))
    }
}

/// The whole positive answer to `cd.load`: the party, its place and the roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAnswer {
    /// The party and its conference (`code` is the answer's code, 0, 1 or 2).
    pub loaded: Loaded,
    /// `SVPartyIndex`.
    pub index: u64,
    /// `parties`: every party of the conference, the new one included.
    pub parties: Vec<PartyData>,
    /// `ResumeToken` *(v2)*: what a new session gives `cd.load` to come back as this party.
    pub resume_token: Option<String>,
}

impl LoadAnswer {
    /// The answer to `c`.
    pub fn to_answer(&self, c: &Command) -> Answer {
        let l = &self.loaded;
        let a = Answer::with_code(c, l.code)
            .with("bControl", u64::from(l.control))
            .with("SVPartyID", l.party.0)
            .with("SVPartyIndex", self.index)
            .with("confdata", json!({"ClusterID": l.cluster.0, "ID": l.conf.0}))
            .with("parties", Value::Array(self.parties.iter().map(PartyData::to_value).collect()));
        match &self.resume_token {
            Some(t) => a.with(RESUME_TOKEN, t.as_str()),
            None => a,
        }
    }

    /// Reads the answer; `cluster` is the one asked for.
    pub fn from_answer(a: &Answer, cluster: ClusterId) -> Result<LoadAnswer, WireError> {
        let loaded = Loaded::from_answer(a, cluster)?;
        let index = a.result.get("SVPartyIndex").and_then(lenient_u64).unwrap_or(0);
        let parties = match a.result.get("parties") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, v)| PartyData::from_value(v, &format!("ANSW.result.parties[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(WireError::new("ANSW.result.parties", "not an array")),
        };
        let resume_token = match a.result.get(RESUME_TOKEN) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(WireError::new("ANSW.result.ResumeToken", "not a string")),
        };
        Ok(LoadAnswer { loaded, index, parties, resume_token })
    }
}

/// The answer to the login query: `RETCODE` and `NAME`, in the VSP query form (`fdefs` names
/// the columns, `records` holds rows of strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAnswer {
    /// `RETCODE` ([`retcode`]).
    pub retcode: i64,
    /// `NAME`: the person's display name (empty when the login failed).
    pub name: String,
}

impl LoginAnswer {
    /// Whether the login succeeded.
    pub fn is_ok(&self) -> bool {
        retcode::is_ok(self.retcode)
    }

    /// The answer to `c` (`result.code` 0: the query ran; the login's outcome is `RETCODE`).
    pub fn to_answer(&self, c: &Command) -> Answer {
        let fdefs = json!([{"name": "RETCODE", "type": "i"}, {"name": "NAME", "type": "s", "size": 50}]);
        let records = json!([[self.retcode.to_string(), self.name]]);
        Answer::positive(c).with_member("fdefs", fdefs).with_member("records", records)
    }

    /// Reads the answer: the columns by `fdefs`, the values from the first row of `records`
    /// (strings, or numbers leniently).
    pub fn from_answer(a: &Answer) -> Result<LoginAnswer, WireError> {
        let fdefs = match a.extra.get("fdefs") {
            Some(Value::Array(f)) => f,
            Some(_) => return Err(WireError::new("ANSW.fdefs", "not an array")),
            None => return Err(WireError::new("ANSW.fdefs", "missing")),
        };
        let column = |name: &str| fdefs.iter().position(|f| f.get("name").and_then(Value::as_str) == Some(name));
        let row = match a.extra.get("records") {
            Some(Value::Array(rows)) => match rows.first() {
                Some(Value::Array(row)) => row,
                Some(_) => return Err(WireError::new("ANSW.records[0]", "not an array")),
                None => return Err(WireError::new("ANSW.records", "empty: no row")),
            },
            Some(_) => return Err(WireError::new("ANSW.records", "not an array")),
            None => return Err(WireError::new("ANSW.records", "missing")),
        };
        let at = column("RETCODE").ok_or_else(|| WireError::new("ANSW.fdefs", "no column RETCODE"))?;
        let field = format!("ANSW.records[0][{at}]");
        let retcode = row.get(at).ok_or_else(|| WireError::new(&field, "missing"))?;
        let retcode = lenient_i64(retcode).ok_or_else(|| WireError::new(&field, "RETCODE is not an integer"))?;
        let name = match column("NAME").and_then(|i| row.get(i).map(|v| (i, v))) {
            None | Some((_, Value::Null)) => String::new(),
            Some((_, Value::String(s))) => s.clone(),
            Some((i, _)) => return Err(WireError::new(format!("ANSW.records[0][{i}]"), "NAME is not a string")),
        };
        Ok(LoginAnswer { retcode, name })
    }
}

/// `conf.instantmsg`: a chat line, to every session of the conference (the sender's too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstantMsg {
    /// `ClusterID`.
    pub cluster: ClusterId,
    /// `ID`.
    pub conf: ConfId,
    /// `SenderID` *(added)*: the sender's party, when the core names it.
    pub sender: Option<PartyId>,
    /// `username`: the sender party's `NAME`.
    pub username: String,
    /// `msg`: the text.
    pub msg: String,
    /// `color`: as the sender gave it (empty when none).
    pub color: String,
    /// `time`: unix seconds, when the core received it.
    pub time: u64,
}

impl InstantMsg {
    /// The event's name.
    pub const EVENT: &'static str = "conf.instantmsg";

    /// The event.
    pub fn to_event(&self) -> Event {
        let mut r = Map::new();
        r.insert("ClusterID".into(), Value::from(self.cluster.0));
        r.insert("ID".into(), Value::from(self.conf.0));
        if let Some(s) = self.sender {
            r.insert("SenderID".into(), Value::from(s.0));
        }
        r.insert("username".into(), Value::from(self.username.as_str()));
        r.insert("msg".into(), Value::from(self.msg.as_str()));
        r.insert("color".into(), Value::from(self.color.as_str()));
        r.insert("time".into(), Value::from(self.time));
        Event::new("conf", "instantmsg", None, Value::Object(r))
    }

    /// Reads the event.
    pub fn from_event(e: &Event) -> Result<InstantMsg, WireError> {
        expect_event(e, Self::EVENT)?;
        let num = |k: &str| -> Result<u64, WireError> {
            let field = format!("EVT.result.{k}");
            e.result
                .get(k)
                .ok_or_else(|| WireError::new(&field, "missing"))
                .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new(&field, "not an integer")))
        };
        let text = |k: &str, required: bool| -> Result<String, WireError> {
            match e.result.get(k) {
                None | Some(Value::Null) if !required => Ok(String::new()),
                None => Err(WireError::new(format!("EVT.result.{k}"), "missing")),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(WireError::new(format!("EVT.result.{k}"), "not a string")),
            }
        };
        let sender = if e.result.get("SenderID").is_some_and(|v| !v.is_null()) { Some(PartyId(num("SenderID")?)) } else { None };
        Ok(InstantMsg {
            cluster: ClusterId(num("ClusterID")?),
            conf: ConfId(num("ID")?),
            sender,
            username: text("username", false)?,
            msg: text("msg", true)?,
            color: text("color", false)?,
            time: if e.result.get("time").is_some_and(|v| !v.is_null()) { num("time")? } else { 0 },
        })
    }
}

/// One running conference in the answer to `cd.loadlist`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfEntry {
    /// `ClusterID`.
    pub cluster: ClusterId,
    /// `ID`.
    pub conf: ConfId,
    /// `SchemeID`: the number dialled.
    pub scheme: SchemeId,
    /// `parties`: how many parties it holds.
    pub parties: u64,
}

/// The positive answer to `cd.loadlist`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadList {
    /// `list`.
    pub list: Vec<ConfEntry>,
}

impl LoadList {
    /// The answer to `c`.
    pub fn to_answer(&self, c: &Command) -> Answer {
        let list = self
            .list
            .iter()
            .map(|e| json!({"ClusterID": e.cluster.0, "ID": e.conf.0, "SchemeID": e.scheme.0, "parties": e.parties}))
            .collect();
        Answer::positive(c).with("list", Value::Array(list))
    }

    /// Reads the answer.
    pub fn from_answer(a: &Answer) -> Result<LoadList, WireError> {
        let Some(Value::Array(items)) = a.result.get("list") else {
            return Err(WireError::new("ANSW.result.list", "missing or not an array"));
        };
        let list = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let num = |k: &str| {
                    let field = format!("ANSW.result.list[{i}].{k}");
                    v.get(k)
                        .ok_or_else(|| WireError::new(&field, "missing"))
                        .and_then(|v| lenient_u64(v).ok_or_else(|| WireError::new(&field, "not an integer")))
                };
                Ok(ConfEntry {
                    cluster: ClusterId(num("ClusterID")?),
                    conf: ConfId(num("ID")?),
                    scheme: SchemeId(num("SchemeID")?),
                    parties: num("parties")?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(LoadList { list })
    }
}

/// The offer facts CALLME_S2 carries besides the MUST params (all optional on the wire).
pub mod s2 {
    #![allow(missing_docs)]
    pub const UFRAG: &str = "ufrag";
    pub const PWD: &str = "pwd";
    pub const FINGERPRINT: &str = "fingerprint";
    pub const MID: &str = "mid";
    pub const OPUS_PT: &str = "opus_pt";
    pub const OPUS_FMTP: &str = "opus_fmtp";
    pub const EXT_AUDIO_LEVEL: &str = "ext_audio_level";
    pub const EXT_MID: &str = "ext_mid";
    pub const SSRC: &str = "ssrc";
    pub const CNAME: &str = "cname";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_a_string_code_is_read_leniently() {
        let a = Incoming::parse(r#"{"ANSW":{"cmd":"load","seq":"3","obj":"cd","result":{"code":"1"}}}"#).unwrap();
        let Incoming::Answer(a) = a else { panic!("not an answer") };
        assert_eq!((a.seq, a.code), (3, 1));
    }

    #[test]
    fn a_missing_code_names_its_field() {
        let e = Incoming::parse(r#"{"ANSW":{"cmd":"load","seq":3,"result":{}}}"#).unwrap_err();
        assert_eq!(e.field, "ANSW.result.code");
    }

    #[test]
    fn a_servufrag_with_a_short_pwd_names_the_pwd() {
        let e = Incoming::parse(
            r#"{"EVT":{"obj":"conf","evt":"webrtc","evttype":"servufrag","result":{"EvtData":{"ufrag":"abcd","pwd":"short","fingerprint":"x","port":1}}}}"#,
        )
        .unwrap();
        let Incoming::Event(e) = e else { panic!("not an event") };
        let err = ServUfrag::from_event(&e).unwrap_err();
        assert_eq!(err.field, "EVT.result.EvtData.pwd");
        assert!(err.reason.contains("at least 22"), "{err}");
    }

    #[test]
    fn fingerprints_must_be_sha256_with_32_bytes() {
        let good = format!("sha-256 {}", vec!["AB"; 32].join(":"));
        assert!(check_fingerprint(&good).is_ok());
        assert!(check_fingerprint("sha-1 AB:CD").is_err());
        assert!(check_fingerprint(&format!("sha-256 {}", vec!["AB"; 31].join(":"))).is_err());
    }

    fn at() -> PartyRef {
        PartyRef { cluster: ClusterId(1), conf: ConfId(7), party: PartyId(3) }
    }

    fn event_of(frame: &str) -> Event {
        match Incoming::parse(frame).expect("the SDK reads what the core writes") {
            Incoming::Event(e) => e,
            Incoming::Answer(a) => panic!("an answer: {a:?}"),
        }
    }

    fn answer_of(frame: &str) -> Answer {
        match Incoming::parse(frame).expect("the SDK reads what the core writes") {
            Incoming::Answer(a) => a,
            Incoming::Event(e) => panic!("an event: {e:?}"),
        }
    }

    #[test]
    fn every_command_the_sdk_writes_the_core_reads_back_equal() {
        let fp = format!("sha-256 {}", vec!["AB"; 32].join(":"));
        let commands = [
            Command::new("cd", "load").param("ClusterID", 1).param("SchemeID", 7).param("NAME", "tester \"quoted\" é"),
            Command::new("cd", "loadlist").param("ClusterID", 1),
            Command { seq: 2, ..Command::new("conf", "CALLME_S1").param("ClusterID", 1).param("ID", 7).param("PartyID", 3) },
            Command { seq: u64::MAX, ..Command::new("conf", "CALLME_S2").param(s2::UFRAG, "abcd").param(s2::FINGERPRINT, fp) },
            Command::new("conf", "CALLME_BYE"),
        ];
        for c in commands {
            assert_eq!(Command::parse(&c.to_frame(), &CommandLimits::default()), Ok(c.clone()));
        }
    }

    #[test]
    fn every_answer_the_core_writes_the_sdk_reads_back_equal() {
        let c = Command { seq: 4, ..Command::new("cd", "load") };
        for a in [
            Answer::positive(&c),
            Answer::negative(&c, &Refusal::new(code::NO_PARTY, class::CONF, "param PartyID: no party 5")),
            Answer::positive(&c).with("list", json!([])),
        ] {
            assert_eq!(answer_of(&a.to_frame()), a);
        }
        let r = Refusal::proto(code::BAD_PARAM, "param SchemeID is missing");
        assert_eq!(answer_of(&Answer::negative(&c, &r).to_frame()).refusal(&[code::OK]), Some(r));

        let party = |id: u64, name: &str| PartyData::new(PartyId(id), id - 1, name);
        for code in [code::OK, code::LOAD_CONNECTED, code::LOAD_ALREADY_CONNECTED] {
            let load = LoadAnswer {
                loaded: Loaded { cluster: ClusterId(1), conf: ConfId(7), party: PartyId(3), control: code == code::LOAD_CONNECTED, code },
                index: 2,
                parties: vec![party(1, "a"), party(3, "c")],
                resume_token: (code == code::LOAD_CONNECTED).then(|| "0123456789abcdefXYZ".to_owned()),
            };
            let read = answer_of(&load.to_answer(&c).to_frame());
            assert_eq!(LoadAnswer::from_answer(&read, ClusterId(1)), Ok(load.clone()));
            assert_eq!(Loaded::from_answer(&read, ClusterId(1)), Ok(load.loaded));
        }
        let list = LoadList { list: vec![ConfEntry { cluster: ClusterId(1), conf: ConfId(7), scheme: SchemeId(9), parties: 2 }] };
        assert_eq!(LoadList::from_answer(&answer_of(&list.to_answer(&c).to_frame())), Ok(list));
    }

    #[test]
    fn every_event_the_core_writes_the_sdk_reads_back_equal() {
        let desc =
            ServDesc { serveraddr: "turn:127.0.0.1:3478?transport=udp".into(), username: "1:party3".into(), credential: "c2VjcmV0".into() };
        let e = event_of(&desc.to_event(at()).to_frame());
        assert_eq!((e.name().as_str(), e.party()), (ServDesc::EVENT, Some(PartyId(3))));
        assert_eq!(ServDesc::from_event(&e), Ok(desc));

        let fp = format!("sha-256 {}", vec!["C0"; 32].join(":"));
        for (addr, candidates) in
            [(Some("192.0.2.1".to_owned()), vec![]), (None, vec!["candidate:1 1 udp 1 192.0.2.1 4 typ host".to_owned()])]
        {
            let ufrag = ServUfrag {
                ufrag: "CoRe".into(),
                pwd: "corepasswordcorepassword".into(),
                fingerprint: fp.clone(),
                port: 40000,
                addr,
                candidates,
            };
            let e = event_of(&ufrag.to_event(at()).to_frame());
            assert_eq!(e.name(), ServUfrag::EVENT);
            assert_eq!(ServUfrag::from_event(&e), Ok(ufrag));
        }

        for reason in [None, Some("ICE or DTLS failed".to_owned())] {
            let d = Disconnected::transient(at(), reason);
            let e = event_of(&d.to_event().to_frame());
            assert_eq!((e.name().as_str(), e.party()), (Disconnected::EVENT, Some(PartyId(3))));
            assert_eq!(Disconnected::from_event(&e), Ok(d));
        }

        let mut p = PartyData { state: PartyData::CONNECTED, mic_on: false, talking: true, ..PartyData::new(PartyId(4), 1, "other") };
        p.extra.insert("sPhone".into(), json!("+1 555"));
        let moved = PartyData { old_index: Some(1), index: 0, ..p.clone() };
        let changed = ConfChanged {
            cluster: ClusterId(1),
            conf: ConfId(7),
            add: vec![p],
            upd: vec![moved],
            del: vec![PartyGone { id: PartyId(5), index: 2 }],
        };
        let e = event_of(&changed.to_event().to_frame());
        assert_eq!((e.name().as_str(), e.party()), (ConfChanged::EVENT, None));
        assert_eq!(ConfChanged::from_event(&e), Ok(changed));

        let t = TimerTime { t: 1_764_000_000 };
        assert_eq!(TimerTime::from_event(&event_of(&t.to_event().to_frame())), Ok(t));

        let err = SessionError(Refusal::proto(code::NOT_JSON, "frame: not a JSON object"));
        assert_eq!(SessionError::from_event(&event_of(&err.to_event().to_frame())), Ok(err));
    }

    #[test]
    fn the_writers_put_members_in_alphabetical_order() {
        let e = Disconnected::transient(at(), None).to_event().to_frame();
        assert_eq!(e, r#"{"EVT":{"evt":"webrtc","evttype":"Disconnected","obj":"conf","result":{"ClusterID":1,"ID":7,"PartyID":3}}}"#);
        let a = Answer::positive(&Command { seq: 2, ..Command::new("conf", "CALLME_S1") }).to_frame();
        assert_eq!(a, r#"{"ANSW":{"cmd":"CALLME_S1","obj":"conf","result":{"code":0},"seq":2}}"#);
    }

    #[test]
    fn the_command_reader_names_the_field_and_keeps_what_it_could_read() {
        let limits = CommandLimits { max_frame_bytes: 64 };
        let err = |t: &str| Command::parse(t, &limits).unwrap_err();
        let e = err(&"x".repeat(65));
        assert_eq!((e.code, e.field.as_str(), e.seq), (code::TOO_LARGE, "frame", None));
        assert_eq!(e.to_string(), "frame: 65 bytes is larger than the limit of 64 bytes");
        assert_eq!(err("nope").code, code::NOT_JSON);
        assert_eq!(err("[1]").to_string(), "frame: not a JSON object");
        assert_eq!(err(r#"{"cmd":"load"}"#).to_string(), "seq: missing");
        assert_eq!(err(r#"{"cmd":"load","seq":-1}"#).to_string(), "seq: not a non-negative integer");
        let e = err(r#"{"cmd":"load","seq":"5"}"#);
        assert_eq!((e.code, e.field.as_str(), e.seq, e.cmd.as_str()), (code::BAD_FRAME, "obj", Some(5), "load"));
        let e = err(r#"{"cmd":7,"seq":5,"obj":"cd"}"#);
        assert_eq!((e.to_string().as_str(), e.obj.as_str()), ("cmd: not a string", "cd"));
        assert_eq!(err(r#"{"cmd":"a","seq":1,"obj":"cd","params":[]}"#).to_string(), "params: not an object");
        let e = err(r#"{"cmd":"a","seq":1,"obj":"cd","params":{"ID":[1]}}"#);
        assert_eq!((e.code, e.to_string().as_str()), (code::BAD_PARAM, "param ID: not a string or number"));
        // Lenient: a string seq, number params, no params, extra members.
        let c = Command::parse(r#"{"cmd":"load","seq":"3","obj":"cd","params":{"ClusterID":1},"lng":"en"}"#, &CommandLimits::default())
            .unwrap();
        assert_eq!((c.seq, c.number("ClusterID")), (3, Ok(1)));
        assert_eq!(Command::parse(r#"{"cmd":"a","seq":0,"obj":"cd"}"#, &limits).unwrap().params.len(), 0);
    }

    #[test]
    fn a_refused_command_is_answered_when_it_has_a_seq_and_reported_as_session_error_when_not() {
        let limits = CommandLimits::default();
        let Incoming::Answer(a) = Command::parse(r#"{"cmd":"load","seq":5}"#, &limits).unwrap_err().reply() else { panic!("an answer") };
        assert_eq!((a.seq, a.cmd.as_str(), a.code), (5, "load", code::BAD_FRAME));
        let Incoming::Event(e) = Command::parse("{}", &limits).unwrap_err().reply() else { panic!("an event") };
        assert_eq!(SessionError::from_event(&e).unwrap().0.text, "seq: missing");
    }

    #[test]
    fn a_numeric_param_is_checked_by_name() {
        let c = Command::new("cd", "load").param("SchemeID", "seven");
        assert_eq!(c.number("SchemeID").unwrap_err().text, "param SchemeID is \"seven\", not a non-negative integer");
        assert_eq!(c.number("ClusterID").unwrap_err().text, "param ClusterID is missing");
    }

    #[test]
    fn params_go_on_the_wire_as_strings() {
        let f = Command::new("conf", "CALLME_S1").param("ID", 7).to_frame();
        assert_eq!(f, r#"{"cmd":"CALLME_S1","seq":0,"obj":"conf","params":{"ID":"7"}}"#);
    }

    #[test]
    fn the_login_query_is_written_as_the_vsp_core_reads_it_and_shown_without_the_password() {
        let c = Command { seq: 1, ..Command::login("alice", "s3cret \"x\"") };
        let frame = c.to_frame();
        assert_eq!(
            frame,
            r#"{"cmd":"query","seq":1,"query":{"name":"q_cplxLogin","params":{"iSSO_CREATE_ASSOC":"0","iWebLogin":"1","sLogin":"alice","sPassword":"s3cret \"x\"","sSSOSID":""}}}"#
        );
        assert_eq!(Command::parse(&frame, &CommandLimits::default()), Ok(c.clone()));
        assert_eq!(c.query_text(login::PASSWORD), Some("s3cret \"x\""));
        let shown = c.to_shown_frame();
        assert!(!shown.contains("s3cret") && shown.contains(login::REDACTED), "{shown}");
    }

    #[test]
    fn a_query_names_what_is_wrong_with_it() {
        let err = |t: &str| Command::parse(t, &CommandLimits::default()).unwrap_err().to_string();
        assert_eq!(err(r#"{"cmd":"query","seq":1}"#), "query: missing");
        assert_eq!(err(r#"{"cmd":"query","seq":1,"query":[]}"#), "query: not an object");
        assert_eq!(err(r#"{"cmd":"query","seq":1,"query":{}}"#), "query.name: missing");
        assert_eq!(err(r#"{"cmd":"query","seq":1,"query":{"name":1}}"#), "query.name: not a string");
        assert_eq!(err(r#"{"cmd":"query","seq":1,"query":{"name":"q","params":7}}"#), "query.params: not an object");
        assert_eq!(
            err(r#"{"cmd":"query","seq":1,"query":{"name":"q","params":{"sLogin":{}}}}"#),
            "query.params.sLogin: not a string or number"
        );
        // Other commands still need obj.
        assert_eq!(err(r#"{"cmd":"SETMIC","seq":1}"#), "obj: missing");
    }

    #[test]
    fn the_login_answer_is_read_by_its_columns() {
        let c = Command { seq: 1, ..Command::login("alice", "x") };
        for l in [
            LoginAnswer { retcode: retcode::ADMIN, name: "Alice Example".into() },
            LoginAnswer { retcode: retcode::LOGIN_ERROR, name: String::new() },
        ] {
            let a = answer_of(&l.to_answer(&c).to_frame());
            assert!(!a.to_frame().contains("\"obj\""), "a query's answer has no obj");
            assert_eq!(LoginAnswer::from_answer(&a), Ok(l));
        }
        // Columns in another order, numbers for strings.
        let a = answer_of(
            r#"{"ANSW":{"cmd":"query","seq":1,"result":{"code":0},"fdefs":[{"name":"NAME"},{"name":"RETCODE"}],"records":[["Bob",2]]}}"#,
        );
        assert_eq!(LoginAnswer::from_answer(&a), Ok(LoginAnswer { retcode: 2, name: "Bob".into() }));
        let field = |t: &str| LoginAnswer::from_answer(&answer_of(t)).unwrap_err().field;
        assert_eq!(field(r#"{"ANSW":{"cmd":"query","seq":1,"result":{"code":0}}}"#), "ANSW.fdefs");
        assert_eq!(
            field(r#"{"ANSW":{"cmd":"query","seq":1,"result":{"code":0},"fdefs":[{"name":"RETCODE"}],"records":[]}}"#),
            "ANSW.records"
        );
        assert_eq!(
            field(r#"{"ANSW":{"cmd":"query","seq":1,"result":{"code":0},"fdefs":[{"name":"RETCODE"}],"records":[["two"]]}}"#),
            "ANSW.records[0][0]"
        );
        assert_eq!(retcode::meaning(4), "login error: unknown login or wrong password");
    }

    #[test]
    fn the_v2_commands_name_the_party_and_the_chat_line_reads_back_equal() {
        let on = Command::set_mic(at(), false);
        assert_eq!(
            on.to_frame(),
            r#"{"cmd":"SETMIC","seq":0,"obj":"conf","params":{"ClusterID":"1","ID":"7","PartyID":"3","bMicOn":"0"}}"#
        );
        assert_eq!(Command::del_party(at()).number("PartyID"), Ok(3));
        assert_eq!(Command::instant_msg(ClusterId(1), ConfId(7), "hi", None).text("msg"), Some("hi"));
        let m = InstantMsg {
            cluster: ClusterId(1),
            conf: ConfId(7),
            sender: Some(PartyId(4)),
            username: "Bob".into(),
            msg: "hello \"all\"".into(),
            color: "#00ff00".into(),
            time: 1_764_000_000,
        };
        let e = event_of(&m.to_event().to_frame());
        assert_eq!((e.name().as_str(), e.party()), (InstantMsg::EVENT, None), "a chat line is addressed to the conference, not a party");
        assert_eq!(InstantMsg::from_event(&e), Ok(m));
        let e = event_of(r#"{"EVT":{"obj":"conf","evt":"instantmsg","result":{"ClusterID":1,"ID":7,"msg":5}}}"#);
        assert_eq!(InstantMsg::from_event(&e).unwrap_err().field, "EVT.result.msg");
    }

    #[test]
    fn partydata_without_btalking_is_not_talking_and_unknown_members_are_kept() {
        let v = json!({"PARTY_ID": 4, "Index": 0, "layer": 3, "State": 2, "bMicOn": "1", "NAME": "Bob", "sPhone": "+1"});
        let p = PartyData::from_value(&v, "p").unwrap();
        assert!(!p.talking && p.mic_on);
        assert_eq!(p.extra.get("sPhone"), Some(&json!("+1")));
        assert_eq!(PartyData::from_value(&p.to_value(), "p"), Ok(p));
        let bad = json!({"PARTY_ID": 4, "Index": 0, "layer": 3, "State": 2, "bMicOn": 1, "bTalking": "yes"});
        assert_eq!(PartyData::from_value(&bad, "p").unwrap_err().field, "p.bTalking");
    }
}
