#![no_main]
//! See `gateway::fuzz::http_head` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::http_head(data));
