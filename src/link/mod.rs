//! Links between two Cloud PCs (`cloudpc link`): each owner's hub keeps a WireGuard session
//! to the other's, and each side exports chosen devices to the other. No third party is
//! involved: the two hubs talk to each other directly.
//!
//! How a link works, on each side (this one "A", the other "B"):
//! - B registered a key of A's as a device of a `link` person (the role of a guest: it reaches
//!   only what B exports to it, and no device of B may open a connection to it). A dials B
//!   with that key from a TUN of its own ([`tunnel`]); its packets leave with the address B gave
//!   that device (source NAT), so B's devices see one address for all of A's.
//! - B's devices appear on A at addresses in a range A picked (`import_prefix`, as large as B's
//!   overlay): a packet from A's device to `import_prefix | host` is sent into the tunnel with
//!   its destination moved into B's overlay (`dnat ip prefix`), and the replies come back
//!   through conntrack. Both sides may use the same overlay: each translates on its own side.
//! - B's exported devices are named `DEVICE.LINK.<zone>` on A.
//!
//! This module holds the pure parts (ranges, names, the nftables text); [`host`] applies the
//! rules and routes, [`tunnel`] runs the sessions.

pub mod host;
pub mod tunnel;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::store::Link;

/// The range import prefixes are taken from (RFC 6598 shared address space, as the overlay).
const POOL: &str = "100.64.0.0/10";

/// An import prefix of `len` bits that overlaps none of `taken` (the overlay, the other links'
/// prefixes), or `None` when the pool has none left.
pub fn pick_import_prefix(len: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let pool: Ipv4Net = POOL.parse().ok()?;
    if len < pool.prefix_len() {
        return None;
    }
    pool.subnets(len)
        .ok()?
        .find(|n| !taken.iter().any(|t| t.contains(n) || n.contains(t)))
}

/// Where `peer_addr` (an address in the other side's overlay) appears on this side.
pub fn import_addr(l: &Link, peer_addr: Ipv4Addr) -> Ipv4Addr {
    let host = u32::from(peer_addr) & u32::from(l.import_prefix.hostmask());
    Ipv4Addr::from(u32::from(l.import_prefix.network()) | host)
}

/// The names of every link's exported devices, as zone text (`DEVICE.LINK` relative to the
/// zone), one "file" per link.
pub fn zone_texts(links: &[Link]) -> Vec<(String, String)> {
    links
        .iter()
        .map(|l| {
            let mut text = String::new();
            for e in &l.exports {
                if crate::dns::name::is_valid_label(&e.name) {
                    text.push_str(&format!(
                        "{}.{} 60 IN A {}\n",
                        e.name.to_ascii_lowercase(),
                        l.name.to_ascii_lowercase(),
                        import_addr(l, e.ipv4)
                    ));
                }
            }
            (format!("link {}", l.name), text)
        })
        .collect()
}

/// The TUN a link dials through: `cpl` and a hash of the link's name (15 characters at most).
pub fn interface(name: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.to_ascii_lowercase().as_bytes());
    let hex: String = d.as_ref()[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("cpl{hex}")
}

/// What the kernel needs for one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkNet {
    pub interface: String,
    pub import_prefix: Ipv4Net,
    pub peer_overlay: Ipv4Net,
    /// This side's address on the other side.
    pub snat: Ipv4Addr,
    /// The firewall mark and routing table of its packets.
    pub mark: u32,
    pub table: u32,
}

/// First routing table (and rule priority) of the links.
pub const FIRST_TABLE: u32 = 5700;
/// At most this many links.
pub const MAX_LINKS: usize = 64;

impl LinkNet {
    /// The kernel's part of each link, in order.
    pub fn of(links: &[Link]) -> Vec<LinkNet> {
        links
            .iter()
            .take(MAX_LINKS)
            .enumerate()
            .map(|(i, l)| LinkNet {
                interface: interface(&l.name),
                import_prefix: l.import_prefix,
                peer_overlay: l.peer_overlay,
                snat: l.dial_address,
                mark: 0x434c_0000 | i as u32,
                table: FIRST_TABLE + i as u32,
            })
            .collect()
    }
}

/// The nftables table of the links (replaced whole at each change). Only packets from the
/// hub's own TUN (`hub_tun`: the devices, after the hub's firewall judged them) enter a link;
/// from a link only replies come in.
pub fn ruleset(nets: &[LinkNet], hub_tun: &str) -> String {
    let mut mark = String::new();
    let mut pre = String::new();
    let mut post = String::new();
    for n in nets {
        mark.push_str(&format!(
            "    iifname \"{hub_tun}\" ip daddr {} counter meta mark set {:#x}\n",
            n.import_prefix, n.mark
        ));
        pre.push_str(&format!(
            "    iifname \"{hub_tun}\" ip daddr {} counter dnat ip prefix to {}\n",
            n.import_prefix, n.peer_overlay
        ));
        post.push_str(&format!(
            "    oifname \"{}\" counter snat ip to {}\n",
            n.interface, n.snat
        ));
    }
    let guard = "    iifname \"cpl*\" ct state established,related accept\n    iifname \"cpl*\" counter drop\n";
    format!(
        "table ip cloudpc_links {{\n  chain set_mark {{\n    type filter hook prerouting priority mangle; policy accept;\n{mark}  }}\n  \
         chain to_link {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  \
         chain from_here {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n  \
         chain from_links {{\n    type filter hook forward priority filter; policy accept;\n{guard}  }}\n  \
         chain into_hub {{\n    type filter hook input priority filter; policy accept;\n{guard}  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, prefix: &str) -> Link {
        Link {
            name: name.into(),
            peer_https: "https://b.test".into(),
            peer_pin: None,
            peer_endpoint: "b.test:51820".into(),
            peer_hub_key: String::new(),
            peer_overlay: "100.96.0.0/16".parse().unwrap(),
            dial_private: String::new(),
            dial_address: "100.96.0.9".parse().unwrap(),
            import_prefix: prefix.parse().unwrap(),
            secret: String::new(),
            exports: vec![crate::store::Export {
                name: "NAS".into(),
                ipv4: "100.96.0.5".parse().unwrap(),
            }],
            created_at: 0,
        }
    }

    #[test]
    fn import_prefixes_avoid_what_is_taken_and_addresses_keep_their_host_part() {
        let overlay: Ipv4Net = "100.96.0.0/16".parse().unwrap();
        let p = pick_import_prefix(16, &[overlay]).unwrap();
        assert_eq!(p.to_string(), "100.64.0.0/16");
        let p2 = pick_import_prefix(16, &[overlay, p]).unwrap();
        assert_eq!(p2.to_string(), "100.65.0.0/16");
        assert_eq!(pick_import_prefix(8, &[overlay]), None);
        let l = link("Bob", "100.97.0.0/16");
        assert_eq!(
            import_addr(&l, "100.96.0.5".parse().unwrap()).to_string(),
            "100.97.0.5"
        );
        let z = zone_texts(&[l]);
        assert_eq!(z[0].1, "nas.bob 60 IN A 100.97.0.5\n");
    }

    #[test]
    fn the_ruleset_marks_translates_and_masks_each_link() {
        let nets = LinkNet::of(&[link("bob", "100.97.0.0/16")]);
        let r = ruleset(&nets, "cloudpc0");
        assert!(
            r.contains(
                "iifname \"cloudpc0\" ip daddr 100.97.0.0/16 counter meta mark set 0x434c0000"
            ),
            "{r}"
        );
        assert!(
            r.contains("iifname \"cloudpc0\" ip daddr 100.97.0.0/16 counter dnat ip prefix to 100.96.0.0/16"),
            "{r}"
        );
        // From a link: replies only, forwarded or to the hub itself.
        assert_eq!(r.matches("iifname \"cpl*\" counter drop").count(), 2, "{r}");
        assert!(r.contains(&format!(
            "oifname \"{}\" counter snat ip to 100.96.0.9",
            interface("bob")
        )));
        assert!(interface("a-very-long-link-name-indeed").len() <= 15);
    }
}
