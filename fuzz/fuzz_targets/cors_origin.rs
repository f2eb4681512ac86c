#![no_main]
//! See `gateway::fuzz::cors_origin` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::cors_origin(data));
