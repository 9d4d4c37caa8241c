//! `cloudpc connect` and the hub's TLS transport, with namespaces as hosts (root only).
//!
//! A device behind a router that drops all UDP and lets only TCP 443 out: the client gets
//! online over TLS, reaches another device, `*.mesh` names and the test internet; when the
//! block is lifted it moves to UDP, when it comes back to TLS, while an iperf3 stream keeps
//! going. A stock wg-quick device behind the same block gets through with `--relay`. Streams
//! from strangers are closed. The client recovers by itself from a captive portal on 443, a
//! middlebox that resets the stream, a hub restart and a dead network.

#[path = "common/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netns::{conf_addrs, HubWorld, HUB_PUBLIC, WEB};

/// Drops UDP (and TCP to any port but 443) forwarded for the device on `lan` (home router).
fn block_udp(w: &HubWorld, lan: &str) {
    home_table(
        w,
        &format!("inet block_{lan}"),
        "type filter hook forward priority 0",
        &[
            &format!("iifname {lan} meta l4proto udp drop"),
            &format!("oifname {lan} meta l4proto udp drop"),
            &format!("iifname {lan} tcp dport != 443 drop"),
        ],
    );
}

fn unblock_udp(w: &HubWorld, lan: &str) {
    home_table_delete(w, &format!("inet block_{lan}"));
}

/// Adds nftables table `table` ("FAMILY NAME") to the home router: one chain of `hook`
/// ("type filter hook forward priority 0") with `rules`.
fn home_table(w: &HubWorld, table: &str, hook: &str, rules: &[&str]) {
    w.lab.sh_ok(
        "home",
        &format!(
            "nft -f - <<'NFT'\ntable {table} {{\n  chain c {{\n    {hook};\n    {}\n  }}\n}}\nNFT",
            rules.join("\n    ")
        ),
    );
}

fn home_table_delete(w: &HubWorld, table: &str) {
    w.lab.sh_ok("home", &format!("nft delete table {table}"));
}

/// A fault on the home router (its nftables `table`, in place) while the client of `dev` in d1
/// is on TLS: the client says `says_what` in `--status` and does not reach `dst`; once the
/// table is deleted it is back within 15 s by itself.
fn recovers_from(w: &HubWorld, dev: &str, dst: &str, log: &Path, table: &str, says_what: &str) {
    let clog = || std::fs::read_to_string(log).unwrap_or_default();
    w.lab.sh("d1", &w.lab.ping_cmd(dst, 1));
    assert!(
        says(w, dev, says_what, Duration::from_secs(10)),
        "{}\n{}",
        status(w, "d1", dev),
        clog()
    );
    assert!(!w.lab.ping("d1", dst, 2), "online through {table}?");
    home_table_delete(w, table);
    assert!(
        online(w, dst, Duration::from_secs(15)),
        "not online within 15 s of {table} going away:\n{}",
        clog()
    );
}

/// `cloudpc connect --status --json` for the client of `dev`, as JSON.
fn status(w: &HubWorld, ns: &str, dev: &str) -> serde_json::Value {
    let bin = netns::cloudpc_bin();
    let o = w.lab.sh(
        ns,
        &format!("{bin} connect --status --json --interface {dev}"),
    );
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Waits until the client's transport is `want`; returns how long that took.
fn wait_transport(
    w: &HubWorld,
    ns: &str,
    dev: &str,
    want: &str,
    within: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if status(w, ns, dev)["transport"] == want {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Removes `/etc/netns/NS` (where the client's resolv.conf of a namespace lives) on drop.
struct NetnsEtc(PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn netns_resolv_conf(w: &HubWorld, ns: &str) -> NetnsEtc {
    let dir = Path::new("/etc/netns").join(w.lab.ns(ns));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
    NetnsEtc(dir)
}

#[test]
fn connect_gets_through_a_udp_block_over_tls_and_moves_back_and_forth() {
    if !netns::root_or_skip("connect") {
        return;
    }
    let mut w = HubWorld::new("cpk");
    let mut hub = w.hub("");
    for n in 1..=3 {
        w.add_device_ns(n, false);
    }
    let laptop = hub.add_device("laptop", true, &[]);
    let (desk, _) = w.register(&hub, "desk");
    let (desk_v4, _) = conf_addrs(&desk, "Address");
    let (hub_v4, _) = conf_addrs(&laptop, "DNS");
    w.start_hub(&mut hub);
    w.lab.wg_up("d2", &desk);
    let _etc = netns_resolv_conf(&w, "d1");

    block_udp(&w, "lan1");
    // The block holds: a stock WireGuard behind it gets nothing through ...
    let relayed = hub.add_device("relayed", true, &["--split"]);
    block_udp(&w, "lan3");
    let wg3 = w.lab.wg_up("d3", &relayed);
    assert!(
        !w.lab.ping("d3", &hub_v4, 3),
        "UDP should be blocked for d3:\n{}",
        w.lab.diag("home")
    );
    // ... while TCP 443 to the hub gets out.
    assert!(w.lab.sh_succeeds(
        "d1",
        &format!("curl -sk -m 3 -o /dev/null https://{HUB_PUBLIC}/"),
        5
    ));

    let conf = w.lab.dir.path().join("laptop.conf");
    std::fs::write(&conf, &laptop).unwrap();
    let dev = netns::unique("cpc");
    let bin = netns::cloudpc_bin();
    let log = w.lab.dir.path().join("connect.log");
    let t0 = Instant::now();
    w.lab.spawn(
        "d1",
        &format!(
            "env CLOUDPC_LOG=cloudpc=debug {bin} connect {} --interface {dev}",
            conf.display()
        ),
        &log,
    );
    let online = w
        .lab
        .eventually("d1", &w.lab.ping_cmd(&desk_v4, 1), Duration::from_secs(5));
    let took = t0.elapsed();
    let clog = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        online,
        "not online over TLS within 5 s:\n{}\n{}\n{}",
        clog(),
        hub.log(),
        w.lab.diag("d1")
    );
    eprintln!("online over TLS after {took:?}");
    let st = status(&w, "d1", &dev);
    assert_eq!(st["transport"], "tls", "{st}");
    assert!(st["last_handshake_secs_ago"].is_u64(), "{st}");
    let hub_status =
        String::from_utf8_lossy(&hub.cli().arg("status").output().unwrap().stdout).into_owned();
    assert!(
        hub_status
            .lines()
            .any(|l| l.starts_with("laptop") && l.contains("tls/")),
        "{hub_status}"
    );
    // Names under .mesh, by the resolver the client put in place, and the internet.
    let resolved = w.lab.sh_ok("d1", "getent ahostsv4 desk.mesh");
    assert!(resolved.contains(&desk_v4), "{resolved}");
    assert!(w.lab.sh_ok("d1", "cat /etc/resolv.conf").contains(&hub_v4));
    let page = w
        .lab
        .sh_ok("d1", &format!("curl -sf -m 5 http://{WEB}/hello"));
    assert_eq!(page, "hello from the internet\n");

    // An iperf3 stream through the hub to the internet, across both switches.
    w.lab.spawn(
        "inet",
        &format!("iperf3 -s -B {WEB} -1"),
        &w.lab.dir.path().join("iperf-s.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let iperf_log = w.lab.dir.path().join("iperf.json");
    let iperf = w.lab.spawn(
        "d1",
        &format!("iperf3 -c {WEB} -t 60 -b 20M -J --connect-timeout 3000"),
        &iperf_log,
    );
    std::thread::sleep(Duration::from_secs(2));
    unblock_udp(&w, "lan1");
    let back = wait_transport(&w, "d1", &dev, "udp", Duration::from_secs(35));
    assert!(back.is_some(), "not back on UDP within 35 s:\n{}", clog());
    eprintln!("back on UDP after {:?}", back.unwrap());
    std::thread::sleep(Duration::from_secs(3));
    block_udp(&w, "lan1");
    let again = wait_transport(&w, "d1", &dev, "tls", Duration::from_secs(10));
    assert!(
        again.is_some(),
        "not on TLS within 10 s of the block:\n{}",
        clog()
    );
    eprintln!("on TLS again after {:?}", again.unwrap());

    // The stock WireGuard of d3 through the relay: the same device, the same hub.
    let conf3 = w.lab.dir.path().join("relayed.conf");
    std::fs::write(&conf3, &relayed).unwrap();
    let dev3 = netns::unique("cpr");
    w.lab.spawn(
        "d3",
        &format!(
            "{bin} connect {} --interface {dev3} --relay 127.0.0.1:51820",
            conf3.display()
        ),
        &w.lab.dir.path().join("relay.log"),
    );
    let key = w.lab.sh_ok("d3", &format!("wg show {wg3} peers"));
    w.lab.sh_ok(
        "d3",
        &format!("wg set {wg3} peer {} endpoint 127.0.0.1:51820", key.trim()),
    );
    assert!(
        w.lab
            .eventually("d3", &w.lab.ping_cmd(&hub_v4, 1), Duration::from_secs(15)),
        "the relayed stock WireGuard did not get through:\n{}",
        std::fs::read_to_string(w.lab.dir.path().join("relay.log")).unwrap_or_default()
    );
    assert_eq!(status(&w, "d3", &dev3)["transport"], "tls");
    // Two TLS streams at once: each device still gets its own packets.
    assert_eq!(status(&w, "d1", &dev)["transport"], "tls");
    assert!(
        w.lab.ping("d1", &desk_v4, 3),
        "the laptop lost its path when a second TLS stream opened:\n{}",
        clog()
    );

    // The stream kept going through both switches.
    let end = Instant::now() + Duration::from_secs(70);
    let mut report = serde_json::Value::Null;
    while Instant::now() < end {
        let text = std::fs::read_to_string(&iperf_log).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            report = v;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = iperf;
    assert!(report["error"].is_null(), "iperf3 failed: {report}");
    let intervals = report["intervals"].as_array().cloned().unwrap_or_default();
    assert!(
        intervals.len() >= 55,
        "the stream ended early: {}",
        intervals.len()
    );
    let tail: f64 = intervals[intervals.len() - 5..]
        .iter()
        .map(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(tail > 1e6, "the stream was not moving at the end: {tail}");
    let stalled = intervals
        .iter()
        .filter(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0) == 0.0)
        .count();
    let per_second: Vec<String> = intervals
        .iter()
        .map(|i| format!("{:.0}", i["sum"]["bytes"].as_f64().unwrap_or(0.0) / 1e3))
        .collect();
    eprintln!(
        "iperf3: {} intervals, {stalled} without data; kB/s: {}",
        intervals.len(),
        per_second.join(" ")
    );
    assert!(stalled <= 10, "the stream stalled for {stalled} s");
}

#[test]
fn strangers_streams_on_443_are_closed() {
    if !netns::root_or_skip("connect") {
        return;
    }
    let mut w = HubWorld::new("cps");
    let mut hub = w.hub("");
    w.start_hub(&mut hub);
    // A stream with the transport's ALPN that says nothing is closed after the
    // authentication window; one that sends garbage at once; plain HTTPS gets a 404.
    let script = format!(
        r#"
import socket, ssl, time, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["cloudpc-wg/1"])
def stream():
    s = ctx.wrap_socket(socket.create_connection(("{HUB_PUBLIC}", 443), timeout=15))
    assert s.selected_alpn_protocol() == "cloudpc-wg/1", s.selected_alpn_protocol()
    return s
s = stream(); t = time.time()
assert s.recv(10) == b""
silent = time.time() - t
s = stream(); s.sendall(b"\x00\x05hello"); t = time.time()
assert s.recv(10) == b""
garbage = time.time() - t
print(f"{{silent:.1f}} {{garbage:.1f}}")
"#
    );
    let out = w.lab.sh_ok("home", &format!("python3 -c '{script}'"));
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(
        (4.0..8.0).contains(&v[0]),
        "a silent stream lasted {} s",
        v[0]
    );
    assert!(v[1] < 1.0, "a garbage stream lasted {} s", v[1]);
    let code = w.lab.sh_ok(
        "home",
        &format!("curl -sk -o /dev/null -w '%{{http_code}}' -m 5 https://{HUB_PUBLIC}/dns-query?dns=AAABAAABAAAAAAAAAAABAAE"),
    );
    assert_eq!(
        code, "404",
        "outsiders get no DoH on the transport's listener"
    );
}

/// A device on TLS (UDP blocked) through a captive portal on 443, a middlebox that resets the
/// stream, a hub restart and a network dead for a minute: each time the client says what it is
/// doing and is back online by itself once the fault is gone.
#[test]
fn connect_recovers_from_a_portal_resets_a_hub_restart_and_a_dead_network() {
    if !netns::root_or_skip("connect") {
        return;
    }
    let mut w = HubWorld::new("cpf");
    let mut hub = w.hub("");
    for n in 1..=2 {
        w.add_device_ns(n, false);
    }
    let laptop = hub.add_device("laptop", true, &["--split"]);
    let (desk, _) = w.register(&hub, "desk");
    let (desk_v4, _) = conf_addrs(&desk, "Address");
    w.start_hub(&mut hub);
    w.lab.wg_up("d2", &desk);
    block_udp(&w, "lan1");

    // A captive portal: the home router sends the device's 443 to its own TLS web server.
    let dir = w.lab.dir.path().to_path_buf();
    w.lab.sh_ok(
        "home",
        &format!(
            "cd {} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -subj /CN=portal -keyout portal.key -out portal.crt -days 1 2>/dev/null",
            dir.display()
        ),
    );
    w.lab.spawn(
        "home",
        &format!(
            "openssl s_server -quiet -www -accept 8443 -cert {0}/portal.crt -key {0}/portal.key",
            dir.display()
        ),
        &dir.join("portal.log"),
    );
    home_table(
        &w,
        "ip portal",
        "type nat hook prerouting priority -100",
        &["iifname lan1 tcp dport 443 dnat to 192.168.1.1:8443"],
    );
    assert!(
        w.lab.eventually(
            "d1",
            &format!("curl -sk -m 2 https://{HUB_PUBLIC}/ | grep -qi '<html'"),
            Duration::from_secs(10)
        ),
        "the portal does not answer:\n{}",
        std::fs::read_to_string(dir.join("portal.log")).unwrap_or_default()
    );

    let conf = dir.join("laptop.conf");
    std::fs::write(&conf, &laptop).unwrap();
    let dev = netns::unique("cpf");
    let bin = netns::cloudpc_bin();
    let log = dir.join("connect.log");
    w.lab.spawn(
        "d1",
        &format!(
            "env CLOUDPC_LOG=cloudpc=debug {bin} connect {} --interface {dev}",
            conf.display()
        ),
        &log,
    );
    let clog = || std::fs::read_to_string(&log).unwrap_or_default();
    // The portal (already in place): not online, and the status says why.
    recovers_from(&w, &dev, &desk_v4, &log, "ip portal", "not a cloudpc hub");
    assert_eq!(status(&w, "d1", &dev)["transport"], "tls");
    // A middlebox resets the stream (and every new one) for a while.
    let filter = "type filter hook forward priority -10";
    home_table(
        &w,
        "inet rst",
        filter,
        &["iifname lan1 tcp dport 443 reject with tcp reset"],
    );
    recovers_from(&w, &dev, &desk_v4, &log, "inet rst", "TLS stream down");

    // The hub restarts.
    w.stop_hub(&mut hub);
    assert!(!w.lab.ping("d1", &desk_v4, 1), "online without a hub?");
    w.start_hub(&mut hub);
    assert!(
        online(&w, &desk_v4, Duration::from_secs(15)),
        "not online within 15 s of the hub's restart:\n{}\n{}",
        clog(),
        hub.log()
    );

    // The network is dead for a minute.
    home_table(
        &w,
        "inet dead",
        filter,
        &["iifname lan1 drop", "oifname lan1 drop"],
    );
    let dead = Instant::now();
    assert!(
        !w.lab.ping("d1", &desk_v4, 2),
        "online through a dead network?"
    );
    std::thread::sleep(Duration::from_secs(60).saturating_sub(dead.elapsed()));
    home_table_delete(&w, "inet dead");
    let t0 = Instant::now();
    assert!(
        online(&w, &desk_v4, Duration::from_secs(20)),
        "not online within 20 s of the network coming back:\n{}",
        clog()
    );
    eprintln!("back after the dead minute in {:?}", t0.elapsed());
    assert!(
        w.lab
            .sh_ok("d1", &format!("{bin} connect --status --interface {dev}"))
            .contains("transport:      tls"),
        "UDP is still blocked"
    );
}

/// True once the client of `dev` in d1 says (in `--status`) something containing `what`.
fn says(w: &HubWorld, dev: &str, what: &str, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        let st = status(w, "d1", dev);
        if st["doing"].as_str().is_some_and(|d| d.contains(what)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// True once d1 pings `dst` within `within`.
fn online(w: &HubWorld, dst: &str, within: Duration) -> bool {
    w.lab.eventually("d1", &w.lab.ping_cmd(dst, 1), within)
}
