//! The query log through the real binary: `cloudpc querylog enable|status|disable|pull` against
//! a temp state dir, with the sync server running in-process on loopback addresses that stand in
//! for overlay addresses (127.0.0.2 = owner device, 127.0.0.3 = other device).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use age::secrecy::ExposeSecret;
use age::x25519;
use cloudpc::config::QueryLogConfig;
use cloudpc::querylog::{serve_sync, QueryEvent, QueryLog, Verdict};
use cloudpc::store::{Overlay, Store};

const SECRET_NAME: &str = "very-private-name.example";

fn cloudpc(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudpc"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("CLOUDPC_CONFIG")
        .output()
        .expect("run cloudpc")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes an identity file the way `age-keygen -o FILE` does; returns (path, public key).
fn keyfile(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let id = x25519::Identity::generate();
    let public = id.to_public().to_string();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "# created: 2026-11-26T16:00:00Z\n# public key: {public}\n{}\n",
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    (path, public)
}

/// True when `needle` appears anywhere in any file under `dir`.
///
/// Searched by a `grep` child process: reading the database files from this process would drop
/// this process's POSIX locks on them (closing any descriptor of a file releases all of the
/// process's locks on it) and break the SQLite connections the test still holds.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let out = Command::new("grep")
        .args(["-r", "-a", "-F", "-q", "--"])
        .arg(std::str::from_utf8(needle).unwrap())
        .arg(dir)
        .output()
        .expect("run grep");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("grep failed: {}", text(&out.stderr)),
    }
}

fn event(client: IpAddr, name: &str) -> QueryEvent {
    QueryEvent {
        time: SystemTime::now(),
        client,
        name: name.into(),
        qtype: 28,
        verdict: Verdict::Blocked,
        rcode: 0,
        upstream_ms: None,
    }
}

#[test]
fn enable_status_disable_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (_k1, pub1) = keyfile(tmp.path(), "k1.txt");
    let (_k2, pub2) = keyfile(tmp.path(), "k2.txt");

    // A bad recipient is refused, named, and changes nothing.
    let out = cloudpc(
        &state,
        &[
            "querylog",
            "enable",
            "--recipient",
            &pub1,
            "--recipient",
            "age1bogus",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("\"age1bogus\""),
        "{}",
        text(&out.stderr)
    );
    let out = cloudpc(&state, &["querylog", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("query log: off"),
        "{}",
        text(&out.stdout)
    );

    let out = cloudpc(
        &state,
        &[
            "querylog",
            "enable",
            "--recipient",
            &pub1,
            "--recipient",
            &pub2,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = cloudpc(&state, &["querylog", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["enabled"], true);
    assert_eq!(v["recipients"], serde_json::json!([pub1, pub2]));
    assert_eq!(v["retention_days"], 7);
    assert_eq!(v["entries"], 0);

    // Record through the library, as the running hub would.
    let (log, writer) = QueryLog::start(&state, &QueryLogConfig::default()).unwrap();
    assert!(log.is_enabled());
    for _ in 0..3 {
        log.record(event("127.0.0.1".parse().unwrap(), SECRET_NAME));
    }
    log.flush();
    drop(log);
    writer.join().unwrap();
    let out = cloudpc(&state, &["querylog", "status"]);
    assert!(
        text(&out.stdout).contains("entries: 3"),
        "{}",
        text(&out.stdout)
    );
    assert!(!dir_contains(&state, SECRET_NAME.as_bytes()));

    let out = cloudpc(&state, &["querylog", "disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deleted 3"),
        "{}",
        text(&out.stdout)
    );
    let out = cloudpc(&state, &["querylog", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["enabled"], false);
    assert_eq!(v["entries"], 0);
    assert_eq!(v["recipients"], serde_json::json!([]));
}

#[test]
fn owner_pulls_decrypted_history_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let overlay = Overlay {
        v4: "127.0.0.0/24".parse().unwrap(),
        v6: "fd00:77:1::/48".parse().unwrap(),
    };
    let mut store = Store::open(&hub).unwrap();
    let phone = store
        .add_device("phone", "kphone", false, &overlay)
        .unwrap();
    let guest = store
        .add_device("guest", "kguest", false, &overlay)
        .unwrap();
    store.set_device("phone", None, Some(true), None).unwrap();
    assert_eq!(phone.ipv4.to_string(), "127.0.0.2");
    assert_eq!(guest.ipv4.to_string(), "127.0.0.3");
    let (phone_key, phone_pub) = keyfile(tmp.path(), "phone.txt");
    let (laptop_key, laptop_pub) = keyfile(tmp.path(), "laptop.txt");
    let (stranger_key, _) = keyfile(tmp.path(), "stranger.txt");

    // Off: queries leave no trace at all.
    let (log, writer) = QueryLog::start(&hub, &QueryLogConfig::default()).unwrap();
    log.record(event(IpAddr::V4(phone.ipv4), "off-time.example"));
    log.flush();
    assert!(!dir_contains(&hub, b"off-time.example"));

    let out = cloudpc(
        &hub,
        &[
            "querylog",
            "enable",
            "--recipient",
            &phone_pub,
            "--recipient",
            &laptop_pub,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(log.reload().unwrap());
    log.record(event(IpAddr::V4(phone.ipv4), SECRET_NAME));
    log.record(event(IpAddr::V4(guest.ipv4), "guest-name.example"));
    log.record(event(IpAddr::V6(phone.ipv6), "third.example"));
    log.flush();
    assert_eq!(log.stats().written, 3);
    assert!(!dir_contains(&hub, SECRET_NAME.as_bytes()));
    assert!(!dir_contains(&hub, b"guest-name.example"));
    // Positive control: the search does find what is stored in plaintext (the public keys).
    assert!(dir_contains(&hub, phone_pub.as_bytes()));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(serve_sync(
            vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            &hub,
            overlay,
        ))
        .unwrap();
    let hub_addr = server.local_addrs()[0].to_string();

    // The owner device gets every entry, decrypted with its own key.
    let phone_dir = tmp.path().join("phone-state");
    let pull = |dir: &Path, key: &Path, source: &str, extra: &[&str]| {
        let key = key.to_str().unwrap();
        let mut args = vec![
            "querylog",
            "pull",
            "--hub",
            &hub_addr,
            "--identity",
            key,
            "--source",
            source,
        ];
        args.extend_from_slice(extra);
        cloudpc(dir, &args)
    };
    let out = pull(&phone_dir, &phone_key, "127.0.0.2", &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, [SECRET_NAME, "guest-name.example", "third.example"]);
    assert_eq!(lines[0]["device"], "phone");
    assert_eq!(lines[1]["device"], "guest");
    assert_eq!(lines[0]["type"], "AAAA");
    assert_eq!(lines[0]["verdict"], "blocked");
    // The local copy on the device is ciphertext too.
    assert!(!dir_contains(&phone_dir, SECRET_NAME.as_bytes()));

    // A second pull fetches only what is new; --since shows the local history.
    log.record(event(IpAddr::V4(phone.ipv4), "fourth.example"));
    log.flush();
    let out = pull(&phone_dir, &phone_key, "127.0.0.2", &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("fourth.example"));
    let out = pull(&phone_dir, &phone_key, "127.0.0.2", &["--since", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");

    // With two recipients the laptop's key reads the same history.
    let laptop_dir = tmp.path().join("laptop-state");
    let out = pull(&laptop_dir, &laptop_key, "127.0.0.2", &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 4);

    // A device that is not an owner is refused.
    let out = pull(
        &tmp.path().join("guest-state"),
        &phone_key,
        "127.0.0.3",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // A key that is not a recipient (like anything the hub could have) decrypts nothing.
    let out = pull(&tmp.path().join("s-state"), &stranger_key, "127.0.0.2", &[]);
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains(SECRET_NAME));
    assert!(
        text(&out.stderr).contains("none of 4"),
        "{}",
        text(&out.stderr)
    );

    // A damaged entry on the hub is skipped and counted; the rest still reads.
    rusqlite::Connection::open(hub.join(cloudpc::store::DB_FILE))
        .unwrap()
        .execute(
            "UPDATE querylog_entries SET data = x'6167652d656e6372797074696f6e2e6f72672f7631' WHERE seq = 2",
            [],
        )
        .unwrap();
    let out = pull(
        &tmp.path().join("fresh-state"),
        &phone_key,
        "127.0.0.2",
        &["--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3);
    assert!(
        text(&out.stderr).contains("skipped 1 damaged"),
        "{}",
        text(&out.stderr)
    );

    drop(server);
    drop(log);
    writer.join().unwrap();
}
