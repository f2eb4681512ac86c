//! Test support shared by the backend's integration test crates.
#![allow(dead_code)]

pub mod private_pg;
