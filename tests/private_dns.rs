//! Private DNS off the tunnel, end to end (root only): a hub in a network namespace gets its
//! certificate from Pebble (Let's Encrypt's test CA) in the test internet, validated with
//! TLS-ALPN-01 against the hub's own port 443, and serves DoT and DoH on its public address to
//! devices that run no tunnel at all and name themselves by their DNS token. kdig, curl and a
//! Python DoT client are the clients; Knot serves the zone with the hub's name
//! (`cloudpc.test`, `*.cloudpc.test` → 203.0.113.1).

#[path = "common/netns.rs"]
mod netns;
mod support;

use std::time::Duration;

use netns::{HubRun, HubWorld, HUB_PUBLIC, WEB};
use support::Knot;

const UPSTREAM: &str = "192.0.2.53";
const PEBBLE: &str = "192.0.2.60";
const HOST: &str = "cloudpc.test";
/// Resolves to the web server for the laptop; the phone's group blocks it.
const SITE: &str = "web64.example.test";

/// Makes a CA and a certificate for Pebble's own HTTPS (its ACME API) at `PEBBLE`.
fn pebble_tls(w: &HubWorld, dir: &std::path::Path) {
    let d = dir.display();
    w.lab.sh_ok(
        "inet",
        &format!(
            "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
             -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=pebble \
             -keyout key.pem -out req.pem 2>/dev/null && \
             printf 'subjectAltName=IP:{PEBBLE}\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && \
             openssl x509 -req -in req.pem -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
             -extfile ext.cnf -out cert.pem 2>/dev/null"
        ),
    );
}

fn start_pebble(w: &mut HubWorld, dir: &std::path::Path) -> u32 {
    std::fs::write(
        dir.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "{PEBBLE}:14000", "managementListenAddress": "{PEBBLE}:15000",
            "certificate": "{0}/cert.pem", "privateKey": "{0}/key.pem", "httpPort": 80, "tlsPort": 443,
            "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            dir.display()
        ),
    )
    .unwrap();
    let log = dir.join("pebble.log");
    let pid = w.lab.spawn(
        "inet",
        &format!(
            "env PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config {}/pebble.json -dnsserver {UPSTREAM}:53",
            dir.display()
        ),
        &log,
    );
    let up = w.lab.eventually(
        "inet",
        &format!(
            "curl -sf -m 2 --cacert {}/ca.pem https://{PEBBLE}:14000/dir",
            dir.display()
        ),
        Duration::from_secs(15),
    );
    assert!(
        up,
        "pebble did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    pid
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn dns_of(hub: &HubRun, name: &str) -> serde_json::Value {
    json(&hub.cli_ok(&["device", "show", name, "--dns", "--json"]))
}

fn kdig(w: &HubWorld, ns: &str, root: &str, sni: &str, name: &str) -> String {
    kdig_as(w, ns, root, sni, sni, name)
}

/// kdig over DoT checking the certificate for `host` while sending `sni` (a name the
/// certificate need not cover, so the question reaches the server; empty: no server name).
fn kdig_as(w: &HubWorld, ns: &str, root: &str, host: &str, sni: &str, name: &str) -> String {
    let sni = if sni.is_empty() {
        "+notls-sni".to_string()
    } else {
        format!("+tls-sni={sni}")
    };
    let o = w.lab.sh(
        ns,
        &format!(
            "kdig +time=3 +retry=0 +tls-ca={root} +tls-hostname={host} {sni} @{HUB_PUBLIC} {name} A"
        ),
    );
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn status_of(answer: &str) -> &str {
    answer
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split([',', ';']).next())
        .unwrap_or("(no answer)")
}

/// `curl` through the hub's DoH at `url` for `SITE`'s web page: the page, or curl's exit code.
fn curl_doh(w: &HubWorld, ns: &str, root: &str, url: &str) -> Result<String, String> {
    let o = w.lab.sh(
        ns,
        &format!(
            "curl -sS -m 5 --cacert {root} --resolve {HOST}:443:{HUB_PUBLIC} --doh-url {url} http://{SITE}/hello"
        ),
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// The HTTP status of a DoH GET for `SITE` at `path`.
fn doh_code(w: &HubWorld, ns: &str, root: &str, path: &str) -> String {
    // The query for web64.example.test A, base64url (id 0).
    let q = "AAABAAABAAAAAAAABXdlYjY0B2V4YW1wbGUEdGVzdAAAAQAB";
    let o = w.lab.sh(
        ns,
        &format!(
            "curl -s -o /dev/null -w '%{{http_code}}' -m 5 --cacert {root} --resolve {HOST}:443:{HUB_PUBLIC} 'https://{HOST}{path}?dns={q}'"
        ),
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn certificates_from_pebble_per_device_doh_and_dot_off_the_tunnel() {
    if !netns::root_or_skip("private_dns") || !support::have("pebble") {
        return;
    }
    let mut w = HubWorld::new("cppd");
    w.lab.sh_ok(
        "inet",
        &format!("ip addr add {UPSTREAM}/32 dev lo && ip addr add {PEBBLE}/32 dev lo"),
    );
    let inet = w.lab.ns("inet");
    let _knot = Knot::start_with(UPSTREAM, &["ip", "netns", "exec", &inet]);
    let pdir = w.lab.dir.path().join("pebble");
    std::fs::create_dir_all(&pdir).unwrap();
    pebble_tls(&w, &pdir);
    let pebble = start_pebble(&mut w, &pdir);
    let pd = pdir.display();

    let mut hub = w.hub(&format!(
        "[dns]\nupstreams = [\"udp://{UPSTREAM}:53\"]\npublic = true\ntcp_idle_timeout = 60\n\n\
         [tls]\ndomain = \"{HOST}\"\nacme = true\nacme_directory = \"https://{PEBBLE}:14000/dir\"\n\
         acme_ca = \"{pd}/ca.pem\"\n\n[groups.kids]\nblock = [\"{SITE}\"]\n"
    ));
    w.add_device_ns(1, false);
    w.add_device_ns(2, false);
    hub.add_device("phone", true, &["--group", "kids"]);
    hub.add_device("laptop", true, &[]);
    let phone = dns_of(&hub, "phone");
    let laptop = dns_of(&hub, "laptop");
    let (phone_tok, laptop_tok) = (
        phone["token"].as_str().unwrap().to_string(),
        laptop["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        laptop["doh_url"].as_str().unwrap(),
        format!("https://{HOST}/dns-query/{laptop_tok}")
    );
    assert_eq!(
        laptop["dot_host"].as_str().unwrap(),
        format!("{laptop_tok}.{HOST}")
    );
    assert_ne!(phone_tok, laptop_tok);
    w.start_hub(&mut hub);

    // --- The certificate comes from the CA, for the host and every device's DoT name.
    let mut tls = serde_json::Value::Null;
    let got = support::eventually(60, || {
        tls = json(&hub.cli_ok(&["tls", "status", "--json"]));
        tls["served"]["source"] == "acme"
    });
    assert!(got, "no certificate from pebble: {tls}\n{}", hub.log());
    let names: Vec<String> = tls["served"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for n in [
        HOST.to_string(),
        format!("{phone_tok}.{HOST}"),
        format!("{laptop_tok}.{HOST}"),
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    let status = hub.cli_ok(&["status"]);
    assert!(status.contains("from the ACME CA"), "{status}");
    let root = format!("{pd}/root.pem");
    w.lab.sh_ok(
        "inet",
        &format!("curl -sf --cacert {pd}/ca.pem https://{PEBBLE}:15000/roots/0 > {root}"),
    );

    // --- DoT with the device's name, from namespaces with no tunnel: each device's policy.
    let lap = kdig(&w, "d2", &root, &format!("{laptop_tok}.{HOST}"), SITE);
    assert!(lap.contains(WEB) && status_of(&lap) == "NOERROR", "{lap}");
    let ph = kdig(&w, "d1", &root, &format!("{phone_tok}.{HOST}"), SITE);
    assert_eq!(status_of(&ph), "NOERROR", "{ph}");
    assert!(
        !ph.contains(WEB) && ph.contains("0.0.0.0"),
        "the phone's group blocks it: {ph}\n{}\n{}",
        hub.cli_ok(&["status", "--json"]),
        hub.log()
    );
    // Counted as those devices.
    let st = json(&hub.cli_ok(&["status", "--json"]));
    let queries = |name: &str| {
        st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["queries"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    assert!(queries("phone") >= 1 && queries("laptop") >= 1, "{st}");

    // --- DoH with the token in the path, through curl's own DoH client.
    let page = curl_doh(
        &w,
        "d2",
        &root,
        &format!("https://{HOST}/dns-query/{laptop_tok}"),
    );
    assert!(
        page.as_deref()
            .is_ok_and(|p| p.contains("hello from the internet")),
        "{page:?}"
    );
    let blocked = curl_doh(
        &w,
        "d1",
        &root,
        &format!("https://{HOST}/dns-query/{phone_tok}"),
    );
    assert!(
        blocked.is_err(),
        "the phone reached a name its group blocks: {blocked:?}"
    );

    // --- Never an open resolver: no token or an unknown one is refused (valid one answered).
    let bad_tok = "abcdefghijklmnopqrst";
    // An unknown token, a server name for another domain, none at all, and the bare host
    // name; each checks the certificate for HOST, so the question does reach the hub.
    for sni in [
        format!("{bad_tok}.{HOST}"),
        format!("{laptop_tok}.example.test"),
        String::new(),
        HOST.to_string(),
    ] {
        let a = kdig_as(&w, "d2", &root, HOST, &sni, SITE);
        assert_eq!(status_of(&a), "REFUSED", "server name {sni:?}: {a}");
    }
    assert_eq!(
        doh_code(&w, "d2", &root, &format!("/dns-query/{bad_tok}")),
        "403"
    );
    assert_eq!(doh_code(&w, "d2", &root, "/dns-query"), "403");
    assert_eq!(
        doh_code(&w, "d2", &root, &format!("/dns-query/{laptop_tok}")),
        "200"
    );
    assert_eq!(
        doh_code(&w, "d2", &root, "/"),
        "404",
        "the admin page is not public"
    );

    // --- A revoked token stops at once; the new one works at once over DoH.
    let printed = hub.cli_ok(&["device", "set", "laptop", "--new-dns-token"]);
    let new_tok = dns_of(&hub, "laptop")["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_tok, laptop_tok);
    assert!(
        printed.contains(&format!("DoH: https://{HOST}/dns-query/{new_tok}")),
        "{printed}"
    );
    assert_eq!(
        doh_code(&w, "d2", &root, &format!("/dns-query/{laptop_tok}")),
        "403"
    );
    assert_eq!(
        status_of(&kdig_as(
            &w,
            "d2",
            &root,
            HOST,
            &format!("{laptop_tok}.{HOST}"),
            SITE
        )),
        "REFUSED"
    );
    assert_eq!(
        doh_code(&w, "d2", &root, &format!("/dns-query/{new_tok}")),
        "200"
    );
    // The new DoT name joins the certificate once the CA has validated it.
    let new_sni = format!("{new_tok}.{HOST}");
    let covered = support::eventually(60, || {
        let t = json(&hub.cli_ok(&["tls", "status", "--json"]));
        t["served"]["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == new_sni.as_str())
    });
    assert!(
        covered,
        "the new DoT name never joined the certificate:\n{}",
        hub.log()
    );
    let lap = kdig(&w, "d2", &root, &new_sni, SITE);
    assert!(lap.contains(WEB), "{lap}");

    // --- A forced renewal swaps the certificate while a DoT connection stays open.
    let go = w.lab.dir.path().join("go");
    let out = w.lab.dir.path().join("dot_client.out");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/dot_client.py");
    let client = w.lab.spawn(
        "d2",
        &format!(
            "python3 -u {script} {HUB_PUBLIC} {new_sni} {root} {SITE} {}",
            go.display()
        ),
        &out,
    );
    assert!(support::eventually(15, || std::fs::read_to_string(&out)
        .unwrap_or_default()
        .starts_with("first ")));
    let before = json(&hub.cli_ok(&["tls", "status", "--json"]));
    let renewed = json(&{
        hub.cli_ok(&["tls", "renew"]);
        hub.cli_ok(&["tls", "status", "--json"])
    });
    assert_ne!(
        before["served"]["sha256"], renewed["served"]["sha256"],
        "{renewed}"
    );
    std::fs::write(&go, "").unwrap();
    let done = support::eventually(20, || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("new ")
    });
    assert!(
        done,
        "the DoT client did not finish: {}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    w.lab.stop(client);
    let text = std::fs::read_to_string(&out).unwrap();
    let line = |tag: &str| {
        text.lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line: {text}"))
            .split(' ')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (first, same, new) = (line("first "), line("same "), line("new "));
    assert_eq!(first[2], "ok", "{text}");
    assert_eq!(
        same[1], "ok",
        "the open connection broke at the renewal: {text}"
    );
    assert_eq!(new[2], "ok", "{text}");
    assert_eq!(
        first[1],
        before["served"]["sha256"].as_str().unwrap(),
        "{text}"
    );
    assert_eq!(
        new[1],
        renewed["served"]["sha256"].as_str().unwrap(),
        "{text}"
    );

    // --- The CA down: the renewal fails clearly, the certificate in force stays.
    w.lab.stop(pebble);
    let o = hub.cli().args(["tls", "renew"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("the CA gave no certificate"),
        "{err}"
    );
    let after = json(&hub.cli_ok(&["tls", "status", "--json"]));
    assert_eq!(after["served"]["sha256"], renewed["served"]["sha256"]);
    assert!(after["acme"]["last_error"].is_string(), "{after}");
    let lap = kdig(&w, "d2", &root, &new_sni, SITE);
    assert!(lap.contains(WEB), "still served: {lap}");

    // --- With the history on, an off-tunnel query is logged as its device: an owner device
    // (tunnel up) pulls it. Before `enable` nothing of the phone's queries is stored.
    w.add_device_ns(3, false);
    let conf = hub.add_device("owner", true, &["--owner"]);
    let (hub4, _) = netns::conf_addrs(&conf, "DNS");
    w.lab.wg_up("d3", &conf);
    let id_file = hub.enable_querylog(w.lab.dir.path());
    let logged = "v4only.example.test";
    let ph = kdig(&w, "d1", &root, &format!("{phone_tok}.{HOST}"), logged);
    assert_eq!(status_of(&ph), "NOERROR", "{ph}");
    let pull = format!(
        "{} --state-dir {} querylog pull --hub {hub4} --identity {} --json",
        netns::cloudpc_bin(),
        w.lab.dir.path().join("pull-d3").display(),
        id_file.display()
    );
    // The log writer batches its writes: pull (each pull fetches what is new) for at most 2 s.
    let mut history = String::new();
    let end = std::time::Instant::now() + Duration::from_secs(2);
    while !history.contains(logged) && std::time::Instant::now() < end {
        let o = w.lab.sh_timeout("d3", &pull, 5);
        assert!(o.status.success(), "pull: {o:?}\n{}", hub.log());
        history.push_str(&String::from_utf8_lossy(&o.stdout));
        std::thread::sleep(Duration::from_millis(100));
    }
    let entry = history
        .lines()
        .map(json)
        .find(|e| e["name"] == logged)
        .unwrap_or_else(|| panic!("the phone's DoT query is not in the history: {history}"));
    assert_eq!(entry["device"], "phone", "{entry}");
    assert!(
        !history.contains(SITE),
        "a query asked before `querylog enable` was stored: {history}"
    );

    // --- The Apple profile: valid XML, the DoH URL, the right payload types.
    let profile = w.lab.dir.path().join("laptop.mobileconfig");
    hub.cli_ok(&[
        "device",
        "show",
        "laptop",
        "--dns-profile",
        profile.to_str().unwrap(),
    ]);
    let check = format!(
        "import plistlib, sys, xml.etree.ElementTree as ET\n\
         ET.parse(sys.argv[1])\n\
         p = plistlib.load(open(sys.argv[1], 'rb'))\n\
         assert p['PayloadType'] == 'Configuration', p\n\
         d = p['PayloadContent'][0]\n\
         assert d['PayloadType'] == 'com.apple.dnsSettings.managed', d\n\
         assert d['DNSSettings']['DNSProtocol'] == 'HTTPS', d\n\
         assert d['DNSSettings']['ServerURL'] == 'https://{HOST}/dns-query/{new_tok}', d\n\
         assert p['PayloadUUID'] != d['PayloadUUID']\n\
         print('profile ok')\n"
    );
    let o = std::process::Command::new("python3")
        .args(["-c", &check, profile.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("profile ok"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
