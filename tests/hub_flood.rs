//! A handshake flood from the internet (valid MAC1, garbage contents) is answered with
//! cookies once it passes the rate limit, and an established device keeps working during it.
//! Root only.

#[path = "common/netns.rs"]
mod netns;

use std::time::Duration;

use netns::{HubWorld, HUB_PUBLIC, WEB};

#[test]
fn handshake_flood_gets_cookies_and_devices_keep_working() {
    if !netns::root_or_skip("hub_flood") {
        return;
    }
    let mut w = HubWorld::new("cpf");
    let mut hub = w.hub("");
    w.add_device_ns(1, false);
    let (c1, _) = w.register(&hub, "laptop");
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    let probe = format!("curl -sf -m 2 http://{WEB}/hello");
    assert!(
        w.lab.eventually("d1", &probe, Duration::from_secs(10)),
        "{}",
        hub.log()
    );
    std::fs::write(w.web_root.join("mid"), vec![1u8; 1_000_000]).unwrap();

    let hub_pub = cloudpc::enroll::keys::load_or_create_hub_key(&hub.state_dir)
        .unwrap()
        .public_b64();
    let script = w.lab.dir.path().join("wg_flood.py");
    std::fs::write(&script, include_str!("common/wg_flood.py")).unwrap();
    let flood_log = w.lab.dir.path().join("flood.log");
    // 30,000 initiations: well past the 5,000/s limit, bounded in count.
    w.lab.spawn(
        "inet",
        &format!(
            "python3 {} {hub_pub} {HUB_PUBLIC} 51820 30000",
            script.display()
        ),
        &flood_log,
    );
    std::thread::sleep(Duration::from_millis(300));
    // The device keeps its session and its throughput during the flood.
    let got = w.lab.sh_ok(
        "d1",
        &format!("curl -sf -m 15 -o /dev/null -w '%{{size_download}}' http://{WEB}/mid"),
    );
    assert_eq!(got.trim(), "1000000");
    let mut cookies = String::new();
    for _ in 0..150 {
        cookies = std::fs::read_to_string(&flood_log).unwrap_or_default();
        if !cookies.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cookies: u64 = cookies.trim().parse().expect("flood finished");
    assert!(cookies > 0, "no cookie replies under a flood");
    assert!(
        w.lab.sh_succeeds("d1", &probe, 5),
        "device lost after the flood"
    );
    eprintln!("cookie replies: {cookies}");
    w.stop_hub(&mut hub);
}
