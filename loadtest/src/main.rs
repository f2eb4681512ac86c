//! Placeholder for the Rust load generator; the benchmark currently drives `wrk` from loadtest/bench.sh.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("loadtest: the Rust generator is not implemented yet; use loadtest/bench.sh")
}
