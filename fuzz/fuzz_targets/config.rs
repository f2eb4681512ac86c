#![no_main]
//! See `gateway::fuzz::config` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::config(data));
