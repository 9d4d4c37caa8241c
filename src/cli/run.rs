//! `cloudpc run`: hands the config to the daemon, which owns the running state.

use super::Globals;

pub fn run(g: &Globals) -> anyhow::Result<()> {
    let cfg = g.config()?;
    Ok(crate::daemon::run(cfg, g.state_dir(), g.base_dir())?)
}
