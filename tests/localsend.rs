//! The Cloud PC as a LocalSend peer (root only): an independent LocalSend v2 implementation
//! (`localsendd` from PyPI, installed by `.ci/run`) on a stock WireGuard device finds "Cloud
//! PC" by its multicast announcement (the hub answers it) and sends a file
//! to the hub over HTTPS; it lands in the inbox encrypted (no plaintext on disk) and comes back
//! byte-identical with `cloudpc drop get`; a guest's device does not reach the LocalSend
//! port; the API and the admin page list the file; `drop send` to an offline phone delivers it,
//! byte-identical, to the phone's LocalSend app once the phone comes online; `drop remove`
//! empties the inbox.

#[path = "common/netns.rs"]
mod netns;
mod support;

use std::time::Duration;

use netns::{conf_addrs, HubWorld};

/// Starts `localsendd` in `ns` (its own socket and download dir) and waits for its socket.
fn localsendd(w: &mut HubWorld, ns: &str) -> String {
    let dir = w.lab.dir.path().join(format!("lsd-{ns}"));
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let sock = dir.join("lsd.sock");
    w.lab.spawn(
        ns,
        &format!(
            "env HOME={d} localsendd --socket {s} --alias {ns} --download-dir {d}/in --unattended --log-level debug",
            d = dir.display(),
            s = sock.display()
        ),
        &dir.join("daemon.log"),
    );
    assert!(
        w.lab.eventually(
            ns,
            &format!("test -S {}", sock.display()),
            Duration::from_secs(15)
        ),
        "localsendd did not start: {}",
        std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
    );
    sock.display().to_string()
}

#[test]
fn a_localsend_app_drops_a_file_on_the_cloud_pc() {
    if !netns::root_or_skip("localsend") {
        return;
    }
    if !support::have("localsendd") {
        panic!("localsendd (PyPI package localsendd) must be installed: .ci/run installs it");
    }
    let mut w = HubWorld::new("cpls");
    let mut hub = w.hub("");
    for n in 1..=3 {
        w.add_device_ns(n, false);
    }
    let laptop = hub.add_device("laptop", true, &["--owner"]);
    let phone_dev = hub.add_device("phone", true, &[]);
    hub.cli_ok(&["person", "add", "alice", "--role", "guest"]);
    let phone = hub.add_device("alice-phone", true, &["--person", "alice"]);
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &laptop);
    w.lab.wg_up("d2", &phone);
    let (hub4, _) = conf_addrs(&laptop, "DNS");
    assert!(w.lab.eventually(
        "d1",
        &format!("curl -sk -m 1 -o /dev/null https://{hub4}:53317/api/localsend/v2/info"),
        Duration::from_secs(10)
    ));

    // A file of 3 MB with a marker that must never be on the hub's disk in the clear.
    let src = w.lab.dir.path().join("holiday.bin");
    let mut data = b"PLAINTEXT-MARKER-".repeat(10);
    data.extend((0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    std::fs::write(&src, &data).unwrap();
    let sock = localsendd(&mut w, "d1");
    // The laptop's LocalSend announces itself through the tunnel; the hub answers: "Cloud PC"
    // is in its list of devices.
    assert!(
        w.lab.eventually(
            "d1",
            &format!("localsendctl --socket {sock} devices | grep -q 'Cloud PC'"),
            Duration::from_secs(15)
        ),
        "the Cloud PC is not among the laptop's LocalSend devices: {}",
        String::from_utf8_lossy(
            &w.lab
                .sh("d1", &format!("localsendctl --socket {sock} devices"))
                .stdout
        )
    );
    let sent = w.lab.sh(
        "d1",
        &format!(
            "timeout 60 localsendctl --socket {sock} send {} --to {hub4} --wait",
            src.display()
        ),
    );
    assert!(
        sent.status.success(),
        "localsendctl send failed: {}{}\n{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr),
        hub.log()
    );
    let listed = hub.cli_ok(&["drop", "list"]);
    let line = listed
        .lines()
        .find(|l| l.ends_with("holiday.bin"))
        .unwrap_or_else(|| panic!("the file is not in the inbox: {listed}"));
    assert!(
        line.contains(&data.len().to_string()) && line.contains("laptop"),
        "{line}"
    );
    let id = line.split_whitespace().next().unwrap().to_string();

    // At rest: encrypted, no plaintext anywhere in the inbox.
    let inbox = hub.state_dir.join("drop");
    for e in std::fs::read_dir(&inbox).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(16).any(|w| w == b"PLAINTEXT-MARKER"));
    }
    // Byte-identical back.
    let out = w.lab.dir.path().join("back.bin");
    hub.cli_ok(&["drop", "get", &id, "--output", &out.display().to_string()]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the file came back different"
    );

    // A guest's device does not even reach the hub's LocalSend port (the laptop does).
    let info = format!("curl -sk -m 3 -o /dev/null https://{hub4}:53317/api/localsend/v2/info");
    assert!(w.lab.sh_succeeds("d1", &info, 5));
    assert!(
        !w.lab.sh_succeeds("d2", &info, 5),
        "a guest reached the LocalSend port"
    );
    assert_eq!(
        hub.cli_ok(&["drop", "list"]).lines().count(),
        2,
        "one file (and the header)"
    );

    // The API and the admin page (the laptop is the owner's: an admin) list it too.
    let sock = hub.state_dir.join("api.sock");
    let api = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            &sock.display().to_string(),
            "http://hub/v1/drop",
        ])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&api.stdout).expect("GET /v1/drop");
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["size"], data.len() as u64);
    let page = w
        .lab
        .sh_ok("d1", &format!("curl -sfk -m 5 https://{hub4}/inbox"));
    assert!(page.contains("holiday.bin") && page.contains(&id), "{page}");

    // Forwarded to the phone, which is offline now: it arrives once the phone comes online,
    // byte-identical, in its LocalSend app.
    let queued = hub
        .cli()
        .args(["drop", "send", &id, "--to", "phone"])
        .output()
        .unwrap();
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    assert!(
        String::from_utf8_lossy(&queued.stderr).contains("not online"),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    w.lab.wg_up("d3", &phone_dev);
    localsendd(&mut w, "d3");
    let got = w
        .lab
        .dir
        .path()
        .join("lsd-d3")
        .join("in")
        .join("holiday.bin");
    let arrived = w.lab.eventually(
        "d3",
        &format!(
            "test \"$(stat -c %s {} 2>/dev/null)\" = {}",
            got.display(),
            data.len()
        ),
        Duration::from_secs(30),
    );
    assert!(
        arrived,
        "the queued file did not reach the phone:\n{}",
        hub.log()
    );
    assert!(
        std::fs::read(&got).unwrap() == data,
        "the phone got a different file"
    );

    // From a device with the cloudpc CLI: the laptop sends a file to the phone through the
    // Cloud PC. A first try breaks off part-way (curl on the same endpoint, cut by its time
    // limit); the CLI goes on from where it stopped, and the phone has the file, byte-identical,
    // when the command returns.
    let report = w.lab.dir.path().join("report.bin");
    let mut data = b"PLAINTEXT-MARKER-".repeat(10);
    data.extend((0..8_000_000u32).map(|i| (i.wrapping_mul(2246822519) >> 23) as u8));
    std::fs::write(&report, &data).unwrap();
    let sha = w
        .lab
        .sh_ok("d1", &format!("sha256sum {}", report.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let url = format!(
        "https://{hub4}:53317/api/cloudpc/v1/drop?sha256={sha}&name=report.bin&size={}&to=phone",
        data.len()
    );
    let cut = w.lab.sh(
        "d1",
        &format!(
            "curl -sk --limit-rate 1M -m 2 -o /dev/null --data-binary @{} '{url}&offset=0'",
            report.display()
        ),
    );
    assert_eq!(
        cut.status.code(),
        Some(28),
        "curl was not cut by its time limit"
    );
    let held: serde_json::Value =
        serde_json::from_str(&w.lab.sh_ok("d1", &format!("curl -sk -X POST '{url}'"))).unwrap();
    let held = held["offset"].as_u64().unwrap();
    assert!(held > 0 && held < data.len() as u64, "held {held}");
    for e in std::fs::read_dir(&inbox).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(16).any(|w| w == b"PLAINTEXT-MARKER"));
    }
    // `cloudpc drop send` of the report to the phone, run on device `ns`.
    let send_report = |w: &HubWorld, ns: &str| {
        w.lab.sh(
            ns,
            &format!(
                "timeout 60 {} drop send {} --to phone --hub {hub4}",
                netns::cloudpc_bin(),
                report.display()
            ),
        )
    };
    let sent = send_report(&w, "d1");
    let said = String::from_utf8_lossy(&sent.stderr).to_string();
    assert!(sent.status.success(), "{said}\n{}", hub.log());
    assert!(
        said.contains(&format!("Went on from byte {held} ")) && said.contains("Sent "),
        "{said}"
    );
    let got = w
        .lab
        .dir
        .path()
        .join("lsd-d3")
        .join("in")
        .join("report.bin");
    assert!(
        std::fs::read(&got).ok().as_deref() == Some(&data[..]),
        "the phone did not get the same file"
    );
    // Only to devices the sender may reach: with the laptop's reach narrowed to the guest's
    // phone, the same command for the phone is refused before a byte goes.
    hub.cli_ok(&["device", "set", "laptop", "--reach", "alice-phone"]);
    let refused = send_report(&w, "d1");
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success() && said.contains("may not reach phone"),
        "{said}"
    );
    hub.cli_ok(&["device", "set", "laptop", "--reach", "all"]);
    // A guest's device may not drop files this way either.
    let guest = send_report(&w, "d2");
    assert!(!guest.status.success(), "a guest dropped a file");

    hub.cli_ok(&["drop", "remove", &id]);
    let left: Vec<String> = hub
        .cli_ok(&["drop", "list"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 1, "the report is still in the inbox: {left:?}");
    hub.cli_ok(&["drop", "remove", &left[0]]);
    assert_eq!(hub.cli_ok(&["drop", "list"]).lines().count(), 1);
}
