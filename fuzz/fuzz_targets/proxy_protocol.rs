#![no_main]
//! See `gateway::fuzz::proxy_protocol` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::proxy_protocol(data));
