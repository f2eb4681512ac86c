//! `loadtest compare`: one scenario against the upstream, the gateway and each peer, in alternation.

#[derive(clap::Args)]
pub struct CompareArgs {}

pub fn main(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("compare: not built yet")
}
