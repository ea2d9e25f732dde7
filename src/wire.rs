//! The frames of the control protocol (`docs/protocol.md`): commands, answers, events and the
//! codes they carry. Pure data and parsing, no IO.
//!
//! Parsing is strict about what the protocol marks MUST and lenient where the contract says so
//! (numbers sent as strings and strings sent as numbers are both accepted). Every parse error
//! names the field by its path in the frame, e.g. `EVT.result.EvtData.port`, and the reason.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The WebSocket sub-protocol the client offers.
pub const SUBPROTOCOL: &str = "PalladaWSData";

/// A conference cluster number (`ClusterID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

/// A running conference (`confdata.ID`, the `ID` param of CALLME commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfId(pub u64);

/// A party in a running conference (`SVPartyID`, `PartyID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartyId(pub u64);

/// The conference number a person dials (`SchemeID` of `cd.load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// The core could not set up media for the party.
    pub const MEDIA_FAILED: i64 = 300;
}

/// A command, client → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub cmd: String,
    pub seq: u64,
    pub obj: String,
    pub params: BTreeMap<String, String>,
}

impl Command {
    /// A command with no params yet; `seq` is filled in by the session.
    pub fn new(obj: &str, cmd: &str) -> Self {
        Command { cmd: cmd.to_owned(), seq: 0, obj: obj.to_owned(), params: BTreeMap::new() }
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
}

/// A negative result of an answer: the core's code, class and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: i64,
    pub class: String,
    pub text: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {} ({}): {}", self.code, self.class, self.text)
    }
}

/// An answer, core → client, matched to its command by `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub cmd: String,
    pub seq: u64,
    pub obj: String,
    /// `result.code`: 0 positive, anything else negative (but see `cd.load`'s codes).
    pub code: i64,
    /// The whole `result` object, for runtime data next to `code`.
    pub result: Map<String, Value>,
}

impl Answer {
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
    pub obj: String,
    pub evt: String,
    pub evttype: Option<String>,
    /// The whole `result` value.
    pub result: Value,
}

impl Event {
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
    Answer(Answer),
    Event(Event),
}

impl Incoming {
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
    Ok(Answer { cmd, seq, obj, code, result })
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
    pub username: String,
    pub credential: String,
}

impl ServDesc {
    pub const EVENT: &'static str = "conf.webrtc.servdesc";

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
    pub ufrag: String,
    pub pwd: String,
    /// `"sha-256 AB:CD:..."`.
    pub fingerprint: String,
    pub port: u16,
    /// Address for the candidate; the host of the WebSocket URL when absent.
    pub addr: Option<String>,
    /// Full `candidate:` lines, when the core gives more than one address.
    pub candidates: Vec<String>,
}

impl ServUfrag {
    pub const EVENT: &'static str = "conf.webrtc.servufrag";

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
                    Some(s) if s.starts_with("candidate:") => Ok(s.to_owned()),
                    _ => Err(WireError::new(format!("{}[{i}]", f.path("candidates")), "not a candidate: line")),
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
    pub cluster: ClusterId,
    pub conf: ConfId,
    pub party: PartyId,
    /// Whether the session controls the conference (`bControl`).
    pub control: bool,
    /// `0` loaded, `1` connected, `2` already connected.
    pub code: i64,
}

impl Loaded {
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

/// The offer facts CALLME_S2 carries besides the MUST params (all optional on the wire).
pub mod s2 {
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

    #[test]
    fn params_go_on_the_wire_as_strings() {
        let f = Command::new("conf", "CALLME_S1").param("ID", 7).to_frame();
        assert_eq!(f, r#"{"cmd":"CALLME_S1","seq":0,"obj":"conf","params":{"ID":"7"}}"#);
    }
}
