//! `/metrics` of a running hub, scraped as a Prometheus would (root only: a stock WireGuard
//! device in a network namespace makes the traffic): `promtool check metrics` accepts the
//! output, the counters move with queries and traffic, and no domain name or IP address
//! appears in it.

#[path = "common/netns.rs"]
mod netns;
mod support;

use netns::{conf_addrs, HubWorld, WEB};
use support::Knot;

const UPSTREAM: &str = "192.0.2.53";

/// The value of the sample `line` starts with (`name{labels}`), or 0 when absent.
fn sample(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_pass_promtool_move_with_queries_and_traffic_and_carry_no_names_or_addresses() {
    if !netns::root_or_skip("metrics") {
        return;
    }
    let mut w = HubWorld::new("cpmet");
    w.lab
        .sh_ok("inet", &format!("ip addr add {UPSTREAM}/32 dev lo"));
    let inet = w.lab.ns("inet");
    let _knot = Knot::start_with(UPSTREAM, &["ip", "netns", "exec", &inet]);
    let mut hub = w.hub(&format!(
        "[dns]\nupstreams = [\"udp://{UPSTREAM}:53\"]\n[filter]\nlists = []\nblock = [\"blocked.example.test\"]\n"
    ));
    w.add_device_ns(1, false);
    let conf = hub.add_device("laptop", true, &["--owner"]);
    w.start_hub(&mut hub);
    let (hub4, hub6) = conf_addrs(&conf, "DNS");
    let (laptop4, laptop6) = conf_addrs(&conf, "Address");
    w.lab.wg_up("d1", &conf);

    // As Prometheus asks (OpenMetrics) and as promtool and curl do (the classic format).
    let get = |w: &HubWorld, accept: &str| -> (String, String) {
        let o = w.lab.sh_ok(
            "hub",
            &format!("curl -sf -m 5 -D - -H 'Accept: {accept}' http://127.0.0.1:9153/metrics"),
        );
        let (head, body) = o.split_once("\r\n\r\n").unwrap_or(("", &o));
        (head.to_ascii_lowercase(), body.to_string())
    };
    let scrape = |w: &HubWorld| -> String {
        let (head, body) = get(w, "*/*");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        body
    };
    let (head, om) = get(
        &w,
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    );
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    // The metrics listener comes up a moment after the UAPI socket start_hub waits for.
    assert!(w.lab.eventually(
        "hub",
        "curl -sf -m 1 -o /dev/null http://127.0.0.1:9153/metrics",
        std::time::Duration::from_secs(10)
    ));
    let before = scrape(&w);

    // Queries (forwarded, cached, blocked) and traffic through the tunnel.
    for name in [
        "www.example.test",
        "www.example.test",
        "blocked.example.test",
    ] {
        w.lab.sh_ok(
            "d1",
            &format!("dig @{hub4} +time=2 +tries=1 +short {name} A"),
        );
    }
    w.lab.sh_ok(
        "d1",
        &format!("curl -sf -m 5 -o /dev/null http://{WEB}/hello"),
    );
    let after = scrape(&w);

    let moved = |key: &str, by: f64| {
        let (a, b) = (sample(&before, key), sample(&after, key));
        assert!(b - a >= by, "{key}: {a} -> {b}\n{after}");
    };
    moved("cloudpc_dns_queries_total{protocol=\"udp\"}", 3.0);
    moved("cloudpc_dns_results_total{result=\"blocked\"}", 1.0);
    moved("cloudpc_dns_results_total{result=\"cached\"}", 1.0);
    moved("cloudpc_dns_cache_hits_total", 1.0);
    moved("cloudpc_dns_blocked_total", 1.0);
    moved(
        "cloudpc_dns_upstream_latency_seconds_count{upstream=\"1\",transport=\"udp\"}",
        1.0,
    );
    moved(
        "cloudpc_device_received_bytes_total{device=\"laptop\"}",
        200.0,
    );
    moved("cloudpc_device_sent_bytes_total{device=\"laptop\"}", 200.0);
    assert_eq!(sample(&after, "cloudpc_devices"), 1.0, "{after}");
    assert_eq!(sample(&after, "cloudpc_devices_online"), 1.0, "{after}");
    assert!(
        sample(&after, "cloudpc_hub_handshakes_total") >= 1.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "cloudpc_device_last_handshake_timestamp_seconds{device=\"laptop\"}"
        ) > 1.7e9,
        "{after}"
    );
    assert!(after.contains("cloudpc_querylog_drops_total"), "{after}");

    // Nothing a user asked for or came from: no names, no addresses.
    for secret in [
        "example.test",
        UPSTREAM,
        WEB,
        "192.168.",
        hub4.as_str(),
        hub6.as_str(),
        laptop4.as_str(),
        laptop6.as_str(),
        "203.0.113",
    ] {
        assert!(!after.contains(secret), "{secret} in the metrics:\n{after}");
    }

    // promtool (Debian's prometheus package) accepts the output.
    let file = w.lab.dir.path().join("metrics.txt");
    std::fs::write(&file, &after).unwrap();
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("promtool check metrics < {}", file.display()),
        ])
        .output()
        .expect("promtool (apt package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{after}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Admin devices also find /metrics on the API over the tunnel.
    let o = w.lab.sh_ok(
        "d1",
        &format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://{hub4}/metrics"),
    );
    assert_eq!(o.trim(), "200");
}
