//! The hub end to end: stock WireGuard devices (wireguard-go + wg-quick) in network
//! namespaces behind a NAT router, the cloudpc hub in its own namespace, a web server in the
//! "internet". Root only; skipped with a message otherwise.

#[path = "common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use netns::{HubWorld, HUB_PUBLIC, HUB_PUBLIC6, HUB_PUBLIC_2, WEB, WEB6};

#[test]
fn devices_reach_each_other_the_hub_and_the_internet_and_wg_show_lists_them() {
    if !netns::root_or_skip("hub_network") {
        return;
    }
    let mut w = HubWorld::new("cpn");
    let mut hub = w.hub("");
    w.add_device_ns(1, false);
    w.add_device_ns(2, false);
    let (c1, pub1) = w.register(&hub, "laptop");
    let (c2, _) = w.register(&hub, "phone");
    // The phone dials the hub's second address; the hub must answer from it (through the
    // home router's NAT an answer from the first address would be dropped).
    let c2 = c2.replace(
        &format!("Endpoint = {HUB_PUBLIC}:"),
        &format!("Endpoint = {HUB_PUBLIC_2}:"),
    );
    assert!(c2.contains(HUB_PUBLIC_2), "{c2}");
    w.start_hub(&mut hub);
    // Once the hub serves, its overlay addresses can be bound at once (the resolver does),
    // IPv6 included: no duplicate address detection holds them back.
    let (a1, a1v6) = w.device_addrs(&hub, "laptop");
    let hub_v6 = a1v6
        .rsplit_once(':')
        .map(|(p, _)| format!("{p}:1"))
        .unwrap();
    w.lab.sh_ok(
        "hub",
        &format!(
            "python3 -c \"import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);\
             s.bind(('{hub_v6}',5353));t=socket.socket();t.bind(('100.96.0.1',5353))\""
        ),
    );
    let wg1 = w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    let (a2, a2v6) = w.device_addrs(&hub, "phone");

    // Device ↔ device, both families, routed inside the hub.
    let to_phone = w.lab.ping_cmd(&a2, 1);
    assert!(
        w.lab.eventually("d1", &to_phone, Duration::from_secs(10)),
        "laptop cannot ping phone\n{}\n{}\n{}",
        hub.log(),
        w.lab.diag("d1"),
        w.lab.diag("hub")
    );
    assert!(w.lab.ping("d2", &a1, 2));
    assert!(w.lab.ping("d1", &a2v6, 2));
    // The hub's own overlay address answers (it is on the TUN).
    assert!(w.lab.ping("d1", "100.96.0.1", 2));

    // TCP device → device: a web server on the phone's overlay address.
    let www = w.lab.dir.path().join("phone-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("note"), "x".repeat(200_000)).unwrap();
    let log = w.lab.dir.path().join("phone-web.log");
    w.lab.spawn(
        "d2",
        &format!(
            "python3 -m http.server 8000 --bind {a2} --directory {}",
            www.display()
        ),
        &log,
    );
    let get = format!("curl -sf -m 5 -o /dev/null -w '%{{size_download}}' http://{a2}:8000/note");
    assert!(w.lab.eventually("d1", &get, Duration::from_secs(10)));
    assert_eq!(w.lab.sh_ok("d1", &get).trim(), "200000");

    // Internet through the hub, seen from the hub's public address.
    let body = w.lab.sh_ok(
        "d1",
        &format!("curl -sf -m 5 http://{WEB}/hello?from=laptop"),
    );
    assert_eq!(body, "hello from the internet\n");
    let weblog = w.web_log();
    let line = weblog
        .lines()
        .find(|l| l.contains("from=laptop"))
        .expect("request logged");
    assert!(
        line.starts_with(HUB_PUBLIC),
        "source was not the hub: {line}"
    );

    // The TUN has one queue per core, and every queue is read: the kernel spreads the
    // answers of 16 connections over the queues by flow, and all 16 arrive.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let link = w
        .lab
        .sh_ok("hub", &format!("ip -d link show {}", hub.interface));
    if cores > 1 {
        assert!(
            link.contains(&format!("multi_queue numqueues {cores} ")),
            "{link}"
        );
    }
    let many = w.lab.sh_ok(
        "d1",
        &format!(
            "for i in $(seq 16); do curl -sf -m 5 http://{WEB}/hello?flow=$i & done 2>/dev/null; wait"
        ),
    );
    assert_eq!(
        many.matches("hello from the internet").count(),
        16,
        "{many}"
    );

    // IPv6 to the internet leaves from the hub's public IPv6 address (the device's uplink
    // has no IPv6 at all).
    let body = w.lab.sh_ok(
        "d1",
        &format!("curl -sf -m 5 'http://[{WEB6}]/hello?from=laptop6'"),
    );
    assert_eq!(body, "hello from the internet\n");
    let weblog = w.web_log();
    let line = weblog
        .lines()
        .find(|l| l.contains("from=laptop6"))
        .expect("v6 request logged");
    assert!(
        line.starts_with(HUB_PUBLIC6),
        "source was not the hub: {line}"
    );

    // `wg show` on the hub lists the devices with endpoint, handshake and transfer.
    let show = w.lab.sh_ok("hub", &format!("wg show {}", hub.interface));
    assert!(show.contains(&format!("peer: {pub1}")), "{show}");
    assert!(show.contains("endpoint: 198.51.100.2:"), "{show}");
    assert!(show.contains("latest handshake"), "{show}");
    assert!(show.contains("transfer"), "{show}");
    assert!(show.contains("listening port: 51820"), "{show}");

    // Anti-spoofing: UDP from a foreign source address never leaves the hub; from the
    // device's own address it does.
    let udp_log = w.lab.dir.path().join("udp.log");
    w.lab.spawn(
        "inet",
        "python3 -u -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);\
         s.bind(('192.0.2.80',9999))\nwhile True: print(s.recv(100).decode(),flush=True)\"",
        &udp_log,
    );
    std::thread::sleep(Duration::from_millis(500));
    w.lab.sh_ok(
        "d1",
        &format!("ip addr add 100.96.0.77/32 dev {wg1} && ip addr add {a2}/32 dev {wg1}"),
    );
    let send = |src: &str, msg: &str| {
        format!(
            "python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);\
             s.bind(('{src}',0));[s.sendto(b'{msg}',('{WEB}',9999)) for _ in range(3)]\""
        )
    };
    w.lab
        .sh_ok("d1", &send("100.96.0.77", "spoofed-unassigned"));
    w.lab.sh_ok("d1", &send(&a2, "spoofed-other-device"));
    w.lab.sh_ok("d1", &send(&a1, "legit"));
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !std::fs::read_to_string(&udp_log).unwrap().contains("legit") {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = std::fs::read_to_string(&udp_log).unwrap();
    assert!(got.contains("legit"), "legit datagram lost: {got:?}");
    assert!(
        !got.contains("spoofed"),
        "spoofed datagram got through: {got:?}"
    );

    w.stop_hub(&mut hub);
}

#[test]
fn internet_switch_and_device_removal_are_in_force_when_the_command_returns() {
    if !netns::root_or_skip("hub_network") {
        return;
    }
    let mut w = HubWorld::new("cps");
    let mut hub = w.hub("");
    w.add_device_ns(1, false);
    w.add_device_ns(2, false);
    let (c1, _) = w.register(&hub, "laptop");
    let (c2, _) = w.register(&hub, "phone");
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    let (a2, _) = w.device_addrs(&hub, "phone");
    let web = format!("curl -sf -m 2 http://{WEB}/hello");
    assert!(
        w.lab.eventually("d1", &web, Duration::from_secs(10)),
        "{}",
        hub.log()
    );

    // Off: no internet, but the hub and the other devices stay reachable.
    let st = hub.cli().args(["internet", "off"]).status().unwrap();
    assert!(st.success());
    assert!(
        !w.lab.sh_succeeds("d1", &web, 4),
        "internet still reachable when off"
    );
    assert!(w.lab.ping("d1", "100.96.0.1", 2));
    assert!(w.lab.ping("d1", &a2, 2));
    // On again.
    assert!(hub
        .cli()
        .args(["internet", "on"])
        .status()
        .unwrap()
        .success());
    assert!(
        w.lab.sh_succeeds("d1", &web, 4),
        "internet not back when on"
    );

    // Removal: the phone is cut off when the command returns, the laptop carries on.
    assert!(w.lab.ping("d2", "100.96.0.1", 2));
    let st = hub
        .cli()
        .args(["device", "remove", "phone"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        !w.lab.ping("d2", "100.96.0.1", 3),
        "removed device still reaches the hub"
    );
    assert!(!w.lab.ping("d1", &a2, 1));
    assert!(!w.lab.sh_succeeds("d2", &web, 3));
    assert!(w.lab.sh_succeeds("d1", &web, 4));

    // Stopping removes the nftables table and the TUN.
    let st = w.stop_hub(&mut hub).expect("hub exit status");
    assert!(st.success(), "hub exit: {st:?}\n{}", hub.log());
    assert!(!w.lab.sh_succeeds("hub", "nft list table inet cloudpc", 5));
    assert!(!w
        .lab
        .sh_succeeds("hub", &format!("ip link show {}", hub.interface), 5));
}

#[test]
fn devices_carry_on_after_a_hub_crash_and_restart_with_the_same_configs() {
    if !netns::root_or_skip("hub_network") {
        return;
    }
    let mut w = HubWorld::new("cpr");
    let mut hub = w.hub("");
    w.add_device_ns(1, false);
    w.add_device_ns(2, false);
    let (c1, _) = w.register(&hub, "laptop");
    let (c2, _) = w.register(&hub, "phone");
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    let (a2, _) = w.device_addrs(&hub, "phone");
    let ping = w.lab.ping_cmd(&a2, 1);
    assert!(w.lab.eventually("d1", &ping, Duration::from_secs(10)));

    // A crash leaves the nftables table and the UAPI socket behind; the next start
    // replaces both.
    w.crash_hub(&mut hub);
    assert!(w.lab.sh_succeeds("hub", "nft list table inet cloudpc", 5));
    assert!(!w.lab.sh_succeeds("d1", &ping, 3));
    w.start_hub(&mut hub);
    let tables = w.lab.sh_ok("hub", "nft list tables");
    assert_eq!(tables.matches("inet cloudpc").count(), 1, "{tables}");
    // The devices re-handshake on their own (WireGuard retries after ~15 s without answers).
    let t = Instant::now();
    assert!(
        w.lab.eventually("d1", &ping, Duration::from_secs(45)),
        "laptop did not reach the phone after the restart\n{}",
        hub.log()
    );
    assert!(w.lab.eventually(
        "d2",
        &format!("curl -sf -m 2 http://{WEB}/hello"),
        Duration::from_secs(30)
    ));
    eprintln!("devices back {:?} after the restart", t.elapsed());
    w.stop_hub(&mut hub);
}

#[test]
#[ignore = "manual debugging aid: builds the world and waits"]
fn debug_world() {
    let mut w = HubWorld::new("cpdbg");
    let mut hub = w.hub("");
    w.add_device_ns(1, false);
    w.add_device_ns(2, false);
    let (c1, _) = w.register(&hub, "laptop");
    let (c2, _) = w.register(&hub, "phone");
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    eprintln!("READY {} {}", w.lab.ns("d1"), hub.log.display());
    std::thread::sleep(Duration::from_secs(240));
}

#[test]
fn nat64_takes_a_device_to_an_ipv4_only_server() {
    if !netns::root_or_skip("hub_network") {
        return;
    }
    let mut w = HubWorld::new("cp64");
    let mut hub = w.hub("");
    w.add_device_ns(1, false);
    let (c1, _) = w.register(&hub, "laptop");
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    // 64:ff9b::c000:250 is the DNS64 form of the web server's IPv4 address 192.0.2.80.
    let ok = w.lab.eventually(
        "d1",
        "curl -sf -m 2 'http://[64:ff9b::c000:250]/hello?from=nat64'",
        Duration::from_secs(10),
    );
    assert!(ok, "{}", hub.log());
    let log = w.web_log();
    let line = log
        .lines()
        .find(|l| l.contains("from=nat64"))
        .expect("request logged");
    assert!(line.starts_with(HUB_PUBLIC), "{line}");
    assert!(
        w.lab.ping("d1", "64:ff9b::c000:250", 2),
        "ICMP echo through NAT64"
    );
}
