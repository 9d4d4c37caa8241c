//! `/metrics`: the running hub's counters in the Prometheus text format (OpenMetrics, encoded
//! by `prometheus-client`), read from the live counters at each scrape.
//!
//! Privacy: no label carries a domain name or an IP address. Devices are named by their
//! device name (chosen by the owner), upstreams by their position in `dns.upstreams` and
//! their transport, lists by their `list N` id (or `file N`, their position among files).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::dns::stats::{Protocol, Stats};
use crate::dns::upstream::Health;
use crate::filter::ListStatus;
use crate::hub::engine::Counters;
use crate::hub::DeviceStatus;
use crate::querylog::QueryLogStats;
use crate::store::Device;

/// The content type of [`render`]'s output (OpenMetrics, for a client that asks for it).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`classic`]'s output (the Prometheus text format, version 0.0.4).
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The scrape text and its content type for a client whose `Accept` header is `accept`:
/// OpenMetrics when it asks for it (Prometheus does), the classic text format otherwise
/// (`promtool check metrics`, curl, older scrapers).
pub fn negotiate(openmetrics: String, accept: &str) -> (String, &'static str) {
    if accept.contains("application/openmetrics-text") {
        (openmetrics, OPENMETRICS)
    } else {
        (classic(&openmetrics), CLASSIC)
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter family is named with
/// its samples' `_total` suffix, and there is no `# EOF`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A device counts as online when its last handshake is this recent (WireGuard re-keys every
/// 2 minutes while traffic flows; a session lasts at most 3 minutes without one).
pub const ONLINE_WITHIN_SECS: u64 = 180;

/// What one scrape reads.
pub struct Sources<'a> {
    pub dns: &'a Stats,
    pub cache_entries: usize,
    pub upstreams: &'a [Health],
    pub lists: &'a [ListStatus],
    pub devices: &'a [Device],
    /// With the hub: its view of each device, and its counters.
    pub hub: Option<(&'a [DeviceStatus], &'a Counters)>,
    pub querylog: QueryLogStats,
    /// Unix seconds now (for last-handshake timestamps).
    pub now_unix: i64,
    /// The devices' firewalls, for their drop counters.
    pub firewall: Option<&'a crate::firewall::Firewall>,
    /// NAT46's counters, when it is on.
    pub nat46: Option<crate::hub::nat46::Nat46Stats>,
}

type Labels = Vec<(&'static str, String)>;

fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

/// One counter family with the given samples.
fn counters(reg: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in samples {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

/// One counter without labels.
fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64, AtomicU64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// One gauge family with the given samples.
fn gauges(reg: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, f64)>) {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (l, v) in samples {
        f.get_or_create(&l).set(v);
    }
    reg.register(name, help, f);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The metrics text of one scrape.
pub fn render(s: &Sources<'_>) -> String {
    let mut reg = Registry::with_prefix("cloudpc");
    let d = s.dns;
    counters(
        &mut reg,
        "dns_queries",
        "DNS queries received, by protocol",
        Protocol::ALL
            .iter()
            .map(|p| (label("protocol", p.name()), d.protocol(*p)))
            .collect(),
    );
    let results: [(&str, &AtomicU64); 8] = [
        ("cached", &d.cache_hits),
        ("forwarded", &d.forwarded),
        ("local", &d.local),
        ("blocked", &d.blocked),
        ("servfail", &d.upstream_failures),
        ("refused", &d.refused),
        ("malformed", &d.malformed),
        ("rate_limited", &d.rate_limited),
    ];
    counters(
        &mut reg,
        "dns_results",
        "DNS queries by how they were answered",
        results
            .iter()
            .map(|(r, c)| (label("result", *r), c.load(Relaxed)))
            .collect(),
    );
    counter(
        &mut reg,
        "dns_cache_hits",
        "DNS answers from the cache",
        d.cache_hits.load(Relaxed),
    );
    counter(
        &mut reg,
        "dns_blocked",
        "DNS queries blocked by the filter",
        d.blocked.load(Relaxed),
    );
    gauge(
        &mut reg,
        "dns_cache_entries",
        "Answers held in the DNS cache",
        s.cache_entries as f64,
    );

    let upstream_labels = |i: usize, h: &Health| -> Labels {
        vec![
            ("upstream", (i + 1).to_string()),
            ("transport", h.transport.to_string()),
        ]
    };
    reg.register_collector(Box::new(UpstreamLatency(
        s.upstreams
            .iter()
            .enumerate()
            .map(|(i, h)| (upstream_labels(i, h), h.latency.clone()))
            .collect(),
    )));
    counters(
        &mut reg,
        "dns_upstream_failures",
        "Upstream questions that failed (timeout, error, garbage, SERVFAIL/REFUSED)",
        s.upstreams
            .iter()
            .enumerate()
            .map(|(i, h)| (upstream_labels(i, h), h.failures.load(Relaxed)))
            .collect(),
    );

    let mut files = 0;
    let list_label = |l: &ListStatus, files: &mut usize| -> Labels {
        match l.id {
            Some(id) => label("list", id.to_string()),
            None => {
                *files += 1;
                label("list", format!("file {files}"))
            }
        }
    };
    let mut rules = Vec::new();
    let mut updated = Vec::new();
    for l in s.lists {
        let lab = list_label(l, &mut files);
        rules.push((lab.clone(), l.entries.unwrap_or(0) as f64));
        if let Some(ms) = l.last_success {
            updated.push((lab, ms as f64 / 1000.0));
        }
    }
    gauges(
        &mut reg,
        "list_rules",
        "Rules in the copy of each list in use",
        rules,
    );
    gauges(
        &mut reg,
        "list_last_success_timestamp_seconds",
        "When each URL list was last downloaded successfully (Unix time)",
        updated,
    );

    gauge(
        &mut reg,
        "devices",
        "Devices registered",
        s.devices.len() as f64,
    );
    if let Some((status, c)) = s.hub {
        let online = status
            .iter()
            .filter(|d| {
                d.last_handshake_secs_ago
                    .is_some_and(|a| a <= ONLINE_WITHIN_SECS)
            })
            .count();
        gauge(
            &mut reg,
            "devices_online",
            "Devices with a handshake in the last 3 minutes",
            online as f64,
        );
        let dev = |d: &DeviceStatus| label("device", d.name.clone());
        counters(
            &mut reg,
            "device_received_bytes",
            "Bytes of inner packets received from each device",
            status.iter().map(|d| (dev(d), d.rx_bytes)).collect(),
        );
        counters(
            &mut reg,
            "device_sent_bytes",
            "Bytes of inner packets sent to each device",
            status.iter().map(|d| (dev(d), d.tx_bytes)).collect(),
        );
        gauges(
            &mut reg,
            "device_last_handshake_timestamp_seconds",
            "When each device last completed a handshake (Unix time)",
            status
                .iter()
                .filter_map(|d| {
                    let ago = d.last_handshake_secs_ago?;
                    Some((dev(d), (s.now_unix - ago as i64) as f64))
                })
                .collect(),
        );
        counter(
            &mut reg,
            "hub_handshakes",
            "WireGuard handshakes completed",
            c.handshakes.load(Relaxed),
        );
        counter(
            &mut reg,
            "hub_endpoint_changes",
            "Times a device's endpoint moved to another address (roaming)",
            c.endpoint_changes.load(Relaxed),
        );
        counters(
            &mut reg,
            "device_firewall_dropped",
            "Connection attempts each device's firewall dropped (counts only)",
            s.devices
                .iter()
                .filter_map(|d| {
                    let fw = s.firewall?.device(d.ipv4.into())?;
                    Some((label("device", d.name.clone()), fw.dropped()))
                })
                .collect(),
        );
        let drops: [(&str, &AtomicU64); 12] = [
            ("firewall", &c.firewall_dropped),
            ("discovery", &c.discovery_dropped),
            ("malformed_datagram", &c.malformed_datagrams),
            ("unknown_peer", &c.unknown_peer),
            ("bad_handshake", &c.bad_handshakes),
            ("decrypt_error", &c.decrypt_errors),
            ("malformed_inner", &c.malformed_inner),
            ("spoofed", &c.spoofed),
            ("no_route", &c.no_route),
            ("nat64", &c.nat64_dropped),
            ("no_endpoint", &c.no_endpoint),
            ("cookie_sent", &c.cookies_sent),
        ];
        counters(
            &mut reg,
            "hub_dropped_packets",
            "Packets the hub refused or could not deliver, by reason",
            drops
                .iter()
                .map(|(r, v)| (label("reason", *r), v.load(Relaxed)))
                .collect(),
        );
        counter(
            &mut reg,
            "hub_discovery_relayed_packets",
            "Discovery (mDNS, SSDP, LocalSend) packets delivered to other devices, one per copy",
            c.discovery_relayed.load(Relaxed),
        );
    }
    if let Some(n) = s.nat46 {
        gauge(
            &mut reg,
            "nat46_mappings",
            "DNS46/NAT46 mappings held (all devices)",
            n.mappings as f64,
        );
        counters(
            &mut reg,
            "nat46_translated_packets",
            "Packets NAT46 translated, by direction",
            vec![
                (label("direction", "out"), n.translated_out),
                (label("direction", "in"), n.translated_in),
            ],
        );
        counters(
            &mut reg,
            "nat46_refused",
            "NAT46 packets dropped (no mapping: answered unreachable; or untranslatable) and names answered without DNS46 (a device's mappings full), by reason",
            vec![
                (label("reason", "no_mapping"), n.no_mapping),
                (label("reason", "untranslatable"), n.dropped),
                (label("reason", "device_full"), n.device_full),
            ],
        );
    }
    counter(
        &mut reg,
        "querylog_writes",
        "Query-log entries stored (encrypted)",
        s.querylog.written,
    );
    counter(
        &mut reg,
        "querylog_drops",
        "Query-log events lost (queue full, writer gone, database error)",
        s.querylog.dropped,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The upstreams' live latency histograms (kept by `Upstreams`, shown as they are).
#[derive(Debug)]
struct UpstreamLatency(Vec<(Labels, Histogram)>);

impl prometheus_client::collector::Collector for UpstreamLatency {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut family = encoder.encode_descriptor(
            "dns_upstream_latency_seconds",
            "Time from asking an upstream to its answer",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (labels, h) in &self.0 {
            h.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Most open connections to the metrics listeners (a Prometheus keeps one or two).
const MAX_CONNECTIONS: usize = 32;

/// Serves `GET /metrics` over plain HTTP on `addrs` (for a Prometheus on the same machine).
/// An address that cannot be bound (e.g. another hub holds the port) is skipped with a
/// warning: metrics are not worth the hub not starting.
pub async fn serve(
    control: std::sync::Arc<crate::daemon::Control>,
    addrs: &[std::net::SocketAddr],
) {
    use crate::dns::slots::ConnSlots;
    let slots = ConnSlots::new(MAX_CONNECTIONS, MAX_CONNECTIONS / 2);
    for a in addrs {
        let listener = match crate::dns::server::bind_tcp(*a).await {
            Ok(l) => l,
            Err(e) => {
                // The listener's own address is no secret, but logs above debug carry none.
                tracing::warn!(
                    port = a.port(),
                    "metrics not served on one address (port in use?)"
                );
                tracing::debug!(error = %e, "metrics bind failed");
                continue;
            }
        };
        let control = control.clone();
        crate::dns::server::accept_loop(listener, slots.clone(), move |tcp, _peer| {
            let control = control.clone();
            async move {
                let svc = hyper::service::service_fn(move |req| {
                    let control = control.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&control, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(300), conn).await;
            }
        });
    }
}

async fn answer(
    control: &std::sync::Arc<crate::daemon::Control>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use hyper::{header, Method, Response, StatusCode};
    let reply = |status: StatusCode, ct: &'static str, body: String| {
        let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let c = control.clone();
    match tokio::task::spawn_blocking(move || c.metrics()).await {
        Ok(Ok(text)) => {
            let (text, ct) = negotiate(text, &accept);
            reply(StatusCode::OK, ct, text)
        }
        Ok(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{e}\n"),
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "stopping\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counter_families_with_their_total_suffix() {
        let om = "# HELP cloudpc_x Things.\n# TYPE cloudpc_x counter\ncloudpc_x_total 3\n\
                  # HELP cloudpc_g A gauge.\n# TYPE cloudpc_g gauge\ncloudpc_g 1.0\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP cloudpc_x_total Things.\n# TYPE cloudpc_x_total counter\ncloudpc_x_total 3\n\
             # HELP cloudpc_g A gauge.\n# TYPE cloudpc_g gauge\ncloudpc_g 1.0\n"
        );
        let (text, ct) = negotiate(om.into(), "application/openmetrics-text;version=1.0.0");
        assert_eq!((text.as_str(), ct), (om, OPENMETRICS));
        assert_eq!(negotiate(om.into(), "*/*").1, CLASSIC);
    }
}
