//! A scripted core in memory, for sequence tests (ours, and an application's own).
//!
//! [`ScriptedCore`] answers `cd.load`, `CALLME_S1` and `CALLME_S2` as `docs/protocol.md` says,
//! with fixed values, synchronously as each frame is sent, and can be told to misbehave in every
//! way a real core or network can: refuse, stay silent, close the socket, send a malformed frame,
//! send an event before its answer or twice, interleave unrelated events, address an event to
//! another party, or end the media session. Nothing runs in the background, so with tokio's
//! paused clock a test is deterministic and a silent core is a timeout at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::{Sink, Stream};
use serde_json::Value;

use crate::signaling::Inbound;
use crate::wire::{
    Answer, ClusterId, Command, CommandLimits, ConfChanged, ConfId, Disconnected, Event, LoadAnswer, Loaded, PartyData, PartyId, PartyRef,
    Refusal, ServDesc, ServUfrag, TimerTime,
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

#[derive(Debug, Default)]
struct State {
    faults: Vec<Fault>,
    received: Vec<Value>,
    outbox: VecDeque<Inbound>,
    closed: bool,
    waker: Option<Waker>,
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

    /// The client's end of the connection.
    pub fn transport(&self) -> ScriptedTransport {
        ScriptedTransport(self.0.clone())
    }

    /// Every command the core received, parsed.
    pub fn received(&self) -> Vec<Value> {
        self.0.lock().unwrap().received.clone()
    }

    /// The `cmd` of every command received, in order.
    pub fn received_cmds(&self) -> Vec<String> {
        self.received().iter().filter_map(|v| v["cmd"].as_str().map(str::to_owned)).collect()
    }

    /// Whether the client closed its end (or the core closed the socket).
    pub fn is_closed(&self) -> bool {
        self.0.lock().unwrap().closed
    }

    /// Sends an event now (as a core would at any time).
    pub fn push_event(&self, event: Value) {
        let mut s = self.0.lock().unwrap();
        s.outbox.push_back(Inbound::Text(event.to_string()));
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

fn at(party: u64) -> PartyRef {
    PartyRef { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), party: PartyId(party) }
}

/// `timer.time`, as the core sends it periodically.
pub fn timer_event() -> Value {
    TimerTime { t: 1764000000 }.to_event().to_value()
}

/// A `conf.changed` announcing another party.
pub fn conf_changed_event() -> Value {
    let other = PartyData::new(PartyId(OTHER_PARTY), 1, "other");
    ConfChanged { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), add: vec![other], ..ConfChanged::default() }.to_event().to_value()
}

/// `conf.webrtc.Disconnected` for a party.
pub fn disconnected_event(party: u64) -> Value {
    Disconnected { at: at(party), reason: None }.to_event().to_value()
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

impl State {
    fn handle(&mut self, frame: &str) {
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
        let ok_answer = match name.as_str() {
            "load" => {
                let loaded = Loaded { cluster: ClusterId(CLUSTER), conf: ConfId(CONF), party: PartyId(PARTY), control: false, code: 0 };
                LoadAnswer { loaded, index: 0, parties: Vec::new(), resume_token: None }.to_answer(&cmd)
            }
            "CALLME_S1" | "CALLME_S2" | "CALLME_BYE" => Answer::positive(&cmd),
            _ => Answer::negative(&cmd, &Refusal::proto(103, format!("unknown command {name}"))),
        };
        let evt_of = |party: u64| followup_event(&name, party).map(|e| e.to_value());
        let fault = self.faults.iter().find(|f| f.on() == name).cloned();
        let mut out: Vec<Option<Value>> = Vec::new(); // None = close the socket
        let ans = ok_answer.to_value();
        let evt = evt_of(PARTY);
        let unrelated = [timer_event(), conf_changed_event()];
        match fault {
            None => {
                out.push(Some(ans));
                out.extend(evt.map(Some));
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
                self.outbox.push_back(Inbound::Text("{\"ANSW\": {\"cmd\": ".into()));
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
        for o in out {
            match o {
                Some(v) => self.outbox.push_back(Inbound::Text(v.to_string())),
                None => {
                    self.outbox.push_back(Inbound::Closed { reason: "close code 1001 core going away".into() });
                    self.closed = true;
                    break;
                }
            }
        }
    }
}

/// The client's end of a [`ScriptedCore`].
#[derive(Debug)]
pub struct ScriptedTransport(Arc<Mutex<State>>);

impl Sink<String> for ScriptedTransport {
    type Error = String;
    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, frame: String) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        if s.closed {
            return Err("the scripted core closed the socket".into());
        }
        s.handle(&frame);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.0.lock().unwrap().closed = true;
        Poll::Ready(Ok(()))
    }
}

impl Stream for ScriptedTransport {
    type Item = Inbound;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let mut s = self.0.lock().unwrap();
        match s.outbox.pop_front() {
            Some(i) => Poll::Ready(Some(i)),
            None if s.closed => Poll::Ready(None),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
