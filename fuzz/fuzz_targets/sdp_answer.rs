//! `servufrag` fields through the wire reader into the answer SDP: no injected line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callme_fuzz::sdp_answer(data));
