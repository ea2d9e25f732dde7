//! A frame from a client read as a command (the core's command reader), written back and read again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callme_fuzz::wire_command(data));
