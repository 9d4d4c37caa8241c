//! `cloudpc run`: starts the hub and serves until SIGINT/SIGTERM.
//!
//! (Hub branch: the resolver is wired in by the lead; this starts the WireGuard hub only.)

use super::Globals;

pub fn run(g: &Globals) -> anyhow::Result<()> {
    let cfg = g.config()?;
    // Before anything is created: without the capability nothing may half-start.
    if !crate::hub::has_net_admin() {
        anyhow::bail!(crate::hub::PRIVILEGES_MESSAGE);
    }
    let state_dir = g.state_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let overlay = {
            let store = crate::store::Store::open(&state_dir)?;
            store.overlay(&cfg.wireguard)?
        };
        let hub = crate::hub::start(crate::hub::HubParams {
            cfg,
            state_dir,
            overlay,
        })
        .await?;
        wait_for_signal().await?;
        hub.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
