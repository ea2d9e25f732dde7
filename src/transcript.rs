//! The transcript: every frame sent and received and every media call, in order, each tagged
//! with the step of the sequence it belongs to.
//!
//! A [`Transcript`] is a cheap handle to one shared record; the session and the typestates write
//! to it, the application reads it at any time (also after a failure), logs it, or serialises it
//! with serde. [`Transcript::render`] prints it as a protocol trace, one line per entry, in the
//! seed's arrow convention: `<` is a call we make or a frame we send, `>` is what we wait for.
//! With [`Render::Redacted`] the random values (ICE credentials, fingerprints, SSRCs, ports,
//! times) become stable placeholders such as `[core-ufrag]`, which is what the snapshots store.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Where a transcript entry happened: the seed's column "side".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Side {
    /// The WebSocket to the core.
    Ws,
    /// The media layer (the browser's APIs in the seed; webrtc-rs here).
    Media,
    /// Work on our side only (steps 9 and 15).
    Local,
}

/// Why a received frame did or did not advance the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Routing {
    /// The answer the step was waiting for.
    Answer,
    /// The event the step was waiting for.
    Event,
    /// An event that arrived before the step that waits for it; kept and used then.
    Early,
    /// An event the sequence does not wait for (`timer.time`, `conf.changed`, ...).
    Unrelated,
    /// An event addressed to another party.
    OtherParty,
    /// A second copy of an event already used.
    Duplicate,
    /// An answer to a command we no longer wait for.
    Stale,
    /// The frame ended the step: refusal, `Disconnected`, or malformed.
    Fatal,
    /// A frame in the call that could not be read; passed over, the call goes on.
    Malformed,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum What {
    /// A frame we sent, exactly as sent.
    Sent {
        /// The frame's text.
        frame: String,
    },
    /// A frame we received, exactly as received, and what we made of it.
    Received {
        /// The frame's text.
        frame: String,
        /// What was made of it.
        routing: Routing,
    },
    /// An event that arrived early (recorded then as [`Routing::Early`]), used now.
    Kept {
        /// The event's name.
        name: String,
        /// The step it arrived in.
        from_step: u8,
    },
    /// A call we made (`<` in the seed).
    Call {
        /// The call, as the seed names it.
        name: String,
        /// Its arguments, in words (or an SDP).
        detail: String,
    },
    /// A result we waited for (`>` in the seed).
    Returned {
        /// The call, as the seed names it.
        name: String,
        /// What it gave, in words (or an SDP).
        detail: String,
    },
    /// The step failed; the error as the application sees it.
    Failed {
        /// The error's sentence.
        error: String,
    },
    /// The WebSocket closed.
    Closed {
        /// The close code and reason, or what ended the connection.
        reason: String,
    },
    /// The call reconnects: why, each attempt, and the outcome.
    Reconnect {
        /// What happens, in words.
        detail: String,
    },
}

/// One line of the transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The step of the seed's table (1–19); 0 before the sequence (open, load), 20 after it.
    pub step: u8,
    /// Where it happened.
    pub side: Side,
    /// Milliseconds since the transcript started.
    pub at_ms: f64,
    #[serde(flatten)]
    /// What happened.
    pub what: What,
}

impl Entry {
    /// `<` for what we do, `>` for what we wait for, as in the seed.
    pub fn arrow(&self) -> &'static str {
        match self.what {
            What::Sent { .. } | What::Call { .. } => "<",
            What::Received { .. } | What::Kept { .. } | What::Returned { .. } | What::Closed { .. } => ">",
            What::Failed { .. } => "!",
            What::Reconnect { .. } => "~",
        }
    }
}

/// Entries of the call (step 20) kept: the newest; older ones are counted, not kept, so a long
/// call's transcript stays small.
pub const IN_CALL_KEPT: usize = 256;

#[derive(Debug)]
struct Inner {
    start: Instant,
    entries: Vec<Entry>,
    /// Step-20 entries now in `entries`.
    in_call: usize,
    /// Step-20 entries dropped to keep `in_call` at [`IN_CALL_KEPT`].
    in_call_dropped: u64,
    /// (value, placeholder) pairs for the redacted rendering.
    redactions: Vec<(String, String)>,
}

/// A shared, append-only record of one join.
#[derive(Debug, Clone)]
pub struct Transcript(Arc<Mutex<Inner>>);

impl Default for Transcript {
    fn default() -> Self {
        Self::new()
    }
}

/// How [`Transcript::render`] prints values that differ from run to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Render {
    /// As recorded, with times.
    Full,
    /// Random values replaced by stable placeholders, no times: what the snapshots hold.
    Redacted,
}

impl Transcript {
    /// An empty transcript; its clock starts now.
    pub fn new() -> Self {
        Transcript(Arc::new(Mutex::new(Inner {
            start: Instant::now(),
            entries: Vec::new(),
            in_call: 0,
            in_call_dropped: 0,
            redactions: Vec::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock cannot leave an entry half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an entry. Of the call's entries (step 20) the newest [`IN_CALL_KEPT`] are kept.
    pub fn record(&self, step: u8, side: Side, what: What) {
        let mut inner = self.lock();
        let at_ms = inner.start.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(step, ?side, ?what, "transcript");
        if step == 20 {
            if inner.in_call == IN_CALL_KEPT {
                if let Some(oldest) = inner.entries.iter().position(|e| e.step == 20) {
                    inner.entries.remove(oldest);
                    inner.in_call -= 1;
                    inner.in_call_dropped += 1;
                }
            }
            inner.in_call += 1;
        }
        inner.entries.push(Entry { step, side, at_ms, what });
    }

    /// How many entries of the call were dropped to keep the transcript bounded.
    pub fn in_call_dropped(&self) -> u64 {
        self.lock().in_call_dropped
    }

    /// Declares a value random: the redacted rendering shows `placeholder` instead.
    pub fn redact(&self, value: &str, placeholder: &str) {
        if value.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if !inner.redactions.iter().any(|(v, _)| v == value) {
            inner.redactions.push((value.to_owned(), format!("[{placeholder}]")));
            // Longest first, so a value that contains another is replaced whole.
            inner.redactions.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        }
    }

    /// A copy of the entries so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// Moves every entry of `other` to the end of this transcript (used when the media acquired
    /// in steps 1–2 joins the session that carries steps 3–19).
    pub(crate) fn absorb(&self, other: &Transcript) {
        if Arc::ptr_eq(&self.0, &other.0) {
            return;
        }
        let (entries, redactions) = {
            let mut o = other.lock();
            o.in_call = 0;
            (std::mem::take(&mut o.entries), o.redactions.clone())
        };
        let other_start = other.lock().start;
        {
            let mut inner = self.lock();
            let offset = other_start.saturating_duration_since(inner.start).as_secs_f64() * 1000.0;
            inner.in_call += entries.iter().filter(|e| e.step == 20).count();
            inner.entries.extend(entries.into_iter().map(|mut e| {
                e.at_ms += offset;
                e
            }));
        }
        for (v, p) in redactions {
            self.redact(&v, p.trim_start_matches('[').trim_end_matches(']'));
        }
    }

    /// The entries as JSON (an array of objects), for logging or storing.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.lock().entries).expect("entries always serialise")
    }

    /// The transcript as a protocol trace, one line per entry (multi-line values indented).
    pub fn render(&self, how: Render) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let mut first_in_call = true;
        for e in &inner.entries {
            if e.step == 20 && first_in_call {
                first_in_call = false;
                if inner.in_call_dropped > 0 {
                    let _ = writeln!(out, " +         ({} earlier entries of the call not kept)", inner.in_call_dropped);
                }
            }
            let side = match e.side {
                Side::Ws => "ws   ",
                Side::Media => "media",
                Side::Local => "local",
            };
            let (body, extra) = match &e.what {
                What::Sent { frame } => (frame.clone(), None),
                What::Received { frame, routing } => {
                    let note = match routing {
                        Routing::Answer | Routing::Event => String::new(),
                        r => format!("   ({})", serde_json::to_value(r).unwrap().as_str().unwrap().replace('_', " ")),
                    };
                    (format!("{frame}{note}"), None)
                }
                What::Call { name, detail } | What::Returned { name, detail } => {
                    if detail.contains('\n') {
                        (name.clone(), Some(detail.clone()))
                    } else if detail.is_empty() {
                        (name.clone(), None)
                    } else {
                        (format!("{name}: {detail}"), None)
                    }
                }
                What::Kept { name, from_step } => (format!("{name} (kept from step {from_step})"), None),
                What::Failed { error } => (format!("FAILED {error}"), None),
                What::Closed { reason } => (format!("socket closed: {reason}"), None),
                What::Reconnect { detail } => (format!("RECONNECT {detail}"), None),
            };
            let step = match e.step {
                0 => " -".to_owned(),
                20 => " +".to_owned(),
                n => format!("{n:>2}"),
            };
            match how {
                Render::Full => write!(out, "{:>9.1}ms  {step} {side} {} {body}", e.at_ms, e.arrow()).unwrap(),
                Render::Redacted => write!(out, "{step} {side} {} {body}", e.arrow()).unwrap(),
            }
            out.push('\n');
            if let Some(extra) = extra {
                for line in extra.lines() {
                    let _ = writeln!(out, "           | {line}");
                }
            }
        }
        match how {
            Render::Full => out,
            Render::Redacted => redact_text(&out, &inner.redactions),
        }
    }
}

/// Replaces every registered value, then the values no registry can know in advance (times in
/// `timer.time`, SDP session ids and candidate priorities).
fn redact_text(text: &str, redactions: &[(String, String)]) -> String {
    let mut s = text.to_owned();
    for (value, placeholder) in redactions {
        s = s.replace(value.as_str(), placeholder);
    }
    s = replace_digits_after(&s, "\"t\":", "[time]");
    s = replace_digits_after(&s, "o=- ", "[sess-id]");
    s
}

fn replace_digits_after(s: &str, marker: &str, placeholder: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(marker) {
        let (head, tail) = rest.split_at(i + marker.len());
        out.push_str(head);
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            out.push_str(placeholder);
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_replaces_every_occurrence_and_longest_first() {
        let t = Transcript::new();
        t.record(3, Side::Ws, What::Sent { frame: r#"{"ufrag":"abcd","pwd":"abcdef"}"#.into() });
        t.redact("abcd", "local-ufrag");
        t.redact("abcdef", "local-pwd");
        let r = t.render(Render::Redacted);
        assert_eq!(r, " 3 ws    < {\"ufrag\":\"[local-ufrag]\",\"pwd\":\"[local-pwd]\"}\n");
    }

    #[test]
    fn a_long_call_keeps_its_newest_entries_and_counts_the_rest() {
        let t = Transcript::new();
        t.record(19, Side::Media, What::Call { name: "play".into(), detail: String::new() });
        for i in 0..IN_CALL_KEPT + 10 {
            t.record(20, Side::Ws, What::Sent { frame: format!("frame {i}") });
        }
        let entries = t.entries();
        assert_eq!(entries.len(), IN_CALL_KEPT + 1);
        assert_eq!(entries[0].step, 19, "the sequence's entries are all kept");
        assert_eq!(entries[1].what, What::Sent { frame: "frame 10".into() });
        assert_eq!(t.in_call_dropped(), 10);
        assert!(t.render(Render::Redacted).contains("(10 earlier entries of the call not kept)"));
    }

    #[test]
    fn times_in_timer_events_are_redacted() {
        assert_eq!(replace_digits_after(r#"{"t":1764000000}"#, "\"t\":", "[time]"), r#"{"t":[time]}"#);
    }
}
