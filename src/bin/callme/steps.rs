//! The typestates one by one, each timed and reported as a row.

use std::time::{Duration, Instant};

use callme::media::MediaEngine;
use callme::{AudioSource, Connected, Error, MediaReady, Party};

/// One group of steps, done.
pub struct Row {
    pub steps: &'static str,
    pub what: &'static str,
    pub detail: String,
    pub took: Duration,
}

impl Row {
    pub fn print(&self, who: &str) {
        println!("  {who:<8} {:<12} {:<22} {:>8.1} ms   {}", self.steps, self.what, self.took.as_secs_f64() * 1000.0, self.detail);
    }
}

/// The row for opening the session and `cd.load`.
pub fn loaded(party: &Party, took: Duration) -> Row {
    let detail = format!("party {} in running conference {}", party.id(), party.loaded().conf);
    Row { steps: "before", what: "open, cd.load", detail, took }
}

/// Steps 1–19 for a loaded party, reporting each typestate as it is reached.
pub async fn join(
    party: Party,
    media: impl MediaEngine + 'static,
    source: AudioSource,
    mut on_row: impl FnMut(Row),
) -> Result<Connected, Error> {
    let transcript = party.transcript();
    let t = Instant::now();
    let describe = source.describe();
    let ready = MediaReady::acquire_with(media, source, &transcript).await?;
    on_row(Row { steps: "1-2", what: "MediaReady", detail: describe, took: t.elapsed() });

    let t = Instant::now();
    let s1 = ready.call_me_s1(party).await?;
    let ice = if s1.servdesc().serveraddr.is_empty() {
        "servdesc: no ICE server".to_owned()
    } else {
        format!("servdesc: {}", s1.servdesc().serveraddr)
    };
    on_row(Row { steps: "3-5", what: "S1Accepted", detail: ice, took: t.elapsed() });

    let t = Instant::now();
    let offered = s1.create_offer().await?;
    let o = offered.offer();
    on_row(Row {
        steps: "6-11",
        what: "Offered",
        detail: format!("ufrag {}, mid {}, opus pt {}", o.ufrag, o.mid, o.opus_pt),
        took: t.elapsed(),
    });

    let t = Instant::now();
    let s2 = offered.call_me_s2().await?;
    let u = s2.servufrag();
    let at = format!("servufrag: core at {}:{}", u.addr.as_deref().unwrap_or("(WebSocket host)"), u.port);
    on_row(Row { steps: "12-14", what: "S2Accepted", detail: at, took: t.elapsed() });

    let t = Instant::now();
    let call = s2.connect().await?;
    on_row(Row { steps: "15-19", what: "Connected", detail: "answer written, remote track playing".into(), took: t.elapsed() });
    Ok(call)
}

/// The dominant frequencies of what was heard, for people.
pub fn describe_heard(heard: &[i16]) -> String {
    let ms = heard.len() / 48;
    let level = callme::stats::level_dbfs(heard);
    if level < SOUND_DBFS {
        return format!("silence ({ms} ms)");
    }
    let mut peaks = callme::audio::dominant_frequencies(heard, 4);
    // Steady tones hold most of the power at a few frequencies; speech and noise do not.
    if peaks.iter().map(|p| p.1).sum::<f64>() < 0.5 {
        return format!("sound at {level:.0} dBFS without a steady tone (speech or noise) in {ms} ms of audio");
    }
    peaks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let list: Vec<String> = peaks.iter().map(|(hz, share)| format!("{hz:.0} Hz ({:.0}%)", share * 100.0)).collect();
    format!("{} in {ms} ms of audio", list.join(", "))
}

/// A frame at least this loud (RMS, dBFS) holds sound; quieter is silence.
pub const SOUND_DBFS: f32 = -50.0;
