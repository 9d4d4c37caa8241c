//! `cloudpc run`: starts the resolver and the hub and serves until SIGINT/SIGTERM.

use super::Globals;

pub fn run(_g: &Globals) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
