//! Counters of the running resolver (counts only; no names, and per-device counts in memory).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;

/// Live counters, shared by every server task.
#[derive(Default)]
pub struct Stats {
    pub queries: AtomicU64,
    pub answered: AtomicU64,
    pub blocked: AtomicU64,
    pub cache_hits: AtomicU64,
    pub forwarded: AtomicU64,
    pub local: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Queries received, by [`Protocol`].
    by_protocol: [AtomicU64; 4],
    per_client: Mutex<HashMap<IpAddr, ClientCounts>>,
}

/// The protocol a query came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp = 0,
    Tcp = 1,
    /// DNS-over-TLS.
    Tls = 2,
    /// DNS-over-HTTPS.
    Https = 3,
}

impl Protocol {
    /// Every protocol, in counter order.
    pub const ALL: [Protocol; 4] = [Protocol::Udp, Protocol::Tcp, Protocol::Tls, Protocol::Https];

    /// The name metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Https => "https",
        }
    }
}

/// Per-client (per-device) counts, kept in memory only.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ClientCounts {
    pub queries: u64,
    pub blocked: u64,
}

/// A copy of the counters for `cloudpc status`.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub queries: u64,
    pub answered: u64,
    pub blocked: u64,
    pub cache_hits: u64,
    pub forwarded: u64,
    pub local: u64,
    pub upstream_failures: u64,
    pub refused: u64,
    pub malformed: u64,
    pub rate_limited: u64,
}

/// Most distinct clients tracked (the overlay holds the owner's devices; this caps memory).
const MAX_CLIENTS: usize = 65_536;

impl Stats {
    /// Adds one to a counter.
    #[inline]
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Counts a query from an overlay client (a device).
    pub fn count_client(&self, ip: IpAddr, blocked: bool) {
        let mut m = self.per_client.lock();
        if m.len() >= MAX_CLIENTS && !m.contains_key(&ip) {
            return;
        }
        let c = m.entry(ip).or_default();
        c.queries += 1;
        c.blocked += blocked as u64;
    }

    /// Counts one query received by `p`.
    #[inline]
    pub fn count_protocol(&self, p: Protocol) {
        self.by_protocol[p as usize].fetch_add(1, Relaxed);
    }

    /// Queries received by `p` so far.
    pub fn protocol(&self, p: Protocol) -> u64 {
        self.by_protocol[p as usize].load(Relaxed)
    }

    /// Counts for one client address.
    pub fn client(&self, ip: IpAddr) -> ClientCounts {
        self.per_client.lock().get(&ip).copied().unwrap_or_default()
    }

    /// A copy of the global counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            queries: self.queries.load(Relaxed),
            answered: self.answered.load(Relaxed),
            blocked: self.blocked.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            local: self.local.load(Relaxed),
            upstream_failures: self.upstream_failures.load(Relaxed),
            refused: self.refused.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
        }
    }
}
