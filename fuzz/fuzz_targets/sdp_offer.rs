//! An offer SDP: `sdp::parse_offer`, its CALLME_S2 params and an answer to it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callme_fuzz::sdp_offer(data));
