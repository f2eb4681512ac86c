#![no_main]
//! See `gateway::fuzz::router` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::router(data));
