//! Shared parts of the resolver integration tests: a real authoritative server (Knot) on a
//! unique loopback address, the real `cloudpc run` binary, and real clients (dig, kdig, curl).
//!
//! Every test gets its own 127.x.y.z addresses, so tests run in parallel without sharing a port.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cloudpc");

/// The `cloudpc` binary under test: `CLOUDPC_TEST_BIN` when set (a copy, when several
/// worktrees share one target dir and Cargo's binary may be rebuilt under the test), else
/// Cargo's.
pub fn bin() -> String {
    std::env::var("CLOUDPC_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The upstream's data: a root zone with the names the tests ask for.
pub const ROOT_ZONE: &str = r#"$TTL 300
.                       IN SOA ns.root. admin.root. 1 3600 600 86400 60
.                       IN NS  ns.root.
ns.root.                IN A   127.0.0.1
www.example.test.       IN A    192.0.2.10
www.example.test.       IN AAAA 2001:db8::10
v4only.example.test.    IN A    192.0.2.20
short.example.test. 5   IN A    192.0.2.21
cloaked.example.test.   IN CNAME track.adtracker.test.
track.adtracker.test.   IN A    192.0.2.30
fine.example.test.      IN CNAME www.example.test.
ads.example.test.       IN A    192.0.2.40
x.ads.example.test.     IN A    192.0.2.41
hosts-listed.test.      IN A    192.0.2.42
plain-listed.test.      IN A    192.0.2.43
exception.ads.example.test. IN A 192.0.2.44
allowed.adtracker.test. IN A    192.0.2.45
runtime.example.test.   IN A    192.0.2.46
big.example.test.       IN TXT  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
big.example.test.       IN TXT  "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
big.example.test.       IN TXT  "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
web.example.test.       IN A    127.0.0.1
web64.example.test.     IN A    192.0.2.80
web6.example.test.   30 IN AAAA 2001:db8:80::80
alias6.example.test.    IN CNAME web6.example.test.
www.wiki.test.      1   IN CNAME edge.cdn-a.test.
edge.cdn-a.test.    1   IN A    192.0.2.80
other.test.         1   IN A    192.0.2.81
use-application-dns.net. IN A   192.0.2.99
dns.google.             IN A    192.0.2.98
cloudpc.test.           IN A    203.0.113.1
*.cloudpc.test.         IN A    203.0.113.1
"#;

/// The list file the tests load (ABP, hosts and plain lines together).
pub const TEST_LIST: &str = "! test list
||ads.example.test^
@@||exception.ads.example.test^
0.0.0.0 hosts-listed.test
plain-listed.test
||adtracker.test^
";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loopback address no other test in this run uses.
pub fn unique_ip() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    format!("127.{}.{}.{}", 100 + pid % 100, (pid / 100) % 250, 2 + n)
}

/// True when running as root (tests that need namespaces skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Knot DNS, authoritative for the root zone above, on `ip:53`.
pub struct Knot {
    pub ip: String,
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
    prefix: Vec<String>,
}

impl Knot {
    /// Starts Knot on `ip` (optionally inside a command prefix such as `ip netns exec NS`).
    pub fn start_with(ip: &str, prefix: &[&str]) -> Knot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("root.zone"), ROOT_ZONE).unwrap();
        std::fs::write(
            d.join("knot.conf"),
            format!(
                "server:\n    rundir: \"{0}\"\n    listen: {1}@53\n    tcp-workers: 1\n    udp-workers: 1\n    background-workers: 1\ndatabase:\n    storage: \"{0}\"\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: .\n    file: \"{0}/root.zone\"\n",
                d.display(),
                ip
            ),
        )
        .unwrap();
        let mut k = Knot {
            ip: ip.to_string(),
            dir,
            proc: None,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        };
        k.restart();
        k
    }

    /// Starts Knot on `ip`.
    pub fn start(ip: &str) -> Knot {
        Knot::start_with(ip, &[])
    }

    /// Stops the server (to show that answers come from the cache).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// (Re)starts the server and waits until it answers.
    pub fn restart(&mut self) {
        let conf = self.dir.path().join("knot.conf");
        let mut cmd = prefixed(&self.prefix, "knotd");
        cmd.arg("-c").arg(&conf);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.proc = Some(Proc(
            cmd.spawn()
                .expect("knotd (apt package knot) must be installed"),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = prefixed(&self.prefix, "dig")
                .args([
                    &format!("@{}", self.ip),
                    "www.example.test",
                    "+short",
                    "+time=1",
                    "+tries=1",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("192.0.2.10") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("knotd did not start on {}", self.ip);
    }
}

fn prefixed(prefix: &[String], prog: &str) -> Command {
    if prefix.is_empty() {
        Command::new(prog)
    } else {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(prog);
        c
    }
}

/// A running `cloudpc run` with its own state dir and config.
pub struct Cloudpc {
    pub ip: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
    prefix: Vec<String>,
}

impl Cloudpc {
    /// Writes `config` (TOML) and starts `cloudpc run`, waiting until `ip` answers on port 53.
    pub fn start(ip: &str, config: &str) -> Cloudpc {
        Cloudpc::start_with(ip, config, &[])
    }

    /// Like [`start`](Self::start), inside a command prefix (e.g. `ip netns exec NS`).
    pub fn start_with(ip: &str, config: &str, prefix: &[&str]) -> Cloudpc {
        let mut c = Cloudpc::stopped(ip, config);
        c.prefix = prefix.iter().map(|s| s.to_string()).collect();
        c.launch();
        c
    }

    /// Writes `config` and a state dir path but starts nothing: CLI commands then work on
    /// the store alone, and [`launch`](Self::launch) starts the hub later.
    pub fn stopped(ip: &str, config: &str) -> Cloudpc {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cloudpc.toml");
        std::fs::write(&cfg, config).unwrap();
        Cloudpc {
            ip: ip.to_string(),
            state: dir.path().join("state"),
            log: dir.path().join("run.log"),
            config: cfg,
            dir,
            proc: None,
            prefix: vec![],
        }
    }

    /// Starts the process (again).
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = prefixed(&self.prefix, &bin());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log);
        self.proc = Some(Proc(cmd.spawn().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if answers(&self.prefix, &self.ip) {
                return;
            }
            if let Some(p) = self.proc.as_mut() {
                if let Ok(Some(st)) = p.0.try_wait() {
                    panic!("cloudpc exited with {st}: {}", self.logs());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cloudpc did not answer on {}: {}", self.ip, self.logs());
    }

    /// Stops the process (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = Command::new("kill").arg(p.0.id().to_string()).status();
            let _ = p.0.wait();
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.proc.as_mut().map(|p| p.0.try_wait()), Some(Ok(None)))
    }

    /// What the process logged.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Kills the process with SIGKILL (a crash: nothing is cleaned up) and reaps it.
    pub fn crash(&mut self) {
        // Proc's drop sends SIGKILL and waits.
        self.proc = None;
    }

    /// Runs a `cloudpc` CLI command against this instance's config and state dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = prefixed(&self.prefix, &bin());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }

    /// `dig @ip ARGS` output.
    pub fn dig(&self, args: &[&str]) -> String {
        dig_with(&self.prefix, &self.ip, args)
    }

    /// The answer lines' data for NAME TYPE (`dig +short`).
    pub fn short(&self, name: &str, qtype: &str) -> Vec<String> {
        short_with(&self.prefix, &self.ip, name, qtype)
    }

    /// The status (rcode) dig reports for NAME TYPE.
    pub fn rcode(&self, name: &str, qtype: &str) -> String {
        rcode_of(&self.dig(&[name, qtype]))
    }
}

impl Cloudpc {
    /// The management API's Unix socket.
    pub fn api_sock(&self) -> PathBuf {
        self.state.join("api.sock")
    }

    /// `METHOD /v1/...` on the API's Unix socket, with `body` as JSON when given.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> Http {
        let sock = self.api_sock();
        let url = format!("http://cloudpc{path}");
        let mut args = vec![
            "--unix-socket",
            sock.to_str().unwrap(),
            "-X",
            method,
            url.as_str(),
        ];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        curl(&args)
    }

    /// `api` that must answer `code`; returns the JSON body.
    pub fn api_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        code: u16,
    ) -> serde_json::Value {
        let r = self.api(method, path, body);
        assert_eq!(
            r.code,
            code,
            "{method} {path} {body:?}: {}\n{}",
            r.body,
            self.logs()
        );
        r.json()
    }

    /// Waits (up to 10 s) until the API answers `GET /v1/status` with 200.
    pub fn wait_api(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.api("GET", "/v1/status", None).code == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the API on {} did not answer: {}",
            self.api_sock().display(),
            self.logs()
        );
    }
}

/// An HTTP answer as curl saw it: the status code (0 when no answer came) and the body.
#[derive(Debug, Clone)]
pub struct Http {
    pub code: u16,
    pub body: String,
}

impl Http {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (HTTP {})", self.body, self.code))
    }

    /// The `error` text of a refusal (panics unless the body is `{"error": "…"}`).
    pub fn error(&self) -> String {
        let v = self.json();
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {v}"));
        assert!(!e.is_empty(), "empty error text");
        e.to_string()
    }
}

/// Runs `curl -s -m 10 ARGS` and splits its output into body and status code.
pub fn curl(args: &[&str]) -> Http {
    curl_with(&[], args)
}

/// [`curl`] inside a command prefix (e.g. `ip netns exec NS`).
pub fn curl_with(prefix: &[String], args: &[&str]) -> Http {
    let out = prefixed(prefix, "curl")
        .args(["-s", "-m", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    Http {
        code: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

impl Drop for Cloudpc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answers(prefix: &[String], ip: &str) -> bool {
    let out = dig_with(prefix, ip, &["cloudpc-probe.invalid", "+time=1"]);
    out.contains("status:")
}

/// `dig @server ARGS +time=2 +tries=1`.
pub fn dig_with(prefix: &[String], server: &str, args: &[&str]) -> String {
    let out = prefixed(prefix, "dig")
        .arg(format!("@{server}"))
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (apt package dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short` lines.
pub fn short_with(prefix: &[String], server: &str, name: &str, qtype: &str) -> Vec<String> {
    dig_with(prefix, server, &[name, qtype, "+short"])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty() && !l.starts_with(";;"))
        .collect()
}

/// The `status:` of a dig answer.
pub fn rcode_of(dig_out: &str) -> String {
    dig_out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string()
}

/// Waits up to `secs` for `f` to hold.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Every byte of every file under `dir`.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}
