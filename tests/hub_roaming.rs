//! Roaming: a TCP transfer through the hub keeps running when the device moves from its
//! home uplink (Wi-Fi) to a second uplink behind another NAT (cell) halfway. Root only.

#[path = "common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use netns::{HubWorld, CELL_PUBLIC, WEB};

#[test]
fn tcp_transfer_survives_an_uplink_switch() {
    if !netns::root_or_skip("hub_roaming") {
        return;
    }
    let mut w = HubWorld::new("cpm");
    let mut hub = w.hub("");
    w.add_device_ns(1, true);
    let (c1, pub1) = w.register(&hub, "phone");
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    // 6 MB at 600 kB/s: about 10 s (curl's limit lets bursts through, so not less), the
    // switch comes after 2 s.
    std::fs::write(w.web_root.join("big"), vec![7u8; 6_000_000]).unwrap();
    let probe = format!("curl -sf -m 2 http://{WEB}/hello");
    assert!(
        w.lab.eventually("d1", &probe, Duration::from_secs(10)),
        "{}",
        hub.log()
    );

    let out = w.lab.dir.path().join("big.out");
    let log = w.lab.dir.path().join("curl.log");
    let pid = w.lab.spawn(
        "d1",
        &format!(
            "curl -sS --limit-rate 600k -m 40 -o {} -w '%{{size_download}}' http://{WEB}/big",
            out.display()
        ),
        &log,
    );
    std::thread::sleep(Duration::from_secs(2));
    let partial = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(
        partial > 0 && partial < 6_000_000,
        "transfer not under way: {partial}"
    );
    // Wi-Fi → cell: the default route moves to the second uplink (another NAT, another
    // public address) and the Wi-Fi address goes away, as on a phone leaving Wi-Fi. (Only
    // moving the route is not enough for this wireguard-go: it keeps sending from its
    // cached source address and interface until that address stops being local.)
    w.lab.sh_ok(
        "d1",
        "ip route replace default via 10.1.0.1 dev eth1 && ip addr flush dev eth0",
    );

    let end = Instant::now() + Duration::from_secs(40);
    let mut finished = false;
    while Instant::now() < end {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.trim() == "6000000" {
            finished = true;
            break;
        }
        if !text.trim().is_empty() && text.contains("curl:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = pid;
    assert!(
        finished,
        "transfer broke at the uplink switch: {}\n{}\n{}\n{}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        hub.log(),
        w.lab.diag("d1"),
        w.lab
            .sh("cell", "cat /proc/net/nf_conntrack; ip -s link")
            .stdout
            .escape_ascii(),
        w.lab
            .sh("home", "cat /proc/net/nf_conntrack; ip -s link")
            .stdout
            .escape_ascii(),
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 6_000_000);
    // The hub now sends to the device's new public address.
    let show = w
        .lab
        .sh_ok("hub", &format!("wg show {} endpoints", hub.interface));
    let line = show.lines().find(|l| l.starts_with(&pub1)).unwrap_or("");
    assert!(
        line.contains(CELL_PUBLIC),
        "endpoint did not follow: {show}"
    );
    w.stop_hub(&mut hub);
}
