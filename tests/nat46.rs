//! DNS46 + NAT46 with stock WireGuard devices (root only): an IPv4-only device asks for the A
//! record of a name that has only an AAAA record and gets an address of the pool; a page, a
//! ping and a UDP exchange to that address reach the IPv6-only server in the test internet,
//! which sees the Cloud PC's IPv6 address; a name with its own A record is answered as it is;
//! a device with DNS46 off gets no pool address; an address with no mapping is unreachable at
//! once; `status` and `/metrics` count mappings and packets; after the idle time the mapping is gone, and a
//! new lookup works again; a deny rule on the site's IPv6 range stops it; turning DNS46 on
//! for the console is in force when the command returns.

#[path = "common/netns.rs"]
mod netns;
mod support;

use std::time::{Duration, Instant};

use netns::{HubWorld, HUB_PUBLIC6, WEB6};
use support::Knot;

#[test]
fn an_ipv4_device_reaches_an_ipv6_only_site_by_name() {
    if !netns::root_or_skip("nat46") {
        return;
    }
    let mut w = HubWorld::new("cpn46");
    w.lab.sh_ok("inet", "ip addr add 192.0.2.53/32 dev lo");
    let inet = w.lab.ns("inet");
    let _knot = Knot::start_with("192.0.2.53", &["ip", "netns", "exec", &inet]);
    let mut hub = w.hub("[dns]\nupstreams = [\"udp://192.0.2.53:53\"]\ndns46_idle = \"2s\"\n");
    for n in 1..=2 {
        w.add_device_ns(n, false);
    }
    let (c1, _) = w.register(&hub, "laptop");
    let (c2, _) = w.register(&hub, "console");
    hub.cli_ok(&["device", "set", "console", "--dns46", "off"]);
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    let (hub4, _) = netns::conf_addrs(&c1, "DNS");
    let short = |w: &HubWorld, dev: &str, args: &str| -> String {
        let o = w
            .lab
            .sh(dev, &format!("dig @{hub4} +short +time=2 +tries=2 {args}"));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert!(
        w.lab.eventually(
            "d1",
            &format!("dig @{hub4} +short +time=1 www.example.test | grep -qx 192.0.2.10"),
            Duration::from_secs(15)
        ),
        "{}",
        hub.log()
    );
    assert!(
        hub.log().contains("DNS46/NAT46 on"),
        "the hub has a global IPv6 address: NAT46 is on\n{}",
        hub.log()
    );

    // A name with only an AAAA record: an address of the pool. One with its own A record:
    // unchanged. A device with DNS46 off: nothing.
    let pool: ipnet::Ipv4Net = "100.127.0.0/16".parse().unwrap();
    let a = short(&w, "d1", "web6.example.test A");
    let addr: std::net::Ipv4Addr = a
        .parse()
        .unwrap_or_else(|_| panic!("no A answer for web6: {a:?}\n{}", hub.log()));
    assert!(pool.contains(&addr), "{addr} is not in the pool");
    assert_eq!(short(&w, "d1", "www.example.test A"), "192.0.2.10");
    assert_eq!(
        short(&w, "d2", "web6.example.test A"),
        "",
        "DNS46 is off for the console"
    );
    // Through a CNAME: the chain, then the pool address of its target.
    let chain = short(&w, "d1", "alias6.example.test A");
    assert!(
        chain.starts_with("web6.example.test.") && chain.ends_with(&a),
        "{chain}"
    );

    // A page over IPv4 to that address: the IPv6-only server answers, and saw the Cloud PC's
    // IPv6 address.
    let page = w.lab.sh_ok(
        "d1",
        &format!("curl -4 -sf -m 5 -H 'Host: web6.example.test' 'http://{addr}/hello?from=nat46'"),
    );
    assert_eq!(page, "hello from the internet\n");
    let line = w
        .web_log()
        .lines()
        .find(|l| l.contains("from=nat46"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the server did not log the page: {}", w.web_log()));
    assert!(line.starts_with(HUB_PUBLIC6), "{line}");
    // Ping (ICMP echo) and a UDP exchange through the mapping.
    w.lab.sh_ok("d1", &format!("ping -c 1 -W 3 {addr}"));
    let echo = w.lab.dir.path().join("udp-echo.log");
    w.lab.spawn(
        "inet",
        &format!(
            "python3 -u -c \"import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('{WEB6}', 5555)); print('up', flush=True)\n[s.sendto(b'echo:'+d, a) for d, a in iter(lambda: s.recvfrom(2048), None)]\""
        ),
        &echo,
    );
    assert!(w.lab.eventually(
        "inet",
        "ss -Hlun6 'sport = :5555' | grep -q .",
        Duration::from_secs(10)
    ));
    let udp = w.lab.sh_ok(
        "d1",
        &format!(
            "python3 -c \"import socket; s=socket.socket(); s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(b'hi46', ('{addr}', 5555)); print(s.recvfrom(100)[0].decode())\""
        ),
    );
    assert_eq!(udp.trim(), "echo:hi46");

    // An address of the pool with no mapping: unreachable at once (ICMP from the hub), not a
    // time-out.
    let t = Instant::now();
    let cut = w
        .lab
        .sh("d1", "curl -4 -s -m 10 -o /dev/null http://100.127.255.1/");
    assert!(!cut.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "an unmapped pool address should be unreachable at once, took {:?}",
        t.elapsed()
    );

    // `status` counts the mapping and the packets.
    let status = hub.cli_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("nat46:"))
        .unwrap_or_else(|| panic!("{status}"));
    let n: Vec<u64> = line["nat46:".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(n[0] >= 1 && n[1] >= 3 && n[2] >= 3 && n[3] >= 1, "{line}");

    // And /metrics.
    let m = w
        .lab
        .sh_ok("hub", "curl -sf -m 5 http://127.0.0.1:9153/metrics");
    let out: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("cloudpc_nat46_translated_packets_total{direction=\"out\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no NAT46 counter in /metrics:\n{m}"));
    assert!(out >= 3.0, "{out}");

    // Idle past its time (2 s, and the answer's TTL of 2 s): the mapping goes; a new lookup
    // gets an address again, and it works.
    let t = Instant::now();
    while !hub.cli_ok(&["status"]).contains("nat46: 0 mappings") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the mapping did not end: {}",
            hub.cli_ok(&["status"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again: std::net::Ipv4Addr = short(&w, "d1", "web6.example.test A").parse().unwrap();
    assert!(pool.contains(&again));
    let page = w.lab.sh_ok(
        "d1",
        &format!("curl -4 -sf -m 5 'http://{again}/hello?from=nat46-again'"),
    );
    assert_eq!(page, "hello from the internet\n");

    // The device's packet rules see the real IPv6 destination: a deny of the site's range
    // stops the same request at once (it went through just above).
    hub.cli_ok(&["device", "set", "laptop", "--deny", "2001:db8:80::/48"]);
    let denied = w.lab.sh(
        "d1",
        &format!("curl -4 -sf -m 3 -o /dev/null 'http://{again}/hello?from=nat46-denied'"),
    );
    assert!(!denied.status.success(), "a denied IPv6 site was reached");
    assert!(!w.web_log().contains("from=nat46-denied"));

    // The switch is in force when the command returns: the console gets a pool address now.
    hub.cli_ok(&["device", "set", "console", "--dns46", "on"]);
    let a: std::net::Ipv4Addr = short(&w, "d2", "web6.example.test A")
        .parse()
        .expect("a pool address for the console");
    assert!(pool.contains(&a));
}
