//! The Cloud PC's inbox as `Control` serves it: the files in it, and forwarding them to
//! devices (at once, or queued until the device is online).

use std::sync::Arc;

use super::{bad, internal, Control};
use crate::api::ApiError;

impl Control {
    /// Serves `inbox` through the API (the daemon calls this once it made the inbox), with
    /// the hub's LocalSend `info` to forward its files as.
    pub fn set_inbox(&self, inbox: Arc<crate::drop::Inbox>, info: serde_json::Value) {
        if let Some(e) = &self.engines {
            let _ = e.inbox.set(inbox);
            let _ = e.localsend_info.set(info);
        }
    }

    /// Queues file `id` for device `to` and tries it at once: `delivered` or `queued`.
    pub(super) fn drop_send(&self, id: &str, to: &str) -> Result<String, ApiError> {
        let inbox = self.inbox()?;
        let item = inbox
            .list()
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| ApiError::NotFound(format!("no file {id:?} in the inbox")))?;
        if item.owner_keys {
            return Err(bad(
                "this file is encrypted to the owner's keys, which the hub does not have: forward it from an owner device",
            ));
        }
        let device = self.store.lock().device(to)?;
        let mut q = inbox.outbox();
        if !q.iter().any(|(i, d)| i == id && d == &device.name) {
            q.push((id.to_string(), device.name.clone()));
            inbox.set_outbox(&q).map_err(internal)?;
        }
        self.forward_now();
        let waiting = inbox
            .outbox()
            .iter()
            .any(|(i, d)| i == id && d == &device.name);
        Ok(if waiting { "queued" } else { "delivered" }.to_string())
    }

    /// Sends every queued file whose device is online now; those that fail stay queued.
    pub fn forward_now(&self) {
        let (Ok(e), Ok(inbox)) = (self.engines(), self.inbox()) else {
            return;
        };
        let Some(_one) = e.forwarding.try_lock() else {
            return;
        };
        let Some(info) = e.localsend_info.get() else {
            return;
        };
        let online: Vec<String> = e
            .hub
            .as_ref()
            .map(|h| h.status())
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.last_handshake_secs_ago.is_some_and(|s| s < 180))
            .map(|d| d.name)
            .collect();
        for (id, to) in inbox.outbox() {
            if !online.contains(&to) {
                continue;
            }
            let Ok(device) = self.store.lock().device(&to) else {
                continue;
            };
            let Some(item) = inbox.list().into_iter().find(|i| i.id == id) else {
                continue;
            };
            let plain = match inbox.open_plain(&id, None) {
                Ok(p) => p,
                Err(why) => {
                    tracing::warn!(error = %why, "a queued file cannot be read");
                    continue;
                }
            };
            let send =
                crate::drop::forward::send(device.ipv4.into(), info, &item.name, item.size, plain);
            let limit = std::time::Duration::from_secs(60 + item.size / 1_000_000);
            match self.rt.block_on(tokio::time::timeout(limit, send)) {
                Ok(Ok(())) => {
                    let q: Vec<_> = inbox
                        .outbox()
                        .into_iter()
                        .filter(|(i, d)| !(i == &id && d == &to))
                        .collect();
                    let _ = inbox.set_outbox(&q);
                    tracing::info!(bytes = item.size, "a file was forwarded to a device");
                }
                Ok(Err(why)) => {
                    tracing::info!(error = %why, "forwarding a file failed; it stays queued")
                }
                Err(_) => tracing::info!("forwarding a file timed out; it stays queued"),
            }
        }
    }

    /// The inbox, or why there is none.
    pub(super) fn inbox(&self) -> Result<&Arc<crate::drop::Inbox>, ApiError> {
        self.engines()?.inbox.get().ok_or_else(|| {
            ApiError::NotRunning(
                "the inbox is served only while the hub runs with its tunnel".into(),
            )
        })
    }
}
