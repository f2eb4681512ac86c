#![no_main]
//! See `gateway::fuzz::api_key` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::api_key(data));
