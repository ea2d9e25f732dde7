//! Life in the conference on the command line: the roster when one is in, each change as it
//! happens, chat lines, and a console of slash commands on stdin.

use std::time::Duration;

use callme::{CallEvent, Connected, Member, Roster, RosterChange};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The password for `login`: `CALLME_PASSWORD`, else asked on the terminal (not echoed). Never a
/// flag: a flag shows in the process list and the shell's history.
pub fn password(login: &str) -> Result<String, String> {
    if let Ok(p) = std::env::var("CALLME_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password(format!("password for {login}: "))
        .map_err(|e| format!("no password for {login}: set CALLME_PASSWORD or run on a terminal ({e})"))
}

/// A member as a person reads it.
fn who(m: &Member) -> String {
    if m.name.is_empty() {
        format!("party {}", m.id)
    } else {
        m.name.clone()
    }
}

/// The roster, one line per party.
pub fn print_roster(roster: &Roster, me: callme::PartyId) {
    println!("  in the conference ({}):", roster.len());
    for m in roster.members() {
        let mut notes = vec![if m.mic_on { "mic on" } else { "muted" }.to_owned(), m.state.to_string()];
        if m.talking {
            notes.push("talking".into());
        }
        let you = if m.id == me { " (you)" } else { "" };
        println!("    {:<20} party {:<5} {}", format!("{}{you}", who(m)), m.id, notes.join(", "));
    }
}

/// One line for an event, or `None` for what is not worth a line (the core's clock).
pub fn describe(e: &CallEvent) -> Option<String> {
    Some(match e {
        CallEvent::Roster(c) => match c {
            RosterChange::Joined(m) => format!("+ {} joined (party {})", who(m), m.id),
            RosterChange::Left(m) => format!("- {} left", who(m)),
            RosterChange::MicChanged(m) => format!("{} {}", who(m), if m.mic_on { "unmuted" } else { "muted" }),
            RosterChange::TalkingStarted(m) => format!("{} talks", who(m)),
            RosterChange::TalkingStopped(m) => format!("{} stopped talking", who(m)),
            RosterChange::StateChanged { member, .. } => format!("{}: {}", who(member), member.state),
            RosterChange::Renamed { member, from } => format!("{from} is now {}", who(member)),
            RosterChange::Moved { member, from } => format!("{} moved from #{from} to #{}", who(member), member.index),
            RosterChange::Updated(m) => format!("{} updated", who(m)),
            RosterChange::Anomaly(a) => format!("roster: {a:?}"),
            other => format!("roster: {other:?}"),
        },
        CallEvent::Chat(m) => format!("[chat] {}: {}", if m.username.is_empty() { "someone" } else { &m.username }, m.msg),
        CallEvent::Clock { .. } | CallEvent::Stats(_) => return None,
        CallEvent::Reconnecting { cause, attempt } => format!("reconnecting (attempt {attempt}): {cause}"),
        CallEvent::Reconnected { outage, attempts, party } => {
            format!("back in the call as party {} after {} ms without audio ({attempts} attempt(s))", party.0, outage.as_millis())
        }
        CallEvent::Core(e) => format!("event {}", e.name()),
        CallEvent::Malformed(w) => format!("a frame from the core could not be read: {w}"),
        CallEvent::Lagged { missed } => format!("{missed} events were missed"),
        CallEvent::Ended(e) => format!("the call ended: {e}"),
        other => format!("{other:?}"),
    })
}

/// What `callme join` heard in its window.
pub struct Window {
    /// Every frame heard, in order.
    pub heard: Vec<i16>,
    /// The window's length.
    pub length: Duration,
    /// 20 ms frames with sound in them (at least `SOUND_DBFS`).
    pub frames_with_sound: usize,
    /// The reconnections, each with its outage.
    pub outages: Vec<Duration>,
    /// Set when the window ended while the call was reconnecting: since how long.
    pub reconnecting_since: Option<Duration>,
}

impl Window {
    /// One line: how much of the window had audio, and the outages.
    pub fn summary(&self) -> String {
        let frames = (self.length.as_secs_f64() * 50.0).round().max(1.0);
        let share = self.frames_with_sound as f64 / frames;
        let outages = match self.outages.len() {
            0 => "no outage".to_owned(),
            n => {
                let total: Duration = self.outages.iter().sum();
                format!("{n} outage(s), {} ms in all", total.as_millis())
            }
        };
        format!(
            "sound in {:.1}% of the {:.1} s window ({} of {frames:.0} frames), {outages}",
            share * 100.0,
            self.length.as_secs_f64(),
            self.frames_with_sound
        )
    }
}

/// Listens for `length` through outages, printing each event as it comes (and the stats once
/// a second with `stats`); an error when the call ends before the window does.
pub async fn listen_through(call: &Connected, length: Duration, stats: bool) -> Result<Window, callme::Error> {
    call.skip_heard().await;
    let deadline = tokio::time::Instant::now() + length;
    let mut w = Window { heard: Vec::new(), length, frames_with_sound: 0, outages: Vec::new(), reconnecting_since: None };
    let mut lost_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            f = call.next_frame() => match f {
                Some(f) => {
                    if callme::stats::level_dbfs(&f) >= crate::steps::SOUND_DBFS {
                        w.frames_with_sound += 1;
                    }
                    w.heard.extend_from_slice(&f);
                }
                None => return Err(call.ended().await),
            },
            e = call.next_event() => match e {
                Some(CallEvent::Stats(s)) => {
                    if stats {
                        println!("  {}", stats_line(&s));
                    }
                }
                Some(CallEvent::Reconnecting { cause, attempt }) => {
                    lost_at.get_or_insert_with(tokio::time::Instant::now);
                    println!("  reconnecting (attempt {attempt}): {cause}");
                }
                Some(CallEvent::Reconnected { outage, attempts, party }) => {
                    lost_at = None;
                    w.outages.push(outage);
                    println!("  back in the call as party {} after {} ms without audio ({attempts} attempt(s))", party.0, outage.as_millis());
                }
                Some(CallEvent::Ended(e)) => return Err(e),
                Some(e) => {
                    if let Some(line) = describe(&e) {
                        println!("  {line}");
                    }
                }
                None => return Err(call.ended().await),
            },
        }
    }
    w.reconnecting_since = lost_at.map(|t| t.elapsed());
    Ok(w)
}

/// One line of stats.
pub fn stats_line(s: &callme::CallStats) -> String {
    let r = &s.received;
    let rtt = s.sent.round_trip.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    format!(
        "stats {:>5.1} s: in {} pkts ({} lost, {} FEC, {} concealed, {} late, {} dup), jitter {} ms, buffer {} ms; out {} pkts; rtt {rtt}; level in {:.0} / out {:.0} dBFS; expected loss {}%",
        s.elapsed.as_secs_f64(),
        r.packets,
        r.lost,
        r.recovered_fec,
        r.concealed,
        r.late,
        r.duplicates,
        r.jitter.as_millis(),
        r.buffer_delay.as_millis(),
        s.sent.packets,
        r.level_dbfs,
        s.sent.level_dbfs,
        s.sent.expected_loss_percent,
    )
}

/// Prints every event as it comes, until the call ends.
pub async fn print_events(call: &Connected) {
    while let Some(e) = call.next_event().await {
        if let Some(line) = describe(&e) {
            println!("  {line}");
        }
    }
}

/// What a console line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Say this in the chat (`/msg TEXT`, or any line not starting with `/`).
    Say(String),
    /// Turn the named party's microphone off or on (`/mute NAME`, `/unmute NAME`; `me` for
    /// oneself).
    Mic { name: String, on: bool },
    /// Remove the named party (`/kick NAME`).
    Kick(String),
    /// Print the roster (`/who`).
    Who,
    /// Leave (`/quit`).
    Quit,
    /// Nothing to do (an empty line).
    Nothing,
}

/// Reads a console line; the error says what was not understood.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Line::Nothing);
    }
    let Some(rest) = line.strip_prefix('/') else { return Ok(Line::Say(line.to_owned())) };
    let (cmd, arg) = rest.split_once(char::is_whitespace).map_or((rest, ""), |(c, a)| (c, a.trim()));
    let need = |what: &str| if arg.is_empty() { Err(format!("/{cmd} needs {what}")) } else { Ok(arg.to_owned()) };
    match cmd {
        "msg" | "say" => need("a text").map(Line::Say),
        "mute" => need("a name").map(|name| Line::Mic { name, on: false }),
        "unmute" => need("a name").map(|name| Line::Mic { name, on: true }),
        "kick" | "remove" => need("a name").map(Line::Kick),
        "who" => Ok(Line::Who),
        "quit" | "leave" => Ok(Line::Quit),
        other => Err(format!("/{other} is not a command: /msg TEXT, /mute NAME, /unmute NAME, /kick NAME, /who, /quit")),
    }
}

/// Does what a console line asks; the error is the core's refusal or what was not found.
async fn act(call: &Connected, line: Line) -> Result<bool, String> {
    let find = |name: &str| -> Result<callme::PartyId, String> {
        if name == "me" {
            return Ok(call.party_id());
        }
        let roster = call.roster();
        let found = roster.by_name(name).map(|m| m.id).or_else(|| name.parse::<u64>().ok().map(callme::PartyId));
        found.ok_or_else(|| format!("no party named {name:?} in the conference"))
    };
    match line {
        Line::Nothing => {}
        Line::Quit => return Ok(false),
        Line::Who => print_roster(&call.roster(), call.party_id()),
        Line::Say(text) => call.say(&text).await.map_err(|e| e.to_string())?,
        Line::Mic { name, on } => {
            let party = find(&name)?;
            if party == call.party_id() {
                call.set_mic(on).await.map_err(|e| e.to_string())?;
            } else {
                call.set_mic_of(party, on).await.map_err(|e| e.to_string())?;
            }
        }
        Line::Kick(name) => call.remove(find(&name)?).await.map_err(|e| e.to_string())?,
    }
    Ok(true)
}

/// The console: reads lines from stdin until `/quit`, the end of stdin, or the end of the call,
/// printing events meanwhile.
pub async fn console(call: &Connected) {
    println!("  console: type a line to chat, or /mute NAME, /unmute NAME, /kick NAME, /who, /quit");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let events = print_events(call);
    tokio::pin!(events);
    loop {
        tokio::select! {
            // Events first: what is already there is printed before the next line is acted on.
            biased;
            _ = &mut events => return,
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { return };
                match parse_line(&line) {
                    Ok(l) => match act(call, l).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => println!("  ! {e}"),
                    },
                    Err(e) => println!("  ! {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_read_as_commands_or_chat() {
        assert_eq!(parse_line("hello all"), Ok(Line::Say("hello all".into())));
        assert_eq!(parse_line("/msg  hi "), Ok(Line::Say("hi".into())));
        assert_eq!(parse_line("/mute Bob"), Ok(Line::Mic { name: "Bob".into(), on: false }));
        assert_eq!(parse_line("/unmute me"), Ok(Line::Mic { name: "me".into(), on: true }));
        assert_eq!(parse_line("/kick Carol Jones"), Ok(Line::Kick("Carol Jones".into())));
        assert_eq!(parse_line("/who"), Ok(Line::Who));
        assert_eq!(parse_line("  "), Ok(Line::Nothing));
        assert_eq!(parse_line("/mute"), Err("/mute needs a name".into()));
        assert!(parse_line("/dance").unwrap_err().contains("/dance is not a command"));
    }
}
