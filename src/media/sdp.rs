//! Step 9 (read the offer) and step 15 (write the core's answer). No SDP crosses the wire: the
//! client pulls out of its own offer what CALLME_S2 carries, and writes the answer the core would
//! have written from what `servufrag` carries.

use std::net::IpAddr;

use serde::Serialize;

use crate::wire::{self, ServUfrag, WireError};

/// The RFC 6464 audio-level header extension's URI.
pub const EXT_AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// The RFC 8843 `sdes:mid` header extension's URI.
pub const EXT_SDES_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// What the client's offer says that the core needs (CALLME_S2's params).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferFacts {
    /// `a=ice-ufrag`.
    pub ufrag: String,
    /// `a=ice-pwd`.
    pub pwd: String,
    /// `"sha-256 AB:CD:..."`.
    pub fingerprint: String,
    /// `a=mid` of the audio section.
    pub mid: String,
    /// The Opus payload type (`a=rtpmap:<pt> opus/48000/2`).
    pub opus_pt: u8,
    /// The Opus `a=fmtp` parameters.
    pub opus_fmtp: String,
    /// The id of the audio-level header extension, if offered.
    pub ext_audio_level: Option<u8>,
    /// The id of the `sdes:mid` header extension, if offered.
    pub ext_mid: Option<u8>,
    /// The SSRC of the offered audio, if the offer names one.
    pub ssrc: Option<u32>,
    /// The CNAME of that SSRC.
    pub cname: Option<String>,
    /// Whether the offer groups its media with BUNDLE.
    pub bundle: bool,
}

impl OfferFacts {
    /// The CALLME_S2 params this offer gives, named as in `docs/protocol.md`.
    pub fn s2_params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![
            (wire::s2::UFRAG, self.ufrag.clone()),
            (wire::s2::PWD, self.pwd.clone()),
            (wire::s2::FINGERPRINT, self.fingerprint.clone()),
            (wire::s2::MID, self.mid.clone()),
            (wire::s2::OPUS_PT, self.opus_pt.to_string()),
            (wire::s2::OPUS_FMTP, self.opus_fmtp.clone()),
        ];
        if let Some(id) = self.ext_audio_level {
            p.push((wire::s2::EXT_AUDIO_LEVEL, id.to_string()));
        }
        if let Some(id) = self.ext_mid {
            p.push((wire::s2::EXT_MID, id.to_string()));
        }
        if let Some(ssrc) = self.ssrc {
            p.push((wire::s2::SSRC, ssrc.to_string()));
        }
        if let Some(cname) = &self.cname {
            p.push((wire::s2::CNAME, cname.clone()));
        }
        p
    }
}

/// Reads an offer: the first audio section, with session-level values as fallback.
/// Errors name the SDP attribute (`a=ice-ufrag`, ...) that is missing or bad.
pub fn parse_offer(sdp: &str) -> Result<OfferFacts, WireError> {
    let mut session: Vec<&str> = Vec::new();
    let mut audio: Option<(Vec<&str>, Vec<&str>)> = None; // (payload types, lines)
    let mut in_audio = false;
    let mut seen_media = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            seen_media = true;
            in_audio = audio.is_none() && m.starts_with("audio ");
            if in_audio {
                audio = Some((m.split_whitespace().skip(3).collect(), Vec::new()));
            }
        } else if !seen_media {
            session.push(line);
        } else if in_audio {
            audio.as_mut().expect("in an audio section").1.push(line);
        }
    }
    let (pts, media) = audio.ok_or_else(|| WireError::new("m=audio", "the offer has no audio section"))?;
    let attr = |name: &str| -> Option<String> {
        let prefix = format!("a={name}:");
        media.iter().chain(session.iter()).find_map(|l| l.strip_prefix(prefix.as_str()).map(|v| v.trim().to_owned()))
    };
    let need = |name: &str| attr(name).ok_or_else(|| WireError::new(format!("a={name}"), "missing from the offer"));

    let ufrag = need("ice-ufrag")?;
    wire::check_ice_chars(&ufrag, 4).map_err(|r| WireError::new("a=ice-ufrag", r))?;
    let pwd = need("ice-pwd")?;
    wire::check_ice_chars(&pwd, 22).map_err(|r| WireError::new("a=ice-pwd", r))?;
    let fingerprint = need("fingerprint")?;
    let (algo, hex) = fingerprint.split_once(' ').unwrap_or((&fingerprint, ""));
    let fingerprint = format!("{} {}", algo.to_ascii_lowercase(), hex.to_ascii_uppercase());
    wire::check_fingerprint(&fingerprint).map_err(|r| WireError::new("a=fingerprint", r))?;
    let mid = need("mid")?;

    let opus_pt = media
        .iter()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .find_map(|v| {
            let (pt, codec) = v.split_once(' ')?;
            codec.to_ascii_lowercase().starts_with("opus/48000").then(|| pt.parse::<u8>().ok()).flatten()
        })
        .filter(|pt| pts.contains(&pt.to_string().as_str()))
        .ok_or_else(|| WireError::new("a=rtpmap", "no opus/48000 payload type in the audio section"))?;
    let fmtp_prefix = format!("a=fmtp:{opus_pt} ");
    let opus_fmtp = media
        .iter()
        .find_map(|l| l.strip_prefix(fmtp_prefix.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "minptime=10;useinbandfec=1".to_owned());

    let ext = |uri: &str| -> Option<u8> {
        media.iter().filter_map(|l| l.strip_prefix("a=extmap:")).find_map(|v| {
            let mut it = v.split_whitespace();
            let id = it.next()?.split('/').next()?.parse().ok()?;
            (it.next()? == uri).then_some(id)
        })
    };
    let ssrc_line = media.iter().find_map(|l| l.strip_prefix("a=ssrc:"));
    let ssrc = ssrc_line.and_then(|v| v.split_whitespace().next()?.parse().ok());
    let cname = media.iter().filter_map(|l| l.strip_prefix("a=ssrc:")).find_map(|v| v.split_once(" cname:").map(|(_, c)| c.to_owned()));
    let bundle = session.iter().any(|l| l.starts_with("a=group:BUNDLE"));
    Ok(OfferFacts {
        ufrag,
        pwd,
        fingerprint,
        mid,
        opus_pt,
        opus_fmtp,
        ext_audio_level: ext(EXT_AUDIO_LEVEL),
        ext_mid: ext(EXT_SDES_MID),
        ssrc,
        cname,
        bundle,
    })
}

/// Builds the core's answer (step 15): ICE-lite, `a=setup:passive`, the offer's mid and Opus
/// payload type, and a host candidate at `addr:port` (or the given candidate lines). `addr` must
/// already be an IP address (the caller resolves names).
///
/// Every value that comes from the core (ufrag, pwd, fingerprint, candidate lines) or from the
/// offer (mid, Opus fmtp) is checked first ([`check_answer_values`]); the error names the first
/// bad one by its field, e.g. `EVT.result.EvtData.candidates[1]`. No line break, NUL or foreign
/// attribute can reach the SDP.
pub fn try_build_answer(offer: &OfferFacts, core: &ServUfrag, addr: IpAddr) -> Result<String, WireError> {
    check_answer_values(offer, core)?;
    Ok(write_answer(offer, core, &core.candidates.iter().map(String::as_str).collect::<Vec<_>>(), addr))
}

/// [`try_build_answer`] for values already checked: a value that fails its check is left out of
/// the answer (its line is not written, a bad candidate line is skipped) and a warning is logged,
/// so an unchecked value never reaches the SDP. The answer is then incomplete and fails when
/// applied; prefer [`try_build_answer`], whose error names the field.
pub fn build_answer(offer: &OfferFacts, core: &ServUfrag, addr: IpAddr) -> String {
    if let Err(e) = check_answer_values(offer, core) {
        tracing::warn!("the answer leaves out a value that fails its check: {e}");
    }
    let or_empty = |s: &str, ok: bool| if ok { s.to_owned() } else { String::new() };
    let offer = OfferFacts {
        mid: or_empty(&offer.mid, check_mid(&offer.mid).is_ok()),
        opus_fmtp: or_empty(&offer.opus_fmtp, check_fmtp(&offer.opus_fmtp).is_ok()),
        ..offer.clone()
    };
    let core = ServUfrag {
        ufrag: or_empty(&core.ufrag, check_ice_value(&core.ufrag, 4).is_ok()),
        pwd: or_empty(&core.pwd, check_ice_value(&core.pwd, 22).is_ok()),
        fingerprint: or_empty(&core.fingerprint, wire::check_fingerprint(&core.fingerprint).is_ok()),
        ..core.clone()
    };
    let candidates: Vec<&str> = core.candidates.iter().map(String::as_str).filter(|c| check_candidate(c).is_ok()).collect();
    write_answer(&offer, &core, &candidates, addr)
}

/// Checks every value [`try_build_answer`] writes into the answer that is not a number or an
/// address already: the core's `ufrag`, `pwd`, `fingerprint` and `candidates` (named by their
/// path in `servufrag`), and the offer's `a=mid` and `a=fmtp`.
pub fn check_answer_values(offer: &OfferFacts, core: &ServUfrag) -> Result<(), WireError> {
    const AT: &str = "EVT.result.EvtData";
    check_ice_value(&core.ufrag, 4).map_err(|r| WireError::new(format!("{AT}.ufrag"), r))?;
    check_ice_value(&core.pwd, 22).map_err(|r| WireError::new(format!("{AT}.pwd"), r))?;
    wire::check_fingerprint(&core.fingerprint).map_err(|r| WireError::new(format!("{AT}.fingerprint"), r))?;
    for (i, c) in core.candidates.iter().enumerate() {
        check_candidate(c).map_err(|r| WireError::new(format!("{AT}.candidates[{i}]"), r))?;
    }
    check_mid(&offer.mid).map_err(|r| WireError::new("a=mid", r))?;
    check_fmtp(&offer.opus_fmtp).map_err(|r| WireError::new("a=fmtp", r))?;
    Ok(())
}

/// An ICE ufrag (`min` 4) or pwd (`min` 22): `min` to 256 characters of letters, digits, `+`
/// and `/` (RFC 8839, `ice-char`).
pub fn check_ice_value(s: &str, min: usize) -> Result<(), String> {
    wire::check_ice_chars(s, min)?;
    if s.len() > 256 {
        return Err(format!("{} characters, at most 256 allowed", s.len()));
    }
    Ok(())
}

/// A media id as the answer writes it in `a=mid` and `a=group:BUNDLE`: 1 to 16 letters, digits,
/// `-` or `_` (the same rule the reference core applies to CALLME_S2's `mid`).
pub fn check_mid(mid: &str) -> Result<(), String> {
    if mid.is_empty() || mid.len() > 16 {
        return Err(format!("{} characters, 1 to 16 needed", mid.len()));
    }
    match mid.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        Some(c) => Err(format!("character {c:?} is not allowed in a mid")),
        None => Ok(()),
    }
}

/// Format parameters as the answer writes them after `a=fmtp:<pt> `: printable ASCII and
/// spaces, no line break or other control character.
pub fn check_fmtp(fmtp: &str) -> Result<(), String> {
    match fmtp.chars().find(|c| !(' '..='~').contains(c)) {
        Some(c) => Err(format!("character {c:?} is not allowed in format parameters")),
        None if fmtp.trim().is_empty() => Err("empty".into()),
        None => Ok(()),
    }
}

/// Checks a candidate line as `servufrag` gives it (`candidate:...`, without `a=`) against the
/// grammar of RFC 8839 section 5.1:
///
/// ```text
/// candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
///           [raddr <address>] [rport <port>] *(<extension name> <extension value>)
/// ```
///
/// foundation 1–32 `ice-char`s; component 1–3 digits (1–256); transport a token (`udp`, `tcp`,
/// ...); priority 1–10 digits (at most 2^32 - 1); address an IPv4 or IPv6 address or a host name;
/// port 0–65535; type `host`, `srflx`, `prflx` or `relay`; extension names are tokens and
/// values non-space visible characters. Fields are separated by single spaces; no other
/// character (line break, NUL, tab) is accepted. The error says which field is wrong.
pub fn check_candidate(line: &str) -> Result<(), String> {
    if line.len() > 1024 {
        return Err(format!("{} bytes, at most 1024 allowed", line.len()));
    }
    if let Some(c) = line.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!("character {c:?} is not allowed in a candidate line"));
    }
    let rest = line.strip_prefix("candidate:").ok_or("does not start with candidate:")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.iter().any(|f| f.is_empty()) {
        return Err("empty field (fields are separated by single spaces)".into());
    }
    if fields.len() < 8 {
        return Err(format!("{} fields, at least 8 needed (foundation component transport priority address port typ type)", fields.len()));
    }
    let digits = |s: &str, max_len: usize| s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit());
    let foundation = fields[0];
    if foundation.len() > 32 || !foundation.chars().all(is_ice_char) {
        return Err(format!("foundation {foundation:?} is not 1 to 32 letters, digits, + or /"));
    }
    if !digits(fields[1], 3) || !(1..=256).contains(&fields[1].parse::<u16>().unwrap_or(0)) {
        return Err(format!("component {:?} is not a number from 1 to 256", fields[1]));
    }
    if !fields[2].chars().all(is_token_char) {
        return Err(format!("transport {:?} is not a token", fields[2]));
    }
    if !digits(fields[3], 10) || fields[3].parse::<u64>().map_or(true, |p| p > u64::from(u32::MAX)) {
        return Err(format!("priority {:?} is not a number from 0 to 4294967295", fields[3]));
    }
    check_connection_address(fields[4]).map_err(|r| format!("address {:?}: {r}", fields[4]))?;
    check_port(fields[5])?;
    if fields[6] != "typ" {
        return Err(format!("{:?} where typ is expected", fields[6]));
    }
    if !["host", "srflx", "prflx", "relay"].contains(&fields[7]) {
        return Err(format!("candidate type {:?} is not host, srflx, prflx or relay", fields[7]));
    }
    let mut rest = &fields[8..];
    if let ["raddr", addr, tail @ ..] = rest {
        check_connection_address(addr).map_err(|r| format!("raddr {addr:?}: {r}"))?;
        rest = tail;
    }
    if let ["rport", port, tail @ ..] = rest {
        check_port(port).map_err(|r| format!("rport: {r}"))?;
        rest = tail;
    }
    if rest.len() % 2 != 0 {
        return Err(format!("extension {:?} has no value", rest[rest.len() - 1]));
    }
    for pair in rest.chunks(2) {
        if !pair[0].chars().all(is_token_char) {
            return Err(format!("extension name {:?} is not a token", pair[0]));
        }
        if ["raddr", "rport", "typ"].contains(&pair[0]) {
            return Err(format!("{} is out of place", pair[0]));
        }
        // Values are `*VCHAR`; spaces and control characters were refused above.
    }
    Ok(())
}

fn is_ice_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '+' || c == '/'
}

/// SDP's `token-char` (RFC 8866): visible ASCII but `"`, `(`, `)`, `,`, `/`, `:` to `@`, `[` to `]`.
fn is_token_char(c: char) -> bool {
    matches!(c, '!' | '#'..='\'' | '*' | '+' | '-' | '.' | '0'..='9' | 'A'..='Z' | '^'..='~')
}

fn check_port(s: &str) -> Result<(), String> {
    match s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) {
        true if s.parse::<u32>().is_ok_and(|p| p <= 65535) => Ok(()),
        _ => Err(format!("port {s:?} is not a number from 0 to 65535")),
    }
}

/// An IPv4 or IPv6 address, or a host name (labels of letters, digits and `-`, at most 253
/// characters in all), as RFC 8839's `connection-address` allows.
fn check_connection_address(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let labels_ok = s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if s.len() > 253 || !labels_ok {
        return Err("not an IP address or a host name".into());
    }
    Ok(())
}

/// The answer's lines, from values already checked (or emptied: an empty value's line is left
/// out).
fn write_answer(offer: &OfferFacts, core: &ServUfrag, candidates: &[&str], addr: IpAddr) -> String {
    let ip = |a: &IpAddr| if a.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push_str("\r\n");
    };
    line("v=0".into());
    // The session id only has to be stable within one answer; derive it from the core's ufrag.
    let sess_id: u64 = core.ufrag.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) >> 2;
    line(format!("o=- {sess_id} 2 IN {} {addr}", ip(&addr)));
    line("s=-".into());
    line("t=0 0".into());
    line("a=ice-lite".into());
    if offer.bundle && !offer.mid.is_empty() {
        line(format!("a=group:BUNDLE {}", offer.mid));
    }
    line(format!("m=audio {} UDP/TLS/RTP/SAVPF {}", core.port, offer.opus_pt));
    line(format!("c=IN {} {addr}", ip(&addr)));
    for (name, value) in [("mid", &offer.mid), ("ice-ufrag", &core.ufrag), ("ice-pwd", &core.pwd), ("fingerprint", &core.fingerprint)] {
        if !value.is_empty() {
            line(format!("a={name}:{value}"));
        }
    }
    line("a=setup:passive".into());
    media_lines(offer, &mut line);
    if core.candidates.is_empty() {
        line(format!("a=candidate:1 1 udp 2130706431 {addr} {} typ host", core.port));
    } else {
        for c in candidates {
            line(format!("a={c}"));
        }
    }
    line("a=end-of-candidates".into());
    s
}

/// The lines both sides of the audio section share: direction, RTCP multiplexing, Opus with the
/// offer's payload type and fmtp, and the header extensions the offer named. An fmtp that fails
/// [`check_fmtp`] is left out rather than written.
pub fn media_lines(offer: &OfferFacts, line: &mut impl FnMut(String)) {
    line("a=sendrecv".into());
    line("a=rtcp-mux".into());
    line(format!("a=rtpmap:{} opus/48000/2", offer.opus_pt));
    if check_fmtp(&offer.opus_fmtp).is_ok() {
        line(format!("a=fmtp:{} {}", offer.opus_pt, offer.opus_fmtp));
    }
    if let Some(id) = offer.ext_audio_level {
        line(format!("a=extmap:{id} {EXT_AUDIO_LEVEL}"));
    }
    if let Some(id) = offer.ext_mid {
        line(format!("a=extmap:{id} {EXT_SDES_MID}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LIKE: &str = "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Ab12\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\na=fingerprint:sha-256 ab:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\na=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=ssrc:1234 cname:xyz\r\n";

    #[test]
    fn a_chrome_like_offer_gives_every_s2_field() {
        let f = parse_offer(CHROME_LIKE).unwrap();
        assert_eq!((f.ufrag.as_str(), f.mid.as_str(), f.opus_pt), ("Ab12", "0", 111));
        assert!(f.fingerprint.starts_with("sha-256 AB:CD:EF"));
        assert_eq!((f.ext_audio_level, f.ext_mid, f.ssrc), (Some(1), Some(4), Some(1234)));
        assert_eq!(f.cname.as_deref(), Some("xyz"));
        assert!(f.bundle);
    }

    #[test]
    fn an_offer_without_ufrag_names_the_attribute() {
        let e = parse_offer(&CHROME_LIKE.replace("a=ice-ufrag:Ab12\r\n", "")).unwrap_err();
        assert_eq!(e.field, "a=ice-ufrag");
    }

    #[test]
    fn the_answer_is_ice_lite_passive_with_one_host_candidate() {
        let f = parse_offer(CHROME_LIKE).unwrap();
        let core = ServUfrag {
            ufrag: "Core".into(),
            pwd: "c".repeat(24),
            fingerprint: f.fingerprint.clone(),
            port: 40000,
            addr: None,
            candidates: vec![],
        };
        let a = build_answer(&f, &core, "127.0.0.1".parse().unwrap());
        for want in [
            "a=ice-lite",
            "a=setup:passive",
            "a=mid:0",
            "m=audio 40000 UDP/TLS/RTP/SAVPF 111",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
            "a=rtcp-mux",
        ] {
            assert!(a.contains(want), "{want} missing from\n{a}");
        }
    }

    fn core_values() -> ServUfrag {
        ServUfrag {
            ufrag: "Core".into(),
            pwd: "c".repeat(24),
            fingerprint: format!("sha-256 {}", vec!["C0"; 32].join(":")),
            port: 40000,
            addr: None,
            candidates: vec![],
        }
    }

    #[test]
    fn real_candidate_lines_pass() {
        for line in [
            "candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
            "candidate:842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx raddr 10.0.0.2 rport 61234 generation 0 network-cost 999",
            "candidate:3 1 tcp 1518280447 ::1 9 typ host tcptype active",
            "candidate:a+/Z 256 UDP 0 relay.example.org 3478 typ relay raddr 0.0.0.0 rport 0",
            "candidate:4 1 udp 2122262783 3f0a1c2e-4b6d-4e8f-9a0b-1c2d3e4f5a6b.local 50000 typ host ufrag ab/+ network-id 1",
        ] {
            check_candidate(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn injection_attempts_in_candidate_lines_are_refused_with_the_reason() {
        for (line, reason) in [
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host\r\na=evil", "'\\r' is not allowed"),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host\na=ice-lite", "'\\n' is not allowed"),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host\0", "'\\0' is not allowed"),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host\tx y", "'\\t' is not allowed"),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host a=evil 1", "extension name \"a=evil\" is not a token"),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host generation", "extension \"generation\" has no value"),
            ("candidate:1 1 udp 1 1.2.3.4:5 5 typ host", "address \"1.2.3.4:5\""),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ evil", "candidate type \"evil\""),
            ("candidate:1 1 udp 1 1.2.3.4 70000 typ host", "port \"70000\""),
            ("candidate:1 1 udp 4294967296 1.2.3.4 5 typ host", "priority"),
            ("candidate:1 0 udp 1 1.2.3.4 5 typ host", "component \"0\""),
            ("candidate:1  1 udp 1 1.2.3.4 5 typ host", "empty field"),
            ("candidate:1 1 udp 1 1.2.3.4 5 host", "at least 8 needed"),
            ("candidate:1 1 udp 1 1.2.3.4 5 nottyp host", "where typ is expected"),
            ("candidate:f\u{e9} 1 udp 1 1.2.3.4 5 typ host", "'\u{e9}' is not allowed"),
            ("a=candidate:1 1 udp 1 1.2.3.4 5 typ host", "does not start with candidate:"),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ host raddr 1.2.3.4 rport 1 typ host", "typ is out of place"),
        ] {
            let e = check_candidate(line).expect_err(line);
            assert!(e.contains(reason), "{line:?}: {e:?} does not say {reason:?}");
        }
    }

    #[test]
    fn an_injected_candidate_fails_the_answer_naming_its_index() {
        let f = parse_offer(CHROME_LIKE).unwrap();
        let core = ServUfrag {
            candidates: vec![
                "candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host".into(),
                "candidate:1 1 udp 1 1.2.3.4 5 typ host\r\na=evil".into(),
            ],
            ..core_values()
        };
        let e = try_build_answer(&f, &core, "127.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(e.field, "EVT.result.EvtData.candidates[1]");
        let lenient = build_answer(&f, &core, "127.0.0.1".parse().unwrap());
        assert!(!lenient.contains("evil"), "the unchecked line is left out:\n{lenient}");
        assert!(lenient.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"), "{lenient}");
    }

    #[test]
    fn a_ufrag_pwd_or_fingerprint_with_a_line_break_fails_the_answer_by_field() {
        let f = parse_offer(CHROME_LIKE).unwrap();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let good = core_values();
        for (core, field) in [
            (ServUfrag { ufrag: "Core\na=evil".into(), ..good.clone() }, "EVT.result.EvtData.ufrag"),
            (ServUfrag { ufrag: "Co\rre".into(), ..good.clone() }, "EVT.result.EvtData.ufrag"),
            (ServUfrag { ufrag: "x".repeat(257), ..good.clone() }, "EVT.result.EvtData.ufrag"),
            (ServUfrag { pwd: format!("{}\r\na=evil", "c".repeat(24)), ..good.clone() }, "EVT.result.EvtData.pwd"),
            (ServUfrag { fingerprint: format!("{}\r\na=evil", good.fingerprint), ..good.clone() }, "EVT.result.EvtData.fingerprint"),
        ] {
            let e = try_build_answer(&f, &core, addr).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            let lenient = build_answer(&f, &core, addr);
            assert!(!lenient.contains("evil") && !lenient.contains("\n\n") && !lenient.contains("\r\r"), "{lenient:?}");
            assert!(lenient.split("\r\n").all(|l| !l.contains('\r') && !l.contains('\n')), "{lenient:?}");
        }
    }

    #[test]
    fn an_offer_mid_or_fmtp_with_a_lone_carriage_return_is_not_written() {
        let offer = CHROME_LIKE.replace("a=mid:0\r\n", "a=mid:0\ra=evil\r\n").replace("useinbandfec=1\r\n", "useinbandfec=1\ra=evil\r\n");
        let f = parse_offer(&offer).unwrap();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(try_build_answer(&f, &core_values(), addr).unwrap_err().field, "a=mid");
        let f = OfferFacts { mid: "0".into(), ..f };
        assert_eq!(try_build_answer(&f, &core_values(), addr).unwrap_err().field, "a=fmtp");
        let lenient = build_answer(&f, &core_values(), addr);
        assert!(!lenient.contains("evil"), "{lenient:?}");
    }

    #[test]
    fn the_checked_answer_equals_the_plain_one_for_good_values() {
        let f = parse_offer(CHROME_LIKE).unwrap();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(try_build_answer(&f, &core_values(), addr).unwrap(), build_answer(&f, &core_values(), addr));
    }
}
