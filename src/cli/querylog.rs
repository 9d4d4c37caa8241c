//! `cloudpc querylog ...`

use super::Globals;

#[derive(Debug, clap::Subcommand)]
pub enum QuerylogCmd {
    /// Show whether the query log is on.
    Status,
}

pub fn querylog(_g: &Globals, _c: QuerylogCmd) -> anyhow::Result<()> {
    anyhow::bail!("the query log is off and cannot be turned on in this version")
}
