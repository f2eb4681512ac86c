#![no_main]
//! See `gateway::fuzz::jwt` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::jwt(data));
