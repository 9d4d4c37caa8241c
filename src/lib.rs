//! cloudpc: a self-hosted privacy network — a DNS-centric privacy resolver with an embedded
//! WireGuard hub beside it. See `DESIGN.md` in the shared folder for the shape.

pub mod admin;
pub mod api;
pub mod certs;
pub mod cli;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod dns;
pub mod drop;
pub mod egress;
pub mod enroll;
pub mod filter;
pub mod firewall;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod hub;
pub mod link;
pub mod metrics;
pub mod paths;
pub mod querylog;
pub mod store;
pub mod udp;
