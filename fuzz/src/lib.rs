//! The fuzz entry points: one function per target, fed raw bytes. Each returns normally for any
//! input; a panic is a bug. `tests/properties.rs` includes this file too, and replays every file
//! under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` through the same function.
//!
//! | target | what untrusted input reaches |
//! |---|---|
//! | `wire_incoming` | a frame from the core: `Incoming::parse`, then every event and answer reader |
//! | `wire_command` | a frame from a client: the core's strict reader `Command::parse`, its refusal, the command written back and read again |
//! | `sdp_offer` | an offer SDP: `sdp::parse_offer`, then the CALLME_S2 params it gives |
//! | `sdp_answer` | `servufrag` fields through the wire reader into the answer SDP |
//! | `datagram` | a UDP datagram before authentication: `media::guard::check_datagram`, then webrtc-rs's own RTP/RTCP/STUN parsers on whatever the guard lets through |

use std::net::IpAddr;

use callme::media::sdp::{self, OfferFacts};
use callme::wire::{self, ClusterId, Command, Incoming, Loaded, ServDesc, ServUfrag};
use serde_json::{json, Value};

/// A frame from the core, as the SDK reads it.
pub fn wire_incoming(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Incoming::parse(text) {
        Ok(Incoming::Answer(a)) => {
            let _ = a.refusal(&[wire::code::OK]);
            let _ = Loaded::from_answer(&a, ClusterId(1));
        }
        Ok(Incoming::Event(e)) => {
            let _ = e.name();
            let _ = e.party();
            let _ = ServDesc::from_event(&e);
            if let Ok(u) = ServUfrag::from_event(&e) {
                assert!(u.port >= 1, "servufrag port 0 was accepted");
            }
        }
        Err(e) => assert!(!e.field.is_empty(), "a wire error without a field: {e:?}"),
    }
}

/// A frame from a client, as the core reads it: a command is written back by `to_frame` and
/// reads back the same; a refusal names a field and becomes a frame.
pub fn wire_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Command::parse(text, &wire::CommandLimits::default()) {
        Ok(cmd) => {
            let again = Command::parse(&cmd.to_frame(), &wire::CommandLimits { max_frame_bytes: usize::MAX })
                .expect("a written command reads back");
            assert_eq!(again, cmd);
        }
        Err(e) => {
            assert!(!e.field.is_empty(), "a refusal without a field: {e:?}");
            let _ = e.reply();
        }
    }
}

/// A datagram from anyone, before authentication: what the guard lets through, webrtc-rs's
/// parsers read without panicking.
pub fn datagram(data: &[u8]) {
    use callme::media::guard::{check_datagram, Datagram};
    use webrtc::util::marshal::Unmarshal;
    match check_datagram(data) {
        Ok(Datagram::Rtp { .. }) => {
            let mut buf = data;
            let _ = webrtc::rtp::header::Header::unmarshal(&mut buf);
        }
        Ok(Datagram::Rtcp { .. }) => {
            let mut buf = data;
            let _ = webrtc::rtcp::header::Header::unmarshal(&mut buf);
        }
        Ok(Datagram::Stun) => {
            let mut m = webrtc::stun::message::Message::new();
            let _ = m.unmarshal_binary(data);
        }
        Ok(_) | Err(_) => {}
    }
}

/// An offer SDP: read it, and if it reads, the CALLME_S2 params it gives and an answer to it.
pub fn sdp_offer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(facts) = sdp::parse_offer(&text) {
        assert!(wire::check_ice_chars(&facts.ufrag, 4).is_ok() && wire::check_ice_chars(&facts.pwd, 22).is_ok());
        assert!(wire::check_fingerprint(&facts.fingerprint).is_ok());
        let _ = facts.s2_params();
        let answer = sdp::build_answer(&facts, &good_servufrag(), IpAddr::from([127, 0, 0, 1]));
        check_answer_lines(&answer).unwrap_or_else(|e| panic!("{e}\n{answer:?}"));
    }
}

/// `servufrag` fields through the wire reader into the answer. The input is the `EvtData`
/// object as JSON text, or, when it is not JSON, up to six strings separated by byte 0xFF
/// (ufrag, pwd, fingerprint, port, addr, one candidate line) put into one.
pub fn sdp_answer(data: &[u8]) {
    let evt_data = match serde_json::from_slice::<Value>(data) {
        Ok(v) => v,
        Err(_) => {
            let mut parts = data.split(|b| *b == 0xFF).map(|p| String::from_utf8_lossy(p).into_owned());
            let mut next = || parts.next().unwrap_or_default();
            let (ufrag, pwd, fingerprint, port, addr, candidate) = (next(), next(), next(), next(), next(), next());
            json!({"ufrag": ufrag, "pwd": pwd, "fingerprint": fingerprint, "port": port, "addr": addr, "candidates": [candidate]})
        }
    };
    let frame = json!({"EVT": {"obj": "conf", "evt": "webrtc", "evttype": "servufrag", "result": {"PartyID": 3, "EvtData": evt_data}}});
    let Ok(Incoming::Event(e)) = Incoming::parse(&frame.to_string()) else { return };
    let Ok(core) = ServUfrag::from_event(&e) else { return };
    let offer = sample_offer();
    let addr = IpAddr::from([127, 0, 0, 1]);
    let lenient = sdp::build_answer(&offer, &core, addr);
    check_answer_lines(&lenient).unwrap_or_else(|e| panic!("build_answer: {e}\n{lenient:?}"));
    if let Ok(strict) = sdp::try_build_answer(&offer, &core, addr) {
        assert_eq!(strict, lenient, "checked values are written the same by both");
    }
}

/// The offer facts of a Chromium-like offer.
pub fn sample_offer() -> OfferFacts {
    OfferFacts {
        ufrag: "Ab12".into(),
        pwd: "abcdefghijklmnopqrstuv".into(),
        fingerprint: format!("sha-256 {}", ["AB"; 32].join(":")),
        mid: "0".into(),
        opus_pt: 111,
        opus_fmtp: "minptime=10;useinbandfec=1".into(),
        ext_audio_level: Some(1),
        ext_mid: Some(4),
        ssrc: Some(1234),
        cname: Some("xyz".into()),
        bundle: true,
    }
}

/// A `servufrag` that passes every check.
pub fn good_servufrag() -> ServUfrag {
    ServUfrag {
        ufrag: "CoRe".into(),
        pwd: "corepasswordcorepassword".into(),
        fingerprint: format!("sha-256 {}", ["C0"; 32].join(":")),
        port: 40000,
        addr: None,
        candidates: vec![],
    }
}

/// Checks that an answer SDP holds only the lines the answer writer writes, each with a value
/// that passes its check, and each single-valued attribute at most once: nothing was injected.
pub fn check_answer_lines(answer: &str) -> Result<(), String> {
    let body = answer.strip_suffix("\r\n").ok_or("the answer does not end with CRLF")?;
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for line in body.split("\r\n") {
        if line.contains(['\r', '\n', '\0']) {
            return Err(format!("line {line:?} holds a line break or NUL"));
        }
        const FIXED: [&str; 8] =
            ["v=0", "s=-", "t=0 0", "a=ice-lite", "a=setup:passive", "a=sendrecv", "a=rtcp-mux", "a=end-of-candidates"];
        let (key, value) = match line.split_once(':') {
            _ if FIXED.contains(&line) => (line, ""),
            Some((k, v)) if k.starts_with("a=") => (k, v),
            _ => (line.split_once(' ').map_or(line, |(k, _)| k), ""),
        };
        let words_ok = || line.split(' ').all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_graphic()));
        let ok = match key {
            _ if FIXED.contains(&key) => true,
            "o=-" | "m=audio" | "c=IN" => words_ok(),
            "a=group" => value.strip_prefix("BUNDLE ").is_some_and(|m| sdp::check_mid(m).is_ok()),
            "a=mid" => sdp::check_mid(value).is_ok(),
            "a=ice-ufrag" => sdp::check_ice_value(value, 4).is_ok(),
            "a=ice-pwd" => sdp::check_ice_value(value, 22).is_ok(),
            "a=fingerprint" => wire::check_fingerprint(value).is_ok(),
            "a=rtpmap" => value.split_once(' ').is_some_and(|(pt, c)| pt.parse::<u8>().is_ok() && c == "opus/48000/2"),
            "a=fmtp" => value.split_once(' ').is_some_and(|(pt, f)| pt.parse::<u8>().is_ok() && sdp::check_fmtp(f).is_ok()),
            "a=extmap" => value
                .split_once(' ')
                .is_some_and(|(id, uri)| id.parse::<u8>().is_ok() && [sdp::EXT_AUDIO_LEVEL, sdp::EXT_SDES_MID].contains(&uri)),
            "a=candidate" => sdp::check_candidate(&line[2..]).is_ok(),
            _ => false,
        };
        if !ok {
            return Err(format!("line {line:?} is not one the answer writes"));
        }
        let count = seen.entry(key).or_default();
        *count += 1;
        if *count > 1 && !matches!(key, "a=candidate" | "a=extmap") {
            return Err(format!("{key} appears more than once"));
        }
    }
    Ok(())
}
