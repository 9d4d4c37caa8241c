//! The resolver: local names → filter → cache/upstream → DNS64, served over UDP, TCP, DoT and DoH.
//!
//! [`engine::Resolver`] holds the decisions and does no I/O (a query in, an answer or an
//! upstream question out); [`service::DnsService`] asks the upstreams for it; `server`, `tls`,
//! `doh` and `udp_batch` only move bytes. Cache hits and blocked names are answered without
//! allocating beyond the reused output buffer.

mod answer;
pub mod cache;
pub mod dns46;
pub mod doh;
pub mod engine;
pub mod local;
pub mod name;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod slots;
pub mod stats;
pub mod tls;
pub mod tokens;
pub mod udp_batch;
pub mod udp_client;
pub mod upstream;
pub mod wire;
