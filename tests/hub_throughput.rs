//! Throughput through the hub with stock wireguard-go devices (a measurement, not a timed
//! test: `#[ignore]`d). Run as root with a release build:
//!
//! ```sh
//! cargo build --release && CLOUDPC_TEST_BIN=target/release/cloudpc \
//!   cargo test --test hub_throughput -- --ignored --nocapture
//! ```
//!
//! Prints iperf3 throughput and hub CPU-seconds per GB for device→hub→internet and
//! device→hub→device, with the hub's offloads on and off (`CLOUDPC_HUB_OFFLOAD=0`).

#[path = "common/netns.rs"]
mod netns;

use std::time::Duration;

use netns::{HubWorld, WEB};

fn iperf(w: &HubWorld, from: &str, to: &str) -> f64 {
    let out = w.lab.sh_ok(from, &format!("iperf3 -c {to} -t 5 -J"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 json");
    v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0)
}

#[test]
#[ignore = "measurement; run with --ignored as root"]
fn hub_throughput() {
    if !netns::root_or_skip("hub_throughput") {
        return;
    }
    for offload in ["1", "0"] {
        std::env::set_var("CLOUDPC_HUB_OFFLOAD", offload);
        let mut w = HubWorld::new("cpt");
        let mut hub = w.hub("");
        w.add_device_ns(1, false);
        w.add_device_ns(2, false);
        let (c1, _) = w.register(&hub, "a");
        let (c2, _) = w.register(&hub, "b");
        std::env::set_var("CLOUDPC_TEST_HUB_LOG", "cloudpc=info");
        w.start_hub(&mut hub);
        w.lab.wg_up("d1", &c1);
        w.lab.wg_up("d2", &c2);
        let (a2, _) = w.device_addrs(&hub, "b");
        let log = w.lab.dir.path().join("iperf-inet.log");
        w.lab.spawn("inet", &format!("iperf3 -s -B {WEB}"), &log);
        let log = w.lab.dir.path().join("iperf-d2.log");
        w.lab.spawn("d2", &format!("iperf3 -s -B {a2}"), &log);
        assert!(w
            .lab
            .eventually("d1", &w.lab.ping_cmd(&a2, 1), Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(500));
        for (what, to) in [
            ("device→hub→internet", WEB.to_string()),
            ("device→hub→device", a2),
        ] {
            let cpu0 = w.hub_cpu_secs(&hub);
            // CLOUDPC_TEST_PERF=DIR records a perf profile of the hub during each run.
            let perf = std::env::var("CLOUDPC_TEST_PERF").ok().map(|dir| {
                let out = format!("{dir}/hub-{offload}-{}.perf", to.replace(':', "_"));
                std::process::Command::new("perf")
                    .args(["record", "-g", "-o", &out, "-p"])
                    .arg(hub.pid.unwrap_or(0).to_string())
                    .args(["--", "sleep", "4"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("perf")
            });
            let bytes = iperf(&w, "d1", &to);
            if let Some(mut p) = perf {
                let _ = p.wait();
            }
            let cpu = w.hub_cpu_secs(&hub) - cpu0;
            let gb = bytes / 1e9;
            eprintln!(
                "offload={offload} {what}: {:.2} Gbit/s, hub {:.2} CPU-s per GB",
                bytes * 8.0 / 5.0 / 1e9,
                if gb > 0.0 { cpu / gb } else { f64::NAN }
            );
        }
        w.stop_hub(&mut hub);
    }
}
