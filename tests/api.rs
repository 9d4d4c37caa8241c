//! The management API (docs/API.md) through the real `cloudpc run`: every operation on the
//! Unix socket `STATE_DIR/api.sock`, every kind of refused request (and that it changed
//! nothing), API tokens on the TLS listener `api.listen`, and the CLI agreeing with the API
//! whether the hub runs or not. The resolver runs on a unique loopback address in front of
//! Knot, without the WireGuard hub; curl is the HTTP client and dig the DNS client.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::*;

/// The port of the API's TCP listener (each test has its own loopback address).
const API_PORT: u16 = 8443;

/// A config for `cloudpc run` on `ip` forwarding to `upstream`, with the test list, a `kids`
/// group and the API's TCP listener on `ip:API_PORT`.
fn config(ip: &str, upstream: &str, dir: &Path) -> String {
    let list = dir.join("test-list.txt");
    std::fs::write(&list, TEST_LIST).unwrap();
    format!(
        r#"[dns]
listen = ["{ip}:53"]
upstreams = ["udp://{upstream}:53"]
[filter]
lists = ["{list}"]
[wireguard]
enabled = false
endpoint = "vpn.example.test"
[groups.kids]
block = ["www.example.test"]
[api]
listen = ["{ip}:{API_PORT}"]
"#,
        list = list.display()
    )
}

struct Setup {
    _knot: Knot,
    hub: Cloudpc,
    dir: tempfile::TempDir,
}

/// Knot and a hub that is configured but not started.
fn setup_stopped() -> Setup {
    let knot = Knot::start(&unique_ip());
    let dir = tempfile::tempdir().unwrap();
    let ip = unique_ip();
    let hub = Cloudpc::stopped(&ip, &config(&ip, &knot.ip, dir.path()));
    Setup {
        _knot: knot,
        hub,
        dir,
    }
}

/// Knot and a running hub whose API answers.
fn setup() -> Setup {
    let mut s = setup_stopped();
    s.hub.launch();
    s.hub.wait_api();
    s
}

/// A syntactically valid WireGuard public key (32 bytes, base64), distinct per `n`.
fn key(n: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

fn devices(hub: &Cloudpc) -> Value {
    hub.api_ok("GET", "/v1/devices", None, 200)
}

/// The query log state's documented fields (`enabled`, `recipients`, `entries`,
/// `retention_days`); others may come with them.
fn log_state(v: &Value) -> Value {
    json!({"enabled": v["enabled"], "recipients": v["recipients"], "entries": v["entries"],
        "retention_days": v["retention_days"]})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a CLI command that must succeed; returns stdout.
fn cli_ok(hub: &Cloudpc, args: &[&str]) -> String {
    let o = hub.cli(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}\n{}",
        text(&o.stdout),
        text(&o.stderr),
        hub.logs()
    );
    text(&o.stdout)
}

/// Runs a CLI command that must fail with `needle` in its error; returns stderr.
fn cli_fails(hub: &Cloudpc, args: &[&str], needle: &str) -> String {
    let o = hub.cli(args);
    let err = text(&o.stderr);
    assert!(
        !o.status.success(),
        "{args:?} should fail: {}",
        text(&o.stdout)
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: {err:?} lacks {needle:?}"
    );
    err
}

/// The `name` of each device in a device list, in order.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// A request that must be refused with `code` and an error text; the device list afterwards
/// must equal `before`.
fn refused(hub: &Cloudpc, method: &str, path: &str, body: Option<&str>, code: u16, before: &Value) {
    let r = hub.api(method, path, body);
    assert_eq!(r.code, code, "{method} {path} {body:?}: {}", r.body);
    r.error();
    assert_eq!(
        &devices(hub),
        before,
        "{method} {path} {body:?} was refused but changed the devices"
    );
}

#[test]
fn devices_are_added_read_changed_and_removed_through_the_api() {
    let s = setup();
    let hub = &s.hub;
    assert_eq!(devices(hub), json!([]));

    // Without a key the hub makes one and returns it once, in the config.
    let v = hub.api_ok("POST", "/v1/devices", Some(r#"{"name": "tablet"}"#), 201);
    let d = &v["device"];
    assert_eq!(d["name"], "tablet");
    assert_eq!(v["private_key_included"], true);
    let conf = v["config"].as_str().unwrap();
    assert!(conf.starts_with("[Interface]"), "{conf}");
    assert!(
        conf.lines().any(|l| l.starts_with("PrivateKey = ")),
        "{conf}"
    );
    assert!(conf.contains(&format!("Address = {}/32", d["ipv4"].as_str().unwrap())));
    assert!(conf.contains("Endpoint = vpn.example.test:51820"), "{conf}");
    assert_eq!(v["qr_svg"], Value::Null);
    for field in ["split", "owner", "admin", "no_log"] {
        assert_eq!(d[field], false, "{field} defaults to false: {d}");
    }
    assert_eq!(d["group"], Value::Null);
    assert!(d["created_at"].as_u64().unwrap() > 1_700_000_000, "{d}");
    assert!(d["ipv6"].as_str().unwrap().contains(':'), "{d}");
    // The private key is nowhere in the state dir.
    let private = conf
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey = "))
        .unwrap()
        .trim();
    assert!(!contains(&all_bytes(&hub.state), private));

    // With a key: no PrivateKey line, every flag as asked.
    let body = json!({"name": "laptop", "public_key": key(1), "split": true,
        "group": "kids", "owner": true, "admin": true, "no_log": true});
    let v = hub.api_ok("POST", "/v1/devices", Some(&body.to_string()), 201);
    assert_eq!(v["private_key_included"], false);
    let conf = v["config"].as_str().unwrap();
    assert!(!conf.lines().any(|l| l.starts_with("PrivateKey")), "{conf}");
    let d = &v["device"];
    assert_eq!(d["public_key"], key(1));
    assert_eq!(
        (
            &d["split"],
            &d["group"],
            &d["owner"],
            &d["admin"],
            &d["no_log"]
        ),
        (
            &json!(true),
            &json!("kids"),
            &json!(true),
            &json!(true),
            &json!(true)
        )
    );
    assert_ne!(d["ipv4"], devices(hub)[1]["ipv4"], "addresses differ");

    // A QR code of the complete tunnel.
    let v = hub.api_ok(
        "POST",
        "/v1/devices",
        Some(r#"{"name": "phone", "qr": true}"#),
        201,
    );
    let svg = v["qr_svg"].as_str().unwrap();
    assert!(svg.contains("<svg"), "{svg}");

    // The list is by name; one device reads the same as in the list.
    let list = devices(hub);
    assert_eq!(names(&list), ["laptop", "phone", "tablet"]);
    let one = hub.api_ok("GET", "/v1/devices/phone", None, 200);
    assert_eq!(one, list[1]);
    // Names match case-insensitively.
    assert_eq!(hub.api_ok("GET", "/v1/devices/PHONE", None, 200), list[1]);

    // PATCH: rename keeps key and addresses; each field on its own.
    let v = hub.api_ok(
        "PATCH",
        "/v1/devices/phone",
        Some(r#"{"name": "pixel"}"#),
        200,
    );
    assert_eq!(v["name"], "pixel");
    assert_eq!(v["ipv4"], list[1]["ipv4"]);
    assert_eq!(v["public_key"], list[1]["public_key"]);
    assert_eq!(hub.api("GET", "/v1/devices/phone", None).code, 404);
    let v = hub.api_ok(
        "PATCH",
        "/v1/devices/pixel",
        Some(r#"{"group": "kids", "admin": true}"#),
        200,
    );
    assert_eq!((&v["group"], &v["admin"]), (&json!("kids"), &json!(true)));
    let v = hub.api_ok(
        "PATCH",
        "/v1/devices/pixel",
        Some(r#"{"group": null, "owner": true, "no_log": true}"#),
        200,
    );
    assert_eq!(
        (&v["group"], &v["owner"], &v["no_log"], &v["admin"]),
        (&Value::Null, &json!(true), &json!(true), &json!(true))
    );
    let v = hub.api_ok(
        "PATCH",
        "/v1/devices/pixel",
        Some(r#"{"admin": false, "owner": false, "no_log": false}"#),
        200,
    );
    assert_eq!(
        (&v["owner"], &v["no_log"], &v["admin"]),
        (&json!(false), &json!(false), &json!(false))
    );
    assert_eq!(hub.api_ok("GET", "/v1/devices/pixel", None, 200), v);

    // DELETE.
    let v = hub.api_ok("DELETE", "/v1/devices/pixel", None, 200);
    assert_eq!(v, json!({"removed": "pixel"}));
    assert_eq!(hub.api("GET", "/v1/devices/pixel", None).code, 404);
    assert_eq!(names(&devices(hub)), ["laptop", "tablet"]);
}

#[test]
fn refused_device_requests_name_the_problem_and_change_nothing() {
    let s = setup();
    let hub = &s.hub;
    let body = json!({"name": "phone", "public_key": key(1)}).to_string();
    hub.api_ok("POST", "/v1/devices", Some(&body), 201);
    hub.api_ok("POST", "/v1/devices", Some(r#"{"name": "tablet"}"#), 201);
    let before = devices(hub);
    assert_eq!(names(&before), ["phone", "tablet"]);

    // 404: unknown device, for every method on it.
    refused(hub, "GET", "/v1/devices/nobody", None, 404, &before);
    let patch = Some(r#"{"admin": true}"#);
    refused(hub, "PATCH", "/v1/devices/nobody", patch, 404, &before);
    refused(hub, "DELETE", "/v1/devices/nobody", None, 404, &before);

    // 400: bad names, bad keys, unknown groups, a QR with a public key.
    for bad in [
        "my_phone",
        "a.b",
        "x-",
        "-x",
        "ünïcode",
        "",
        &"a".repeat(64),
    ] {
        let b = json!({ "name": bad }).to_string();
        refused(hub, "POST", "/v1/devices", Some(&b), 400, &before);
        let b = json!({ "name": bad }).to_string();
        refused(hub, "PATCH", "/v1/devices/tablet", Some(&b), 400, &before);
    }
    for bad_key in ["nonsense", "AAAA", &key(2)[..20]] {
        let b = json!({"name": "laptop", "public_key": bad_key}).to_string();
        refused(hub, "POST", "/v1/devices", Some(&b), 400, &before);
    }
    let b = json!({"name": "laptop", "group": "nosuchgroup"}).to_string();
    refused(hub, "POST", "/v1/devices", Some(&b), 400, &before);
    let b = r#"{"group": "nosuchgroup"}"#;
    refused(hub, "PATCH", "/v1/devices/tablet", Some(b), 400, &before);
    let b = json!({"name": "laptop", "public_key": key(3), "qr": true}).to_string();
    refused(hub, "POST", "/v1/devices", Some(&b), 400, &before);
    // A PATCH with nothing to change.
    refused(hub, "PATCH", "/v1/devices/tablet", Some("{}"), 400, &before);
    // Missing name.
    refused(hub, "POST", "/v1/devices", Some("{}"), 400, &before);

    // 409: a name (in any case) or a key already registered; a rename onto a taken name.
    refused(
        hub,
        "POST",
        "/v1/devices",
        Some(r#"{"name": "phone"}"#),
        409,
        &before,
    );
    refused(
        hub,
        "POST",
        "/v1/devices",
        Some(r#"{"name": "PHONE"}"#),
        409,
        &before,
    );
    let b = json!({"name": "laptop", "public_key": key(1)}).to_string();
    refused(hub, "POST", "/v1/devices", Some(&b), 409, &before);
    let b = r#"{"name": "phone"}"#;
    refused(hub, "PATCH", "/v1/devices/tablet", Some(b), 409, &before);
}

#[test]
fn malformed_requests_get_400_413_415_405_or_404_and_change_nothing() {
    let s = setup();
    let hub = &s.hub;
    hub.api_ok("POST", "/v1/devices", Some(r#"{"name": "tablet"}"#), 201);
    let before = devices(hub);

    // 400: not JSON, or JSON of the wrong shape.
    for bad in [
        r#"{"name": "#,
        "not json",
        r#"["laptop"]"#,
        r#"{"name": 5}"#,
        r#"{"name": "laptop", "split": "yes"}"#,
    ] {
        refused(hub, "POST", "/v1/devices", Some(bad), 400, &before);
    }
    refused(hub, "PATCH", "/v1/devices/tablet", Some("{"), 400, &before);

    // 413: a body over 64 KiB (otherwise a valid request).
    let big = json!({"name": "laptop", "pad": "a".repeat(70 * 1024)}).to_string();
    let file = s.dir.path().join("big.json");
    std::fs::write(&file, &big).unwrap();
    let sock = hub.api_sock();
    let r = curl(&[
        "--unix-socket",
        sock.to_str().unwrap(),
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", file.display()),
        "http://cloudpc/v1/devices",
    ]);
    assert_eq!(r.code, 413, "{}", r.body);
    assert_eq!(devices(hub), before);

    // 415: a body that is not JSON by its content type.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = curl(&[
            "--unix-socket",
            sock.to_str().unwrap(),
            "-X",
            "POST",
            "-H",
            &format!("Content-Type: {ct}"),
            "--data-binary",
            r#"{"name": "laptop"}"#,
            "http://cloudpc/v1/devices",
        ]);
        assert_eq!(r.code, 415, "{ct}: {}", r.body);
        r.error();
        assert_eq!(devices(hub), before);
    }

    // 405: a route that exists, with a method it does not take.
    refused(hub, "PUT", "/v1/devices", Some("{}"), 405, &before);
    refused(hub, "DELETE", "/v1/devices", None, 405, &before);
    refused(hub, "POST", "/v1/status", Some("{}"), 405, &before);
    refused(hub, "POST", "/v1/devices/tablet", Some("{}"), 405, &before);
    refused(hub, "POST", "/v1/internet", Some("{}"), 405, &before);

    // 404: routes that do not exist.
    refused(hub, "GET", "/v1/nothing", None, 404, &before);
    refused(hub, "GET", "/v2/devices", None, 404, &before);
    refused(hub, "GET", "/", None, 404, &before);
    refused(hub, "GET", "/v1/rules/maybe", None, 404, &before);
}

#[test]
fn rules_through_the_api_are_in_force_when_the_call_returns() {
    let s = setup();
    let hub = &s.hub;
    let before = hub.api_ok("GET", "/v1/rules/block", None, 200);
    assert!(before.is_array(), "{before}");
    assert_eq!(hub.short("runtime.example.test", "A"), ["192.0.2.46"]);

    // Added: normalised, and the very next query is blocked (the cached answer is gone).
    let v = hub.api_ok(
        "POST",
        "/v1/rules/block",
        Some(r#"{"domain": "Runtime.Example.TEST."}"#),
        200,
    );
    assert_eq!(v, json!({"added": "runtime.example.test"}));
    assert_eq!(hub.short("runtime.example.test", "A"), ["0.0.0.0"]);
    assert_eq!(hub.short("sub.runtime.example.test", "A"), ["0.0.0.0"]);
    // Idempotent.
    hub.api_ok(
        "POST",
        "/v1/rules/block",
        Some(r#"{"domain": "runtime.example.test"}"#),
        200,
    );
    let list = hub.api_ok("GET", "/v1/rules/block", None, 200);
    let mut want = before.as_array().unwrap().clone();
    want.push(json!("runtime.example.test"));
    assert_eq!(list.as_array().unwrap(), &want);

    // Bad names are refused and change nothing.
    for bad in [
        "not a domain",
        "",
        "a..b",
        &format!("{}.test", "a".repeat(64)),
    ] {
        let b = json!({ "domain": bad }).to_string();
        let r = hub.api("POST", "/v1/rules/block", Some(&b));
        assert_eq!(r.code, 400, "{bad:?}: {}", r.body);
        r.error();
    }
    let r = hub.api("POST", "/v1/rules/block", Some(r#"{"name": "x.test"}"#));
    assert_eq!(r.code, 400, "{}", r.body);
    assert_eq!(hub.api_ok("GET", "/v1/rules/block", None, 200), list);

    // Removed: answered again at once; removing it again is a 404.
    let v = hub.api_ok("DELETE", "/v1/rules/block/runtime.example.test", None, 200);
    assert_eq!(v, json!({"removed": "runtime.example.test"}));
    assert_eq!(hub.short("runtime.example.test", "A"), ["192.0.2.46"]);
    let r = hub.api("DELETE", "/v1/rules/block/runtime.example.test", None);
    assert_eq!(r.code, 404, "{}", r.body);
    r.error();
    assert_eq!(hub.api_ok("GET", "/v1/rules/block", None, 200), before);

    // Allow beats the list, at once, and goes away at once.
    assert_eq!(hub.short("ads.example.test", "A"), ["0.0.0.0"]);
    let v = hub.api_ok(
        "POST",
        "/v1/rules/allow",
        Some(r#"{"domain": "ads.example.test"}"#),
        200,
    );
    assert_eq!(v, json!({"added": "ads.example.test"}));
    assert_eq!(hub.short("ads.example.test", "A"), ["192.0.2.40"]);
    let allow = hub.api_ok("GET", "/v1/rules/allow", None, 200);
    assert!(
        allow
            .as_array()
            .unwrap()
            .contains(&json!("ads.example.test")),
        "{allow}"
    );
    hub.api_ok("DELETE", "/v1/rules/allow/ads.example.test", None, 200);
    assert_eq!(hub.short("ads.example.test", "A"), ["0.0.0.0"]);
    let r = hub.api("DELETE", "/v1/rules/allow/never-added.test", None);
    assert_eq!(r.code, 404, "{}", r.body);
}

#[test]
fn internet_and_query_log_switch_through_the_api_and_refusals_change_nothing() {
    let s = setup();
    let hub = &s.hub;
    assert_eq!(
        hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": true})
    );
    let v = hub.api_ok("PUT", "/v1/internet", Some(r#"{"internet": false}"#), 200);
    assert_eq!(v, json!({"internet": false}));
    assert_eq!(
        hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": false})
    );
    for bad in [r#"{"internet": "maybe"}"#, "{}", "{"] {
        let r = hub.api("PUT", "/v1/internet", Some(bad));
        assert_eq!(r.code, 400, "{bad}: {}", r.body);
    }
    assert_eq!(
        hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": false})
    );
    hub.api_ok("PUT", "/v1/internet", Some(r#"{"internet": true}"#), 200);
    assert_eq!(
        hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": true})
    );

    // The query log.
    let off = json!({"enabled": false, "recipients": [], "entries": 0, "retention_days": 7});
    assert_eq!(
        log_state(&hub.api_ok("GET", "/v1/querylog", None, 200)),
        off
    );
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let secret = {
        use age::secrecy::ExposeSecret;
        id.to_string().expose_secret().to_string()
    };
    assert!(secret.starts_with("AGE-SECRET-KEY-1"));
    let refusals = [
        json!({"enabled": true, "recipients": ["age1bogus"]}),
        json!({"enabled": true, "recipients": [public, "age1bogus"]}),
        json!({"enabled": true, "recipients": []}),
        json!({"enabled": true}),
        json!({"enabled": true, "recipients": [secret]}),
        json!({"enabled": true, "recipients": [secret.to_lowercase()]}),
    ];
    for body in refusals {
        let r = hub.api("PUT", "/v1/querylog", Some(&body.to_string()));
        assert_eq!(r.code, 400, "{body}: {}", r.body);
        let err = r.error();
        assert!(
            !r.body.to_lowercase().contains(&secret.to_lowercase()[16..]),
            "the secret key was echoed back: {err}"
        );
        assert_eq!(
            log_state(&hub.api_ok("GET", "/v1/querylog", None, 200)),
            off
        );
    }
    assert!(
        !hub.logs()
            .to_lowercase()
            .contains(&secret.to_lowercase()[16..]),
        "the secret key is in the hub's log"
    );
    let on = json!({"enabled": true, "recipients": [public]});
    let v = hub.api_ok("PUT", "/v1/querylog", Some(&on.to_string()), 200);
    assert_eq!(v["enabled"], true, "{v}");
    assert_eq!(v["recipients"], json!([public]), "{v}");
    assert_eq!(hub.api_ok("GET", "/v1/querylog", None, 200), v);
    let v = hub.api_ok("PUT", "/v1/querylog", Some(r#"{"enabled": false}"#), 200);
    assert_eq!(log_state(&v), off);
    assert_eq!(
        log_state(&hub.api_ok("GET", "/v1/querylog", None, 200)),
        off
    );
}

/// A list served over HTTP by `python3 -m http.server` on a unique loopback address.
struct ListServer {
    url: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl ListServer {
    fn start(body: &str) -> ListServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("list.txt"), body).unwrap();
        let ip = unique_ip();
        let proc = Proc(
            std::process::Command::new("python3")
                .args(["-m", "http.server", "8080", "--bind", &ip, "--directory"])
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3"),
        );
        let url = format!("http://{ip}:8080/list.txt");
        assert!(
            eventually(10, || curl(&[&url]).code == 200),
            "list server did not start"
        );
        ListServer {
            url,
            _dir: dir,
            _proc: proc,
        }
    }
}

/// `s` percent-encoded for a query string.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn lists_are_subscribed_updated_and_removed_through_the_api() {
    let s = setup();
    let hub = &s.hub;
    let server = ListServer::start("v4only.example.test\n");
    let before = hub.api_ok("GET", "/v1/lists", None, 200);
    assert_eq!(
        before.as_array().unwrap().len(),
        1,
        "the config's list: {before}"
    );
    assert_eq!(hub.short("v4only.example.test", "A"), ["192.0.2.20"]);

    // Subscribed, downloaded and in force when the call returns.
    let body = json!({ "url": server.url }).to_string();
    let v = hub.api_ok("POST", "/v1/lists", Some(&body), 201);
    assert_eq!(v["added"], server.url.as_str(), "{v}");
    assert!(v["outcome"].is_object() || v["outcome"].is_string(), "{v}");
    assert_eq!(hub.short("v4only.example.test", "A"), ["0.0.0.0"]);
    let lists = hub.api_ok("GET", "/v1/lists", None, 200);
    assert_eq!(lists.as_array().unwrap().len(), 2, "{lists}");
    let cli: Value = serde_json::from_str(&cli_ok(hub, &["lists", "--json"])).unwrap();
    assert_eq!(cli, lists, "`cloudpc lists --json` and GET /v1/lists");

    // Update: all, or one.
    let v = hub.api_ok("POST", "/v1/lists/update", Some("{}"), 200);
    let urls: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert!(urls.contains(&server.url.as_str()), "{v}");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|e| !e["outcome"].is_null()));
    let v = hub.api_ok("POST", "/v1/lists/update", Some(&body), 200);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["url"], server.url.as_str());
    assert_eq!(hub.short("v4only.example.test", "A"), ["0.0.0.0"]);

    // Refusals change nothing (the updates above moved the timestamps: read them again).
    let lists = hub.api_ok("GET", "/v1/lists", None, 200);
    for bad in [
        json!({"url": "not a url"}),
        json!({"url": "ftp://x.test/l"}),
        json!({}),
    ] {
        let r = hub.api("POST", "/v1/lists", Some(&bad.to_string()));
        assert_eq!(r.code, 400, "{bad}: {}", r.body);
        r.error();
    }
    let config_list = s.dir.path().join("test-list.txt").display().to_string();
    for (url, code) in [
        ("http://127.0.0.1:1/never-added.txt", 404),
        (config_list.as_str(), 404),
    ] {
        let r = hub.api(
            "DELETE",
            &format!("/v1/lists?url={}", query_escape(url)),
            None,
        );
        assert_eq!(r.code, code, "{url}: {}", r.body);
    }
    assert_eq!(hub.api_ok("GET", "/v1/lists", None, 200), lists);

    // Removed: answered again at once.
    let path = format!("/v1/lists?url={}", query_escape(&server.url));
    let v = hub.api_ok("DELETE", &path, None, 200);
    assert_eq!(v, json!({"removed": server.url}));
    assert_eq!(hub.short("v4only.example.test", "A"), ["192.0.2.20"]);
    assert_eq!(hub.api("DELETE", &path, None).code, 404);
    assert_eq!(
        hub.api_ok("GET", "/v1/lists", None, 200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(hub.short("ads.example.test", "A"), ["0.0.0.0"]);
}

#[test]
fn status_through_the_api_is_what_cloudpc_status_prints_and_the_socket_is_private() {
    let s = setup();
    let hub = &s.hub;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(hub.api_sock())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "api.sock mode {mode:o}");

    assert_eq!(hub.short("www.example.test", "A"), ["192.0.2.10"]);
    let api = hub.api_ok("GET", "/v1/status", None, 200);
    let cli: Value = serde_json::from_str(&cli_ok(hub, &["status", "--json"])).unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&api), keys(&cli));
    for k in [
        "pid",
        "uptime_secs",
        "dns",
        "cache_entries",
        "filter_rules",
        "list_errors",
        "listen",
        "devices",
    ] {
        assert!(api.get(k).is_some(), "no {k} in {api}");
    }
    assert_eq!(api["pid"], cli["pid"]);
    assert_eq!(api["listen"], cli["listen"]);
    assert_eq!(api["filter_rules"], cli["filter_rules"]);
    assert!(api["dns"]["queries"].as_u64().unwrap() >= 1, "{api}");
    // A name asked twice: the second answer is a cache hit.
    let hits = |v: &Value| v["dns"]["cache_hits"].as_u64().unwrap();
    let h0 = hits(&hub.api_ok("GET", "/v1/status", None, 200));
    assert_eq!(hub.short("www.example.test", "A"), ["192.0.2.10"]);
    let h1 = hits(&hub.api_ok("GET", "/v1/status", None, 200));
    assert_eq!(h1, h0 + 1);
}

#[test]
fn tokens_let_requests_in_on_the_tcp_listener_until_revoked() {
    let s = setup();
    let hub = &s.hub;
    let base = format!("https://{}:{API_PORT}", hub.ip);
    let tcp = |token: Option<&str>, method: &str, path: &str, body: Option<&str>| {
        let url = format!("{base}{path}");
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-k", "-X", method, url.as_str()];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        curl(&args)
    };
    assert_eq!(hub.api_ok("GET", "/v1/tokens", None, 200), json!([]));

    // Created through the socket: shown once.
    let v = hub.api_ok("POST", "/v1/tokens", Some(r#"{"name": "ci"}"#), 201);
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("cpc_") && token.len() > 20, "{v}");
    assert_eq!(v["name"], "ci");
    let id = v["id"].as_u64().unwrap();
    let list = hub.api_ok("GET", "/v1/tokens", None, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["name"], "ci");
    assert!(list[0]["created_at"].as_u64().is_some(), "{list}");
    assert!(
        !list.to_string().contains(&token),
        "the list shows the token"
    );
    assert!(
        !contains(&all_bytes(&hub.state), &token),
        "the token is stored in plaintext"
    );

    // Refused without a token, with a bad or truncated one, or another scheme; refusals
    // change nothing.
    let before = devices(hub);
    for t in [
        None,
        Some("cpc_not-a-token"),
        Some(&token[..token.len() - 1]),
    ] {
        let r = tcp(t, "GET", "/v1/devices", None);
        assert_eq!(r.code, 401, "{t:?}: {}", r.body);
        r.error();
        let r = tcp(t, "POST", "/v1/devices", Some(r#"{"name": "intruder"}"#));
        assert_eq!(r.code, 401, "{t:?}: {}", r.body);
    }
    let r = curl(&[
        "-k",
        "-H",
        &format!("Authorization: Basic {token}"),
        &format!("{base}/v1/devices"),
    ]);
    assert_eq!(r.code, 401, "not a bearer token: {}", r.body);
    assert_eq!(devices(hub), before);

    // Let in with the token: reads and changes, the same as on the socket.
    let r = tcp(Some(&token), "GET", "/v1/devices", None);
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json(), before);
    let r = tcp(
        Some(&token),
        "POST",
        "/v1/devices",
        Some(r#"{"name": "ci-box"}"#),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(names(&devices(hub)), ["ci-box"]);

    // A token made with the CLI works too, and both are listed.
    let out = cli_ok(hub, &["api", "token", "create", "deploy"]);
    let cli_token = out
        .lines()
        .find(|l| l.starts_with("cpc_"))
        .unwrap_or_else(|| panic!("no token line in {out:?}"))
        .trim()
        .to_string();
    assert_ne!(cli_token, token);
    assert_eq!(tcp(Some(&cli_token), "GET", "/v1/status", None).code, 200);
    let listed = cli_ok(hub, &["api", "token", "list"]);
    assert!(
        listed.contains("ci") && listed.contains("deploy"),
        "{listed}"
    );
    assert!(!listed.contains(&token) && !listed.contains(&cli_token));
    let list = hub.api_ok("GET", "/v1/tokens", None, 200);
    let cli_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "deploy")
        .unwrap_or_else(|| panic!("{list}"))["id"]
        .as_u64()
        .unwrap();

    // Revoked through the API: refused at once; the other token still works.
    let v = hub.api_ok("DELETE", &format!("/v1/tokens/{id}"), None, 200);
    assert_eq!(v, json!({"revoked": id}));
    let r = tcp(Some(&token), "GET", "/v1/devices", None);
    assert_eq!(r.code, 401, "a revoked token: {}", r.body);
    assert_eq!(tcp(Some(&cli_token), "GET", "/v1/devices", None).code, 200);
    let r = hub.api("DELETE", "/v1/tokens/999999", None);
    assert_eq!(r.code, 404, "{}", r.body);

    // Revoked through the CLI.
    cli_ok(hub, &["api", "token", "revoke", &cli_id.to_string()]);
    assert_eq!(tcp(Some(&cli_token), "GET", "/v1/devices", None).code, 401);
    let bad = hub.api("POST", "/v1/tokens", Some(r#"{"name": ""}"#));
    assert_eq!(bad.code, 400, "{}", bad.body);
}

#[test]
fn cli_and_api_show_the_same_state_while_the_hub_runs() {
    let s = setup();
    let hub = &s.hub;
    // A device added by the CLI is seen by the API, and the other way round.
    cli_ok(hub, &["device", "add", "laptop"]);
    assert_eq!(
        hub.api_ok("GET", "/v1/devices/laptop", None, 200)["name"],
        "laptop"
    );
    let body = json!({"name": "phone", "public_key": key(7)}).to_string();
    hub.api_ok("POST", "/v1/devices", Some(&body), 201);
    let list =
        || -> Value { serde_json::from_str(&cli_ok(hub, &["device", "list", "--json"])).unwrap() };
    assert_eq!(
        list(),
        devices(hub),
        "`device list --json` and GET /v1/devices"
    );
    assert_eq!(names(&list()), ["laptop", "phone"]);
    let show: Value =
        serde_json::from_str(&cli_ok(hub, &["device", "show", "phone", "--json"])).unwrap();
    assert_eq!(show, hub.api_ok("GET", "/v1/devices/phone", None, 200));

    // Flags and renames through the CLI.
    cli_ok(
        hub,
        &["device", "set", "laptop", "--admin", "--group", "kids"],
    );
    let d = hub.api_ok("GET", "/v1/devices/laptop", None, 200);
    assert_eq!((&d["admin"], &d["group"]), (&json!(true), &json!("kids")));
    cli_ok(hub, &["device", "set", "laptop", "--no-admin"]);
    assert_eq!(
        hub.api_ok("GET", "/v1/devices/laptop", None, 200)["admin"],
        false
    );
    cli_ok(hub, &["device", "rename", "laptop", "desktop"]);
    assert_eq!(hub.api("GET", "/v1/devices/laptop", None).code, 404);
    assert_eq!(
        hub.api_ok("GET", "/v1/devices/desktop", None, 200)["ipv4"],
        d["ipv4"]
    );
    assert_eq!(list(), devices(hub));

    // The CLI's refusals while the hub runs: named, and nothing changes.
    let before = devices(hub);
    cli_fails(hub, &["device", "add", "PHONE"], "already");
    cli_fails(
        hub,
        &["device", "add", "bad_name"],
        "not a valid device name",
    );
    cli_fails(
        hub,
        &["device", "add", "other", "--pubkey", &key(7)],
        "already",
    );
    cli_fails(hub, &["device", "add", "x", "--pubkey", "nonsense"], "key");
    cli_fails(hub, &["device", "add", "x", "--group", "nosuch"], "nosuch");
    cli_fails(hub, &["device", "remove", "nobody"], "nobody");
    cli_fails(hub, &["device", "rename", "desktop", "phone"], "already");
    cli_fails(hub, &["block", "add", "not a domain"], "not a domain");
    assert_eq!(devices(hub), before);

    // Rules.
    cli_ok(hub, &["block", "add", "Tracker.Example.ORG"]);
    let api = hub.api_ok("GET", "/v1/rules/block", None, 200);
    assert!(
        api.as_array()
            .unwrap()
            .contains(&json!("tracker.example.org")),
        "{api}"
    );
    let cli_lines = |kind: &str| -> Vec<Value> {
        cli_ok(hub, &[kind, "list"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| json!(l.trim()))
            .collect()
    };
    assert_eq!(&cli_lines("block"), api.as_array().unwrap());
    hub.api_ok(
        "POST",
        "/v1/rules/allow",
        Some(r#"{"domain": "ok.example.org"}"#),
        200,
    );
    let allow = hub.api_ok("GET", "/v1/rules/allow", None, 200);
    assert_eq!(&cli_lines("allow"), allow.as_array().unwrap());
    cli_ok(hub, &["block", "remove", "tracker.example.org"]);
    let api = hub.api_ok("GET", "/v1/rules/block", None, 200);
    assert!(!api.to_string().contains("tracker.example.org"), "{api}");
    cli_fails(
        hub,
        &["block", "remove", "tracker.example.org"],
        "tracker.example.org",
    );

    // Internet and the query log.
    cli_ok(hub, &["internet", "off"]);
    assert_eq!(
        hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": false})
    );
    cli_ok(hub, &["internet", "on"]);
    assert_eq!(
        hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": true})
    );
    let public = age::x25519::Identity::generate().to_public().to_string();
    cli_ok(hub, &["querylog", "enable", "--recipient", &public]);
    let api = hub.api_ok("GET", "/v1/querylog", None, 200);
    assert_eq!(
        (&api["enabled"], &api["recipients"]),
        (&json!(true), &json!([public]))
    );
    let cli: Value = serde_json::from_str(&cli_ok(hub, &["querylog", "status", "--json"])).unwrap();
    assert_eq!(cli, api);
    cli_fails(
        hub,
        &["querylog", "enable", "--recipient", "age1bogus"],
        "age1bogus",
    );
    assert_eq!(hub.api_ok("GET", "/v1/querylog", None, 200), api);
    cli_ok(hub, &["querylog", "disable"]);
    assert_eq!(
        hub.api_ok("GET", "/v1/querylog", None, 200)["enabled"],
        false
    );

    // Removal.
    cli_ok(hub, &["device", "remove", "desktop"]);
    assert_eq!(hub.api("GET", "/v1/devices/desktop", None).code, 404);
    assert_eq!(names(&devices(hub)), ["phone"]);
}

#[test]
fn cli_writes_the_store_when_no_hub_runs_even_after_a_crash() {
    let mut s = setup_stopped();
    // No hub: straight to the store.
    cli_ok(&s.hub, &["device", "add", "laptop", "--admin"]);
    cli_ok(&s.hub, &["block", "add", "runtime.example.test"]);
    cli_ok(&s.hub, &["internet", "off"]);
    assert!(!s.hub.api_sock().exists());
    let offline: Value =
        serde_json::from_str(&cli_ok(&s.hub, &["device", "list", "--json"])).unwrap();
    assert_eq!(names(&offline), ["laptop"]);
    assert_eq!(offline[0]["admin"], true);
    // The same checks as through the API.
    cli_fails(&s.hub, &["device", "add", "LAPTOP"], "already");
    cli_fails(
        &s.hub,
        &["device", "add", "bad_name"],
        "not a valid device name",
    );

    // The hub starts with what the CLI wrote.
    s.hub.launch();
    s.hub.wait_api();
    assert_eq!(devices(&s.hub), offline);
    let rules = s.hub.api_ok("GET", "/v1/rules/block", None, 200);
    assert!(
        rules
            .as_array()
            .unwrap()
            .contains(&json!("runtime.example.test")),
        "{rules}"
    );
    assert_eq!(s.hub.short("runtime.example.test", "A"), ["0.0.0.0"]);
    assert_eq!(
        s.hub.api_ok("GET", "/v1/internet", None, 200),
        json!({"internet": false})
    );

    // A crash leaves the socket file; the CLI still works, straight to the store.
    s.hub.crash();
    cli_ok(&s.hub, &["block", "remove", "runtime.example.test"]);
    cli_ok(&s.hub, &["device", "add", "phone"]);
    s.hub.launch();
    s.hub.wait_api();
    assert_eq!(s.hub.short("runtime.example.test", "A"), ["192.0.2.46"]);
    assert_eq!(names(&devices(&s.hub)), ["laptop", "phone"]);

    // After a clean stop too.
    s.hub.stop();
    cli_ok(&s.hub, &["device", "remove", "phone"]);
    let after: Value =
        serde_json::from_str(&cli_ok(&s.hub, &["device", "list", "--json"])).unwrap();
    assert_eq!(names(&after), ["laptop"]);
}

#[test]
fn cli_changes_are_in_force_when_the_command_returns() {
    let s = setup();
    let hub = &s.hub;
    // Asked first, so a stale cached answer would show.
    assert_eq!(hub.short("runtime.example.test", "A"), ["192.0.2.46"]);
    cli_ok(hub, &["block", "add", "runtime.example.test"]);
    assert_eq!(hub.short("runtime.example.test", "A"), ["0.0.0.0"]);
    assert_eq!(hub.short("runtime.example.test", "AAAA"), ["::"]);
    cli_ok(hub, &["block", "remove", "runtime.example.test"]);
    assert_eq!(hub.short("runtime.example.test", "A"), ["192.0.2.46"]);

    assert_eq!(hub.short("ads.example.test", "A"), ["0.0.0.0"]);
    cli_ok(hub, &["allow", "add", "ads.example.test"]);
    assert_eq!(hub.short("ads.example.test", "A"), ["192.0.2.40"]);
    cli_ok(hub, &["allow", "remove", "ads.example.test"]);
    assert_eq!(hub.short("ads.example.test", "A"), ["0.0.0.0"]);

    // Device names answer (and stop answering) at once.
    assert_eq!(hub.rcode("laptop.mesh", "A"), "NXDOMAIN");
    cli_ok(hub, &["device", "add", "laptop"]);
    let v4 = hub.api_ok("GET", "/v1/devices/laptop", None, 200)["ipv4"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(hub.short("laptop.mesh", "A"), [v4.as_str()]);
    cli_ok(hub, &["device", "rename", "laptop", "desktop"]);
    assert_eq!(hub.short("desktop.mesh", "A"), [v4.as_str()]);
    assert_eq!(hub.rcode("laptop.mesh", "A"), "NXDOMAIN");
    cli_ok(hub, &["device", "remove", "desktop"]);
    assert_eq!(hub.rcode("desktop.mesh", "A"), "NXDOMAIN");
}
