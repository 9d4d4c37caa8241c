//! The dialing side of a link: a TUN of its own and one boringtun session to the other hub's
//! WireGuard port, with the key the other hub registered for this link. Packets the kernel
//! routes into the TUN (already translated, see `host`) are encrypted to the other hub; what
//! it sends back is written to the TUN. It starts a handshake at once (so a link is back as
//! soon as either hub restarts) and keeps the session alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::Mutex;
use tokio::net::UdpSocket;

/// Largest packet handled.
const MAX: usize = 65_535;

/// A running link session; stops (and removes its TUN) when dropped.
pub struct Tunnel {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Tunnel {
    /// Time since the last completed handshake with the other hub (`None`: none yet; one that
    /// went away or came back with other keys shows here as a growing age or none).
    pub fn since_handshake(&self) -> Option<Duration> {
        self.shared.tunn.lock().stats().0
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    tunn: Mutex<Tunn>,
    udp: UdpSocket,
    tun: tun_rs::AsyncDevice,
    peer: SocketAddr,
}

impl Shared {
    fn send(&self, d: &[u8]) {
        let _ = self.udp.try_send_to(d, self.peer);
    }
}

/// Brings up the TUN `interface` and a session to `peer` (the other hub's WireGuard port)
/// with `private`, authenticating the other hub by `peer_key`.
pub async fn start(
    interface: &str,
    mtu: u16,
    private: [u8; 32],
    peer_key: [u8; 32],
    peer: SocketAddr,
) -> std::io::Result<Tunnel> {
    let tun = tun_rs::DeviceBuilder::new()
        .name(interface)
        .mtu(mtu)
        .build_async()?;
    let any: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("constant")
    } else {
        "[::]:0".parse().expect("constant")
    };
    let udp = UdpSocket::bind(any).await?;
    let tunn = Tunn::new(
        StaticSecret::from(private),
        PublicKey::from(peer_key),
        None,
        Some(25),
        rand::random::<u32>() >> 8,
        None,
    );
    let s = Arc::new(Shared {
        tunn: Mutex::new(tunn),
        udp,
        tun,
        peer,
    });
    {
        let mut out = vec![0u8; 256];
        if let TunnResult::WriteToNetwork(d) =
            s.tunn.lock().format_handshake_initiation(&mut out, false)
        {
            s.send(d);
        }
    }
    let tasks = vec![
        tokio::spawn(from_tun(s.clone())),
        tokio::spawn(from_peer(s.clone())),
        tokio::spawn(timers(s.clone())),
    ];
    Ok(Tunnel { tasks, shared: s })
}

async fn from_tun(s: Arc<Shared>) {
    let mut pkt = vec![0u8; MAX];
    let mut out = vec![0u8; MAX + 64];
    loop {
        let n = match s.tun.recv(&mut pkt).await {
            Ok(n) => n,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut t = s.tunn.lock();
        if let TunnResult::WriteToNetwork(d) = t.encapsulate(&pkt[..n], &mut out) {
            s.send(d);
        }
    }
}

async fn from_peer(s: Arc<Shared>) {
    let mut buf = vec![0u8; MAX];
    let mut out = vec![0u8; MAX + 64];
    loop {
        let (n, from) = match s.udp.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        if from != s.peer {
            continue;
        }
        let mut writes: Vec<Vec<u8>> = Vec::new();
        {
            let mut t = s.tunn.lock();
            let mut r = t.decapsulate(None, &buf[..n], &mut out);
            loop {
                match r {
                    TunnResult::WriteToNetwork(d) => {
                        s.send(d);
                        // Queued packets go out after a handshake completes.
                        r = t.decapsulate(None, &[], &mut out);
                    }
                    TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                        writes.push(p.to_vec());
                        break;
                    }
                    _ => break,
                }
            }
        }
        for p in writes {
            let _ = s.tun.send(&p).await;
        }
    }
}

async fn timers(s: Arc<Shared>) {
    let mut out = vec![0u8; 256];
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut t = s.tunn.lock();
        if let TunnResult::WriteToNetwork(d) = t.update_timers(&mut out) {
            s.send(d);
        }
    }
}
