//! Discovery across the private network with stock WireGuard devices (root only): an mDNS
//! question from one device finds a service another device announces; a LocalSend
//! announcement from one device reaches another; a guest's device and a device whose group has
//! discovery off hear neither, and a guest's announcements reach nobody; `tv.local` resolves
//! over mDNS through the hub (not for a guest), over IPv4 and IPv6; a flood is cut to the sender's rate; a
//! split-tunnel config carries the groups too.

#[path = "common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use netns::{conf_addrs, HubWorld};

const SERVICE: &str = "_cloudpc-test._tcp.local";

/// Runs the multicast helper in `ns` in the background; returns its log.
fn helper(w: &mut HubWorld, ns: &str, tag: &str, args: &str) -> std::path::PathBuf {
    let script = w.lab.dir.path().join("mcast.py");
    if !script.exists() {
        std::fs::write(&script, include_str!("common/mcast.py")).unwrap();
    }
    let log = w.lab.dir.path().join(format!("mcast-{ns}-{tag}.log"));
    w.lab
        .spawn(ns, &format!("python3 -u {} {args}", script.display()), &log);
    log
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits until a UDP socket on `port` is open in `ns` (a listener is ready), of IPv4 or
/// (`v6`) IPv6.
fn bound(w: &HubWorld, ns: &str, port: u16, v6: bool) {
    let fam = if v6 { "-6" } else { "-4" };
    assert!(w.lab.eventually(
        ns,
        &format!("ss -Hlun {fam} 'sport = :{port}' | grep -q ."),
        Duration::from_secs(10)
    ));
}

#[test]
fn discovery_reaches_the_owners_devices_and_no_guest() {
    if !netns::root_or_skip("discovery") {
        return;
    }
    let mut w = HubWorld::new("cpds");
    let mut hub = w.hub("[groups.quiet]\ndiscovery = false\n");
    for n in 1..=4 {
        w.add_device_ns(n, false);
    }
    let laptop = hub.add_device("laptop", true, &["--owner", "--split"]);
    let tv = hub.add_device("tv", true, &[]);
    hub.cli_ok(&["person", "add", "alice", "--role", "guest"]);
    let phone = hub.add_device("alice-phone", true, &["--person", "alice"]);
    let quiet = hub.add_device("box", true, &["--group", "quiet"]);
    assert!(
        laptop.contains("224.0.0.251/32") && laptop.contains("224.0.0.167/32"),
        "a split config carries the discovery groups:\n{laptop}"
    );
    w.start_hub(&mut hub);
    for (ns, conf) in [("d1", &laptop), ("d2", &tv), ("d3", &phone), ("d4", &quiet)] {
        w.lab.wg_up(ns, conf);
    }
    let addr = |c: &str| conf_addrs(c, "Address").0;
    let (a1, a2, a3, a4) = (addr(&laptop), addr(&tv), addr(&phone), addr(&quiet));
    let (hub4, _) = conf_addrs(&laptop, "DNS");
    for ns in ["d1", "d2", "d3", "d4"] {
        assert!(w
            .lab
            .eventually(ns, &w.lab.ping_cmd(&hub4, 1), Duration::from_secs(10)));
    }

    // mDNS: the laptop's question finds the service the TV announces.
    helper(
        &mut w,
        "d2",
        "respond",
        &format!("respond {a2} {SERVICE} tv 20"),
    );
    bound(&w, "d2", 5353, false);
    let q = w.lab.sh_ok(
        "d1",
        &format!(
            "python3 -u {} query {a1} {SERVICE} 10",
            w.lab.dir.path().join("mcast.py").display()
        ),
    );
    assert!(
        q.contains(&a2) && q.contains(&format!("tv.{SERVICE}")),
        "the laptop's mDNS question did not find the TV's service: {q:?}\n{}",
        hub.log()
    );

    // `NAME.local`: the hub answers for the devices the asker may reach; a guest gets nothing.
    let resolve = |w: &HubWorld, ns: &str, from: &str, name: &str, secs: u32| {
        w.lab.sh_ok(
            ns,
            &format!(
                "python3 -u {} resolve {from} {name} {secs}",
                w.lab.dir.path().join("mcast.py").display()
            ),
        )
    };
    let r = resolve(&w, "d1", &a1, "tv.local", 10);
    assert_eq!(r.trim(), format!("{hub4} {a2}"), "tv.local from the laptop");
    let r = resolve(&w, "d3", &a3, "tv.local", 3);
    assert!(r.trim().is_empty(), "a guest resolved tv.local: {r}");

    // The same over IPv6: ff02::fb, from the devices' overlay IPv6 addresses (a tunnel has no
    // link-local address).
    assert!(laptop.contains("ff02::fb/128"), "{laptop}");
    let addr6 = |c: &str| conf_addrs(c, "Address").1;
    let (b1, b2, b3) = (addr6(&laptop), addr6(&tv), addr6(&phone));
    let (_, hub6) = conf_addrs(&laptop, "DNS");
    assert!(!b2.is_empty() && !hub6.is_empty());
    helper(
        &mut w,
        "d2",
        "respond6",
        &format!("respond {b2} {SERVICE} tv6 20"),
    );
    bound(&w, "d2", 5353, true);
    let q = w.lab.sh_ok(
        "d1",
        &format!(
            "python3 -u {} query {b1} {SERVICE} 10",
            w.lab.dir.path().join("mcast.py").display()
        ),
    );
    assert!(
        q.contains(&b2) && q.contains(&format!("tv6.{SERVICE}")),
        "the laptop's IPv6 mDNS question did not find the TV's service: {q:?}\n{}",
        hub.log()
    );
    let r = resolve(&w, "d1", &b1, "tv.local", 10);
    assert_eq!(
        r.trim(),
        format!("{hub6} {b2}"),
        "tv.local (AAAA) from the laptop"
    );
    let r = resolve(&w, "d3", &b3, "tv.local", 3);
    assert!(
        r.trim().is_empty(),
        "a guest resolved tv.local over IPv6: {r}"
    );

    // LocalSend announcements: the laptop's reaches the TV, not the guest or the quiet box.
    let logs: Vec<_> = [("d2", &a2), ("d3", &a3), ("d4", &a4)]
        .into_iter()
        .map(|(ns, a)| {
            let l = helper(
                &mut w,
                ns,
                "ls",
                &format!("listen 224.0.0.167 53317 {a} 30"),
            );
            bound(&w, ns, 53317, false);
            (ns, l)
        })
        .collect();
    let send = |w: &HubWorld, ns: &str, from: &str, text: &str| {
        w.lab.sh_ok(
            ns,
            &format!(
                "python3 {} send 224.0.0.167 53317 {from} {text}",
                w.lab.dir.path().join("mcast.py").display()
            ),
        );
    };
    let t0 = Instant::now();
    let mut heard = false;
    while t0.elapsed() < Duration::from_secs(10) {
        send(&w, "d1", &a1, "hello-from-laptop");
        if read(&logs[0].1).contains(&format!("{a1} hello-from-laptop")) {
            heard = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(heard, "the TV did not hear the laptop's announcement");
    // The guest sends too: nobody may hear it.
    send(&w, "d3", &a3, "hello-from-guest");
    // One more from the laptop, after the guest's: once the TV has it, the guest's had its chance.
    let t1 = Instant::now();
    loop {
        send(&w, "d1", &a1, "second-from-laptop");
        if read(&logs[0].1).contains("second-from-laptop") || t1.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(read(&logs[0].1).contains("second-from-laptop"));
    assert!(
        !read(&logs[0].1).contains("hello-from-guest"),
        "a guest's announcement reached the TV"
    );
    for (ns, l) in &logs[1..] {
        assert!(
            !read(l).contains("hello-from-laptop"),
            "{ns} heard the laptop's announcement: {}",
            read(l)
        );
    }

    // A flood: 300 datagrams back to back reach the TV as at most the sender's burst.
    let flood = helper(
        &mut w,
        "d2",
        "flood",
        &format!("listen 239.255.255.250 1900 {a2} 4"),
    );
    bound(&w, "d2", 1900, false);
    w.lab.sh_ok(
        "d1",
        &format!(
            "python3 {} send 239.255.255.250 1900 {a1} M-SEARCH 300",
            w.lab.dir.path().join("mcast.py").display()
        ),
    );
    assert!(w.lab.eventually(
        "d2",
        &format!("test $(grep -c M-SEARCH {}) -ge 1", flood.display()),
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_secs(4));
    let got = read(&flood).matches("M-SEARCH").count();
    assert!(
        (1..=60).contains(&got),
        "{got} of 300 flood datagrams went through (the burst is 40, 20/s after it)"
    );
}
