//! The admin page in a real headless Chromium (Debian's chromium + chromium-driver, driven
//! over WebDriver by fantoccini), running on a device namespace behind a stock WireGuard
//! tunnel (root only). The dashboard lists the devices; a device added on the page comes up
//! from the QR code shown there (decoded with zbarimg) and is then online on the dashboard;
//! adding a list by URL and "update now" show its status; "test a domain" names the list and
//! rule; internet off for one device from the page cuts that
//! device's internet only; off the tunnel, the password login, a forged CSRF token, a cookie
//! replayed from a non-admin device, session revocation and logout; and the history,
//! decrypted in the page with the owner's key, equals `cloudpc querylog pull`. The
//! dashboard's first-load size and render time are printed (reported, not asserted).

#[path = "common/browser.rs"]
mod browser;
#[path = "common/netns.rs"]
mod netns;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use browser::{browser, DriverLink};
use fantoccini::{Client, Locator};
use netns::{conf_addrs, HubWorld, WEB};
use support::Knot;

const UPSTREAM: &str = "192.0.2.53";

/// The "test a domain" table for `name`, as text.
async fn verdicts(b: &Client, base: &str, name: &str) -> String {
    b.goto(&format!("{base}/filtering?test={name}"))
        .await
        .unwrap();
    let t = b.find(Locator::Css("table.verdicts")).await.unwrap();
    t.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_works_in_a_real_browser_over_the_tunnel() {
    if !netns::root_or_skip("admin_browser") {
        return;
    }
    if !support::have("chromedriver") {
        panic!("chromedriver (apt packages chromium and chromium-driver) must be installed");
    }
    let mut w = HubWorld::new("cpbrw");
    w.lab
        .sh_ok("inet", &format!("ip addr add {UPSTREAM}/32 dev lo"));
    let inet = w.lab.ns("inet");
    let _knot = Knot::start_with(UPSTREAM, &["ip", "netns", "exec", &inet]);
    let list = w.lab.dir.path().join("my-list.txt");
    std::fs::write(
        &list,
        "! a test list\n||listed.example.test^\n0.0.0.0 other.example.test\n",
    )
    .unwrap();
    let mut hub = w.hub(&format!(
        "[dns]\nupstreams = [\"udp://{UPSTREAM}:53\"]\n[filter]\nlists = [\"{}\"]\nblock = [\"tracker.example.test\"]\n[groups.kids]\nblock = [\"games.example.test\"]\n",
        list.display()
    ));
    for n in 1..=2 {
        w.add_device_ns(n, false);
    }
    let c1 = hub.add_device("laptop", true, &["--owner"]);
    hub.add_device("tv", true, &["--group", "kids"]);
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &c1);
    let (hub4, _) = conf_addrs(&c1, "DNS");
    let base = format!("https://{hub4}");
    // The admin listener comes up a moment after the hub's UAPI socket (start_hub's signal).
    assert!(w.lab.eventually(
        "d1",
        &format!("curl -sk -m 1 -o /dev/null {base}/"),
        Duration::from_secs(10)
    ));
    let link = DriverLink::new(&w, "d1", 0);
    let b = browser(&mut w, "d1", &link).await;

    // The dashboard lists the devices; its first load is measured in the browser.
    b.goto(&format!("{base}/")).await.unwrap();
    let body = b
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("laptop") && body.contains("tv"), "{body}");
    let perf = b
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];
             const r = performance.getEntriesByType('resource');
             return [n.transferSize + r.reduce((s, e) => s + e.transferSize, 0),
                     n.responseEnd - n.requestStart, n.loadEventEnd - n.startTime];",
            vec![],
        )
        .await
        .unwrap();
    eprintln!(
        "dashboard first load: {} bytes transferred, response {:.1} ms, loaded in {:.1} ms",
        perf[0],
        perf[1].as_f64().unwrap_or(0.0),
        perf[2].as_f64().unwrap_or(0.0)
    );

    // Add a device from the page: its QR code brings a stock WireGuard device up.
    b.goto(&format!("{base}/devices")).await.unwrap();
    let form = b
        .form(Locator::Css("form[action='/devices/add']"))
        .await
        .unwrap();
    form.set_by_name("name", "phone").await.unwrap();
    form.submit().await.unwrap();
    let img = match b
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("img#qr"))
        .await
    {
        Ok(i) => i,
        Err(e) => {
            // A network error page names its code (ERR_...): say it first.
            let src = b.source().await.unwrap_or_default();
            let code = src
                .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .find(|w| w.starts_with("ERR_"))
                .unwrap_or("")
                .to_string();
            panic!("{e} {code}\n{src}\n{}", hub.log())
        }
    };
    let src = img.attr("src").await.unwrap().expect("a QR image");
    let png = src
        .strip_prefix("data:image/png;base64,")
        .expect("an embedded PNG");
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png)
        .unwrap();
    let path = w.lab.dir.path().join("qr.png");
    std::fs::write(&path, png).unwrap();
    let zbar = Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(&path)
        .output()
        .expect("zbarimg (apt package zbar-tools)");
    let conf = String::from_utf8_lossy(&zbar.stdout).into_owned();
    assert!(conf.contains("PrivateKey"), "{conf}");
    w.lab.wg_up("d2", &conf);
    assert!(
        w.lab.eventually(
            "d2",
            &format!("dig @{hub4} +time=1 +tries=1 +short www.example.test | grep -q 192.0.2.10"),
            Duration::from_secs(5)
        ),
        "the device from the QR code has DNS through the hub"
    );
    b.goto(&format!("{base}/")).await.unwrap();
    let rows = b
        .find_all(Locator::Css("table.devices tr.online td.name"))
        .await
        .unwrap();
    let mut online = Vec::new();
    for r in rows {
        online.push(r.text().await.unwrap());
    }
    assert!(online.contains(&"phone".to_string()), "{online:?}");

    // "Test a domain" names the rule.
    let v = verdicts(&b, &base, "ads.tracker.example.test").await;
    assert!(
        v.contains("blocked") && v.contains("block rule `tracker.example.test`"),
        "{v}"
    );
    // For each group: the kids' own rule blocks a name the default policy lets through.
    b.goto(&format!("{base}/filtering?test=games.example.test"))
        .await
        .unwrap();
    let rows = b.find_all(Locator::Css("table.verdicts tr")).await.unwrap();
    let mut by_group = Vec::new();
    for r in rows.iter().skip(1) {
        by_group.push(r.text().await.unwrap());
    }
    assert!(
        by_group.iter().any(|r| r.starts_with("default passes")),
        "{by_group:?}"
    );
    assert!(
        by_group
            .iter()
            .any(|r| r.starts_with("kids blocked") && r.contains("`games.example.test`")),
        "{by_group:?}"
    );
    let groups = b
        .find(Locator::Css("table.groups"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(groups.contains("kids") && groups.contains("tv"), "{groups}");
    let v = verdicts(&b, &base, "ads.listed.example.test").await;
    assert!(
        v.contains("blocked")
            && v.contains("my-list.txt")
            && v.contains("`||listed.example.test^`"),
        "{v}"
    );
    let v = verdicts(&b, &base, "www.example.test").await;
    assert!(v.contains("passes"), "{v}");

    // Adding a list by URL and "update now" show its status; its rules are in force.
    std::fs::write(
        w.web_root.join("extra-list.txt"),
        "||from-url.example.test^\n",
    )
    .unwrap();
    let url = format!("http://{WEB}/extra-list.txt");
    b.goto(&format!("{base}/filtering")).await.unwrap();
    let f = b
        .form(Locator::Css("form[action='/lists/add']"))
        .await
        .unwrap();
    f.set_by_name("url", &url).await.unwrap();
    f.submit().await.unwrap();
    let row = format!("//tr[td[@class='url' and text()='{url}']]");
    let added = b
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::XPath(&row))
        .await
        .expect("the new list's row")
        .text()
        .await
        .unwrap();
    assert!(
        added.contains("updated") && added.contains(" 1 ") && added.contains("UTC"),
        "{added}"
    );
    // The same page comes back: wait until the one shown now is gone before reading it.
    let old = b.find(Locator::XPath(&row)).await.unwrap();
    b.form(Locator::XPath(&format!(
        "{row}//form[@action='/lists/update']"
    )))
    .await
    .unwrap()
    .submit()
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    while old.text().await.is_ok() {
        assert!(
            Instant::now() < end,
            "the page did not reload after update now"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = b
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::XPath(&format!(
            "{row}[contains(., 'unchanged') or contains(., 'updated')]"
        )))
        .await
        .expect("the list's row after update now")
        .text()
        .await
        .unwrap();
    assert!(again.contains("UTC"), "{again}");
    let v = verdicts(&b, &base, "ads.from-url.example.test").await;
    assert!(v.contains("blocked") && v.contains("extra-list.txt"), "{v}");

    // Internet off for one device from the page: that device only, at once; back on.
    let fetch = |w: &HubWorld, dev: &str| {
        w.lab
            .sh_timeout(dev, &format!("curl -sf -m 2 http://{WEB}/hello"), 4)
            .status
            .success()
    };
    assert!(fetch(&w, "d2") && fetch(&w, "d1"), "internet before");
    let switch = "//tr[td[@class='name' and text()='phone']]//form[@action='/devices/internet']";
    b.goto(&format!("{base}/devices")).await.unwrap();
    b.form(Locator::XPath(switch))
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
    let state = "//tr[td[@class='name' and text()='phone']]//span[@class='inet']";
    let shown = |want: &'static str| format!("{state}[text()='{want}']");
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(&shown("off")))
        .await
        .expect("the page says phone's internet is off");
    assert!(!fetch(&w, "d2"), "phone's internet is off");
    assert!(fetch(&w, "d1"), "the laptop's is not");
    b.form(Locator::XPath(switch))
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(&shown("on")))
        .await
        .expect("the page says phone's internet is on");
    assert!(fetch(&w, "d2"), "phone's internet back on");
    // History: the owner's identity decrypts the query log in the page, which equals what
    // `cloudpc querylog pull` prints, and the identity is never sent anywhere.
    let id = age::x25519::Identity::generate();
    let key_path = w.lab.dir.path().join("owner-key.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(
            &key_path,
            format!("# owner\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
    }
    let public = id.to_public().to_string();
    hub.cli_ok(&["querylog", "enable", "--recipient", &public]);
    for name in [
        "www.example.test",
        "fine.example.test",
        "ads.tracker.example.test",
    ] {
        w.lab.sh_timeout(
            "d1",
            &format!("dig @{hub4} +time=2 +tries=1 +short {name} A"),
            4,
        );
    }
    let pull_dir = w.lab.dir.path().join("pull-state");
    // Chromium on d1 asks the hub's DNS for its own names too (autofill, hints) at moments the
    // test does not control; both sides of the comparison keep only the test's own names.
    let ours = |n: &str| n.ends_with(".example.test");
    let pulled = |w: &HubWorld| -> Vec<(String, String)> {
        let o = w.lab.sh_ok(
            "d1",
            &format!(
                "{} --state-dir {} querylog pull --hub {hub4} --identity {} --since 1h --json",
                netns::cloudpc_bin(),
                pull_dir.display(),
                key_path.display()
            ),
        );
        let mut v: Vec<(String, String)> = o
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_string(),
                    e["verdict"].as_str().unwrap_or("").to_string(),
                )
            })
            .filter(|(n, _)| ours(n))
            .collect();
        v.sort();
        v
    };
    let mut want = pulled(&w);
    for _ in 0..20 {
        if want.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        want = pulled(&w);
    }
    assert!(
        want.iter()
            .any(|(n, v)| n.starts_with("ads.tracker") && v == "blocked"),
        "{want:?}"
    );
    b.goto(&format!("{base}/history")).await.unwrap();
    let input = b.find(Locator::Id("h-identity")).await.unwrap();
    input
        .send_keys(&key_path.display().to_string())
        .await
        .unwrap();
    let status = b
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::XPath(
            "//p[@id='h-status' and contains(., 'Decrypted')]",
        ))
        .await;
    assert!(status.is_ok(), "{}", b.source().await.unwrap_or_default());
    let mut got = Vec::new();
    for row in b.find_all(Locator::Css("tr.entry")).await.unwrap() {
        let cells = row.find_all(Locator::Css("td")).await.unwrap();
        let name = cells[2].text().await.unwrap();
        let verdict = cells[4].text().await.unwrap();
        if ours(&name) {
            got.push((name, verdict));
        }
    }
    got.sort();
    assert_eq!(got, want, "the page's history is what querylog pull prints");
    // The browser's network log: only this page's own requests, none carrying the key.
    let urls = b
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    let secret = {
        use age::secrecy::ExposeSecret;
        id.to_string().expose_secret().to_string()
    };
    for u in urls.as_array().unwrap() {
        let u = u.as_str().unwrap();
        assert!(u.starts_with(&format!("{base}/")), "{u}");
        assert!(
            u.ends_with("/history.js")
                || u.contains("/history/entries?since=")
                || u.ends_with("/style.css"),
            "{u}"
        );
        assert!(!u.contains(&secret[16..40]), "{u}");
    }
    b.close().await.unwrap();

    // Off the tunnel (here on the Cloud PC itself, as through an SSH tunnel): the password.
    hub.set_admin_password("correct horse battery");
    assert!(w.lab.eventually(
        "hub",
        "curl -sk -m 1 -o /dev/null https://127.0.0.1/login",
        Duration::from_secs(10)
    ));
    let hub_link = DriverLink::new(&w, "hub", 1);
    let b = browser(&mut w, "hub", &hub_link).await;
    let local = "https://127.0.0.1";
    let wait = |b: &Client, css: &'static str| {
        let b = b.clone();
        async move {
            b.wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
        }
    };
    let login = |b: &Client, password: &'static str| {
        let b = b.clone();
        async move {
            b.goto(&format!("{local}/")).await.unwrap();
            let f = b.form(Locator::Css("form[action='/login']")).await.unwrap();
            f.set_by_name("password", password).await.unwrap();
            f.submit().await.unwrap();
        }
    };
    login(&b, "wrong password!").await;
    let e = wait(&b, "p.error").await.text().await.unwrap();
    assert!(e.contains("wrong password"), "{e}");
    login(&b, "correct horse battery").await;
    wait(&b, "section.cards").await;
    // The session cookie is HttpOnly, Secure, SameSite=Strict.
    let c = b.get_named_cookie("cloudpc_session").await.unwrap();
    assert_eq!((c.http_only(), c.secure()), (Some(true), Some(true)));
    assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)");
    // Replayed from a device that is not an admin, the cookie gets 403.
    let stolen = format!("cloudpc_session={}", c.value());
    let replay = w.lab.sh_timeout(
        "d2",
        &format!("curl -sk -m 5 -o /dev/null -w '%{{http_code}}' -H 'Cookie: {stolen}' {base}/"),
        8,
    );
    assert_eq!(String::from_utf8_lossy(&replay.stdout), "403");

    // A form with a forged CSRF token is refused, and changes nothing.
    b.goto(&format!("{local}/settings")).await.unwrap();
    b.execute(
        "const f = document.querySelector(\"form[action='/internet']\");
         f.querySelector(\"input[name='csrf']\").value = 'forged';
         f.submit();",
        vec![],
    )
    .await
    .unwrap();
    let refused = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//pre[contains(., 'CSRF')]"))
        .await;
    assert!(refused.is_ok(), "{}", b.source().await.unwrap_or_default());
    assert!(fetch(&w, "d1"), "the internet is still on");

    // The session is listed; ended from the CLI, the next page asks to log in again.
    let list = hub.cli_ok(&["admin", "sessions", "--json"]);
    let sessions: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = sessions[0]["id"].as_i64().unwrap().to_string();
    hub.cli_ok(&["admin", "revoke", &id]);
    b.goto(&format!("{local}/")).await.unwrap();
    wait(&b, "form[action='/login']").await;
    // Log in again, then log out from the page.
    login(&b, "correct horse battery").await;
    wait(&b, "section.cards").await;
    b.form(Locator::Css("form[action='/logout']"))
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
    wait(&b, "form[action='/login']").await;
    b.goto(&format!("{local}/devices")).await.unwrap();
    wait(&b, "form[action='/login']").await;
    assert_eq!(hub.cli_ok(&["admin", "sessions", "--json"]).trim(), "[]");
    b.close().await.unwrap();
}
