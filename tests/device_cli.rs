//! `cloudpc init` and `cloudpc device ...` through the real binary, each test with its own
//! temporary state dir and config file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloudpc::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_cloudpc");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A temp dir with a config whose endpoint is set.
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = "[wireguard]\nendpoint = \"vpn.test.example\"\nipv6 = \"fd42:4242:4242::/48\"\n[groups.kids]\n";
        std::fs::write(dir.path().join("cloudpc.toml"), cfg).unwrap();
        Env { dir }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.path("cloudpc.toml"))
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env_remove("CLOUDPC_CONFIG")
            .env_remove("CLOUDPC_STATE_DIR")
            .output()
            .unwrap()
    }
    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    /// Runs and asserts failure with a message containing `needle`; returns stderr.
    fn fails(&self, args: &[&str], needle: &str) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        err
    }
    fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["device", "list", "--json"])).unwrap()
    }
}

fn value<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {config}"))
        .trim()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn add_list_rename_remove_round_trip() {
    let env = Env::new();
    let conf = env.ok(&["device", "add", "phone"]);
    assert_eq!(
        value(&conf, "Address"),
        "100.96.0.2/32, fd42:4242:4242::2/128"
    );
    assert_eq!(value(&conf, "DNS"), "100.96.0.1, fd42:4242:4242::1, mesh");
    assert_eq!(value(&conf, "Endpoint"), "vpn.test.example:51820");
    assert_eq!(value(&conf, "AllowedIPs"), "0.0.0.0/0, ::/0");
    env.ok(&[
        "device", "add", "laptop", "--split", "--owner", "--group", "kids", "--no-log",
    ]);

    let list = env.list();
    assert_eq!(list.len(), 2);
    let laptop = &list[0];
    assert_eq!(laptop["name"], "laptop");
    assert_eq!(laptop["ipv4"], "100.96.0.3");
    assert_eq!(laptop["split"], true);
    assert_eq!(laptop["owner"], true);
    assert_eq!(laptop["no_log"], true);
    assert_eq!(laptop["group"], "kids");
    let table = env.ok(&["device", "list"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"));
    assert!(table.contains("laptop") && table.contains("100.96.0.2"));

    env.ok(&["device", "rename", "phone", "pixel"]);
    env.ok(&[
        "device",
        "set",
        "laptop",
        "--no-group",
        "--no-owner",
        "--log",
    ]);
    let list = env.list();
    assert_eq!(list[1]["name"], "pixel");
    assert_eq!(list[1]["ipv4"], "100.96.0.2", "rename keeps addresses");
    assert_eq!(list[0]["group"], serde_json::Value::Null);
    assert_eq!(list[0]["owner"], false);
    assert_eq!(list[0]["no_log"], false);

    env.ok(&["device", "remove", "pixel"]);
    let list = env.list();
    assert_eq!(list.len(), 1);
    env.fails(&["device", "remove", "pixel"], "no device named");
    env.fails(&["device", "rename", "nope", "x"], "no device named");
    env.fails(&["device", "set", "laptop"], "nothing to change");
}

#[test]
fn bad_and_duplicate_names_are_refused_and_nothing_is_stored() {
    let env = Env::new();
    env.ok(&["device", "add", "phone"]);
    env.fails(&["device", "add", "phone"], "already exists");
    env.fails(&["device", "add", "PHONE"], "already exists");
    for bad in ["my_phone", "a.b", "x-", "ünïcode", &"a".repeat(64)] {
        env.fails(&["device", "add", bad], "not a valid device name");
    }
    env.fails(&["device", "add", "--", "-lead"], "not a valid device name");
    env.ok(&["device", "add", "tablet"]);
    env.fails(&["device", "rename", "tablet", "phone"], "already exists");
    env.fails(
        &["device", "rename", "tablet", "bad name"],
        "not a valid device name",
    );
    assert_eq!(env.list().len(), 2);
}

#[test]
fn generated_private_key_is_printed_once_and_never_stored() {
    let env = Env::new();
    let conf = env.ok(&["device", "add", "phone"]);
    let private = value(&conf, "PrivateKey").to_string();
    assert_eq!(private.len(), 44);
    let conf2 = env.ok(&["device", "add", "laptop", "--split"]);
    let private2 = value(&conf2, "PrivateKey").to_string();
    // The public key in the registry belongs to the printed private key.
    let public = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut child) = public {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let public = String::from_utf8(out.stdout).unwrap();
        let list = env.list();
        let phone = list.iter().find(|d| d["name"] == "phone").unwrap();
        assert_eq!(phone["public_key"], public.trim());
    } else {
        eprintln!("note: `wg` not installed; skipping the public-key cross-check");
    }
    env.ok(&["device", "list"]);
    let all = files(&env.state());
    assert!(all.iter().any(|p| p.ends_with("state.db")));
    for f in all {
        let bytes = std::fs::read(&f).unwrap();
        for k in [&private, &private2] {
            assert!(
                !contains(&bytes, k.as_bytes()),
                "{} holds a device private key",
                f.display()
            );
            let raw = base64_decode(k);
            assert!(
                !contains(&bytes, &raw),
                "{} holds raw device private key bytes",
                f.display()
            );
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn own_public_key_gives_a_config_without_private_key() {
    let env = Env::new();
    let public = "Hh0iXkVSgMKmNUn3NsnX9q6P3Gww3jIv6tjIDXXwDWA=";
    let conf = env.ok(&["device", "add", "laptop", "--pubkey", public]);
    assert!(!conf.lines().any(|l| l.starts_with("PrivateKey")));
    assert!(conf.contains("# PrivateKey"));
    assert_eq!(env.list()[0]["public_key"], public);
    env.fails(
        &["device", "add", "other", "--pubkey", public],
        "already registered",
    );
    env.fails(
        &["device", "add", "bad", "--pubkey", "nonsense"],
        "not a WireGuard key",
    );
    env.fails(
        &[
            "device",
            "add",
            "qr",
            "--pubkey",
            "Ih0iXkVSgMKmNUn3NsnX9q6P3Gww3jIv6tjIDXXwDWA=",
            "--qr",
        ],
        "private key",
    );
    assert_eq!(env.list().len(), 1, "refused adds register nothing");
}

#[test]
fn missing_endpoint_refuses_before_registering() {
    let env = Env::new();
    std::fs::write(env.path("cloudpc.toml"), "").unwrap();
    env.fails(&["device", "add", "phone"], "wireguard.endpoint");
    assert!(env.list().is_empty());
}

#[test]
fn output_files_png_svg_conf_and_bad_extension() {
    let env = Env::new();
    let png = env.path("phone.png");
    let conf = env.ok(&["device", "add", "phone", "--output", png.to_str().unwrap()]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&png).unwrap().permissions().mode() & 0o777,
        0o600
    );

    match Command::new("zbarimg")
        .args(["-q", "--raw"])
        .arg(&png)
        .output()
    {
        Ok(o) if o.status.success() => {
            let decoded = String::from_utf8(o.stdout).unwrap();
            // zbarimg ends its output with one newline of its own.
            assert_eq!(decoded.strip_suffix('\n').unwrap(), conf);
        }
        Ok(o) => panic!(
            "zbarimg could not read the QR code: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!("note: zbarimg (apt zbar-tools) not installed; QR content not decoded"),
    }

    let svg = env.path("tablet.svg");
    env.ok(&["device", "add", "tablet", "-o", svg.to_str().unwrap()]);
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<?xml") && s.contains("<svg"));

    let file = env.path("laptop.conf");
    let printed = env.ok(&["device", "add", "laptop", "-o", file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), printed);

    let jpg = env.path("x.jpg");
    env.fails(
        &["device", "add", "x", "-o", jpg.to_str().unwrap()],
        ".png or .svg",
    );
    assert!(!jpg.exists());
    assert_eq!(env.list().len(), 3);
}

#[test]
fn qr_flag_prints_half_blocks_not_the_key() {
    let env = Env::new();
    let out = env.ok(&["device", "add", "phone", "--qr"]);
    assert!(!out.contains("PrivateKey"));
    assert!(out.lines().count() > 20);
    assert!(out
        .chars()
        .all(|c| matches!(c, '█' | '▀' | '▄' | ' ' | '\n')));
}

#[test]
fn printed_config_survives_wg_quick_strip() {
    let env = Env::new();
    let conf = env.ok(&["device", "add", "phone"]);
    let file = env.path("wgx0.conf");
    std::fs::write(&file, &conf).unwrap();
    match Command::new("wg-quick").arg("strip").arg(&file).output() {
        Ok(o) if o.status.success() => {
            let stripped = String::from_utf8(o.stdout).unwrap();
            // wg-quick keeps exactly the lines `wg setconf` reads.
            assert!(stripped.contains("PrivateKey = "));
            assert!(stripped.contains("AllowedIPs = 0.0.0.0/0, ::/0"));
            for gone in ["Address", "DNS", "MTU"] {
                assert!(!stripped.contains(gone), "{gone} left in {stripped}");
            }
        }
        Ok(o) => panic!(
            "wg-quick strip refused the config: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!("note: wg-quick not installed; skipping"),
    }
}

#[test]
fn init_writes_a_loadable_config_and_a_private_hub_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("etc/cloudpc.toml");
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["init", "--endpoint", "vpn.example.net:4500"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let c = Config::load(&cfg).unwrap();
    assert_eq!(c.wireguard.endpoint, "vpn.example.net:4500");
    let key = state.join("hub.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(out.contains("Hub public key:"));
    assert!(out.contains("100.96.0.0/16"));

    // The key and the ULA are the ones device configs use.
    let d = run(&["device", "add", "phone"]);
    assert!(d.status.success());
    let conf = String::from_utf8(d.stdout).unwrap();
    let hub_pub = out
        .lines()
        .find_map(|l| l.strip_prefix("Hub public key:"))
        .unwrap()
        .trim();
    assert_eq!(value(&conf, "PublicKey"), hub_pub);
    assert_eq!(value(&conf, "Endpoint"), "vpn.example.net:4500");

    // A second init refuses and leaves the file alone.
    let before = std::fs::read(&cfg).unwrap();
    let again = run(&["init", "--endpoint", "other.example"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&cfg).unwrap(), before);

    let bad = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("new.toml"))
        .args(["--state-dir"])
        .arg(&state)
        .args(["init", "--endpoint", "not a host"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(!dir.path().join("new.toml").exists());
}

/// The shipped example documents every setting, and shows the defaults (except the example
/// endpoint).
#[test]
fn example_config_parses_to_the_defaults_and_documents_every_setting() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cloudpc.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = Config::parse(&text, &path).unwrap();
    assert_eq!(parsed.wireguard.endpoint, "vpn.example.com:51820");
    let mut parsed = serde_json::to_value(&parsed).unwrap();
    parsed["wireguard"]["endpoint"] = "".into();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(parsed, defaults, "example values differ from the defaults");

    let doc: toml::Table = toml::from_str(&text).unwrap();
    let serde_json::Value::Object(sections) = defaults else {
        unreachable!()
    };
    for (section, keys) in sections {
        let serde_json::Value::Object(keys) = keys else {
            continue;
        };
        for (key, v) in keys {
            if v.is_null() {
                continue;
            }
            let present = doc
                .get(&section)
                .and_then(|s| s.as_table())
                .is_some_and(|t| t.contains_key(&key));
            assert!(
                present,
                "setting {section}.{key} is not in the example config"
            );
        }
    }
}
