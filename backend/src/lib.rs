//! Aggios Edge backend: the API behind the gateway. It alone touches Postgres (row-level security per
//! tenant), Redis and object storage.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod metrics;
pub mod oauth;
pub mod otel;
pub mod plans;
pub mod report;
pub mod state;
pub mod storage;
pub mod usage;
