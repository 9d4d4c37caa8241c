//! Friends and sharing with namespaces as hosts and stock WireGuard devices (root only): a
//! guest's device reaches the shared port of the NAS and nothing else (not another port, not
//! another device, not the internet until allowed), resolves `nas.mesh` but not
//! `laptop.mesh`; the NAS cannot open a connection to the guest (the owner's laptop can once
//! its `reach` names it); invites redeemed in headless Chromium (the key pair made in the page;
//! the request bodies checked for the private key) and with `cloudpc connect --invite`; used,
//! expired and revoked invites refused; removing a person cuts their devices at once.

#[path = "common/browser.rs"]
mod browser;
#[path = "common/netns.rs"]
mod netns;

use std::process::Command;
use std::time::Duration;

use fantoccini::Locator;
use netns::{conf_addrs, HubWorld, HUB_PUBLIC, WEB};

/// The device's public key for a config's private key.
fn public_of(conf: &str) -> (String, String) {
    let private = conf
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey = "))
        .expect("a private key")
        .trim()
        .to_string();
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    (
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn refused(hub: &netns::HubRun, args: &[&str]) -> String {
    let out = hub.cli().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_reach_only_what_is_shared_and_invites_bring_devices_in() {
    if !netns::root_or_skip("friends") {
        return;
    }
    let mut w = HubWorld::new("cpfr");
    let mut hub = w.hub("");
    for n in 1..=5 {
        w.add_device_ns(n, false);
    }
    let laptop = hub.add_device("laptop", true, &["--owner"]);
    let nas = hub.add_device("nas", true, &[]);
    hub.cli_ok(&["person", "add", "alice", "--role", "guest"]);
    let phone = hub.add_device("alice-phone", true, &["--person", "alice"]);
    assert!(
        phone.contains("AllowedIPs") && !phone.contains("0.0.0.0/0"),
        "a guest without internet gets a split tunnel:\n{phone}"
    );
    hub.cli_ok(&["share", "add", "nas:445", "--with", "alice"]);
    w.start_hub(&mut hub);
    w.lab.wg_up("d1", &laptop);
    w.lab.wg_up("d2", &nas);
    // The guest tries the owner's internet anyway: its tunnel takes everything.
    let phone_full = phone.replace("AllowedIPs = ", "AllowedIPs = 0.0.0.0/0, ::/0, ");
    let phone_if = w.lab.wg_up("d3", &phone_full);
    let (hub4, _) = conf_addrs(&laptop, "DNS");
    let (laptop4, _) = conf_addrs(&laptop, "Address");
    let (nas4, _) = conf_addrs(&nas, "Address");
    let (phone4, _) = conf_addrs(&phone, "Address");
    w.lab.serve_hello("d2", &nas4, 445);
    w.lab.serve_hello("d2", &nas4, 8080);
    w.lab.serve_hello("d1", &laptop4, 8080);
    w.lab.serve_hello("d3", &phone4, 8080);
    let shared = format!("http://{nas4}:445/hello");

    // The shared port, and nothing else.
    assert!(
        w.lab.eventually(
            "d3",
            &format!("curl -sf -m 1 -o /dev/null {shared}"),
            Duration::from_secs(10)
        ),
        "the guest cannot reach the shared port:\n{}",
        hub.log()
    );
    assert!(w.lab.loads("d1", &format!("http://{nas4}:8080/hello")));
    assert!(
        !w.lab.loads("d3", &format!("http://{nas4}:8080/hello")),
        "the guest reached a port that is not shared"
    );
    assert!(w.lab.loads("d2", &format!("http://{laptop4}:8080/hello")));
    assert!(
        !w.lab.loads("d3", &format!("http://{laptop4}:8080/hello")),
        "the guest reached a device that is not shared"
    );
    let web = format!("http://{WEB}/hello");
    assert!(w.lab.loads("d1", &web), "the owner's laptop has internet");
    assert!(
        !w.lab.loads("d3", &web),
        "the guest used the internet without being allowed"
    );
    hub.cli_ok(&["person", "set", "alice", "--internet", "on"]);
    assert!(
        w.lab.loads("d3", &web),
        "a guest allowed the internet has it at once"
    );
    hub.cli_ok(&["person", "set", "alice", "--internet", "default"]);
    assert!(!w.lab.loads("d3", &web));

    // Of the hub itself a guest reaches DNS and HTTPS only (not, e.g., the owners' query-log
    // sync port, which the owner's laptop reaches).
    let sync = format!("curl -s -m 3 -o /dev/null http://{hub4}:8053/");
    assert!(
        w.lab.sh_succeeds("d1", &sync, 5),
        "the laptop reaches the hub"
    );
    assert!(
        !w.lab.sh_succeeds("d3", &sync, 5),
        "a guest reached a hub service other than DNS and HTTPS"
    );

    // Names: the shared device's only.
    let dig = |ns: &str, name: &str| {
        w.lab.sh_ok(
            ns,
            &format!("dig @{hub4} +time=2 +tries=1 {name} A +noall +comments +answer"),
        )
    };
    let a = dig("d3", "nas.mesh");
    assert!(a.contains("NOERROR") && a.contains(&nas4), "{a}");
    let a = dig("d3", "laptop.mesh");
    assert!(a.contains("NXDOMAIN") && !a.contains(&laptop4), "{a}");
    let a = dig("d2", "laptop.mesh");
    assert!(a.contains("NOERROR") && a.contains(&laptop4), "{a}");

    // Quarantine: the NAS cannot open a connection to the guest; the owner's laptop can once
    // its reach names the guest's device.
    let to_phone = format!("http://{phone4}:8080/hello");
    assert!(
        !w.lab.loads("d2", &to_phone),
        "the shared NAS opened a connection to the guest"
    );
    assert!(!w.lab.loads("d1", &to_phone));
    hub.cli_ok(&["device", "set", "laptop", "--reach", "alice-phone,nas"]);
    assert!(
        w.lab.loads("d1", &to_phone),
        "the owner's rule names the guest's device"
    );
    assert!(!w.lab.loads("d2", &to_phone));

    // A guest's device that sends from the NAS's address gets nowhere (the hub takes from a
    // device only its own addresses); the NAS itself reaches the laptop on that path.
    w.lab
        .sh_ok("d3", &format!("ip addr add {nas4}/32 dev {phone_if}"));
    assert!(
        !w.lab.sh_succeeds(
            "d3",
            &format!("curl -sf -m 3 -o /dev/null --interface {nas4} http://{laptop4}:8080/hello"),
            5
        ),
        "a guest spoofing the shared NAS's address reached the laptop"
    );
    assert!(w.lab.loads("d2", &format!("http://{laptop4}:8080/hello")));
    w.lab
        .sh_ok("d3", &format!("ip addr del {nas4}/32 dev {phone_if}"));

    // Bad input: a share of a device or with a person that does not exist.
    assert!(refused(&hub, &["share", "add", "ghost:22", "--with", "alice"]).contains("ghost"));
    assert!(refused(&hub, &["share", "add", "nas:22", "--with", "nobody"]).contains("nobody"));
    assert!(refused(&hub, &["person", "add", "alice"]).contains("already"));

    // An invite redeemed by `cloudpc connect --invite` on a Linux device (d4).
    hub.cli_ok(&["person", "add", "bob", "--role", "guest"]);
    hub.cli_ok(&["share", "add", "nas:445", "--with", "bob"]);
    let made = hub.cli_ok(&["invite", "create", "--person", "bob"]);
    let link = made.lines().next().unwrap().trim().to_string();
    assert!(
        link.starts_with(&format!("https://{HUB_PUBLIC}/invite#code=")),
        "{made}"
    );
    let bin = netns::cloudpc_bin();
    let bob_conf = w.lab.dir.path().join("bob-laptop.conf");
    let dev = netns::unique("cpi");
    let clog = w.lab.dir.path().join("connect-invite.log");
    w.lab.spawn(
        "d4",
        &format!(
            "{bin} connect --invite '{link}' --name bob-laptop --output {} --interface {dev}",
            bob_conf.display()
        ),
        &clog,
    );
    assert!(
        w.lab.eventually(
            "d4",
            &format!("curl -sf -m 1 -o /dev/null {shared}"),
            Duration::from_secs(15)
        ),
        "the invited Linux device did not reach the shared NAS:\n{}\n{}",
        std::fs::read_to_string(&clog).unwrap_or_default(),
        hub.log()
    );
    let listed = hub.cli_ok(&["person", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("bob") && l.contains("bob-laptop")),
        "{listed}"
    );
    // The hub holds the device's public key and never its private key.
    let bob_text = std::fs::read_to_string(&bob_conf).unwrap();
    let (bob_private, bob_public) = public_of(&bob_text);
    let mut db = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        db.extend(std::fs::read(hub.state_dir.join(f)).unwrap_or_default());
    }
    let db = String::from_utf8_lossy(&db);
    assert!(db.contains(&bob_public) && !db.contains(&bob_private));
    // The same invite again (one use): refused, and so is a used-up invite from the page.
    let again = Command::new("ip")
        .args(["netns", "exec", &w.lab.ns("d5")])
        .args([&bin, "connect", "--invite", &link, "--name", "x"])
        .output()
        .unwrap();
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("used up"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // An invite redeemed in the browser (d5, not on the network yet).
    hub.cli_ok(&["person", "add", "carol", "--role", "guest"]);
    hub.cli_ok(&["share", "add", "nas:445", "--with", "carol"]);
    let made = hub.cli_ok(&["invite", "create", "--person", "carol"]);
    let page_link = made.lines().next().unwrap().trim().to_string();
    let link5 = browser::DriverLink::new(&w, "d5", 0);
    let b = browser::browser(&mut w, "d5", &link5).await;
    let session = b.session_id().await.unwrap().expect("a session");
    b.goto(&page_link).await.unwrap();
    b.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys("carol-phone")
        .await
        .unwrap();
    b.find(Locator::Css("#join button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let img = match b
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(
            "#done:not([hidden]) img#qr[src^='data:image/png']",
        ))
        .await
    {
        Ok(i) => i,
        Err(e) => {
            let status = b
                .find(Locator::Id("status"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap_or_default();
            panic!("no QR code: {e}; the page says {status:?}\n{}", hub.log())
        }
    };
    let src = img.attr("src").await.unwrap().unwrap();
    let png = src.strip_prefix("data:image/png;base64,").unwrap();
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png)
        .unwrap();
    let qr_path = w.lab.dir.path().join("invite-qr.png");
    std::fs::write(&qr_path, png).unwrap();
    let zbar = Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(&qr_path)
        .output()
        .expect("zbarimg (apt package zbar-tools)");
    let from_qr = String::from_utf8_lossy(&zbar.stdout).trim_end().to_string();
    let shown = b
        .execute(
            "return document.getElementById('config').textContent",
            vec![],
        )
        .await
        .unwrap();
    let shown = shown.as_str().unwrap().to_string();
    assert_eq!(from_qr, shown.trim_end(), "the QR code is the config shown");
    let (private, public) = public_of(&shown);
    // What the page sent: the public key went, the private key never did.
    let sent = browser::sent_bodies(&link5, &session);
    let redeem: Vec<&(String, String)> = sent
        .iter()
        .filter(|(u, _)| u.ends_with("/invite/redeem"))
        .collect();
    assert_eq!(redeem.len(), 1, "{sent:?}");
    assert!(redeem[0].1.contains(&public), "{sent:?}");
    assert!(
        sent.iter().all(|(_, body)| !body.contains(&private)),
        "the private key left the page: {sent:?}"
    );
    drop(b);
    w.lab.wg_up("d5", &shown);
    assert!(
        w.lab.eventually(
            "d5",
            &format!("curl -sf -m 1 -o /dev/null {shared}"),
            Duration::from_secs(10)
        ),
        "the device from the invite page did not reach the shared NAS"
    );
    assert!(!w.lab.loads("d5", &format!("http://{laptop4}:8080/hello")));

    // Expired and revoked invites are refused (from the page's own endpoint).
    let redeem_with = |link: &str| {
        let code = link
            .split("code=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let (_, public) = netns::wg_keypair();
        w.lab.sh(
            "d4",
            &format!(
                "curl -sk -m 5 -H 'Content-Type: application/json' \
                 -d '{{\"code\":\"{code}\",\"public_key\":\"{public}\"}}' https://{HUB_PUBLIC}/invite/redeem"
            ),
        )
    };
    let made = hub.cli_ok(&["invite", "create", "--person", "carol", "--expires", "1s"]);
    let short = made.lines().next().unwrap().trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let out = String::from_utf8_lossy(&redeem_with(&short).stdout).into_owned();
    assert!(out.contains("expired"), "{out}");
    let made = hub.cli_ok(&["invite", "create", "--person", "carol", "--uses", "2"]);
    let revoked = made.lines().next().unwrap().trim().to_string();
    let list = hub.cli_ok(&["invite", "list"]);
    let id = list
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    hub.cli_ok(&["invite", "revoke", &id]);
    let out = String::from_utf8_lossy(&redeem_with(&revoked).stdout).into_owned();
    assert!(out.contains("revoked"), "{out}");
    let out = String::from_utf8_lossy(&redeem_with("code=ABCD-EFGH-JKLM-NPQR").stdout).into_owned();
    assert!(out.contains("not known"), "{out}");

    // Removing a person cuts their devices at once.
    assert!(w.lab.loads("d3", &shared));
    hub.cli_ok(&["person", "remove", "alice"]);
    assert!(
        !w.lab.loads("d3", &shared),
        "the removed person's device still reaches the NAS"
    );
    assert!(w.lab.loads("d5", &shared), "another guest keeps the share");
    let devices = hub.cli_ok(&["device", "list"]);
    assert!(!devices.contains("alice-phone"), "{devices}");
}
