//! The resolver seen from other hosts (network namespaces, root only): REFUSED for outsiders,
//! answers for `allow_from`, and the per-client rate limit.

mod support;

use std::process::Command;

use support::*;

/// Namespaces and links made for one test, removed on drop.
struct Net {
    names: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

#[test]
fn outsiders_are_refused_allow_from_is_answered_and_floods_are_limited() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let id = std::process::id();
    let (srv, cli) = (format!("cpdns{id}s"), format!("cpdns{id}c"));
    let _net = Net {
        names: vec![srv.clone(), cli.clone()],
    };
    sh(&format!("ip netns add {srv} && ip netns add {cli}"));
    sh(&format!(
        "ip -n {srv} link set lo up && ip -n {cli} link set lo up && \
         ip link add v{id}s netns {srv} type veth peer name v{id}c netns {cli} && \
         ip -n {srv} addr add 192.0.2.1/24 dev v{id}s && ip -n {srv} addr add 198.51.100.1/24 dev v{id}s && \
         ip -n {cli} addr add 192.0.2.2/24 dev v{id}c && ip -n {cli} addr add 198.51.100.2/24 dev v{id}c && \
         ip -n {srv} link set v{id}s up && ip -n {cli} link set v{id}c up"
    ));
    let in_srv = ["ip", "netns", "exec", srv.as_str()];
    let _knot = Knot::start_with("127.0.0.53", &in_srv);
    let cfg = "[dns]\nlisten = [\"192.0.2.1:53\", \"127.0.0.1:53\"]\nupstreams = [\"udp://127.0.0.53:53\"]\nallow_from = [\"198.51.100.0/24\"]\nrate_limit = 20\n[filter]\nlists = []\n[wireguard]\nenabled = false\n";
    let _hub = Cloudpc::start_with("127.0.0.1", cfg, &in_srv);
    let dig_from = |src: &str, name: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &cli, "dig", "-b", src, "@192.0.2.1"])
            .args([name, "A", "+time=2", "+tries=1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let outsider = dig_from("192.0.2.2", "www.example.test");
    assert_eq!(rcode_of(&outsider), "REFUSED", "{outsider}");
    assert!(!outsider.contains("192.0.2.10"));
    let allowed = dig_from("198.51.100.2", "www.example.test");
    assert_eq!(rcode_of(&allowed), "NOERROR", "{allowed}");
    assert!(allowed.contains("192.0.2.10"));

    // A burst of 200 queries from one client: about the burst allowance (2 × 20) is answered.
    let script = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.2", 0))
q = bytes.fromhex("0000010000010000000000000377777707657861 6d706c6504746573740000010001".replace(" ", ""))
for i in range(200):
    s.sendto(i.to_bytes(2, "big") + q[2:], ("192.0.2.1", 53))
s.settimeout(0.5)
n = 0
try:
    while True:
        s.recv(1500); n += 1
except socket.timeout:
    pass
print(n)
"#;
    let out = Command::new("ip")
        .args(["netns", "exec", &cli, "python3", "-c", script])
        .output()
        .unwrap();
    let answered: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(999);
    assert!(
        (20..=60).contains(&answered),
        "rate limit: {answered} of 200 answered; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client recovers after a moment.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        rcode_of(&dig_from("198.51.100.2", "www.example.test")),
        "NOERROR"
    );
}

#[test]
fn group_policy_follows_the_device_and_counts_are_per_device() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let ns = format!("cpgrp{}", std::process::id());
    let _net = Net {
        names: vec![ns.clone()],
    };
    sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
    // The devices' overlay addresses, as the hub's TUN would carry them.
    sh(&format!(
        "ip -n {ns} addr add 100.96.0.2/32 dev lo && ip -n {ns} addr add 100.96.0.3/32 dev lo"
    ));
    let in_ns = ["ip", "netns", "exec", ns.as_str()];
    let _knot = Knot::start_with("127.0.0.53", &in_ns);
    let cfg = r#"[dns]
listen = ["127.0.0.1:53"]
upstreams = ["udp://127.0.0.53:53"]
[filter]
lists = []
[wireguard]
enabled = false
endpoint = "vpn.example.test"
[groups.kids]
block = ["v4only.example.test"]
blocked_answer = "nxdomain"
"#;
    let hub = Cloudpc::start_with("127.0.0.1", cfg, &in_ns);
    let bad = hub.cli(&["device", "add", "x", "--group", "nosuchgroup"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("groups.nosuchgroup"));
    assert!(hub
        .cli(&["device", "add", "kid", "--group", "kids"])
        .status
        .success());
    assert!(hub.cli(&["device", "add", "parent"]).status.success());
    let dig_from = |src: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "dig", "-b", src, "@127.0.0.1"])
            .args(["v4only.example.test", "A", "+time=2", "+tries=1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(eventually(3, || rcode_of(&dig_from("100.96.0.2")) == "NXDOMAIN"));
    let parent = dig_from("100.96.0.3");
    assert!(parent.contains("192.0.2.20"), "{parent}");
    assert!(hub.short("v4only.example.test", "A") == ["192.0.2.20"]);
    // Moving the parent into the group applies within a second or two, cache or not.
    assert!(hub
        .cli(&["device", "set", "parent", "--group", "kids"])
        .status
        .success());
    assert!(eventually(3, || rcode_of(&dig_from("100.96.0.3")) == "NXDOMAIN"));
    let st = hub.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let kid = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "kid")
        .unwrap()
        .clone();
    assert!(kid["queries"].as_u64().unwrap() >= 1, "{v}");
    assert!(kid["blocked"].as_u64().unwrap() >= 1, "{v}");
}

/// A resolver listening on the wildcard addresses of a host with several addresses answers
/// each query from the address it was sent to: a client (dig here) drops an answer from any
/// other address.
#[test]
fn a_wildcard_listener_answers_from_the_address_each_query_came_to() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let id = std::process::id();
    let (srv, cli) = (format!("cpwild{id}s"), format!("cpwild{id}c"));
    let _net = Net {
        names: vec![srv.clone(), cli.clone()],
    };
    sh(&format!("ip netns add {srv} && ip netns add {cli}"));
    sh(&format!(
        "ip -n {srv} link set lo up && ip -n {cli} link set lo up && \
         ip link add w{id}s netns {srv} type veth peer name w{id}c netns {cli} && \
         ip -n {srv} addr add 192.0.2.1/24 dev w{id}s && ip -n {srv} addr add 192.0.2.7/24 dev w{id}s && \
         ip -n {srv} addr add 2001:db8::1/64 dev w{id}s nodad && ip -n {srv} addr add 2001:db8::7/64 dev w{id}s nodad && \
         ip -n {cli} addr add 192.0.2.2/24 dev w{id}c && ip -n {cli} addr add 2001:db8::2/64 dev w{id}c nodad && \
         ip -n {srv} link set w{id}s up && ip -n {cli} link set w{id}c up"
    ));
    let in_srv = ["ip", "netns", "exec", srv.as_str()];
    // The upstream sits on the client's host: the wildcard port 53 is the resolver's alone.
    let in_cli = ["ip", "netns", "exec", cli.as_str()];
    let _knot = Knot::start_with("192.0.2.2", &in_cli);
    let cfg = "[dns]\nlisten = [\"0.0.0.0:53\", \"[::]:53\"]\nupstreams = [\"udp://192.0.2.2:53\"]\nallow_from = [\"192.0.2.0/24\", \"2001:db8::/64\"]\n[filter]\nlists = []\n[wireguard]\nenabled = false\n";
    let _hub = Cloudpc::start_with("127.0.0.1", cfg, &in_srv);
    let dig_at = |server: &str, name: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &cli, "dig", &format!("@{server}")])
            .args([name, "A", "+time=2", "+tries=1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for server in ["192.0.2.1", "192.0.2.7", "2001:db8::1", "2001:db8::7"] {
        // A forwarded answer (the listener's own upstream socket), then the cached one.
        for name in ["www.example.test", "www.example.test", "fine.example.test"] {
            let out = dig_at(server, name);
            assert_eq!(rcode_of(&out), "NOERROR", "{server} {name}: {out}");
            assert!(out.contains("192.0.2.10"), "{server} {name}: {out}");
            assert!(out.contains(&format!("SERVER: {server}#53")), "{out}");
        }
    }
}
