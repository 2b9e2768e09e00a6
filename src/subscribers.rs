//! The subscriber list (built in the next commit).
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum SubscribersCommand {
    /// Count subscribers per status
    Count,
}

pub fn run(_cmd: SubscribersCommand, _config: &crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("the subscriber list is not built yet")
}
