//! `roster bench`: a load generator for any etcd v3 endpoint (placeholder).

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("roster bench is not built yet")
}
