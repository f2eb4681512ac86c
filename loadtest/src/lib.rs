//! Aggios Edge's load generator and its side-by-side benchmark against other proxies.
//!
//! - [`generator`]: closed and open loops over HTTP/1.1, HTTP/2 and HTTPS, HdrHistogram latencies;
//! - [`upstream`]: the harness's own fast upstream;
//! - [`scenario`]: the work a run asks of a proxy (plain, tenant JWT, rate limits, login, TLS handshakes);
//! - [`compare`]: the gateway and its peers, configured alike, measured in alternation;
//! - [`report`]: JSON, a Markdown table and an SVG chart under `loadtest/results/`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cli;
pub mod compare;
pub mod generator;
pub mod page;
pub mod report;
pub mod scenario;
pub mod tls;
pub mod upstream;
