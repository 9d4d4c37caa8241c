//! The admin page end to end (root only): a hub in a network namespace, stock WireGuard
//! devices (wireguard-go + wg-quick), and curl as the browser. Admin devices are let in by
//! their WireGuard identity, other devices get 403; a device added on the page comes up from
//! the QR code the page shows (decoded with zbarimg); forms without the CSRF token or from
//! another origin change nothing; and the password login rate-limits, and its sessions are
//! listed, revocable, and end at logout.

#[path = "common/netns.rs"]
mod netns;
mod support;

use netns::{conf_addrs, HubRun, HubWorld, WEB};
use support::Knot;

const UPSTREAM: &str = "192.0.2.53";

/// One HTTP exchange as curl saw it.
struct Page {
    code: u16,
    head: String,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<String> {
        let name = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with(&name)
                .then(|| l[name.len()..].trim().to_string())
        })
    }

    /// The value of the first `name="csrf"` field in the page.
    fn csrf(&self) -> String {
        let i = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[i + 19..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// `curl` in namespace `ns` (TLS not verified: the hub's certificate is self-signed).
fn curl(w: &HubWorld, ns: &str, args: &str) -> Page {
    let page = curl_once(w, ns, args);
    if page.code != 0 {
        return page;
    }
    // No HTTP answer at all (the server may close a refused POST before reading its body,
    // and the reset can reach curl before the 403): ask once more; the code is still checked.
    curl_once(w, ns, args)
}

fn curl_once(w: &HubWorld, ns: &str, args: &str) -> Page {
    let o = w.lab.sh_timeout(
        ns,
        &format!("curl -sk -m 8 -D - -o - {args}; echo; echo \"#code=$?\""),
        12,
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", &out));
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Page {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A form POST to `url` with `Origin: origin`.
fn post(w: &HubWorld, ns: &str, url: &str, origin: &str, fields: &str, extra: &str) -> Page {
    curl(
        w,
        ns,
        &format!("-H 'Origin: {origin}' --data '{fields}' {extra} '{url}'"),
    )
}

/// Waits until the admin page answers at `base` from `ns` (its listener comes up a moment
/// after the hub's UAPI socket, which is what `start_hub` waits for).
fn ready(w: &HubWorld, ns: &str, base: &str) {
    let up = w.lab.eventually(
        ns,
        &format!("curl -sk -m 1 -o /dev/null {base}/login"),
        std::time::Duration::from_secs(10),
    );
    assert!(up, "the admin page did not come up at {base}");
}

fn start(tag: &str) -> (HubWorld, Knot, HubRun) {
    let mut w = HubWorld::new(tag);
    w.lab
        .sh_ok("inet", &format!("ip addr add {UPSTREAM}/32 dev lo"));
    let inet = w.lab.ns("inet");
    let knot = Knot::start_with(UPSTREAM, &["ip", "netns", "exec", &inet]);
    let hub = w.hub(&format!("[dns]\nupstreams = [\"udp://{UPSTREAM}:53\"]\n"));
    (w, knot, hub)
}

#[test]
fn admin_devices_manage_the_network_others_get_403_and_forms_need_csrf_and_origin() {
    if !netns::root_or_skip("admin") {
        return;
    }
    let (mut w, _knot, mut hub) = start("cpadm");
    for n in 1..=3 {
        w.add_device_ns(n, false);
    }
    let c1 = hub.add_device("laptop", true, &["--owner"]);
    let c2 = hub.add_device("tv", true, &[]);
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    w.lab.wg_up("d2", &c2);
    let (hub4, hub6) = conf_addrs(&c1, "DNS");
    let base = format!("https://{hub4}");
    ready(&w, "d1", &base);

    // The admin device: the dashboard lists the devices, over IPv4, IPv6 and hub.mesh.
    let dash = curl(&w, "d1", &format!("{base}/"));
    assert_eq!(dash.code, 200, "{}\n{}", dash.body, hub.log());
    assert!(
        dash.body.contains("laptop") && dash.body.contains("tv"),
        "{}",
        dash.body
    );
    assert_eq!(
        curl(&w, "d1", &format!("'https://[{hub6}]/devices'")).code,
        200
    );
    let mesh = w.lab.sh_ok("d1", &format!("dig @{hub4} +short hub.mesh A"));
    assert_eq!(mesh.trim(), hub4, "hub.mesh");
    let by_name = curl(
        &w,
        "d1",
        &format!("--resolve hub.mesh:443:{hub4} https://hub.mesh/settings"),
    );
    assert_eq!(by_name.code, 200, "{}", by_name.body);
    // DoH keeps working on the same listener.
    let doh = curl(
        &w,
        "d1",
        &format!("'{base}/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlBHRlc3QAAAEAAQ'"),
    );
    assert_eq!(doh.code, 200, "DoH: {}", doh.head);
    assert_eq!(
        doh.header("content-type").as_deref(),
        Some("application/dns-message")
    );
    assert_eq!(dash.header("cache-control").as_deref(), Some("no-store"));
    assert!(dash.header("content-security-policy").is_some());

    // A device that is not an admin: 403 for every page, the login page too.
    for path in ["/", "/devices", "/login", "/nope"] {
        let p = curl(&w, "d2", &format!("{base}{path}"));
        assert_eq!(p.code, 403, "{path}: {}", p.body);
        assert!(!p.body.contains("laptop"));
    }

    // Adding a device: forms without the CSRF token, with a wrong one, or from another
    // origin are refused and change nothing.
    let devices = curl(&w, "d1", &format!("{base}/devices"));
    let csrf = devices.csrf();
    let url = format!("{base}/devices/add");
    for (origin, fields) in [
        (base.as_str(), "name=phone".to_string()),
        (base.as_str(), "name=phone&csrf=AAAA".to_string()),
        ("https://evil.example", format!("name=phone&csrf={csrf}")),
    ] {
        let p = post(&w, "d1", &url, origin, &fields, "");
        assert_eq!(p.code, 403, "{origin} {fields}: {}", p.body);
    }
    // The non-admin device cannot use the admin's token either.
    let p = post(
        &w,
        "d2",
        &url,
        &base,
        &format!("name=phone&csrf={csrf}"),
        "",
    );
    assert_eq!(p.code, 403);
    let names = hub.cli_ok(&["device", "list"]);
    assert!(!names.contains("phone"), "{names}");

    // Now for real: the page shows the QR code, which brings a stock device up.
    let added = post(
        &w,
        "d1",
        &url,
        &base,
        &format!("name=phone&csrf={csrf}"),
        "",
    );
    assert_eq!(added.code, 201, "{}", added.body);
    assert!(added.body.contains("private key"), "{}", added.body);
    let src = added
        .body
        .split("src=\"data:image/png;base64,")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a QR image on the page");
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(src)
        .unwrap();
    let png_path = w.lab.dir.path().join("qr.png");
    std::fs::write(&png_path, png).unwrap();
    let zbar = std::process::Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(&png_path)
        .output()
        .expect("zbarimg (apt package zbar-tools)");
    let conf = String::from_utf8_lossy(&zbar.stdout).into_owned();
    assert!(
        conf.contains("[Interface]") && conf.contains("PrivateKey"),
        "{conf}"
    );
    w.lab.wg_up("d3", &conf);
    let online = w.lab.eventually(
        "d3",
        &format!("dig @{hub4} +time=1 +tries=1 +short www.example.test | grep -q 192.0.2.10"),
        std::time::Duration::from_secs(5),
    );
    assert!(
        online,
        "the device from the QR code has DNS through the hub"
    );
    let dash = curl(&w, "d1", &format!("{base}/"));
    let row = dash
        .body
        .split("<tr")
        .find(|r| r.contains(">phone<"))
        .unwrap_or_else(|| panic!("{}", dash.body));
    assert!(row.contains("online"), "{row}");

    // HTML in a device name never becomes markup (and is refused as a name anyway).
    let p = post(
        &w,
        "d1",
        &url,
        &base,
        &format!("name=%3Cscript%3Ex%3C%2Fscript%3E&csrf={csrf}"),
        "",
    );
    assert!(!p.body.contains("<script>"), "{}", p.body);
    assert_eq!(p.code, 400, "{}", p.body);

    // Internet off from the page: cut at once, and back on.
    let fetch = |w: &HubWorld| {
        w.lab
            .sh_timeout("d1", &format!("curl -sf -m 2 http://{WEB}/hello"), 4)
            .status
            .success()
    };
    assert!(fetch(&w), "internet before");
    let p = post(
        &w,
        "d1",
        &format!("{base}/internet"),
        &base,
        &format!("on=0&csrf={csrf}"),
        "",
    );
    assert_eq!(p.code, 303, "{}", p.body);
    assert!(!fetch(&w), "internet off from the page");
    let p = post(
        &w,
        "d1",
        &format!("{base}/internet"),
        &base,
        &format!("on=1&csrf={csrf}"),
        "",
    );
    assert_eq!(p.code, 303);
    assert!(fetch(&w), "internet back on");

    // Removing a device from the page cuts it off.
    let p = post(
        &w,
        "d1",
        &format!("{base}/devices/remove"),
        &base,
        &format!("name=phone&csrf={csrf}"),
        "",
    );
    assert_eq!(p.code, 303, "{}", p.body);
    assert!(!hub.cli_ok(&["device", "list"]).contains("phone"));

    // Unknown pages and methods are refused cleanly; the hub keeps serving.
    assert_eq!(curl(&w, "d1", &format!("{base}/no-such-page")).code, 404);
    assert_eq!(curl(&w, "d1", &format!("-X DELETE {base}/")).code, 405);
    let big = "a".repeat(20_000);
    let p = post(
        &w,
        "d1",
        &format!("{base}/lists/add"),
        &base,
        &format!("url={big}&csrf={csrf}"),
        "",
    );
    assert_eq!(p.code, 413);
    assert_eq!(curl(&w, "d1", &format!("{base}/")).code, 200);
}

#[test]
fn password_logins_are_rate_limited_and_sessions_are_listed_revoked_and_logged_out() {
    if !netns::root_or_skip("admin") {
        return;
    }
    let (mut w, _knot, mut hub) = start("cpadl");
    w.start_hub(&mut hub);
    let base = "https://127.0.0.1";
    ready(&w, "hub", base);
    // Anyone off the overlay must log in; no password is set yet.
    let p = curl(&w, "hub", &format!("{base}/"));
    assert_eq!(p.code, 303, "{}", p.body);
    assert_eq!(p.header("location").as_deref(), Some("/login"));
    let p = post(
        &w,
        "hub",
        &format!("{base}/login"),
        base,
        "password=whatever12345",
        "",
    );
    assert_eq!(p.code, 401);
    assert!(p.body.contains("cloudpc admin password"), "{}", p.body);

    hub.set_admin_password("correct horse battery");

    // A login from another site is refused even with the right password.
    let p = post(
        &w,
        "hub",
        &format!("{base}/login"),
        "https://evil.example",
        "password=correct+horse+battery",
        "",
    );
    assert_eq!(p.code, 403);
    // Wrong passwords: refused, then the address must wait, even with the right one.
    for _ in 0..5 {
        let p = post(
            &w,
            "hub",
            &format!("{base}/login"),
            base,
            "password=wrong-password-1",
            "",
        );
        assert_eq!(p.code, 401, "{}", p.body);
    }
    let p = post(
        &w,
        "hub",
        &format!("{base}/login"),
        base,
        "password=correct+horse+battery",
        "",
    );
    assert_eq!(p.code, 429, "{}", p.body);
    assert!(
        !hub.log().contains("wrong-password-1"),
        "no password in the log"
    );

    // From another address (127.0.0.2 is the hub's loopback too): the right password.
    let login = post(
        &w,
        "hub",
        &format!("{base}/login"),
        base,
        "password=correct+horse+battery",
        "--interface 127.0.0.2",
    );
    assert_eq!(login.code, 303, "{}", login.body);
    let cookie = login.header("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let token = cookie.split(';').next().unwrap().to_string();
    let with = |extra: &str| format!("-H 'Cookie: {token}' --interface 127.0.0.2 {extra}");
    let dash = curl(&w, "hub", &with(&format!("{base}/")));
    assert_eq!(dash.code, 200, "{}", dash.body);
    let settings = curl(&w, "hub", &with(&format!("{base}/settings")));
    assert!(settings.body.contains("(this one)"), "{}", settings.body);

    // The session is listed by the CLI and ends when revoked there.
    let list = hub.cli_ok(&["admin", "sessions", "--json"]);
    let sessions: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = sessions[0]["id"].as_i64().unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{list}");
    hub.cli_ok(&["admin", "revoke", &id.to_string()]);
    assert_eq!(
        curl(&w, "hub", &with(&format!("{base}/"))).code,
        303,
        "revoked at once"
    );

    // A new login, then logout ends it.
    let login = post(
        &w,
        "hub",
        &format!("{base}/login"),
        base,
        "password=correct+horse+battery",
        "--interface 127.0.0.2",
    );
    let token = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let with = |extra: &str| format!("-H 'Cookie: {token}' --interface 127.0.0.2 {extra}");
    let dash = curl(&w, "hub", &with(&format!("{base}/")));
    assert_eq!(dash.code, 200);
    let csrf = dash.csrf();
    let out = curl(
        &w,
        "hub",
        &with(&format!(
            "-H 'Origin: {base}' --data 'csrf={csrf}' {base}/logout"
        )),
    );
    assert_eq!(out.code, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        curl(&w, "hub", &with(&format!("{base}/"))).code,
        303,
        "logged out"
    );
    let list = hub.cli_ok(&["admin", "sessions", "--json"]);
    assert_eq!(list.trim(), "[]");
}

/// Attribute `attr` (`data-rx`, `data-tx`) of the `class` cell (day or week) in the
/// dashboard row of `device`.
fn dashboard_bytes(page: &Page, device: &str, class: &str, attr: &str) -> u64 {
    let row = page
        .body
        .split("<tr")
        .find(|r| r.contains(&format!(">{device}<")))
        .unwrap_or_else(|| panic!("no row for {device}: {}", page.body));
    let cell = row
        .split(&format!("class=\"{class}\" "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {class} cell: {row}"));
    let v = cell
        .split(&format!("{attr}=\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no {attr}: {cell}"));
    v[..v.find('"').unwrap()].parse().unwrap()
}

#[test]
fn traffic_of_the_last_day_and_week_is_kept_across_a_restart() {
    if !netns::root_or_skip("admin") {
        return;
    }
    let (mut w, _knot, mut hub) = start("cpadt");
    w.add_device_ns(1, false);
    let c1 = hub.add_device("laptop", true, &["--owner"]);
    // 300 KB for the device to fetch.
    std::fs::write(w.web_root.join("big"), vec![b'x'; 300_000]).unwrap();
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    let (hub4, _) = conf_addrs(&c1, "DNS");
    let base = format!("https://{hub4}");
    w.lab.sh_ok(
        "d1",
        &format!("curl -sf -m 5 -o /dev/null http://{WEB}/big"),
    );
    ready(&w, "d1", &base);
    let before = curl(&w, "d1", &format!("{base}/"));
    // Sent to the device: the download.
    let day = dashboard_bytes(&before, "laptop", "day", "data-tx");
    let week = dashboard_bytes(&before, "laptop", "week", "data-tx");
    assert!(day >= 300_000 && week >= day, "day {day}, week {week}");
    assert!(before.body.contains("queries, "), "the DNS chart");

    // A clean stop and a new start: the counters of the running hub start from zero, the
    // day's figure does not.
    w.stop_hub(&mut hub);
    w.start_hub(&mut hub);
    ready(&w, "d1", &base);
    let after = curl(&w, "d1", &format!("{base}/"));
    assert_eq!(after.code, 200, "{}", after.body);
    let day2 = dashboard_bytes(&after, "laptop", "day", "data-tx");
    assert!(day2 >= day, "day before {day}, after a restart {day2}");
    assert!(dashboard_bytes(&after, "laptop", "week", "data-tx") >= day2);
}
