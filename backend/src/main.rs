//! Placeholder until issue 3 (backend) lands: the crate exists so the workspace builds.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("backend: not implemented yet (see issue 3)")
}
