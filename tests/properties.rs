//! Property tests of the entry points untrusted input reaches: the wire parser, the command
//! frame, the offer parser and the answer writer. Every run is the same run: the seed is fixed
//! and no failure file is written. The fuzz targets' entry points (`fuzz/src/lib.rs`) are
//! included here, and every input kept under `fuzz/seeds/` and `fuzz/regressions/` is replayed
//! through them.

#[path = "../fuzz/src/lib.rs"]
mod entry;

use std::collections::BTreeMap;
use std::net::IpAddr;

use callme::media::sdp::{self, OfferFacts};
use callme::wire::{Command, ServUfrag};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Value};

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x0ca1_1ed0), failure_persistence: None, ..Config::default() }
}

/// Characters that break SDP and JSON most: line breaks, NUL, spaces, quotes, `=` and `:`.
fn nasty_string() -> impl Strategy<Value = String> {
    let nasty = prop::sample::select(vec![
        '\r', '\n', '\0', ' ', '\t', '"', '\\', '=', ':', '/', '+', 'a', 'Z', '0', '9', '-', '.', 'é', '\u{2028}',
    ]);
    prop_oneof![
        prop::collection::vec(nasty, 0..40).prop_map(|v| v.into_iter().collect()),
        any::<String>(),
        "[a-zA-Z0-9+/]{0,30}(\r\na=[a-z-]{1,12}:[a-z0-9]{0,8})?",
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        nasty_string().prop_map(Value::from),
        "[0-9]{1,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(prop_oneof!["[a-zA-Z]{1,10}", nasty_string()], inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON shaped like the core's frames, with any value in any field.
fn frame_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("cmd".to_owned()),
        Just("seq".to_owned()),
        Just("obj".to_owned()),
        Just("result".to_owned()),
        Just("code".to_owned()),
        Just("evt".to_owned()),
        Just("evttype".to_owned()),
        Just("PartyID".to_owned()),
        Just("EvtData".to_owned()),
        Just("SVPartyID".to_owned()),
        Just("confdata".to_owned()),
        Just("ufrag".to_owned()),
        Just("pwd".to_owned()),
        Just("fingerprint".to_owned()),
        Just("port".to_owned()),
        Just("addr".to_owned()),
        Just("candidates".to_owned()),
        Just("serveraddr".to_owned()),
        "[a-z]{1,6}",
    ];
    let fields = prop::collection::btree_map(key, json_value(), 0..8).prop_map(|m| Value::Object(m.into_iter().collect())).boxed();
    let event = (fields.clone(), json_value(), prop_oneof![Just("servufrag"), Just("servdesc"), Just("Disconnected"), Just("time")])
        .prop_map(|(data, party, kind)| json!({"EVT": {"obj": "conf", "evt": "webrtc", "evttype": kind, "result": {"PartyID": party, "EvtData": data}}}));
    prop_oneof![
        fields.clone().prop_map(|f| json!({ "ANSW": f })),
        fields.clone().prop_map(|f| json!({ "EVT": f })),
        event,
        fields.prop_map(|mut f| {
            f["result"] = json!({"code": 0, "SVPartyID": 3, "confdata": {"ID": 7}});
            json!({ "ANSW": f })
        }),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn the_wire_parser_never_panics_on_any_string(text in nasty_string()) {
        entry::wire_incoming(text.as_bytes());
    }

    #[test]
    fn the_wire_parser_never_panics_on_frame_shaped_json(frame in frame_like()) {
        entry::wire_incoming(frame.to_string().as_bytes());
    }

    #[test]
    fn the_offer_parser_never_panics_on_any_string(text in nasty_string()) {
        entry::sdp_offer(text.as_bytes());
    }

    #[test]
    fn the_offer_parser_never_panics_on_lines_of_an_offer(lines in prop::collection::vec(offer_line(), 0..30)) {
        entry::sdp_offer(lines.join("\r\n").as_bytes());
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn a_command_written_by_to_frame_reads_back(
        cmd in nasty_string(),
        obj in nasty_string(),
        seq in any::<u64>(),
        params in prop::collection::btree_map(nasty_string(), nasty_string(), 0..6),
    ) {
        let command = Command { cmd, seq, obj, params: params.into_iter().collect::<BTreeMap<_, _>>(), query: None };
        let frame = command.to_frame();
        let read: Command = serde_json::from_str(&frame).expect("the frame reads back");
        prop_assert_eq!(&read, &command);
        entry::wire_command(frame.as_bytes());
    }

    #[test]
    fn an_offer_written_from_valid_facts_gives_the_facts_back(facts in offer_facts(), video_first in any::<bool>(), lf_only in any::<bool>()) {
        let sdp = write_offer(&facts, video_first, if lf_only { "\n" } else { "\r\n" });
        let read = sdp::parse_offer(&sdp).map_err(|e| TestCaseError::fail(format!("{e}\n{sdp}")))?;
        prop_assert_eq!(read, facts);
    }

    #[test]
    fn the_answer_from_any_servufrag_values_holds_no_foreign_line(
        ufrag in nasty_string(),
        pwd in nasty_string(),
        fingerprint in prop_oneof![nasty_string(), fingerprint().prop_map(|f| f + "\r\na=evil")],
        port in any::<u16>(),
        candidates in prop::collection::vec(prop_oneof![nasty_string(), candidate_line(), candidate_line().prop_map(|c| c + "\r\na=evil")], 0..4),
        mid in prop_oneof![nasty_string(), Just("0".to_owned())],
        fmtp in prop_oneof![nasty_string(), Just("minptime=10;useinbandfec=1".to_owned())],
    ) {
        let offer = OfferFacts { mid, opus_fmtp: fmtp, ..entry::sample_offer() };
        let core = ServUfrag { ufrag, pwd, fingerprint, port, addr: None, candidates };
        let addr = IpAddr::from([127, 0, 0, 1]);
        let lenient = sdp::build_answer(&offer, &core, addr);
        entry::check_answer_lines(&lenient).map_err(|e| TestCaseError::fail(format!("{e}\n{lenient:?}")))?;
        match sdp::try_build_answer(&offer, &core, addr) {
            Ok(strict) => {
                entry::check_answer_lines(&strict).map_err(TestCaseError::fail)?;
                prop_assert_eq!(strict, lenient);
            }
            Err(e) => prop_assert!(e.field.starts_with("EVT.result.EvtData.") || e.field.starts_with("a="), "{}", e),
        }
    }

    #[test]
    fn valid_servufrag_values_are_all_written(core in valid_servufrag()) {
        let answer = sdp::try_build_answer(&entry::sample_offer(), &core, IpAddr::from([127, 0, 0, 1])).map_err(|e| TestCaseError::fail(e.to_string()))?;
        entry::check_answer_lines(&answer).map_err(TestCaseError::fail)?;
        let ufrag_line = format!("a=ice-ufrag:{}\r\n", core.ufrag);
        prop_assert!(answer.contains(&ufrag_line));
        for c in &core.candidates {
            let line = format!("a={c}\r\n");
            prop_assert!(answer.contains(&line), "{} missing", c);
        }
    }

    #[test]
    fn servufrag_fields_through_the_wire_reader_never_inject_a_line(
        fields in prop::collection::vec(nasty_string(), 6),
        candidates in prop::collection::vec(prop_oneof![nasty_string(), candidate_line().prop_map(|c| c + "\r\na=evil")], 0..3),
    ) {
        let data = json!({"ufrag": fields[0], "pwd": fields[1], "fingerprint": fields[2], "port": fields[3], "addr": fields[4], "candidates": candidates});
        entry::sdp_answer(data.to_string().as_bytes());
        entry::sdp_answer(fields.join("\u{ff}").as_bytes());
    }
}

#[test]
fn the_line_checker_refuses_an_injected_or_repeated_line() {
    let good = sdp::build_answer(&entry::sample_offer(), &entry::good_servufrag(), IpAddr::from([127, 0, 0, 1]));
    entry::check_answer_lines(&good).expect("the plain answer passes");
    let injected = good.replace("a=end-of-candidates\r\n", "a=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\na=evil\r\na=end-of-candidates\r\n");
    assert!(entry::check_answer_lines(&injected).unwrap_err().contains("a=evil"));
    let repeated = good.replace("a=setup:passive\r\n", "a=setup:passive\r\na=ice-ufrag:Evil\r\n");
    assert!(entry::check_answer_lines(&repeated).unwrap_err().contains("more than once"));
    let lone_cr = good.replace("a=mid:0", "a=mid:0\ra=evil");
    assert!(entry::check_answer_lines(&lone_cr).is_err());
}

/// Every input kept under `fuzz/seeds/<target>/` (examples of real frames and offers) and
/// `fuzz/regressions/<target>/` (inputs that once crashed a target) goes through its target.
#[test]
fn every_kept_fuzz_input_is_replayed_without_a_panic() {
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 5] = [
        ("wire_incoming", entry::wire_incoming),
        ("wire_command", entry::wire_command),
        ("sdp_offer", entry::sdp_offer),
        ("sdp_answer", entry::sdp_answer),
        ("datagram", entry::datagram),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in targets {
        let mut replayed = 0;
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
            for file in dir {
                let path = file.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed >= 1, "no kept input for {name} under {}", root.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Generators of valid values

fn ice(min: usize, max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/".to_vec()), min..=max)
        .prop_map(|v| String::from_utf8(v).unwrap())
}

fn fingerprint() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 32)
        .prop_map(|b| format!("sha-256 {}", b.iter().map(|x| format!("{x:02X}")).collect::<Vec<_>>().join(":")))
}

fn candidate_line() -> impl Strategy<Value = String> {
    let addr = prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::from(a).to_string()),
        any::<[u16; 8]>().prop_map(|a| IpAddr::from(a).to_string()),
        "[a-z0-9]{1,12}(\\.[a-z0-9-]{1,12}){0,3}",
    ];
    (
        ice(1, 32),
        1u16..=256,
        prop_oneof![Just("udp"), Just("tcp"), Just("UDP")],
        any::<u32>(),
        addr,
        any::<u16>(),
        prop_oneof![Just("host"), Just("srflx"), Just("prflx"), Just("relay")],
    )
        .prop_flat_map(|(f, comp, tr, prio, addr, port, typ)| {
            let head = format!("candidate:{f} {comp} {tr} {prio} {addr} {port} typ {typ}");
            (
                Just(head),
                prop::option::of((any::<[u8; 4]>(), any::<u16>())),
                prop::collection::vec(("[a-z][a-z-]{0,11}", "[!-~]{1,12}"), 0..3),
            )
        })
        .prop_map(|(head, rel, ext)| {
            let mut line = head;
            if let Some((ip, port)) = rel {
                line += &format!(" raddr {} rport {port}", IpAddr::from(ip));
            }
            for (k, v) in ext {
                if !["raddr", "rport", "typ"].contains(&k.as_str()) {
                    line += &format!(" {k} {v}");
                }
            }
            line
        })
}

fn valid_servufrag() -> impl Strategy<Value = ServUfrag> {
    (ice(4, 32), ice(22, 64), fingerprint(), 1u16..=65535, prop::collection::vec(candidate_line(), 0..4))
        .prop_map(|(ufrag, pwd, fingerprint, port, candidates)| ServUfrag { ufrag, pwd, fingerprint, port, addr: None, candidates })
}

fn offer_facts() -> impl Strategy<Value = OfferFacts> {
    let ssrc_cname = prop::option::of((any::<u32>(), prop::option::of("[a-zA-Z0-9+/]{1,16}")));
    (
        (ice(4, 32), ice(22, 64), fingerprint(), "[a-zA-Z0-9_-]{1,16}", 96u8..=127),
        (
            "[a-z]{1,8}=[0-9]{1,3}(;[a-z]{1,8}=[0-9]{1,3}){0,3}",
            prop::option::of(1u8..=14),
            prop::option::of(1u8..=14),
            ssrc_cname,
            any::<bool>(),
        ),
    )
        .prop_filter("distinct extension ids", |(_, (_, a, m, _, _))| a.is_none() || a != m)
        .prop_map(|((ufrag, pwd, fingerprint, mid, opus_pt), (opus_fmtp, ext_audio_level, ext_mid, ssrc_cname, bundle))| OfferFacts {
            ufrag,
            pwd,
            fingerprint,
            mid,
            opus_pt,
            opus_fmtp,
            ext_audio_level,
            ext_mid,
            ssrc: ssrc_cname.as_ref().map(|(s, _)| *s),
            cname: ssrc_cname.and_then(|(_, c)| c),
            bundle,
        })
}

/// An offer as a browser would write it for these facts: the fingerprint's hex in lower case
/// (the reader normalises it), a red payload type beside Opus, optionally a video section first.
fn write_offer(f: &OfferFacts, video_first: bool, eol: &str) -> String {
    let red = if f.opus_pt == 127 { 96 } else { f.opus_pt + 1 };
    let (algo, hex) = f.fingerprint.split_once(' ').unwrap();
    let mut l = vec!["v=0".to_owned(), "o=- 1 2 IN IP4 127.0.0.1".into(), "s=-".into(), "t=0 0".into()];
    if f.bundle {
        l.push(format!("a=group:BUNDLE {}", f.mid));
    }
    if video_first {
        l.extend([
            "m=video 9 UDP/TLS/RTP/SAVPF 96".to_owned(),
            "a=mid:v".into(),
            "a=ice-ufrag:Vide".into(),
            "a=rtpmap:96 VP8/90000".into(),
        ]);
    }
    l.push(format!("m=audio 9 UDP/TLS/RTP/SAVPF {} {red}", f.opus_pt));
    l.push("c=IN IP4 0.0.0.0".into());
    l.push(format!("a=ice-ufrag:{}", f.ufrag));
    l.push(format!("a=ice-pwd:{}", f.pwd));
    l.push(format!("a=fingerprint:{} {}", algo.to_ascii_uppercase(), hex.to_ascii_lowercase()));
    l.push("a=setup:actpass".into());
    l.push(format!("a=mid:{}", f.mid));
    if let Some(id) = f.ext_audio_level {
        l.push(format!("a=extmap:{id} {}", sdp::EXT_AUDIO_LEVEL));
    }
    if let Some(id) = f.ext_mid {
        l.push(format!("a=extmap:{id}/sendrecv {}", sdp::EXT_SDES_MID));
    }
    l.push(format!("a=rtpmap:{} opus/48000/2", f.opus_pt));
    l.push(format!("a=fmtp:{} {}", f.opus_pt, f.opus_fmtp));
    l.push(format!("a=rtpmap:{red} red/48000/2"));
    match (f.ssrc, &f.cname) {
        (Some(s), Some(c)) => l.push(format!("a=ssrc:{s} cname:{c}")),
        (Some(s), None) => l.push(format!("a=ssrc:{s} msid:stream track")),
        _ => {}
    }
    let mut text = l.join(eol);
    text.push_str(eol);
    text
}

/// Lines an offer is made of, valid or not.
fn offer_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("m=audio 9 UDP/TLS/RTP/SAVPF 111".to_owned()),
        "m=(audio|video) [0-9]{1,5} [A-Z/]{1,20}( [0-9]{1,3}){0,4}",
        Just("a=ice-ufrag:Ab12".to_owned()),
        Just("a=ice-pwd:abcdefghijklmnopqrstuv".to_owned()),
        fingerprint().prop_map(|f| format!("a=fingerprint:{f}")),
        "a=(ice-ufrag|ice-pwd|fingerprint|mid|rtpmap|fmtp|extmap|ssrc|group):[ -~]{0,40}",
        "a=rtpmap:[0-9]{1,4} (opus|OPUS|red)/48000(/2)?",
        "a=fmtp:[0-9]{1,3} [ -~]{0,30}",
        "a=extmap:[0-9/a-z]{0,6} [ -~]{0,50}",
        "a=ssrc:[0-9]{0,12}( cname:[ -~]{0,10})?",
        nasty_string(),
    ]
}
