//! Step 9 (read the offer) and step 15 (write the core's answer). No SDP crosses the wire: the
//! client pulls out of its own offer what CALLME_S2 carries, and writes the answer the core would
//! have written from what `servufrag` carries.

use std::net::IpAddr;

use serde::Serialize;

use crate::wire::{self, ServUfrag, WireError};

/// Extension URIs the core may use.
pub const EXT_AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const EXT_SDES_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// What the client's offer says that the core needs (CALLME_S2's params).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferFacts {
    pub ufrag: String,
    pub pwd: String,
    /// `"sha-256 AB:CD:..."`.
    pub fingerprint: String,
    pub mid: String,
    pub opus_pt: u8,
    pub opus_fmtp: String,
    pub ext_audio_level: Option<u8>,
    pub ext_mid: Option<u8>,
    pub ssrc: Option<u32>,
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
pub fn build_answer(offer: &OfferFacts, core: &ServUfrag, addr: IpAddr) -> String {
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
    if offer.bundle {
        line(format!("a=group:BUNDLE {}", offer.mid));
    }
    line(format!("m=audio {} UDP/TLS/RTP/SAVPF {}", core.port, offer.opus_pt));
    line(format!("c=IN {} {addr}", ip(&addr)));
    line(format!("a=mid:{}", offer.mid));
    line(format!("a=ice-ufrag:{}", core.ufrag));
    line(format!("a=ice-pwd:{}", core.pwd));
    line(format!("a=fingerprint:{}", core.fingerprint));
    line("a=setup:passive".into());
    media_lines(offer, &mut line);
    if core.candidates.is_empty() {
        line(format!("a=candidate:1 1 udp 2130706431 {addr} {} typ host", core.port));
    } else {
        for c in &core.candidates {
            line(format!("a={c}"));
        }
    }
    line("a=end-of-candidates".into());
    s
}

/// The lines both sides of the audio section share: direction, RTCP multiplexing, Opus with the
/// offer's payload type and fmtp, and the header extensions the offer named.
pub fn media_lines(offer: &OfferFacts, line: &mut impl FnMut(String)) {
    line("a=sendrecv".into());
    line("a=rtcp-mux".into());
    line(format!("a=rtpmap:{} opus/48000/2", offer.opus_pt));
    line(format!("a=fmtp:{} {}", offer.opus_pt, offer.opus_fmtp));
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
}
