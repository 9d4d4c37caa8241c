//! The resolver: local names → filter → cache/upstream → DNS64, served over UDP, TCP, DoT and DoH.
//!
//! [`engine::Resolver`] holds the decision logic (a query in, an answer out); `server`, `tls`
//! and `doh` only move bytes. Cache hits and blocked names are answered on a synchronous fast
//! path that does not allocate beyond the reused output buffer.

pub mod cache;
pub mod doh;
pub mod engine;
pub mod local;
pub mod name;
pub mod ratelimit;
pub mod server;
pub mod slots;
pub mod stats;
pub mod tls;
pub mod udp_batch;
pub mod udp_client;
pub mod upstream;
pub mod wire;
