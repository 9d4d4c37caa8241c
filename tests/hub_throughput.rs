//! Throughput through the hub with stock wireguard-go devices (a measurement, not a timed
//! test: `#[ignore]`d). Run as root with a release build:
//!
//! ```sh
//! cargo build --release && CLOUDPC_TEST_BIN=target/release/cloudpc \
//!   cargo test --test hub_throughput -- --ignored --nocapture
//! ```
//!
//! Prints iperf3 throughput and hub CPU-seconds per GB for device→hub→internet and
//! device→hub→device, with the hub's offloads on and off (`CLOUDPC_HUB_OFFLOAD=0`), and in
//! the same run for a wireguard-go hub with the same key (kernel forwarding + nftables
//! masquerade, as PiVPN would set it up). Hub CPU includes the kernel work done in the hub
//! process's system calls (in namespaces that reaches into the receiver's stack), for both.

#[path = "common/netns.rs"]
mod netns;

use std::time::Duration;

use netns::{HubRun, HubWorld, WEB};

fn iperf(w: &HubWorld, from: &str, to: &str) -> f64 {
    let out = w.lab.sh_ok(from, &format!("iperf3 -c {to} -t 5 -J"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 json");
    v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0)
}

fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Replaces the cloudpc hub with a wireguard-go hub using the same key and peers.
fn start_wireguard_go_hub(
    w: &mut HubWorld,
    hub: &HubRun,
    peers: &[(String, String, String)],
) -> u32 {
    let ifname = netns::unique("wgh");
    w.lab.remove_wg_socket_on_drop(&ifname);
    let key = hub.state_dir.join("hub.key");
    let mut set = format!(
        "wg set {ifname} private-key {} listen-port 51820",
        key.display()
    );
    for (public, v4, v6) in peers {
        set.push_str(&format!(" peer {public} allowed-ips {v4}/32,{v6}/128"));
    }
    w.lab.sh_ok(
        "hub",
        &format!(
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go {ifname} && {set} && \
             ip addr add 100.96.0.1/16 dev {ifname} && ip link set {ifname} mtu 1420 up && \
             sysctl -qw net.ipv4.ip_forward=1 && nft add table ip wgnat && \
             nft add chain ip wgnat post '{{ type nat hook postrouting priority 100; }}' && \
             nft add rule ip wgnat post ip saddr 100.96.0.0/16 oifname eth0 masquerade"
        ),
    );
    let pids = w.lab.sh_ok("hub", "pgrep -f '^wireguard-go'");
    pids.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("wireguard-go pid")
}

#[test]
#[ignore = "measurement; run with --ignored as root"]
fn hub_throughput() {
    if !netns::root_or_skip("hub_throughput") {
        return;
    }
    for mode in ["cloudpc offload", "cloudpc no-offload", "wireguard-go hub"] {
        std::env::set_var(
            "CLOUDPC_HUB_OFFLOAD",
            if mode == "cloudpc offload" { "1" } else { "0" },
        );
        let mut w = HubWorld::new("cpt");
        let mut hub = w.hub("");
        w.add_device_ns(1, false);
        w.add_device_ns(2, false);
        let (c1, p1) = w.register(&hub, "a");
        let (c2, p2) = w.register(&hub, "b");
        let (a1, a1v6) = w.device_addrs(&hub, "a");
        let (a2, a2v6) = w.device_addrs(&hub, "b");
        let hub_pid = if mode == "wireguard-go hub" {
            let peers = [(p1, a1, a1v6), (p2, a2.clone(), a2v6)];
            start_wireguard_go_hub(&mut w, &hub, &peers)
        } else {
            std::env::set_var("CLOUDPC_TEST_HUB_LOG", "cloudpc=info");
            w.start_hub(&mut hub);
            hub.pid.expect("hub pid")
        };
        w.lab.wg_up("d1", &c1);
        w.lab.wg_up("d2", &c2);
        let log = w.lab.dir.path().join("iperf-inet.log");
        w.lab.spawn("inet", &format!("iperf3 -s -B {WEB}"), &log);
        let log = w.lab.dir.path().join("iperf-d2.log");
        w.lab.spawn("d2", &format!("iperf3 -s -B {a2}"), &log);
        assert!(w
            .lab
            .eventually("d1", &w.lab.ping_cmd(&a2, 1), Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(500));
        for (what, to) in [
            ("device→hub→internet", WEB.to_string()),
            ("device→hub→device", a2),
        ] {
            let cpu0 = cpu_of(hub_pid);
            // CLOUDPC_TEST_PERF=DIR records a perf profile of the hub during each run.
            let perf = std::env::var("CLOUDPC_TEST_PERF").ok().map(|dir| {
                let out = format!(
                    "{dir}/{}-{}.perf",
                    mode.replace(' ', "_"),
                    to.replace(':', "_")
                );
                std::process::Command::new("perf")
                    .args(["record", "-g", "-o", &out, "-p"])
                    .arg(hub_pid.to_string())
                    .args(["--", "sleep", "4"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("perf")
            });
            let bytes = iperf(&w, "d1", &to);
            if let Some(mut p) = perf {
                let _ = p.wait();
            }
            let cpu = cpu_of(hub_pid) - cpu0;
            let gb = bytes / 1e9;
            eprintln!(
                "{mode:20} {what}: {:.2} Gbit/s, hub {:.2} CPU-s per GB",
                bytes * 8.0 / 5.0 / 1e9,
                if gb > 0.0 { cpu / gb } else { f64::NAN }
            );
        }
        if mode != "wireguard-go hub" {
            w.stop_hub(&mut hub);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "measurement; run with --ignored as root"]
fn memory_per_idle_device() {
    if !netns::root_or_skip("memory_per_idle_device") {
        return;
    }
    let mut rss = vec![];
    for n in [0u32, 10_000] {
        let mut w = HubWorld::new("cpmem");
        let mut hub = w.hub("");
        {
            let cfg = cloudpc::config::Config::load(&hub.config).unwrap();
            let store = cloudpc::store::Store::open(&hub.state_dir).unwrap();
            let overlay = store.overlay(&cfg.wireguard).unwrap();
            drop(store);
            let mut conn =
                rusqlite::Connection::open(hub.state_dir.join(cloudpc::store::DB_FILE)).unwrap();
            let tx = conn.transaction().unwrap();
            for i in 0..n {
                let key: [u8; 32] = rand_key(i);
                use base64::Engine as _;
                let k = base64::engine::general_purpose::STANDARD.encode(key);
                let (v4, v6) = overlay.addrs(i + 2);
                tx.execute(
                    "INSERT INTO devices(name, public_key, ipv4, ipv6, addr_index, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                    rusqlite::params![format!("d{i}"), k, v4.to_string(), v6.to_string(), i + 2],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        std::env::set_var("CLOUDPC_TEST_HUB_LOG", "cloudpc=info");
        w.start_hub(&mut hub);
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kib(hub.pid.unwrap()));
        w.stop_hub(&mut hub);
    }
    eprintln!(
        "hub RSS: {} KiB with no device, {} KiB with 10,000 idle devices: {:.0} bytes per idle device",
        rss[0],
        rss[1],
        (rss[1] as f64 - rss[0] as f64) * 1024.0 / 10_000.0
    );
}

fn rand_key(i: u32) -> [u8; 32] {
    let mut k = [7u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k
}
