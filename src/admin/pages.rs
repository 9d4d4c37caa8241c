//! The admin page's pages (server-rendered with maud; maud escapes every value it prints, so
//! device names, list URLs and errors can never become markup).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use maud::{html as m, Markup, DOCTYPE};

use super::auth::{self, Who};
use super::{html, see_other, text, Admin, Form, Resp};
use crate::api::{ApiError, Manage, NewDevice};
use crate::store::{DevicePatch, RuleAction};

mod inbox;

const STYLE: &str = include_str!("style.css");
const HISTORY_JS: &str = include_str!("history.js");
/// Encrypted entries per `/history/entries` page.
const HISTORY_PAGE: usize = 500;

/// Runs a blocking call on the owner of state off the async workers.
async fn call<T: Send + 'static>(
    a: &Arc<Admin>,
    f: impl FnOnce(&crate::daemon::Control) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = a.control.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .unwrap_or_else(|_| Err(ApiError::NotRunning("the hub is stopping".into())))
}

/// The frame of every page: navigation, then `body`.
fn page(a: &Admin, who: &Who, title: &str, body: Markup) -> String {
    let csrf = a.auth.csrf(who);
    m! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cloudpc" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    nav {
                        a href="/" { "Dashboard" }
                        a href="/devices" { "Devices" }
                        a href="/filtering" { "Filtering" }
                        a href="/history" { "History" }
                        a href="/inbox" { "Inbox" }
                        a href="/settings" { "Settings" }
                        @if let Who::Session { .. } = who {
                            form method="post" action="/logout" class="inline" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                        @if let Who::Device { name, .. } = who {
                            span.who { "as " (name) }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
    .into_string()
}

fn error_page(a: &Admin, who: &Who, e: &ApiError) -> Resp {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = m! { p.error { (e.to_string()) } p { a href="/" { "Back to the dashboard" } } };
    html(status, page(a, who, "Not done", body))
}

fn csrf_field(a: &Admin, who: &Who) -> Markup {
    m! { input type="hidden" name="csrf" value=(a.auth.csrf(who)); }
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn ago(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s} s ago"),
        Some(s) if s < 7200 => format!("{} min ago", s / 60),
        Some(s) if s < 172_800 => format!("{} h ago", s / 3600),
        Some(s) => format!("{} days ago", s / 86_400),
    }
}

fn when(unix_ms: Option<i64>) -> String {
    unix_ms
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

/// A bar chart of queries (and, darker, blocked queries) per hour: inline SVG, no script.
fn chart(hours: &[(u64, u64)]) -> Markup {
    let max = hours.iter().map(|h| h.0).max().unwrap_or(0).max(1) as f64;
    let (w, h) = (10.0, 60.0);
    let total: u64 = hours.iter().map(|x| x.0).sum();
    let blocked: u64 = hours.iter().map(|x| x.1).sum();
    m! {
        svg.chart viewBox={ "0 0 " (w * hours.len() as f64) " " (h) } role="img"
            aria-label={ (total) " queries, " (blocked) " blocked, in the last 24 hours" } {
            @for (i, (q, b)) in hours.iter().enumerate() {
                @let qh = *q as f64 / max * h;
                @let bh = *b as f64 / max * h;
                rect.q x=(i as f64 * w + 1.0) y=(h - qh) width=(w - 2.0) height=(qh) {}
                rect.b x=(i as f64 * w + 1.0) y=(h - bh) width=(w - 2.0) height=(bh) {}
            }
        }
        p.hint { (total) " queries, " (blocked) " blocked (counts only: no names are kept)." }
    }
}

/// Answers a GET.
pub async fn get(a: &Arc<Admin>, who: &Who, path: &str, query: &str) -> Resp {
    if path == "/style.css" {
        let mut r = text(StatusCode::OK, STYLE);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        );
        return r;
    }
    if path == "/login" {
        return login_page(a, who, None);
    }
    if path == "/history.js" {
        let mut r = text(StatusCode::OK, HISTORY_JS);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        if matches!(who, Who::Anonymous) {
            return see_other("/login");
        }
        return r;
    }
    if matches!(who, Who::Anonymous) {
        return see_other("/login");
    }
    let r = match path {
        "/" => dashboard(a, who).await,
        "/devices" => devices(a, who).await,
        "/devices/remove" => Ok(confirm_remove(a, who, &query_value(query, "name"))),
        "/filtering" => filtering(a, who, &query_value(query, "test")).await,
        "/settings" => settings(a, who).await,
        "/history" => history(a, who).await,
        "/inbox" => inbox::inbox(a, who).await,
        "/history/entries" => {
            let since = query_value(query, "since").parse::<i64>().unwrap_or(0);
            return match call(a, move |c| {
                c.with_store(|s| s.querylog_page(since, HISTORY_PAGE))
                    .map_err(ApiError::from)
            })
            .await
            {
                Ok(p) => {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let rows: Vec<serde_json::Value> = p
                        .rows
                        .iter()
                        .map(|r| serde_json::json!({"seq": r.seq, "time": r.time, "data": b64.encode(&r.data)}))
                        .collect();
                    let body =
                        serde_json::json!({"last_seq": p.last_seq, "rows": rows}).to_string();
                    let mut r = text(StatusCode::OK, "");
                    *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from(body));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                }
                Err(e) => error_page(a, who, &e),
            };
        }
        "/metrics" => {
            return match call(a, |c| c.metrics()).await {
                Ok(t) => {
                    let mut r = text(StatusCode::OK, "");
                    *r.body_mut() =
                        http_body_util::Full::new(bytes::Bytes::from(crate::metrics::classic(&t)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(crate::metrics::CLASSIC),
                    );
                    r
                }
                Err(e) => error_page(a, who, &e),
            }
        }
        _ => {
            let body = m! { p { "There is no such page. " a href="/" { "Go to the dashboard" } } };
            return html(StatusCode::NOT_FOUND, page(a, who, "Not found", body));
        }
    };
    match r {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => error_page(a, who, &e),
    }
}

fn query_value(query: &str, name: &str) -> String {
    super::form_urlencoded(query.as_bytes())
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn login_page(a: &Admin, who: &Who, error: Option<&str>) -> Resp {
    if !matches!(who, Who::Anonymous) {
        return see_other("/");
    }
    let body = m! {
        @if let Some(e) = error { p.error { (e) } }
        form method="post" action="/login" {
            label { "Password " input type="password" name="password" autocomplete="current-password" required; }
            button type="submit" { "Log in" }
        }
        p.hint { "Admin devices on the private network are let in without a password." }
    };
    let status = match error {
        Some(e) if e.contains("wait") => StatusCode::TOO_MANY_REQUESTS,
        Some(_) => StatusCode::UNAUTHORIZED,
        None => StatusCode::OK,
    };
    html(status, page(a, who, "Log in", body))
}

async fn dashboard(a: &Arc<Admin>, who: &Who) -> Result<String, ApiError> {
    let st = call(a, |c| c.status()).await?;
    let lists = call(a, |c| c.lists()).await?;
    let health = call(a, |c| Ok(c.upstream_health())).await?;
    let traffic = call(a, |c| c.traffic_summary()).await?;
    let hours = call(a, |c| c.dns_last_day()).await?;
    let online = st
        .devices
        .iter()
        .filter(|d| {
            d["last_handshake_secs_ago"]
                .as_u64()
                .is_some_and(|s| s <= crate::metrics::ONLINE_WITHIN_SECS)
        })
        .count();
    let body = m! {
        section.cards {
            div.card { b { (online) " / " (st.devices.len()) } " devices online" }
            div.card { b { (st.dns.queries) } " DNS queries" }
            div.card { b { (st.dns.blocked) } " blocked" }
            div.card { b { (st.dns.cache_hits) } " from the cache" }
        }
        h2 { "Devices" }
        table.devices {
            tr { th { "Device" } th { "Status" } th { "Last handshake" } th { "Now ↓ / ↑" } th { "24 h ↓ / ↑" } th { "7 days ↓ / ↑" } th { "Queries" } th { "Blocked" } }
            @for d in &st.devices {
                @let secs = d["last_handshake_secs_ago"].as_u64();
                @let on = secs.is_some_and(|s| s <= crate::metrics::ONLINE_WITHIN_SECS);
                tr class=(if on { "online" } else { "offline" }) {
                    td.name { (d["name"].as_str().unwrap_or("")) }
                    td { (if on { "online" } else { "offline" }) }
                    td { (ago(secs)) }
                    @let t = traffic.get(d["public_key"].as_str().unwrap_or("")).copied().unwrap_or_default();
                    td { (bytes(d["rx_bytes"].as_u64().unwrap_or(0))) " / " (bytes(d["tx_bytes"].as_u64().unwrap_or(0))) }
                    td.day data-rx=(t.day.rx) data-tx=(t.day.tx) { (bytes(t.day.rx)) " / " (bytes(t.day.tx)) }
                    td.week data-rx=(t.week.rx) data-tx=(t.week.tx) { (bytes(t.week.rx)) " / " (bytes(t.week.tx)) }
                    td { (d["queries"].as_u64().unwrap_or(0)) }
                    td { (d["blocked"].as_u64().unwrap_or(0)) }
                }
            }
        }
        h2 { "DNS in the last 24 hours" }
        (chart(&hours))
        h2 { "Upstreams" }
        table {
            tr { th { "#" } th { "Transport" } th { "Answers" } th { "Mean latency" } th { "Failures" } }
            @for (i, h) in health.iter().enumerate() {
                tr {
                    td { (i + 1) }
                    td { (h.transport) }
                    td { (h.answers) }
                    td { @if h.answers > 0 { (format!("{:.1} ms", h.latency_sum_secs * 1000.0 / h.answers as f64)) } @else { "—" } }
                    td { (h.failures) }
                }
            }
        }
        h2 { "Lists" }
        table {
            tr { th { "List" } th { "Rules" } th { "Last update" } th { "Result" } }
            @for l in &lists {
                tr { td.url { (l.list) } td { (l.entries.map(|n| n.to_string()).unwrap_or_else(|| "—".into())) } td { (when(l.last_success)) } td { (l.last_result.as_deref().unwrap_or("")) } }
            }
        }
    };
    Ok(page(a, who, "Dashboard", body))
}

async fn devices(a: &Arc<Admin>, who: &Who) -> Result<String, ApiError> {
    let st = call(a, |c| c.status()).await?;
    let list = call(a, |c| c.devices()).await?;
    let off = call(a, |c| c.internet_off_devices()).await?;
    let csrf = csrf_field(a, who);
    let body = m! {
        h2 { "Add a device" }
        form method="post" action="/devices/add" class="stack" {
            (csrf)
            label { "Name " input name="name" required maxlength="63" pattern="[A-Za-z0-9-]+" placeholder="phone"; }
            label { "Group " input name="group" maxlength="63" placeholder="(default)"; }
            label.check { input type="checkbox" name="split" value="1"; " Only the private network through the Cloud PC (split tunnel)" }
            label.check { input type="checkbox" name="admin" value="1"; " Admin (may manage the Cloud PC)" }
            label.check { input type="checkbox" name="owner" value="1"; " Owner (reads the query log)" }
            button type="submit" { "Add" }
        }
        h2 { "Devices" }
        table.devices {
            tr { th { "Device" } th { "Addresses" } th { "Group" } th { "Role" } th { "Internet" } th { "Egress" } th { "Endpoint" } th { "Last handshake" } th { "Traffic" } th {} }
            @for d in &list {
                @let s = st.devices.iter().find(|x| x["name"].as_str() == Some(d.name.as_str()));
                tr {
                    td.name { (d.name) }
                    td { (d.ipv4) br; small { (d.ipv6) } }
                    td { (d.group.as_deref().unwrap_or("default")) }
                    td { @if d.owner { "owner " } @if d.admin { "admin" } }
                    @let inet = !off.contains(&d.name);
                    td {
                        form method="post" action="/devices/internet" class="inline" {
                            (csrf)
                            input type="hidden" name="name" value=(d.name);
                            input type="hidden" name="on" value=(if inet { "0" } else { "1" });
                            span.inet { (if inet { "on" } else { "off" }) } " "
                            button.small type="submit" { (if inet { "Turn off" } else { "Turn on" }) }
                        }
                    }
                    // The live temporary addresses (memory only; shown, never stored).
                    @let eg = s.map(|s| &s["egress"]);
                    @let temp = eg.is_some_and(|e| e["mode"] == "temporary");
                    td.egress {
                        form method="post" action="/devices/egress" class="inline" {
                            (csrf)
                            input type="hidden" name="name" value=(d.name);
                            input type="hidden" name="mode" value=(if temp { "hub" } else { "temporary" });
                            span.egress { (if temp { "temporary" } else { "hub" }) } " "
                            button.small type="submit" { (if temp { "Use the hub's address" } else { "Use temporary addresses" }) }
                        }
                        @if let Some(e) = eg.filter(|_| temp) {
                            br; small.addr { (e["ipv6"].as_str().unwrap_or("IPv6: the hub's")) } br;
                            small.addr { (e["ipv4"].as_str().unwrap_or("IPv4: the hub's")) }
                            form method="post" action="/devices/egress/address" class="inline" {
                                (csrf)
                                input type="hidden" name="name" value=(d.name);
                                button.small type="submit" { "New address" }
                            }
                        }
                    }
                    td { (s.and_then(|s| s["endpoint"].as_str()).unwrap_or("—")) }
                    td { (ago(s.and_then(|s| s["last_handshake_secs_ago"].as_u64()))) }
                    td { "↓ " (bytes(s.and_then(|s| s["rx_bytes"].as_u64()).unwrap_or(0))) " ↑ " (bytes(s.and_then(|s| s["tx_bytes"].as_u64()).unwrap_or(0))) }
                    td {
                        details {
                            summary { "Change" }
                            form method="post" action="/devices/set" class="stack" {
                                (csrf)
                                input type="hidden" name="name" value=(d.name);
                                label { "Name " input name="new_name" value=(d.name) maxlength="63"; }
                                label { "Group " input name="group" value=(d.group.as_deref().unwrap_or("")) maxlength="63"; }
                                label.check { input type="checkbox" name="admin" value="1" checked[d.admin]; " Admin" }
                                label.check { input type="checkbox" name="owner" value="1" checked[d.owner]; " Owner" }
                                button type="submit" { "Save" }
                            }
                            a.danger href={ "/devices/remove?name=" (d.name) } { "Remove…" }
                        }
                    }
                }
            }
        }
    };
    Ok(page(a, who, "Devices", body))
}

fn confirm_remove(a: &Admin, who: &Who, name: &str) -> String {
    let body = m! {
        p { "Remove " b { (name) } "? It is cut off at once and its key stops working." }
        form method="post" action="/devices/remove" {
            (csrf_field(a, who))
            input type="hidden" name="name" value=(name);
            button.danger type="submit" { "Remove " (name) }
            " " a href="/devices" { "Cancel" }
        }
    };
    page(a, who, "Remove a device", body)
}

/// The page shown once after a device was added: its config, QR code and download.
fn added_page(a: &Admin, who: &Who, added: &crate::api::DeviceAdded) -> Resp {
    let b64 = base64::engine::general_purpose::STANDARD;
    let qr = crate::enroll::qr::png(&added.config)
        .ok()
        .map(|png| format!("data:image/png;base64,{}", b64.encode(png)));
    let download = format!(
        "data:text/plain;charset=utf-8;base64,{}",
        b64.encode(&added.config)
    );
    let name = &added.device.name;
    let body = m! {
        p { "Scan this code with the WireGuard app on " b { (name) } ", or download its config." }
        @if added.private_key_included {
            p.warn { "The private key is in this code and config and is shown only now: the Cloud PC does not keep it." }
        }
        @if let Some(src) = &qr { img.qr id="qr" src=(src) alt={ "WireGuard config of " (name) }; }
        p { a.button href=(download) download={ (name) ".conf" } { "Download " (name) ".conf" } }
        details { summary { "Show the config" } pre { (added.config) } }
        p { a href="/devices" { "Done" } }
    };
    html(
        StatusCode::CREATED,
        page(a, who, &format!("{name} added"), body),
    )
}

async fn filtering(a: &Arc<Admin>, who: &Who, test: &str) -> Result<String, ApiError> {
    let lists = call(a, |c| c.lists()).await?;
    let blocks = call(a, |c| c.rules(RuleAction::Block)).await?;
    let allows = call(a, |c| c.rules(RuleAction::Allow)).await?;
    let groups = call(a, |c| c.groups_summary()).await?;
    let test = test.trim().to_string();
    let verdicts = if test.is_empty() {
        None
    } else {
        let t = test.clone();
        Some(call(a, move |c| c.test_domain(&t)).await?)
    };
    let csrf = csrf_field(a, who);
    let body = m! {
        h2 { "Test a domain" }
        form method="get" action="/filtering" {
            input name="test" value=(test) placeholder="ads.example.com" maxlength="253";
            button type="submit" { "Test" }
        }
        @if let Some(v) = &verdicts {
            table.verdicts {
                tr { th { "Group" } th { "Verdict" } th { "Why" } }
                @for t in v {
                    tr class=(t.verdict) { td { (t.group) } td { (t.verdict) } td { (t.why) } }
                }
            }
        }
        h2 { "Lists" }
        table {
            tr { th { "List" } th { "From" } th { "Rules" } th { "Last update" } th { "Result" } th {} }
            @for l in &lists {
                tr {
                    td.url { (l.list) }
                    td { (l.from) }
                    td { (l.entries.map(|n| n.to_string()).unwrap_or_else(|| "—".into())) }
                    td { (when(l.last_success)) }
                    td { (l.last_result.as_deref().unwrap_or("")) @if let Some(e) = &l.last_error { br; small.error { (e) } } }
                    td {
                        @if l.id.is_some() {
                            form method="post" action="/lists/update" class="inline" {
                                (csrf) input type="hidden" name="url" value=(l.list);
                                button type="submit" { "Update now" }
                            }
                        }
                        @if l.from == "added" {
                            form method="post" action="/lists/remove" class="inline" {
                                (csrf) input type="hidden" name="url" value=(l.list);
                                button.danger type="submit" { "Remove" }
                            }
                        }
                    }
                }
            }
        }
        form method="post" action="/lists/add" {
            (csrf)
            input name="url" type="url" required placeholder="https://example.com/list.txt" maxlength="2000";
            button type="submit" { "Add list" }
        }
        h2 { "Groups" }
        @if groups.is_empty() {
            p.hint { "No groups: every device has the default policy. Groups are set in the config ([groups.NAME]); put a device in one on the Devices page." }
        } @else {
            table.groups {
                tr { th { "Group" } th { "Lists" } th { "Own rules" } th { "Devices" } }
                @for (name, glists, nb, na, members) in &groups {
                    tr {
                        td.name { (name) }
                        td { @match glists { Some(l) => { @for x in l { (x) br; } }, None => { "the default lists" } } }
                        td { (nb) " block, " (na) " allow" }
                        td { @if members.is_empty() { "—" } @else { (members.join(", ")) } }
                    }
                }
            }
        }
        h2 { "Your rules" }
        div.cols {
            @for (kind, rules) in [("block", &blocks), ("allow", &allows)] {
                div {
                    h3 { (kind) }
                    ul {
                        @for r in rules.iter() {
                            li {
                                (r) " "
                                form method="post" action="/rules/remove" class="inline" {
                                    (csrf) input type="hidden" name="kind" value=(kind); input type="hidden" name="domain" value=(r);
                                    button.small type="submit" { "×" }
                                }
                            }
                        }
                    }
                    form method="post" action="/rules/add" {
                        (csrf) input type="hidden" name="kind" value=(kind);
                        input name="domain" required placeholder="example.com" maxlength="253";
                        button type="submit" { (kind) }
                    }
                }
            }
        }
    };
    Ok(page(a, who, "Filtering", body))
}

async fn history(a: &Arc<Admin>, who: &Who) -> Result<String, ApiError> {
    let state = call(a, |c| c.querylog()).await?;
    let body = m! {
        @if !state.enabled {
            p { "The query log is off: nothing about queries is kept. An owner turns it on with "
                code { "cloudpc querylog enable --recipient age1..." } "." }
        } @else {
            p { (state.entries) " entries, encrypted to the owners' keys: the Cloud PC cannot read them. "
                "Pick this device's age identity file (" code { "AGE-SECRET-KEY-1..." } "): it is read and used only in this page, and never sent anywhere." }
            p { label { "Identity file " input #h-identity type="file"; } }
            p #h-status.hint {}
            p {
                label { "Device " select #f-device {} } " "
                label { "Verdict " select #f-verdict { option value="" { "any" } } } " "
                label { "Last " select #f-since { option value="" { "all" } option value="1" { "hour" } option value="24" { "24 hours" } option value="168" { "7 days" } } }
            }
            p #h-count.hint {}
            table.history {
                thead { tr { th { "Time (UTC)" } th { "Device" } th { "Name" } th { "Type" } th { "Verdict" } th { "Rcode" } } }
                tbody #h-rows {}
            }
            script src="/history.js" {}
        }
    };
    Ok(page(a, who, "History", body))
}

async fn settings(a: &Arc<Admin>, who: &Who) -> Result<String, ApiError> {
    let internet = call(a, |c| c.internet()).await?;
    let st = call(a, |c| c.status()).await?;
    let sessions = call(a, |c| {
        c.with_store(|s| s.admin_sessions()).map_err(ApiError::from)
    })
    .await?;
    let info = call(a, |c| Ok(c.settings_summary())).await?;
    let csrf = csrf_field(a, who);
    let current = match who {
        Who::Session { id, .. } => Some(*id),
        _ => None,
    };
    let body = m! {
        h2 { "Internet through the Cloud PC" }
        form method="post" action="/internet" {
            (csrf)
            p { "Devices' internet traffic through the Cloud PC is " b id="internet" { (if internet { "on" } else { "off" }) } "." }
            input type="hidden" name="on" value=(if internet { "0" } else { "1" });
            button type="submit" { (if internet { "Turn it off" } else { "Turn it on" }) }
        }
        h2 { "DNS" }
        table {
            tr { th { "Upstreams" } td { @for u in &info.upstreams { (u) br; } } }
            tr { th { "DNS64" } td { (info.dns64.as_deref().unwrap_or("off")) } }
            tr { th { "Listeners" } td { @for l in &st.listen { (l) br; } } }
        }
        p.hint { "These are set in the config file; change them there and restart." }
        h2 { "Sessions" }
        table {
            tr { th { "#" } th { "Browser" } th { "Since" } th { "Last used" } th {} }
            @for s in &sessions {
                tr {
                    td { (s.id) @if current == Some(s.id) { " (this one)" } }
                    td { (s.agent) }
                    td { (when(Some(s.created_at * 1000))) }
                    td { (when(Some(s.last_seen * 1000))) }
                    td { form method="post" action="/sessions/revoke" class="inline" { (csrf) input type="hidden" name="id" value=(s.id); button.danger type="submit" { "End" } } }
                }
            }
        }
    };
    Ok(page(a, who, "Settings", body))
}

/// Answers a POST that passed the Origin and CSRF checks.
pub async fn post(
    a: &Arc<Admin>,
    who: &Who,
    peer: SocketAddr,
    headers: &HeaderMap,
    path: &str,
    form: &Form,
) -> Resp {
    let field = |k: &str| form.get(k).unwrap_or("").trim().to_string();
    let r: Result<Resp, ApiError> = match path {
        "/login" => {
            if !matches!(who, Who::Anonymous) {
                return see_other("/");
            }
            let agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let password = form.get("password").unwrap_or("").to_string();
            return match a.auth.login(&a.control, peer.ip(), password, agent).await {
                Ok(token) => {
                    let mut r = see_other("/");
                    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&token)) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    r
                }
                Err(e) => login_page(a, who, Some(&e.to_string())),
            };
        }
        "/logout" => {
            if let Who::Session { id, .. } = who {
                let id = *id;
                let _ = call(a, move |c| {
                    c.with_store(|s| s.revoke_admin_session(id))
                        .map_err(ApiError::from)
                })
                .await;
            }
            let mut r = see_other("/login");
            if let Ok(v) = HeaderValue::from_str(&auth::cleared_cookie()) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
        "/devices/add" => {
            let group = Some(field("group")).filter(|g| !g.is_empty());
            let req = NewDevice {
                name: field("name"),
                public_key: None,
                split: form.checked("split"),
                group,
                owner: form.checked("owner"),
                admin: form.checked("admin"),
                no_log: false,
                qr: false,
                person: None,
            };
            match call(a, move |c| c.add_device(&req)).await {
                Ok(added) => Ok(added_page(a, who, &added)),
                Err(e) => Err(e),
            }
        }
        "/devices/remove" => {
            let name = field("name");
            call(a, move |c| c.remove_device(&name))
                .await
                .map(|_| see_other("/devices"))
        }
        "/devices/set" => {
            let name = field("name");
            let new_name = field("new_name");
            let group = field("group");
            let patch = DevicePatch {
                name: (!new_name.is_empty() && new_name != name).then_some(new_name),
                group: Some((!group.is_empty()).then_some(group)),
                owner: Some(form.checked("owner")),
                admin: Some(form.checked("admin")),
                no_log: None,
                person: None,
            };
            call(a, move |c| c.update_device(&name, &patch))
                .await
                .map(|_| see_other("/devices"))
        }
        "/devices/internet" => {
            let name = field("name");
            let on = field("on") == "1";
            call(a, move |c| c.set_device_internet(&name, on))
                .await
                .map(|_| see_other("/devices"))
        }
        "/devices/egress" => {
            let name = field("name");
            let patch = crate::firewall::FirewallPatch {
                egress: Some(field("mode")),
                ..Default::default()
            };
            call(a, move |c| c.set_device_firewall(&name, &patch))
                .await
                .map(|_| see_other("/devices"))
        }
        "/devices/egress/address" => {
            let name = field("name");
            call(a, move |c| c.new_egress_address(&name))
                .await
                .map(|_| see_other("/devices"))
        }
        "/internet" => {
            let on = field("on") == "1";
            call(a, move |c| c.set_internet(on))
                .await
                .map(|_| see_other("/settings"))
        }
        "/lists/add" => {
            let url = field("url");
            call(a, move |c| c.add_list(&url))
                .await
                .map(|_| see_other("/filtering"))
        }
        "/inbox/remove" => {
            let id = field("id");
            call(a, move |c| c.remove_drop(&id))
                .await
                .map(|_| see_other("/inbox"))
        }
        "/lists/remove" => {
            let url = field("url");
            call(a, move |c| c.remove_list(&url))
                .await
                .map(|_| see_other("/filtering"))
        }
        "/lists/update" => {
            let url = field("url");
            call(a, move |c| c.update_lists(Some(&url)).map(|_| ()))
                .await
                .map(|_| see_other("/filtering"))
        }
        "/rules/add" | "/rules/remove" => {
            let kind = match field("kind").as_str() {
                "block" => RuleAction::Block,
                "allow" => RuleAction::Allow,
                _ => return text(StatusCode::BAD_REQUEST, "kind must be block or allow\n"),
            };
            let domain = field("domain");
            let add = path == "/rules/add";
            call(a, move |c| {
                if add {
                    c.add_rule(kind, &domain)
                } else {
                    c.remove_rule(kind, &domain)
                }
            })
            .await
            .map(|_| see_other("/filtering"))
        }
        "/sessions/revoke" => {
            let Ok(id) = field("id").parse::<i64>() else {
                return text(StatusCode::BAD_REQUEST, "no such session\n");
            };
            call(a, move |c| {
                c.with_store(|s| s.revoke_admin_session(id))
                    .map_err(ApiError::from)
            })
            .await
            .map(|_| see_other("/settings"))
        }
        _ => {
            return html(
                StatusCode::NOT_FOUND,
                page(a, who, "Not found", m! { p { "Nothing is done here." } }),
            )
        }
    };
    match r {
        Ok(resp) => resp,
        Err(e) => error_page(a, who, &e),
    }
}
