//! A UDP datagram from anyone, before authentication: the guard, then webrtc-rs's parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callme_fuzz::datagram(data));
