//! The resolver and the query log seen from stock WireGuard devices over the hub (root only):
//! `<name>.mesh` and PTR, filtered DNS and per-device group policy over the tunnel, DNS64 +
//! NAT64 by name from an IPv6-only device, and the encrypted query log pulled by an owner
//! device while a non-owner is refused.

#[path = "common/netns.rs"]
mod netns;
mod support;

use std::time::Duration;

use netns::{HubWorld, HUB_PUBLIC};
use support::{Knot, TEST_LIST};

/// `/etc/netns/NAME/resolv.conf` (bind-mounted by `ip netns exec`), removed on drop.
struct NetnsResolvConf(std::path::PathBuf);

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn devices_resolve_mesh_names_filtered_per_group_dns64_by_name_and_pull_the_log() {
    if !netns::root_or_skip("overlay_e2e") {
        return;
    }
    let mut w = HubWorld::new("cpe2e");
    // The authoritative DNS of the "internet".
    w.lab.sh_ok("inet", "ip addr add 192.0.2.53/32 dev lo");
    let inet = w.lab.ns("inet");
    let _knot = Knot::start_with("192.0.2.53", &["ip", "netns", "exec", &inet]);
    let list = w.lab.dir.path().join("list.txt");
    std::fs::write(&list, TEST_LIST).unwrap();
    let mut hub = w.hub(&format!(
        "[dns]\nupstreams = [\"udp://192.0.2.53:53\"]\n[filter]\nlists = [\"{}\"]\n\
         [groups.kids]\nblock = [\"www.example.test\"]\nblocked_answer = \"nxdomain\"\n",
        list.display()
    ));
    for n in 1..=3 {
        w.add_device_ns(n, false);
    }
    let (c1, _) = w.register(&hub, "laptop");
    let (c2, _) = w.register(&hub, "phone");
    let (c3, _) = w.register(&hub, "tablet");
    fn set(hub: &netns::HubRun, args: &[&str]) {
        let o = hub.cli().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    }
    set(&hub, &["device", "set", "phone", "--group", "kids"]);
    set(&hub, &["device", "set", "laptop", "--owner"]);
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    let if3 = w.lab.wg_up("d3", &c3);

    let (hub4, hub6) = {
        let cfg = cloudpc::config::Config::load(&hub.config).unwrap();
        let store = cloudpc::store::Store::open(&hub.state_dir).unwrap();
        let o = store.overlay(&cfg.wireguard).unwrap();
        (o.hub_v4().to_string(), o.hub_v6().to_string())
    };
    let (laptop4, _) = w.device_addrs(&hub, "laptop");
    let (phone4, phone6) = w.device_addrs(&hub, "phone");
    let dig = |dev: &str, args: &str| -> String {
        let o = w
            .lab
            .sh(dev, &format!("dig @{hub4} +time=2 +tries=2 {args}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let short = |dev: &str, args: &str| dig(dev, &format!("+short {args}")).trim().to_string();

    // Names of the private network, over the tunnel.
    assert!(
        w.lab.eventually(
            "d1",
            &format!("dig @{hub4} +short +time=1 laptop.mesh | grep -qx {laptop4}"),
            Duration::from_secs(15)
        ),
        "{}",
        hub.log()
    );
    assert_eq!(short("d1", &format!("-x {phone4}")), "phone.mesh.");
    assert_eq!(short("d1", &format!("-x {phone6}")), "phone.mesh.");
    assert_eq!(short("d1", "phone.mesh AAAA"), phone6);
    // Filtered DNS over the tunnel, and the kids group's own policy for the phone only.
    assert_eq!(short("d1", "ads.example.test"), "0.0.0.0");
    assert_eq!(short("d1", "www.example.test"), "192.0.2.10");
    let kid = dig("d2", "www.example.test");
    assert!(kid.contains("status: NXDOMAIN"), "{kid}");
    // The group's lists are the default ones, answered the group's way.
    assert!(dig("d2", "ads.example.test").contains("status: NXDOMAIN"));
    assert_eq!(short("d2", "v4only.example.test"), "192.0.2.20");

    // DNS64 + NAT64 by name from an IPv6-only device: its resolver is the hub's IPv6 address.
    w.lab.sh_ok("d3", &format!("ip -4 addr flush dev {if3}"));
    let d3 = w.lab.ns("d3");
    let etc = std::path::PathBuf::from(format!("/etc/netns/{d3}"));
    std::fs::create_dir_all(&etc).unwrap();
    let _resolv = NetnsResolvConf(etc.clone());
    std::fs::write(etc.join("resolv.conf"), format!("nameserver {hub6}\n")).unwrap();
    assert!(
        w.lab.eventually(
            "d3",
            "curl -6 -sf -m 3 'http://web64.example.test/hello?from=dns64-by-name'",
            Duration::from_secs(15)
        ),
        "{}",
        hub.log()
    );
    let line = w
        .web_log()
        .lines()
        .find(|l| l.contains("from=dns64-by-name"))
        .map(str::to_string)
        .unwrap();
    assert!(line.starts_with(HUB_PUBLIC), "{line}");

    // The query log: on with the owner's age key; the laptop (owner) pulls and decrypts, the
    // phone is refused, and the hub's disk holds no name in plaintext.
    let id = age::x25519::Identity::generate();
    let id_file = w.lab.dir.path().join("owner.key");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, id.to_string().expose_secret()).unwrap();
    }
    set(
        &hub,
        &[
            "querylog",
            "enable",
            "--recipient",
            &id.to_public().to_string(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(short("d1", "v4only.example.test"), "192.0.2.20");
    assert_eq!(short("d1", "hosts-listed.test"), "0.0.0.0");
    std::thread::sleep(Duration::from_millis(1500));
    let bin = netns::cloudpc_bin();
    let pull = |dev: &str| {
        let dir = w.lab.dir.path().join(format!("pull-{dev}"));
        w.lab.sh(
            dev,
            &format!(
                "{bin} --state-dir {} querylog pull --hub {hub4} --identity {} --json",
                dir.display(),
                id_file.display()
            ),
        )
    };
    let owner = pull("d1");
    let text = String::from_utf8_lossy(&owner.stdout);
    assert!(owner.status.success(), "{owner:?}");
    assert!(text.contains("v4only.example.test"), "{text}");
    assert!(text.contains("hosts-listed.test"), "{text}");
    let other = pull("d2");
    assert!(
        !other.status.success(),
        "a non-owner device is refused: {other:?}"
    );
    let grep = std::process::Command::new("grep")
        .args(["-rqa", "v4only.example", hub.state_dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(!grep.success(), "no plaintext name in the hub's state dir");

    // Live status: handshakes, endpoints and per-device counts.
    let st = hub.cli().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let phone = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "phone")
        .unwrap()
        .clone();
    assert!(phone["blocked"].as_u64().unwrap() >= 2, "{v}");
    assert!(phone["last_handshake_secs_ago"].as_u64().is_some(), "{v}");
    assert!(phone["endpoint"].as_str().is_some(), "{v}");
}
