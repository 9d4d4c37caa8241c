//! Temporary egress addresses end to end (root only): a hub whose uplink has an on-link /64
//! (2001:db8:1::/64, as a cloud VM's) and extra IPv4 addresses, stock WireGuard devices
//! (wireguard-go + wg-quick), and the test internet's web server on IPv4 and IPv6, whose log
//! names the address each request came from.
//!
//! Every "gets a temporary address" is paired with the `hub` device on the same path, which
//! the web server sees with the hub's own address.

#[path = "common/netns.rs"]
mod netns;
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netns::{conf_addrs, HubRun, HubWorld, HUB_PUBLIC, HUB_PUBLIC6, WEB, WEB6};

const POOL: [&str; 5] = [
    "203.0.113.3",
    "203.0.113.4",
    "203.0.113.5",
    "203.0.113.6",
    "203.0.113.7",
];
const PREFIX: &str = "2001:db8:1::/64";
/// Size of the file the long downloads fetch.
const BIG: usize = 4_000_000;

/// The address the web server saw for the request tagged `tag`.
fn peer_of(w: &HubWorld, tag: &str) -> Option<IpAddr> {
    let needle = format!("GET /hello?{tag} ");
    let big = format!("GET /big?{tag} ");
    w.web_log()
        .lines()
        .find(|l| l.contains(&needle) || l.contains(&big))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// Fetches a page over IPv6 (`v6`) or IPv4 from `ns`; returns the address the server saw.
fn fetch(w: &HubWorld, ns: &str, v6: bool, tag: &str) -> IpAddr {
    let url = if v6 {
        format!("http://[{WEB6}]/hello?{tag}")
    } else {
        format!("http://{WEB}/hello?{tag}")
    };
    w.lab
        .sh_ok(ns, &format!("curl -sf -m 5 -o /dev/null '{url}'"));
    peer_of(w, tag).unwrap_or_else(|| panic!("no request {tag} in the log:\n{}", w.web_log()))
}

/// A device's live egress in `status --json`: (mode, IPv6, IPv4, next rotation).
fn egress_of(hub: &HubRun, name: &str) -> serde_json::Value {
    let s: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["status", "--json"])).expect("status json");
    s["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .map(|d| d["egress"].clone())
        .unwrap_or_else(|| panic!("no device {name} in {s}"))
}

fn addr(v: &serde_json::Value, k: &str) -> Option<IpAddr> {
    v[k].as_str().and_then(|a| a.parse().ok())
}

fn in_prefix(a: IpAddr) -> bool {
    let net: ipnet::IpNet = PREFIX.parse().unwrap();
    net.contains(&a) && a != HUB_PUBLIC6.parse::<IpAddr>().unwrap()
}

fn in_pool(a: IpAddr) -> bool {
    POOL.iter().any(|p| p.parse::<IpAddr>().unwrap() == a)
}

/// Starts a rate-limited download of the big file from `ns`; its log gets
/// `<bytes> <exit code>` when it ends. Returns the log's path once the server logged it.
/// A download that makes no progress for 5 s ends (a cut connection may get no reset when
/// the device sends nothing).
fn start_download(
    w: &mut HubWorld,
    ns: &str,
    v6: bool,
    rate: &str,
    tag: &str,
) -> std::path::PathBuf {
    let url = if v6 {
        format!("http://[{WEB6}]/big?{tag}")
    } else {
        format!("http://{WEB}/big?{tag}")
    };
    let log = w.lab.dir.path().join(format!("download-{tag}.log"));
    w.lab.spawn(
        ns,
        &format!(
            "sh -c \"curl -s -m 90 -Y 1 -y 5 --limit-rate {rate} -o /dev/null -w '%{{size_download}} ' '{url}'; echo \\$?\""
        ),
        &log,
    );
    let t0 = Instant::now();
    while peer_of(w, tag).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "download {tag} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    log
}

/// Waits up to `secs` for a download's `<bytes> <exit code>`.
fn download_result(log: &std::path::Path, secs: u64) -> (usize, i32) {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() >= 2 {
            return (f[0].parse().unwrap_or(0), f[1].parse().unwrap_or(-1));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "download did not end: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn temporary_addresses_per_device_rotate_drain_and_go_away_with_the_hub() {
    if !netns::root_or_skip("egress") {
        return;
    }
    let mut w = HubWorld::new("cpeg");
    // The VM's extra IPv4 addresses.
    w.lab.sh_ok(
        "hub",
        &POOL
            .iter()
            .map(|a| format!("ip addr add {a}/24 dev eth0"))
            .collect::<Vec<_>>()
            .join(" && "),
    );
    std::fs::write(w.web_root.join("big"), vec![b'x'; BIG]).unwrap();
    // The test internet's DNS (for an IPv6-only name, reached with NAT46).
    w.lab.sh_ok("inet", "ip addr add 192.0.2.53/32 dev lo");
    let inet = w.lab.ns("inet");
    let _knot = support::Knot::start_with("192.0.2.53", &["ip", "netns", "exec", &inet]);
    let pool = POOL.map(|a| format!("\"{a}\"")).join(", ");
    let mut hub = w.hub(&format!(
        "ipv4_pool = [{pool}]\nrotate = \"1m\"\ndrain = \"15s\"\n[dns]\nupstreams = [\"udp://192.0.2.53:53\"]\n"
    ));
    for n in 1..=3 {
        w.add_device_ns(n, false);
    }
    let phone = hub.add_device("phone", true, &["--admin"]);
    let laptop = hub.add_device("laptop", true, &[]);
    let desk = hub.add_device("desk", true, &[]);
    // Stored without a hub, in force from the start.
    hub.cli_ok(&["device", "set", "phone", "--egress", "temporary"]);
    w.start_hub(&mut hub);
    // Set while the hub runs: in force when the command returns.
    let out = hub.cli_ok(&["device", "set", "laptop", "--egress", "temporary"]);
    assert!(
        out.contains("egress:      temporary, IPv6 2001:db8:1:"),
        "{out}"
    );
    for (ns, conf) in [("d1", &phone), ("d2", &laptop), ("d3", &desk)] {
        w.lab.wg_up(ns, conf);
    }
    let (hub4, _) = conf_addrs(&phone, "DNS");
    for ns in ["d1", "d2", "d3"] {
        assert!(
            w.lab
                .eventually(ns, &w.lab.ping_cmd(&hub4, 1), Duration::from_secs(15)),
            "{ns} is not online:\n{}",
            w.lab.diag(ns)
        );
    }

    // --- Two temporary devices, two addresses of the prefix and two of the pool; the hub
    // device leaves with the hub's addresses.
    let p6 = fetch(&w, "d1", true, "p6");
    let p4 = fetch(&w, "d1", false, "p4");
    let l6 = fetch(&w, "d2", true, "l6");
    let l4 = fetch(&w, "d2", false, "l4");
    let d6 = fetch(&w, "d3", true, "d6");
    let d4 = fetch(&w, "d3", false, "d4");
    assert!(in_prefix(p6) && in_prefix(l6) && p6 != l6, "{p6} {l6}");
    assert!(in_pool(p4) && in_pool(l4) && p4 != l4, "{p4} {l4}");
    assert_eq!(d6, HUB_PUBLIC6.parse::<IpAddr>().unwrap());
    assert_eq!(d4, HUB_PUBLIC.parse::<IpAddr>().unwrap());
    let pe = egress_of(&hub, "phone");
    assert_eq!(pe["mode"], "temporary");
    assert_eq!((addr(&pe, "ipv6"), addr(&pe, "ipv4")), (Some(p6), Some(p4)));
    // IPv4 to an IPv6-only site (DNS46 + NAT46) leaves with the device's temporary IPv6
    // address too; the hub device's with the hub's.
    let nat46 = |ns: &str, tag: &str| -> IpAddr {
        let a = w.lab.sh_ok(
            ns,
            &format!("dig @{hub4} +short +time=2 +tries=2 web6.example.test A"),
        );
        let a = a.trim();
        assert!(
            a.starts_with("100.127."),
            "no pool address from DNS46: {a:?}"
        );
        w.lab.sh_ok(
            ns,
            &format!("curl -4 -sf -m 5 -o /dev/null 'http://{a}/hello?{tag}'"),
        );
        peer_of(&w, tag).unwrap_or_else(|| panic!("no request {tag}:\n{}", w.web_log()))
    };
    assert_eq!(nat46("d1", "n46p"), p6);
    assert_eq!(nat46("d3", "n46d"), HUB_PUBLIC6.parse::<IpAddr>().unwrap());
    assert_eq!(egress_of(&hub, "desk")["mode"], "hub");
    // The hub answers neighbour discovery for exactly the addresses in use.
    let proxies = w.lab.sh_ok("hub", "ip -6 neigh show proxy");
    assert!(
        proxies.contains(&p6.to_string()) && proxies.contains(&l6.to_string()),
        "{proxies}"
    );
    let status = hub.cli_ok(&["status"]);
    assert!(
        status.contains(&format!("IPv6 from {PREFIX} (on-link)")),
        "{status}"
    );
    // A site that saw a temporary address cannot open a connection to it and find the hub's
    // services (its HTTPS on 443) behind it; the hub's own addresses still answer.
    let code = |host: &str| {
        let o = w.lab.sh(
            "inet",
            &format!("curl -sk -m 3 -o /dev/null -w '%{{http_code}}' 'https://{host}/'"),
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(code(HUB_PUBLIC), "404");
    assert_eq!(code(&format!("[{HUB_PUBLIC6}]")), "404");
    assert_eq!(code(&p4.to_string()), "000");
    assert_eq!(code(&format!("[{p6}]")), "000");

    // --- A new address: a download started before keeps its old address to its end, while
    // a new connection gets the new address at once.
    let keep = start_download(&mut w, "d1", true, "400k", "keep");
    assert_eq!(peer_of(&w, "keep"), Some(p6));
    let out = hub.cli_ok(&["device", "set", "phone", "--new-address"]);
    let p6b = fetch(&w, "d1", true, "p6b");
    let p4b = fetch(&w, "d1", false, "p4b");
    assert!(in_prefix(p6b) && p6b != p6 && p6b != l6, "{p6b} {out}");
    assert!(in_pool(p4b) && p4b != p4 && p4b != l4, "{p4b} {out}");
    assert!(out.contains(&p6b.to_string()), "{out}");
    assert_eq!(
        std::fs::read_to_string(&keep).unwrap_or_default(),
        "",
        "the download ended before the new address"
    );
    assert_eq!(download_result(&keep, 20), (BIG, 0));

    // --- An old address's connections are cut when its drain ends (15 s here), on both
    // families, while new connections carry on. (A fresh address first, so that no rotation
    // by itself falls into the drain.) The server's side of a cut connection is reset.
    hub.cli_ok(&["device", "set", "laptop", "--new-address"]);
    let le = egress_of(&hub, "laptop");
    let (l6x, l4x) = (addr(&le, "ipv6").unwrap(), addr(&le, "ipv4").unwrap());
    let cut6 = start_download(&mut w, "d2", true, "100k", "cut6");
    let cut4 = start_download(&mut w, "d2", false, "100k", "cut4");
    assert_eq!(
        (peer_of(&w, "cut6"), peer_of(&w, "cut4")),
        (Some(l6x), Some(l4x))
    );
    let renewed = Instant::now();
    hub.cli_ok(&["device", "set", "laptop", "--new-address"]);
    for (log, old) in [(&cut6, l6x), (&cut4, l4x)] {
        let (bytes, code) = download_result(log, 40);
        let after = renewed.elapsed();
        assert!(
            bytes < BIG
                && code != 0
                && after >= Duration::from_secs(14)
                && after <= Duration::from_secs(30),
            "a draining download from {old} was not cut at the end of the drain: {bytes} bytes, exit {code} after {after:?}"
        );
        let reset = format!("request from ('{old}'");
        assert!(
            w.web_log().contains(&reset),
            "the server's side of the cut connection from {old} was not reset:\n{}",
            w.web_log()
        );
    }
    let l6b = fetch(&w, "d2", true, "l6b");
    let l4b = fetch(&w, "d2", false, "l4b");
    assert!(in_prefix(l6b) && l6b != l6x, "{l6b}");
    assert!(in_pool(l4b) && l4b != l4x, "{l4b}");
    let proxies = w.lab.sh_ok("hub", "ip -6 neigh show proxy");
    assert!(!proxies.contains(&l6x.to_string()), "{proxies}");

    // --- Bad input is refused and changes nothing.
    let o = hub
        .cli()
        .args(["device", "set", "phone", "--egress", "sometimes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("hub or temporary"),
        "{err}"
    );
    let o = hub
        .cli()
        .args(["device", "set", "desk", "--new-address"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--egress temporary"),
        "{err}"
    );
    assert_eq!(egress_of(&hub, "phone")["mode"], "temporary");
    assert_eq!(fetch(&w, "d3", true, "d6b"), d6);

    // --- The rotation comes by itself (rotate = 1m): the phone's address changes at its
    // next_rotation without a command.
    let pe = egress_of(&hub, "phone");
    let next = pe["next_rotation"].as_i64().expect("a next rotation");
    let now = jiff::Timestamp::now().as_second();
    assert!(next > now && next <= now + 60, "{pe}");
    let t0 = Instant::now();
    let wait = Duration::from_secs((next - now) as u64 + 5);
    let rotated = loop {
        let e = egress_of(&hub, "phone");
        if addr(&e, "ipv6") != Some(p6b) {
            break e;
        }
        assert!(t0.elapsed() < wait, "no rotation by {next}: {e}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let p6c = fetch(&w, "d1", true, "p6c");
    assert_eq!(Some(p6c), addr(&rotated, "ipv6"));
    assert!(in_prefix(p6c) && ![p6, p6b, l6, l6b].contains(&p6c));

    // The admin page shows the live addresses (to an admin device, by its WireGuard identity).
    let page = w
        .lab
        .sh_ok("d1", &format!("curl -sk -m 5 https://{hub4}/devices"));
    assert!(
        page.contains(&p6c.to_string()) && page.contains("New address"),
        "{page}"
    );

    // --- No request showed a device's own address (overlay, ULA or home router's).
    let log = w.web_log();
    let (v4, v6) = conf_addrs(&phone, "Address");
    for never in [
        v4.as_str(),
        v6.as_str(),
        "100.96.",
        "fd",
        netns::HOME_PUBLIC,
    ] {
        assert!(
            !log.lines().any(|l| l.starts_with(never)),
            "{never} in the web log:\n{log}"
        );
    }

    // --- On exit the hub takes its proxy entries and its table with it.
    assert_eq!(
        w.lab
            .sh_ok("hub", "sysctl -n net.ipv6.conf.eth0.proxy_ndp")
            .trim(),
        "1"
    );
    let exit = w.stop_hub(&mut hub);
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}\n{}", hub.log());
    assert_eq!(w.lab.sh_ok("hub", "ip -6 neigh show proxy").trim(), "");
    assert_eq!(
        w.lab
            .sh_ok("hub", "sysctl -n net.ipv6.conf.eth0.proxy_ndp")
            .trim(),
        "0"
    );
    assert!(!w.lab.sh_succeeds("hub", "nft list table inet cloudpc", 5));

    // --- A prefix that is not the VM's and a pool address it does not have: the hub says so
    // at start and in status, and leaves with its own IPv6 address rather than a wrong one.
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace(
            "ipv4_pool = [",
            "ipv6_prefix = \"2001:db8:77::/64\"\nipv4_pool = [\"203.0.113.9\", ",
        ),
    )
    .unwrap();
    w.start_hub(&mut hub);
    let status = hub.cli_ok(&["status"]);
    assert!(
        status.contains("2001:db8:77::/64 is not on the egress interface")
            && status.contains("203.0.113.9 is not an address of this machine"),
        "{status}"
    );
    assert!(w
        .lab
        .eventually("d1", &w.lab.ping_cmd(&hub4, 1), Duration::from_secs(15)));
    assert_eq!(
        fetch(&w, "d1", true, "p6d"),
        HUB_PUBLIC6.parse::<IpAddr>().unwrap()
    );
    assert!(in_pool(fetch(&w, "d1", false, "p4d")));

    // --- A prefix the provider routes to the VM (not on its link): declared routed, the hub
    // installs one blackhole route for it (replies are un-NATed before routing; nothing else
    // sent to the prefix goes anywhere), and takes it away on exit.
    w.stop_hub(&mut hub);
    w.lab
        .sh_ok("inet", "ip -6 route add 2001:db8:5::/64 via 2001:db8:1::1");
    std::fs::write(
        &hub.config,
        text.replace(
            "ipv4_pool = [",
            "ipv6_prefix = \"2001:db8:5::/64\"\nipv6_routed = true\nipv4_pool = [",
        ),
    )
    .unwrap();
    w.start_hub(&mut hub);
    let routes = w.lab.sh_ok("hub", "ip -6 route show");
    assert!(routes.contains("blackhole 2001:db8:5::/64"), "{routes}");
    assert!(w
        .lab
        .eventually("d1", &w.lab.ping_cmd(&hub4, 1), Duration::from_secs(15)));
    let routed = fetch(&w, "d1", true, "p6e");
    let net: ipnet::IpNet = "2001:db8:5::/64".parse().unwrap();
    assert!(net.contains(&routed), "{routed}");
    assert_eq!(Some(routed), addr(&egress_of(&hub, "phone"), "ipv6"));
    // The routed prefix's addresses are not the hub's: its services do not answer there.
    let o = w.lab.sh(
        "inet",
        &format!("curl -sk -m 3 -o /dev/null -w '%{{http_code}}' 'https://[{routed}]/'"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "000");
    assert_eq!(
        fetch(&w, "d3", true, "d6e"),
        HUB_PUBLIC6.parse::<IpAddr>().unwrap()
    );
    w.stop_hub(&mut hub);
    let routes = w.lab.sh_ok("hub", "ip -6 route show");
    assert!(!routes.contains("2001:db8:5::"), "{routes}");

    // A rotation under a minute is refused before anything starts.
    let bad = hub.config.with_extension("bad.toml");
    std::fs::write(&bad, text.replace("rotate = \"1m\"", "rotate = \"30s\"")).unwrap();
    let o = std::process::Command::new(netns::cloudpc_bin())
        .args(["--config", bad.to_str().unwrap(), "device", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("egress.rotate"),
        "{err}"
    );
}
