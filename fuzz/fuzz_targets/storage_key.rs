#![no_main]
//! See `backend::fuzz::storage_key` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| backend::fuzz::storage_key(data));
