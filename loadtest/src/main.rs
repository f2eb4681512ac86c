//! Placeholder for the Rust load generator; the benchmark currently drives `wrk` from loadtest/bench.sh.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("loadtest: the Rust generator is not implemented yet; use loadtest/bench.sh")
}
