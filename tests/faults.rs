//! Faults around the state store, through the real `cloudpc` binary: CLI commands racing each
//! other (through the running hub's API and straight to the store), a full disk under the state
//! dir (a small tmpfs), and CLI commands while the hub shuts down. The resolver runs on a unique
//! loopback address in front of Knot, without the WireGuard hub; dig is the DNS client.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A config for `cloudpc run` on `ip` forwarding to `upstream`, without the WireGuard hub.
fn config(ip: &str, upstream: &str) -> String {
    format!(
        r#"[dns]
listen = ["{ip}:53"]
upstreams = ["udp://{upstream}:53"]
[wireguard]
enabled = false
endpoint = "vpn.example.test"
"#
    )
}

/// A syntactically valid WireGuard public key (32 bytes, base64), distinct per `n`.
fn key(n: u16) -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    b[..2].copy_from_slice(&n.to_be_bytes());
    b[2..].fill(0x5a);
    base64::engine::general_purpose::STANDARD.encode(b)
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

/// `device list --json`, as (name, ipv4) pairs.
fn device_list(hub: &Cloudpc) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&cli_ok(hub, &["device", "list", "--json"])).unwrap();
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["ipv4"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs `device add NAME --pubkey KEY` for every (name, key) of each group, the groups in
/// parallel threads started together; returns each command's output, in order per group.
fn add_in_parallel(hub: &Cloudpc, groups: Vec<Vec<(String, String)>>) -> Vec<(String, Output)> {
    let barrier = Arc::new(Barrier::new(groups.len()));
    let (cfg, state) = (hub.config.clone(), hub.state.clone());
    let handles: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let (barrier, cfg, state) = (barrier.clone(), cfg.clone(), state.clone());
            std::thread::spawn(move || {
                barrier.wait();
                group
                    .into_iter()
                    .map(|(name, key)| {
                        let out = cli_at(&cfg, &state, &["device", "add", &name, "--pubkey", &key]);
                        (name, out)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// A `cloudpc` CLI command against `cfg` and `state` (usable from other threads).
fn cli_at(cfg: &Path, state: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--config")
        .arg(cfg)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

/// 2 threads × 8 `device add` with names `{prefix}{n}` and keys `key(base + n)`; every command
/// must succeed.
fn sixteen_adds(hub: &Cloudpc, prefix: &str, base: u16) -> Vec<String> {
    let groups: Vec<Vec<(String, String)>> = (0..2u16)
        .map(|t| {
            (0..8u16)
                .map(|i| {
                    let n = t * 8 + i;
                    (format!("{prefix}{n}"), key(base + n))
                })
                .collect()
        })
        .collect();
    let outs = add_in_parallel(hub, groups);
    let failed: Vec<String> = outs
        .iter()
        .filter(|(_, o)| !o.status.success())
        .map(|(name, o)| format!("device add {name}: {}", text(&o.stderr).trim()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} concurrent adds failed (hub running: {}):\n{}",
        failed.len(),
        outs.len(),
        hub.api("GET", "/v1/status", None).code == 200,
        failed.join("\n")
    );
    outs.into_iter().map(|(name, _)| name).collect()
}

/// Every name of `expected` is in the device list exactly once, and no two devices share an
/// IPv4 address.
fn assert_all_listed_distinct(hub: &Cloudpc, expected: &[String]) {
    let list = device_list(hub);
    for name in expected {
        assert_eq!(
            list.iter().filter(|(n, _)| n == name).count(),
            1,
            "{name} should be listed once: {list:?}"
        );
    }
    let mut addrs: Vec<&String> = list.iter().map(|(_, a)| a).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), list.len(), "addresses must differ: {list:?}");
}

/// Two concurrent adds of `name` (different keys): exactly one succeeds, the other names the
/// duplicate.
fn same_name_twice(hub: &Cloudpc, name: &str, base: u16) {
    let groups = vec![
        vec![(name.to_string(), key(base))],
        vec![(name.to_string(), key(base + 1))],
    ];
    let outs = add_in_parallel(hub, groups);
    let ok: Vec<_> = outs.iter().filter(|(_, o)| o.status.success()).collect();
    let failed: Vec<_> = outs.iter().filter(|(_, o)| !o.status.success()).collect();
    assert_eq!(
        (ok.len(), failed.len()),
        (1, 1),
        "two adds of {name}: {:?}",
        outs.iter()
            .map(|(_, o)| (o.status.code(), text(&o.stderr)))
            .collect::<Vec<_>>()
    );
    let err = text(&failed[0].1.stderr);
    assert!(
        err.contains(&format!("{name:?}")) && err.contains("already exists"),
        "the refused add of {name} should name the duplicate: {err:?}"
    );
    let list = device_list(hub);
    assert_eq!(
        list.iter().filter(|(n, _)| n == name).count(),
        1,
        "{list:?}"
    );
}

#[test]
fn concurrent_cli_commands_all_apply_once() {
    let knot = Knot::start(&unique_ip());
    let ip = unique_ip();
    let mut hub = Cloudpc::start(&ip, &config(&ip, &knot.ip));
    hub.wait_api();

    // Through the running hub's API.
    let mut all = sixteen_adds(&hub, "run", 0);
    assert_eq!(device_list(&hub).len(), 16);
    assert_all_listed_distinct(&hub, &all);
    same_name_twice(&hub, "twin-run", 100);
    all.push("twin-run".into());

    // Straight to the store.
    hub.stop();
    assert!(!hub.api_sock().exists() || hub.api("GET", "/v1/status", None).code == 0);
    same_name_twice(&hub, "twin-off", 300);
    all.push("twin-off".into());
    all.extend(sixteen_adds(&hub, "off", 200));
    assert_eq!(device_list(&hub).len(), 34);
    assert_all_listed_distinct(&hub, &all);
}

/// A tmpfs mounted on a fresh directory, unmounted (lazily if still busy) on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", path.display());
        Tmpfs { path, _dir: dir }
    }

    /// Bytes an unprivileged writer could still allocate.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct; the path is a valid C string.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
            s.f_bavail as u64 * s.f_frsize as u64
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Writes zeros to `path` until the file system refuses (ENOSPC), in shrinking chunks.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [65536usize, 4096, 512, 1] {
        let buf = vec![0u8; chunk];
        // Bounded: at most the tmpfs size in chunks.
        for _ in 0..(4 << 20) / chunk {
            match f.write(&buf) {
                Ok(n) if n == chunk => continue,
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
    }
    let _ = f.sync_all();
}

/// A CLI command that must fail saying the disk is full and nothing changed.
fn fails_disk_full(hub: &Cloudpc, args: &[&str]) -> String {
    let o = hub.cli(args);
    let err = text(&o.stderr);
    assert!(
        !o.status.success(),
        "{args:?} should fail on a full disk: {}{err}",
        text(&o.stdout)
    );
    let l = err.to_lowercase();
    assert!(
        l.contains("full") && l.contains("free space"),
        "{args:?} on a full disk: {err:?} should say the disk is full and to free space"
    );
    err
}

#[test]
fn full_disk_refuses_changes_cleanly_and_keeps_serving() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let knot = Knot::start(&unique_ip());
    let fs = Tmpfs::mount("2M");
    let ip = unique_ip();
    let mut hub = Cloudpc::stopped(&ip, &config(&ip, &knot.ip));
    hub.state = fs.path.clone();
    hub.launch();
    hub.wait_api();

    cli_ok(&hub, &["device", "add", "first", "--pubkey", &key(1)]);
    let before = device_list(&hub);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(hub.short("www.example.test", "A"), ["192.0.2.10"]);

    let filler = fs.path.join("filler");
    fill(&filler);
    let free = fs.free();
    eprintln!("free after filling: {free} bytes");
    assert_eq!(free, 0, "the filler should leave nothing free");

    let e1 = fails_disk_full(&hub, &["device", "add", "other", "--pubkey", &key(2)]);
    let e2 = fails_disk_full(&hub, &["block", "add", "x.example.test"]);
    eprintln!("device add on a full disk: {e1}block add on a full disk: {e2}");
    assert!(hub.alive(), "the hub died on a full disk: {}", hub.logs());
    // Still serving, with nothing changed.
    assert_eq!(hub.short("www.example.test", "A"), ["192.0.2.10"]);
    assert_eq!(hub.short("x.example.test", "A"), Vec::<String>::new());
    assert_eq!(device_list(&hub), before);
    assert_eq!(cli_ok(&hub, &["block", "list"]).trim(), "");

    std::fs::remove_file(&filler).unwrap();
    cli_ok(&hub, &["device", "add", "other", "--pubkey", &key(2)]);
    let names: Vec<String> = device_list(&hub).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["first", "other"]);
    cli_ok(&hub, &["block", "add", "x.example.test"]);
    assert_eq!(hub.short("x.example.test", "A"), ["0.0.0.0"]);
}

#[test]
fn cli_during_hub_shutdown_applies_completely_or_not_at_all() {
    cli_during_hub_exit(false);
}

/// The same with SIGKILL: no cleanup runs, as after a crash or power loss, in the middle of
/// the commands.
#[test]
fn cli_during_a_hub_crash_applies_completely_or_not_at_all() {
    cli_during_hub_exit(true);
}

fn cli_during_hub_exit(crash: bool) {
    let knot = Knot::start(&unique_ip());
    let ip = unique_ip();
    let mut hub = Cloudpc::start(&ip, &config(&ip, &knot.ip));
    hub.wait_api();

    let done = Arc::new(AtomicUsize::new(0));
    let (cfg, state, d) = (hub.config.clone(), hub.state.clone(), done.clone());
    let adder = std::thread::spawn(move || {
        (0..40)
            .map(|n| {
                let name = format!("r{n}.example.test");
                let out = cli_at(&cfg, &state, &["block", "add", &name]);
                d.fetch_add(1, Ordering::SeqCst);
                (name, out)
            })
            .collect::<Vec<_>>()
    });
    // Stop the hub partway through: after a few commands went through it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_stop = done.load(Ordering::SeqCst);
    assert!(at_stop >= 8, "the first commands took over 30 s");
    if crash {
        hub.crash();
    } else {
        hub.stop();
    }
    let results = adder.join().unwrap();
    assert!(
        done.load(Ordering::SeqCst) > at_stop,
        "no command ran after the stop"
    );

    let listed: Vec<String> = cli_ok(&hub, &["block", "list"])
        .lines()
        .map(str::to_string)
        .collect();
    let mut succeeded = Vec::new();
    for (name, out) in &results {
        let err = text(&out.stderr);
        if out.status.success() {
            assert!(
                listed.contains(name),
                "`block add {name}` succeeded but the rule is not in the store: {listed:?}"
            );
            succeeded.push(name.clone());
        } else {
            assert!(
                !err.trim().is_empty(),
                "`block add {name}` failed without a message"
            );
            if err.contains("nothing was changed") {
                assert!(
                    !listed.contains(name),
                    "`block add {name}` said nothing was changed, but the rule is stored: {err}"
                );
            }
            eprintln!(
                "block add {name} failed (rule stored: {}): {err}",
                listed.contains(name)
            );
        }
    }
    eprintln!(
        "{} of {} commands succeeded; {at_stop} had finished when the hub was stopped",
        succeeded.len(),
        results.len()
    );
    assert!(
        succeeded.contains(&"r0.example.test".to_string()),
        "the first command (hub running) failed"
    );
    assert!(
        succeeded.contains(&"r39.example.test".to_string()),
        "the last command (hub stopped) failed"
    );

    hub.launch();
    // One that went through the hub, and one written to the store after it stopped.
    assert_eq!(hub.short("r0.example.test", "A"), ["0.0.0.0"]);
    assert_eq!(hub.short("r39.example.test", "A"), ["0.0.0.0"]);
    assert_eq!(hub.short("www.example.test", "A"), ["192.0.2.10"]);
    let listed_again = cli_ok(&hub, &["block", "list"]);
    for name in &succeeded {
        assert!(
            listed_again.lines().any(|l| l == name),
            "{name} is gone after the restart"
        );
    }
}
