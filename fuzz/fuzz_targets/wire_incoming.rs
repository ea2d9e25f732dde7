//! A frame from the core: `Incoming::parse` and the event and answer readers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callme_fuzz::wire_incoming(data));
