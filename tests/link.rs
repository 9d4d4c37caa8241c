//! Two Cloud PCs linked with `cloudpc link`, each in its own namespace in the test internet
//! and both on the same overlay (100.96.0.0/16), with stock WireGuard devices (root only):
//! Alice's laptop reaches the NAS Bob exported by `nas.bob.mesh`, only on the exported port,
//! and none of Bob's other devices; restarting either hub brings the link back by itself;
//! `link remove` cuts it at once, on both sides; a used link code is refused.

#[path = "common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use netns::{conf_addrs, HubWorld, HUB2_PUBLIC, HUB_PUBLIC};

/// The links' kernel state in a hub's namespace.
fn diag(w: &HubWorld, ns: &str) -> String {
    let o = w.lab.sh(
        ns,
        "nft list ruleset; ip rule; ip route show table all | grep -v local; ip -s link; conntrack -L 2>/dev/null | head",
    );
    format!(
        "--- {ns}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn linked_cloud_pcs_reach_exported_devices_only_and_the_link_survives_restarts() {
    if !netns::root_or_skip("link") {
        return;
    }
    let mut w = HubWorld::new("cplk");
    w.add_second_hub_host();
    let mut alice = w.hub("");
    let mut bob = w.hub_at("hub2", HUB2_PUBLIC, "");
    for n in 1..=3 {
        w.add_device_ns(n, false);
    }
    let laptop = alice.add_device("laptop", true, &["--owner"]);
    let nas = bob.add_device("nas", true, &[]);
    let desk = bob.add_device("desk", true, &[]);
    w.start_hub(&mut alice);
    w.start_hub(&mut bob);
    w.lab.wg_up("d1", &laptop);
    w.lab.wg_up("d2", &nas);
    w.lab.wg_up("d3", &desk);
    let (alice_dns, _) = conf_addrs(&laptop, "DNS");
    let (nas4, _) = conf_addrs(&nas, "Address");
    let (desk4, _) = conf_addrs(&desk, "Address");
    let (laptop4, _) = conf_addrs(&laptop, "Address");
    assert!(
        nas4.starts_with("100.96.") && laptop4.starts_with("100.96."),
        "both hubs use 100.96.0.0/16"
    );
    w.lab.serve_hello("d2", &nas4, 445);
    w.lab.serve_hello("d2", &nas4, 8080);
    w.lab.serve_hello("d3", &desk4, 8080);

    // Link: Alice makes the code, Bob accepts it; Bob exports the NAS's port 445.
    let code = alice.cli_ok(&["link", "create", "--name", "bob"]);
    let code = code.trim().to_string();
    assert!(
        code.starts_with(&format!("https://{HUB_PUBLIC}/link#code=")),
        "{code}"
    );
    bob.cli_ok(&["link", "accept", &code, "--name", "alice"]);
    bob.cli_ok(&["link", "export", "alice", "nas:445"]);
    // A used code is refused.
    let again = bob
        .cli()
        .args(["link", "accept", &code, "--name", "alice2"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not known, was used"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let lookup = |w: &HubWorld, name: &str| {
        w.lab.sh_ok(
            "d1",
            &format!("dig @{alice_dns} +time=2 +tries=1 {name} A +noall +comments +answer"),
        )
    };
    let a = lookup(&w, "nas.bob.mesh");
    assert!(a.contains("NOERROR"), "{a}\n{}", alice.log());
    let nas_here = a
        .lines()
        .find(|l| l.starts_with("nas.bob.mesh."))
        .and_then(|l| l.split_whitespace().last())
        .expect("an address for nas.bob.mesh")
        .to_string();
    assert_ne!(
        nas_here, nas4,
        "Bob's NAS appears at an address of Alice's side"
    );
    let a = lookup(&w, "desk.bob.mesh");
    assert!(a.contains("NXDOMAIN"), "{a}");
    let shared = format!("http://{nas_here}:445/hello");
    assert!(
        w.lab.eventually(
            "d1",
            &format!("curl -sf -m 1 -o /dev/null {shared}"),
            Duration::from_secs(10)
        ),
        "Alice's laptop does not reach Bob's exported NAS:\n{}\n{}",
        diag(&w, "hub"),
        diag(&w, "hub2")
    );
    let page = w.lab.sh_ok("d1", &format!("curl -sf -m 3 {shared}"));
    assert_eq!(page, "d2:445\n");
    let listed = alice.cli_ok(&["link", "list"]);
    assert!(
        listed.lines().any(|l| l.starts_with("bob")
            && l.contains("s ago")
            && l.contains(&format!("nas.bob {nas_here}"))),
        "{listed}"
    );
    // Not another port, not another device (at the address it would have on Alice's side).
    assert!(w.lab.loads("d3", &format!("http://{nas4}:8080/hello")));
    assert!(
        !w.lab.loads("d1", &format!("http://{nas_here}:8080/hello")),
        "a port Bob did not export"
    );
    let prefix: Vec<&str> = nas_here.split('.').collect();
    let desk_host: Vec<&str> = desk4.split('.').collect();
    let desk_here = format!(
        "{}.{}.{}.{}",
        prefix[0], prefix[1], desk_host[2], desk_host[3]
    );
    assert!(
        !w.lab.loads("d1", &format!("http://{desk_here}:8080/hello")),
        "a device Bob did not export"
    );

    // Restarts: the link comes back by itself, from either side.
    for (who, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        w.stop_hub(who);
        w.start_hub(who);
        let t0 = Instant::now();
        assert!(
            w.lab.eventually(
                "d1",
                &format!("curl -sf -m 1 -o /dev/null {shared}"),
                Duration::from_secs(20)
            ),
            "the link did not come back after {name}'s hub restarted:\n{}",
            who.log()
        );
        eprintln!("link back {:?} after {name}'s hub restarted", t0.elapsed());
    }

    // Removing the link on one side cuts it at once, on both.
    alice.cli_ok(&["link", "remove", "bob"]);
    assert!(
        !w.lab.loads("d1", &shared),
        "the link still carries packets after `link remove`"
    );
    let listed = bob.cli_ok(&["link", "list"]);
    assert!(!listed.contains("alice"), "{listed}");
    let a = lookup(&w, "nas.bob.mesh");
    assert!(a.contains("NXDOMAIN"), "{a}");
}
