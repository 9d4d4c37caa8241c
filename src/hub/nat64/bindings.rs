//! The NAT64 binding table (RFC 6146 §3.5 BIB and session table): which device address and
//! port/id owns which pool port, the remote endpoints each binding has talked to, and their
//! expiry. Endpoint-independent mapping, address-and-port-dependent filtering.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::wire::{TCP_FIN, TCP_RST, TCP_SYN};
use super::{Nat64, Nat64Drop, Timeouts};

fn timeout(t: &Timeouts, proto: Proto, tcp: &TcpTrack) -> Duration {
    match proto {
        Proto::Udp => t.udp,
        Proto::Icmp => t.icmp,
        Proto::Tcp => {
            if tcp.established && !tcp.reset && !(tcp.v6_fin && tcp.v4_fin) {
                t.tcp_established
            } else {
                t.tcp_transitory
            }
        }
    }
}

/// Lowest pool port/id handed out (RFC 6146 §3.5.1.1 keeps 0-1023 for well-known services).
pub(super) const POOL_PORT_MIN: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Proto {
    Tcp = 0,
    Udp = 1,
    Icmp = 2,
}

/// TCP progress of one session, enough for RFC 6146 §3.5.2's timers.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TcpTrack {
    /// A packet came back from the IPv4 side.
    established: bool,
    v6_fin: bool,
    v4_fin: bool,
    reset: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Session {
    remote: Ipv4Addr,
    remote_port: u16,
    expires: Instant,
    tcp: TcpTrack,
}

#[derive(Debug, Clone)]
pub(super) struct Binding {
    v6: Ipv6Addr,
    v6_port: u16,
    sessions: Vec<Session>,
}

#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) by_v6: HashMap<(Ipv6Addr, u16), u16>,
    pub(super) by_pool: HashMap<u16, Binding>,
}

impl Nat64 {
    /// Finds or makes the binding and session for an outgoing packet; returns the pool port.
    /// `may_create` is false for TCP segments without SYN.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn outbound(
        &mut self,
        proto: Proto,
        v6: Ipv6Addr,
        v6_port: u16,
        remote: Ipv4Addr,
        remote_port: u16,
        may_create: bool,
        tcp_flags: u8,
        now: Instant,
    ) -> Result<u16, Nat64Drop> {
        let table = &self.tables[proto as usize];
        let pool_port = match table.by_v6.get(&(v6, v6_port)) {
            Some(&p) => p,
            None => {
                if !may_create {
                    return Err(Nat64Drop::NoBinding);
                }
                self.create_binding(proto, v6, v6_port)?
            }
        };
        let limits = self.limits;
        let timeouts = self.timeouts;
        let binding = self.tables[proto as usize]
            .by_pool
            .get_mut(&pool_port)
            .ok_or(Nat64Drop::NoBinding)?;
        let idx = binding
            .sessions
            .iter()
            .position(|s| s.remote == remote && s.remote_port == remote_port && s.expires > now);
        let session = match idx {
            Some(i) => &mut binding.sessions[i],
            None => {
                if !may_create {
                    return Err(Nat64Drop::NoBinding);
                }
                // Reuse an expired slot before growing.
                let slot = binding.sessions.iter().position(|s| s.expires <= now);
                let fresh = Session {
                    remote,
                    remote_port,
                    expires: now,
                    tcp: TcpTrack::default(),
                };
                match slot {
                    Some(i) => {
                        binding.sessions[i] = fresh;
                        &mut binding.sessions[i]
                    }
                    None if binding.sessions.len() >= limits.sessions_per_binding => {
                        return Err(Nat64Drop::LimitReached)
                    }
                    None => {
                        binding.sessions.push(fresh);
                        let last = binding.sessions.len() - 1;
                        &mut binding.sessions[last]
                    }
                }
            }
        };
        if proto == Proto::Tcp {
            if tcp_flags & TCP_RST != 0 {
                session.tcp.reset = true;
            }
            if tcp_flags & TCP_FIN != 0 {
                session.tcp.v6_fin = true;
            }
            if tcp_flags & TCP_SYN != 0 && session.tcp.reset {
                // A new connection on the same 5-tuple after a reset.
                session.tcp = TcpTrack::default();
            }
        }
        session.expires = now + timeout(&timeouts, proto, &session.tcp);
        Ok(pool_port)
    }

    fn create_binding(
        &mut self,
        proto: Proto,
        v6: Ipv6Addr,
        v6_port: u16,
    ) -> Result<u16, Nat64Drop> {
        let count = self.per_device.get(&v6).copied().unwrap_or(0);
        if count >= self.limits.bindings_per_device {
            return Err(Nat64Drop::LimitReached);
        }
        let pool_port = self.free_pool_port(proto, v6_port)?;
        let table = &mut self.tables[proto as usize];
        table.by_v6.insert((v6, v6_port), pool_port);
        table.by_pool.insert(
            pool_port,
            Binding {
                v6,
                v6_port,
                sessions: Vec::with_capacity(1),
            },
        );
        *self.per_device.entry(v6).or_insert(0) += 1;
        Ok(pool_port)
    }

    fn free_pool_port(&mut self, proto: Proto, wanted: u16) -> Result<u16, Nat64Drop> {
        let span = u32::from(u16::MAX - POOL_PORT_MIN) + 1;
        let taken = |t: &Table, p: u16| t.by_pool.contains_key(&p);
        // ICMP ids are not ports anyone listens on; TCP/UDP keep the port when they can
        // (RFC 4787 REQ-3 style port preservation helps some peer-to-peer protocols).
        if proto != Proto::Icmp
            && wanted >= POOL_PORT_MIN
            && !taken(&self.tables[proto as usize], wanted)
        {
            return Ok(wanted);
        }
        for _ in 0..32 {
            let p = POOL_PORT_MIN + (self.next_rand() % u64::from(span)) as u16;
            if !taken(&self.tables[proto as usize], p) {
                return Ok(p);
            }
        }
        let start = (self.next_rand() % u64::from(span)) as u32;
        (0..span)
            .map(|i| POOL_PORT_MIN + ((start + i) % span) as u16)
            .find(|&p| !taken(&self.tables[proto as usize], p))
            .ok_or(Nat64Drop::PoolExhausted)
    }

    /// Looks up the binding of a packet coming back to `pool_port` from `remote:remote_port`,
    /// refreshing the session. Returns the device address and port/id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn inbound(
        &mut self,
        proto: Proto,
        pool_port: u16,
        remote: Ipv4Addr,
        remote_port: u16,
        tcp_flags: u8,
        refresh: bool,
        now: Instant,
    ) -> Result<(Ipv6Addr, u16), Nat64Drop> {
        let timeouts = self.timeouts;
        let binding = self.tables[proto as usize]
            .by_pool
            .get_mut(&pool_port)
            .ok_or(Nat64Drop::NoBinding)?;
        let session = binding
            .sessions
            .iter_mut()
            .find(|s| s.remote == remote && s.remote_port == remote_port && s.expires > now)
            .ok_or(Nat64Drop::NoBinding)?;
        if refresh {
            if proto == Proto::Tcp {
                session.tcp.established = true;
                if tcp_flags & TCP_RST != 0 {
                    session.tcp.reset = true;
                }
                if tcp_flags & TCP_FIN != 0 {
                    session.tcp.v4_fin = true;
                }
            }
            session.expires = now + timeout(&timeouts, proto, &session.tcp);
        }
        Ok((binding.v6, binding.v6_port))
    }

    /// The pool port of a live session, looked up from the device's side, without refreshing
    /// it (for ICMP errors).
    pub(super) fn lookup_v6(
        &self,
        proto: Proto,
        v6: Ipv6Addr,
        v6_port: u16,
        remote: Ipv4Addr,
        remote_port: u16,
        now: Instant,
    ) -> Result<u16, Nat64Drop> {
        let table = &self.tables[proto as usize];
        let pool_port = *table
            .by_v6
            .get(&(v6, v6_port))
            .ok_or(Nat64Drop::NoBinding)?;
        let live = table.by_pool.get(&pool_port).is_some_and(|b| {
            b.sessions
                .iter()
                .any(|s| s.remote == remote && s.remote_port == remote_port && s.expires > now)
        });
        if live {
            Ok(pool_port)
        } else {
            Err(Nat64Drop::NoBinding)
        }
    }

    /// Removes expired sessions, and bindings left without one.
    pub fn expire(&mut self, now: Instant) {
        for table in &mut self.tables {
            let per_device = &mut self.per_device;
            let by_v6 = &mut table.by_v6;
            table.by_pool.retain(|_, b| {
                b.sessions.retain(|s| s.expires > now);
                if b.sessions.is_empty() {
                    by_v6.remove(&(b.v6, b.v6_port));
                    if let Some(c) = per_device.get_mut(&b.v6) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            per_device.remove(&b.v6);
                        }
                    }
                    false
                } else {
                    true
                }
            });
        }
    }
}
