//! The per-device firewall end to end (root only): a hub in a network namespace, stock
//! WireGuard devices (wireguard-go + wg-quick), and a test internet with two web servers
//! (192.0.2.80 and .81), an authoritative DNS server (Knot, 192.0.2.53, with a CNAME chain)
//! and a DNS-over-TLS server (unbound, 192.0.2.54:853). dig, kdig and curl are the clients.
//!
//! Every "cannot" is paired with a "can" on the same path: the unrestricted laptop (or the
//! same device before the change) reaches what the restricted one cannot.

#[path = "common/netns.rs"]
mod netns;
mod support;

use std::time::Duration;

use netns::{conf_addrs, HubWorld};
use support::Knot;

const UPSTREAM: &str = "192.0.2.53";
const DOT: &str = "192.0.2.54";
const WEB_A: &str = "192.0.2.80";
const WEB_B: &str = "192.0.2.81";
/// `site_ttl_floor` in these tests (the zone's TTLs are 1 s).
const FLOOR_SECS: u64 = 4;

fn curl_ok(w: &HubWorld, ns: &str, url: &str, extra: &str) -> bool {
    w.lab
        .sh_succeeds(ns, &format!("curl -sf -o /dev/null -m 3 {extra} {url}"), 6)
}

fn dig(w: &HubWorld, ns: &str, server: &str, name: &str) -> String {
    let o = w
        .lab
        .sh(ns, &format!("dig +time=2 +tries=1 @{server} {name} A"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("(no answer)")
}

fn start_dot_server(w: &mut HubWorld) {
    let dir = w.lab.dir.path().join("unbound");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    w.lab.sh_ok(
        "inet",
        &format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
             -subj /CN=dot.test -keyout {d}/key.pem -out {d}/cert.pem 2>/dev/null"
        ),
    );
    std::fs::write(
        dir.join("unbound.conf"),
        format!(
            "server:\n  interface: {DOT}@853\n  tls-port: 853\n  tls-service-key: {d}/key.pem\n  \
             tls-service-pem: {d}/cert.pem\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  \
             directory: {d}\n  pidfile: \"\"\n  use-syslog: no\n  access-control: 0.0.0.0/0 allow\n  \
             local-data: \"dot.check.test. A 192.0.2.97\"\n"
        ),
    )
    .unwrap();
    let log = dir.join("unbound.log");
    w.lab
        .spawn("inet", &format!("unbound -d -c {d}/unbound.conf"), &log);
    let up = w.lab.eventually(
        "inet",
        &format!("kdig +tls +time=1 @{DOT} dot.check.test A | grep -q 192.0.2.97"),
        Duration::from_secs(10),
    );
    assert!(
        up,
        "the DoT server did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn allowlists_denylists_rules_reach_no_bypass_timers_and_schedules() {
    if !netns::root_or_skip("firewall") || !support::have("unbound") {
        return;
    }
    let mut w = HubWorld::new("cpfw");
    w.lab.sh_ok(
        "inet",
        &format!("ip addr add {UPSTREAM}/32 dev lo && ip addr add {DOT}/32 dev lo && ip addr add {WEB_B}/32 dev lo"),
    );
    let inet = w.lab.ns("inet");
    let _knot = Knot::start_with(UPSTREAM, &["ip", "netns", "exec", &inet]);
    start_dot_server(&mut w);
    // The second web site, and a slow download on the first.
    let root = w.web_root.display().to_string();
    let log_b = w.lab.dir.path().join("web-b.log");
    w.lab.spawn(
        "inet",
        &format!("python3 -u -m http.server 80 --bind {WEB_B} --directory {root}"),
        &log_b,
    );
    let log_8080 = w.lab.dir.path().join("web-8080.log");
    w.lab.spawn(
        "inet",
        &format!("python3 -u -m http.server 8080 --bind {WEB_A} --directory {root}"),
        &log_8080,
    );
    std::fs::write(w.web_root.join("big"), vec![b'x'; 150_000]).unwrap();
    assert!(w.lab.eventually(
        "inet",
        &format!("curl -sf -m 2 http://{WEB_B}/hello && curl -sf -m 2 http://{WEB_A}:8080/hello"),
        Duration::from_secs(10)
    ));

    let mut hub = w.hub(&format!(
        "[dns]\nupstreams = [\"udp://{UPSTREAM}:53\"]\n\n\
         [firewall]\nsite_ttl_floor = \"{FLOOR_SECS}s\"\ntimezone = \"UTC\"\n\n\
         [groups.kids]\ninternet = \"allowlist\"\nallow_sites = [\"wiki.test\"]\n"
    ));
    for n in 1..=4 {
        w.add_device_ns(n, false);
    }
    let tablet = hub.add_device("tablet", true, &["--group", "kids"]);
    let phone = hub.add_device("phone", true, &[]);
    let laptop = hub.add_device("laptop", true, &[]);
    let camera = hub.add_device("camera", true, &[]);
    w.start_hub(&mut hub);
    for (ns, conf) in [
        ("d1", &tablet),
        ("d2", &phone),
        ("d3", &laptop),
        ("d4", &camera),
    ] {
        w.lab.wg_up(ns, conf);
    }
    let (hub4, _) = conf_addrs(&tablet, "DNS");
    let (laptop4, _) = conf_addrs(&laptop, "Address");
    let (camera4, _) = conf_addrs(&camera, "Address");
    assert!(
        w.lab.eventually(
            "d3",
            &format!("curl -sf -m 2 http://{WEB_A}/hello"),
            Duration::from_secs(10)
        ),
        "the laptop has no internet through the hub:\n{}",
        hub.log()
    );

    // --- Allowlist (group kids): nothing before the lookup, even by address.
    let a = format!("http://{WEB_A}/hello");
    assert!(
        !curl_ok(&w, "d1", &a, ""),
        "the tablet reached the allowed site's address before looking it up"
    );
    assert!(curl_ok(&w, "d3", &a, ""));
    // The allowed name, through its CNAME chain into another zone: reachable at once.
    let ans = dig(&w, "d1", &hub4, "www.wiki.test");
    assert!(ans.contains(WEB_A), "{ans}");
    let by_name = format!("--resolve www.wiki.test:80:{WEB_A}");
    assert!(curl_ok(&w, "d1", "http://www.wiki.test/hello", &by_name));
    // A connection opened now keeps running past the floor.
    let slow = w.lab.dir.path().join("slow.out");
    let slow_log = w.lab.dir.path().join("slow.log");
    w.lab.spawn(
        "d1",
        &format!(
            "curl -sf -m 30 --limit-rate 20k {by_name} -o {} http://www.wiki.test/big",
            slow.display()
        ),
        &slow_log,
    );
    // The other site: refused by name, unreachable by address (the laptop reaches it).
    let other = dig(&w, "d1", &hub4, "other.test");
    assert_eq!(status_of(&other), "REFUSED", "{other}");
    let b = format!("http://{WEB_B}/hello");
    assert!(!curl_ok(&w, "d1", &b, ""));
    assert!(curl_ok(&w, "d3", &b, ""));

    // --- No bypass: DNS to an outside server is answered by the hub, filtered.
    let outside = dig(&w, "d1", UPSTREAM, "other.test");
    assert_eq!(status_of(&outside), "REFUSED", "{outside}");
    let outside_ok = dig(&w, "d1", UPSTREAM, "www.wiki.test");
    assert_eq!(status_of(&outside_ok), "NOERROR", "{outside_ok}");
    assert!(
        !outside_ok.contains(" aa "),
        "the authoritative server answered, not the hub: {outside_ok}"
    );
    let laptop_outside = dig(&w, "d3", UPSTREAM, "other.test");
    assert!(
        laptop_outside.contains(" aa ") && laptop_outside.contains(WEB_B),
        "{laptop_outside}"
    );
    // Browser DoH canary and a known DoH server's name (both exist in the test zone).
    assert_eq!(
        status_of(&dig(&w, "d1", &hub4, "use-application-dns.net")),
        "NXDOMAIN"
    );
    assert_eq!(status_of(&dig(&w, "d1", &hub4, "dns.google")), "REFUSED");
    assert_eq!(status_of(&dig(&w, "d3", &hub4, "dns.google")), "NOERROR");
    // DoT to an outside server is dropped.
    let kdig = format!("kdig +tls +time=2 +retry=0 @{DOT} dot.check.test A | grep -q 192.0.2.97");
    assert!(
        !w.lab.sh_succeeds("d1", &kdig, 8),
        "DoT got out of the tablet"
    );
    assert!(
        w.lab.sh_succeeds("d3", &kdig, 8),
        "DoT from the laptop failed"
    );

    // --- After the floor, without a new lookup: a new connection fails; the old one ran on.
    std::thread::sleep(Duration::from_secs(FLOOR_SECS + 1));
    assert!(
        !curl_ok(&w, "d1", "http://www.wiki.test/hello", &by_name),
        "the allowlist entry outlived its floor"
    );
    assert!(
        w.lab.eventually(
            "d1",
            &format!(
                "test \"$(stat -c %s {} 2>/dev/null)\" = 150000",
                slow.display()
            ),
            Duration::from_secs(20)
        ),
        "the download opened before the entry expired was cut: {}",
        std::fs::read_to_string(&slow_log).unwrap_or_default()
    );
    // A new lookup opens it again.
    dig(&w, "d1", &hub4, "www.wiki.test");
    assert!(curl_ok(&w, "d1", "http://www.wiki.test/hello", &by_name));
    // An `allow` rule lets the other site in for the tablet.
    hub.cli_ok(&[
        "device",
        "set",
        "tablet",
        "--allow",
        &format!("{WEB_B}/32 tcp/80"),
    ]);
    assert!(curl_ok(&w, "d1", &b, ""));

    // --- Denylist: the phone looked the site up while it was allowed; a deny cuts both the
    // name and the address it was handed, at once; the other site stays.
    hub.cli_ok(&["device", "set", "phone", "--deny-sites", "games.test"]);
    let got = dig(&w, "d2", &hub4, "other.test");
    assert!(got.contains(WEB_B), "{got}");
    let other_by_name = format!("--resolve other.test:80:{WEB_B}");
    assert!(curl_ok(&w, "d2", "http://other.test/hello", &other_by_name));
    hub.cli_ok(&[
        "device",
        "set",
        "phone",
        "--deny-sites",
        "games.test,other.test",
    ]);
    assert_eq!(status_of(&dig(&w, "d2", &hub4, "other.test")), "REFUSED");
    assert!(!curl_ok(
        &w,
        "d2",
        "http://other.test/hello",
        &other_by_name
    ));
    assert!(curl_ok(&w, "d2", &a, ""));
    assert!(curl_ok(&w, "d3", "http://other.test/hello", &other_by_name));

    // --- CIDR and port rules on the laptop.
    hub.cli_ok(&[
        "device",
        "set",
        "laptop",
        "--deny",
        &format!("tcp/8080,{WEB_B}/32"),
    ]);
    assert!(!curl_ok(
        &w,
        "d3",
        &format!("http://{WEB_A}:8080/hello"),
        ""
    ));
    assert!(curl_ok(&w, "d3", &a, ""));
    assert!(!curl_ok(&w, "d3", &b, ""));
    assert!(curl_ok(&w, "d2", &format!("http://{WEB_A}:8080/hello"), ""));
    hub.cli_ok(&["device", "set", "laptop", "--deny", ""]);
    assert!(curl_ok(&w, "d3", &b, ""));

    // --- Reach: the camera may open connections to no device; the laptop may to the camera.
    for (ns, ip) in [("d3", &laptop4), ("d4", &camera4)] {
        let log = w.lab.dir.path().join(format!("{ns}-web.log"));
        w.lab.spawn(
            ns,
            &format!("python3 -u -m http.server 8000 --bind {ip} --directory {root}"),
            &log,
        );
    }
    let to_laptop = format!("http://{laptop4}:8000/hello");
    let to_camera = format!("http://{camera4}:8000/hello");
    assert!(w.lab.eventually(
        "d4",
        &format!("curl -sf -m 2 {to_laptop}"),
        Duration::from_secs(10)
    ));
    assert!(w.lab.eventually(
        "d3",
        &format!("curl -sf -m 2 {to_camera}"),
        Duration::from_secs(10)
    ));
    hub.cli_ok(&["device", "set", "camera", "--reach", ""]);
    assert!(
        !curl_ok(&w, "d4", &to_laptop, ""),
        "the camera opened a connection to the laptop"
    );
    assert!(
        curl_ok(&w, "d3", &to_camera, ""),
        "the laptop could not reach the camera"
    );
    assert!(curl_ok(&w, "d4", &a, ""), "the camera lost the internet");
    hub.cli_ok(&["device", "set", "camera", "--reach", "laptop:8000"]);
    assert!(curl_ok(&w, "d4", &to_laptop, ""));

    // --- `--for`: off now, back by itself.
    hub.cli_ok(&[
        "device",
        "set",
        "laptop",
        "--internet",
        "off",
        "--for",
        "5s",
    ]);
    let st = hub.cli_ok(&["status"]);
    assert!(
        st.lines()
            .any(|l| l.starts_with("laptop") && l.contains("off (timer) until")),
        "{st}"
    );
    assert!(
        !curl_ok(&w, "d3", &a, ""),
        "--internet off --for did not cut at once"
    );
    assert!(
        w.lab.eventually(
            "d3",
            &format!("curl -sf -o /dev/null -m 2 {a}"),
            Duration::from_secs(12)
        ),
        "the timer did not end"
    );

    // --- Schedules: a window that covers now is in force, one that does not is not.
    let now = jiff::Timestamp::now();
    let hm = |h: i64| {
        let t = now + jiff::SignedDuration::from_hours(h);
        t.strftime("%H:%M").to_string()
    };
    let later = format!("{}-{}", hm(2), hm(3));
    hub.cli_ok(&["device", "set", "phone", "--internet-off", &later]);
    assert!(
        curl_ok(&w, "d2", &a, ""),
        "a window that does not cover now cut the phone"
    );
    let covering = format!("{}-{}", hm(-1), hm(1));
    hub.cli_ok(&["device", "set", "phone", "--internet-off", &covering]);
    assert!(
        !curl_ok(&w, "d2", &a, ""),
        "a window covering now is not in force"
    );
    let show = hub.cli_ok(&["device", "show", "phone"]);
    assert!(
        show.contains("internet=off (schedule)") && show.contains("dropped connections:"),
        "{show}"
    );
    // The hub's own services stay reachable with the internet off.
    assert_eq!(status_of(&dig(&w, "d2", &hub4, "laptop.mesh")), "NOERROR");

    // Bad input changes nothing and says why.
    for bad in [
        vec!["--deny", "10.0.0.0/33"],
        vec!["--reach", "ghost"],
        vec!["--internet-off", "bedtime"],
        vec!["--internet", "maybe"],
    ] {
        let mut args = vec!["device", "set", "phone"];
        args.extend(bad.iter());
        let o = hub.cli().args(&args).output().unwrap();
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(!String::from_utf8_lossy(&o.stderr).is_empty());
    }
    assert!(
        !curl_ok(&w, "d2", &a, ""),
        "a refused change altered the policy in force"
    );
    // No destination reaches the log above debug.
    let log = hub.log();
    for l in log
        .lines()
        .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE"))
    {
        assert!(!l.contains("other.test") && !l.contains(WEB_B), "{l}");
    }
}
