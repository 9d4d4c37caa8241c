//! A real headless Chromium for the namespace tests: chromedriver runs in a device
//! namespace and the test drives it over a veth of its own ([`DriverLink`]).

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};

use crate::netns::HubWorld;

/// A veth from the test's own namespace into a device namespace, so the test can reach the
/// WebDriver that runs there; deleted on drop (and with the namespace).
///
/// No IPv6 on it: the link-local address finishing duplicate-address detection after
/// Chromium started is a "network change" to it, which aborts the page loads in flight
/// (ERR_NETWORK_CHANGED).
pub struct DriverLink {
    host_if: String,
    /// The test's end and the WebDriver's end.
    pub host: String,
    pub driver: String,
}

impl DriverLink {
    pub fn new(w: &HubWorld, short: &str, k: u32) -> DriverLink {
        let ns = w.lab.ns(short);
        // A subnet of this run's own (a link of a test run before may linger a moment).
        let n = (std::process::id() % 120) * 2 + k;
        let host_if = format!("cpb{}x{k}", std::process::id() % 1_000_000);
        let (host, driver) = (format!("10.250.{n}.1"), format!("10.250.{n}.2"));
        let c = format!(
            "ip link add {host_if} type veth peer name drv0 netns {ns} && \
             ip addr add {host}/30 dev {host_if} && ip link set {host_if} up && \
             ip netns exec {ns} sysctl -qw net.ipv6.conf.drv0.disable_ipv6=1 && \
             ip -n {ns} addr add {driver}/30 dev drv0 && ip -n {ns} link set drv0 up"
        );
        let st = Command::new("sh").args(["-c", &c]).status().unwrap();
        assert!(st.success(), "{c}");
        DriverLink {
            host_if,
            host,
            driver,
        }
    }
}

impl Drop for DriverLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

pub async fn browser(w: &mut HubWorld, short: &str, link: &DriverLink) -> Client {
    let ip = link.driver.clone();
    let log = w.lab.dir.path().join(format!("chromedriver-{short}.log"));
    w.lab.spawn(
        short,
        &format!(
            "chromedriver --port=9515 --allowed-ips={} --allowed-origins=*",
            link.host
        ),
        &log,
    );
    let profile = w.lab.dir.path().join(format!("chrome-{short}"));
    // The performance log carries the DevTools network events: a test can read what the
    // page sent (see [`sent_bodies`]).
    let caps = serde_json::json!({
        "goog:loggingPrefs": { "performance": "ALL" },
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter",
                "--ignore-certificate-errors", "--window-size=412,915",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://{ip}:9515"))
            .await;
        match c {
            Ok(c) => return c,
            Err(e) if Instant::now() > end => panic!(
                "no WebDriver session: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The request bodies the page sent so far (DevTools `Network.requestWillBeSent` events of
/// the performance log), as (URL, body) pairs. Reading the log empties it.
#[allow(dead_code)] // not every test that drives a browser reads it
pub fn sent_bodies(link: &DriverLink, session: &str) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-m",
            "10",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"type":"performance"}"#,
            &format!("http://{}:9515/session/{session}/se/log", link.driver),
        ])
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the performance log");
    let mut bodies = Vec::new();
    for e in v["value"].as_array().into_iter().flatten() {
        let Some(msg) = e["message"].as_str() else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_str(msg).unwrap_or_default();
        if m["message"]["method"] != "Network.requestWillBeSent" {
            continue;
        }
        let req = &m["message"]["params"]["request"];
        let url = req["url"].as_str().unwrap_or("").to_string();
        let mut body = req["postData"].as_str().unwrap_or("").to_string();
        for part in req["postDataEntries"].as_array().into_iter().flatten() {
            if let Some(b) = part["bytes"].as_str() {
                use base64::Engine;
                if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b) {
                    body.push_str(&String::from_utf8_lossy(&raw));
                }
            }
        }
        bodies.push((url, body));
    }
    bodies
}
