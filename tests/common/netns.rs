//! Network namespaces as hosts, for integration tests (root only).
//!
//! [`Lab`] creates namespaces with unique names (a per-test prefix with the pid), joins them
//! with veth pairs, runs commands in them with a timeout, and on drop (also on panic) kills
//! every process left in its namespaces and deletes them. [`Lab::wg_up`] brings up a stock
//! WireGuard device (wireguard-go driven by wg-quick) from a wg-quick config.
//!
//! [`HubWorld`] builds the hub topology the hub tests share: an "internet" namespace routing
//! between the hub, a home router and a cell router (both NAT), a web server on 192.0.2.80
//! (`python3 -m http.server`, log in [`HubWorld::web_log`]) whose only way back to devices is
//! the hub's public address 203.0.113.1, and device namespaces behind the home router.
//!
//! Use from a test file with `#[path = "common/netns.rs"] mod netns;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("skipping {test}: needs root (network namespaces)");
    false
}

/// A short name unique to this process and call (≤ 15 chars, usable as an interface name).
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{n}", std::process::id() & 0xfffff)
}

/// A set of namespaces that is torn down on drop.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    wg_sockets: Vec<PathBuf>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// An empty lab; `tag` makes names readable in `ip netns list`.
    pub fn new(tag: &str) -> Lab {
        Lab {
            prefix: unique(tag),
            namespaces: vec![],
            children: vec![],
            wg_sockets: vec![],
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The full name of namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// A shell command that sends `count` ICMP echo requests (v4 or v6) to `dst`, waiting up
    /// to 1 s for each reply, and succeeds when one came back. (Python with a raw socket, so
    /// the tests need no `ping` package.)
    pub fn ping_cmd(&self, dst: &str, count: u32) -> String {
        let script = self.dir.path().join("icmp_ping.py");
        if !script.exists() {
            std::fs::write(&script, include_str!("icmp_ping.py")).expect("write ping script");
        }
        format!("python3 {} {dst} {count} 1", script.display())
    }

    /// True when `dst` answers a ping from namespace `short` (up to `count` tries).
    pub fn ping(&self, short: &str, dst: &str, count: u32) -> bool {
        self.sh_succeeds(short, &self.ping_cmd(dst, count), count + 3)
    }

    /// Creates namespace `short` with loopback up.
    pub fn add_ns(&mut self, short: &str) -> String {
        let ns = self.ns(short);
        run_ok(Command::new("ip").args(["netns", "add", &ns]));
        self.namespaces.push(ns.clone());
        // No duplicate address detection: an address is usable, and seen by every program,
        // as soon as it is added. (A link-local address finishing DAD a second later is an
        // address change to Chromium, which fails the requests in flight with
        // ERR_NETWORK_CHANGED.)
        self.sh_ok(
            short,
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && \
             ip link set lo up",
        );
        ns
    }

    /// A veth pair `a_if` in `a` (address `a_addr`, CIDR) ↔ `b_if` in `b` (`b_addr`).
    pub fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        run_ok(Command::new("ip").args([
            "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
        ]));
        self.sh_ok(
            a,
            &format!("ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"),
        );
        self.sh_ok(
            b,
            &format!("ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"),
        );
    }

    /// True when `url` loads (HTTP 2xx) from namespace `short` within 3 s.
    #[allow(dead_code)] // not every test loads pages
    pub fn loads(&self, short: &str, url: &str) -> bool {
        self.sh_succeeds(short, &format!("curl -sf -m 3 -o /dev/null {url}"), 5)
    }

    /// Serves `/hello` ("SHORT:PORT\n") on `ip:port` in namespace `short` (the address must
    /// be up) and waits until it answers.
    #[allow(dead_code)] // not every test serves pages
    pub fn serve_hello(&mut self, short: &str, ip: &str, port: u16) {
        let root = self.dir.path().join(format!("www-{short}-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("hello"), format!("{short}:{port}\n")).unwrap();
        let log = self.dir.path().join(format!("www-{short}-{port}.log"));
        self.spawn(
            short,
            &format!(
                "python3 -u -m http.server {port} --bind {ip} --directory {}",
                root.display()
            ),
            &log,
        );
        assert!(self.eventually(
            short,
            &format!("curl -sf -m 1 -o /dev/null http://{ip}:{port}/hello"),
            Duration::from_secs(10)
        ));
    }

    /// Runs `cmd` with `sh -c` in namespace `short`, killed after `secs`.
    pub fn sh_timeout(&self, short: &str, cmd: &str, secs: u32) -> Output {
        Command::new("timeout")
            .args([
                &format!("{secs}"),
                "ip",
                "netns",
                "exec",
                &self.ns(short),
                "sh",
                "-c",
                cmd,
            ])
            .output()
            .expect("run ip netns exec")
    }

    /// Runs `cmd` in `short` (20 s limit).
    pub fn sh(&self, short: &str, cmd: &str) -> Output {
        self.sh_timeout(short, cmd, 20)
    }

    /// Runs `cmd` in `short` and panics with its output unless it succeeds; returns stdout.
    pub fn sh_ok(&self, short: &str, cmd: &str) -> String {
        let o = self.sh(short, cmd);
        assert!(
            o.status.success(),
            "in {short}: `{cmd}` failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// True when `cmd` succeeds in `short` within `secs`.
    pub fn sh_succeeds(&self, short: &str, cmd: &str, secs: u32) -> bool {
        self.sh_timeout(short, cmd, secs).status.success()
    }

    /// Retries `cmd` until it succeeds or `within` passes.
    pub fn eventually(&self, short: &str, cmd: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.sh_succeeds(short, cmd, 5) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Addresses, rules, routes and WireGuard state of `short`, for failure messages.
    pub fn diag(&self, short: &str) -> String {
        let o = self.sh(
            short,
            "ip -br addr; ip rule; ip route show table all | grep -v '^local\\|^broadcast\\|^multicast\\|ff00::/8\\|fe80::/64'; wg show all; nft list ruleset 2>&1 | head -40",
        );
        format!(
            "--- {short}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Starts a long-running process in `short`, stdout+stderr to `log`; killed on drop.
    pub fn spawn(&mut self, short: &str, cmd: &str, log: &Path) -> u32 {
        let f = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(short),
                "sh",
                "-c",
                &format!("exec {cmd}"),
            ])
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Sends SIGTERM to a process started with [`Lab::spawn`] and waits up to 10 s for it.
    pub fn stop(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let mut c = self.children.remove(i);
        // SAFETY: signalling a child we started and have not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Kills a process started with [`Lab::spawn`] with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Removes `/var/run/wireguard/<ifname>.sock` when the lab goes (a killed userspace
    /// WireGuard leaves its socket behind, and that directory is shared by all namespaces).
    pub fn remove_wg_socket_on_drop(&mut self, ifname: &str) {
        self.wg_sockets
            .push(PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")));
    }

    /// Brings up a stock WireGuard device (wireguard-go via wg-quick) in `short` from a
    /// wg-quick config; the `DNS =` line is dropped (no resolvconf in a namespace). Returns
    /// the interface name.
    pub fn wg_up(&mut self, short: &str, config: &str) -> String {
        let ifname = unique("wgd");
        let conf: String = config
            .lines()
            .filter(|l| !l.trim_start().to_ascii_lowercase().starts_with("dns"))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = self.dir.path().join(format!("{ifname}.conf"));
        std::fs::write(&path, conf).expect("write wg config");
        self.wg_sockets
            .push(PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")));
        self.sh_ok(
            short,
            &format!(
                "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go \
                 WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wg-quick up {} 2>&1",
                path.display()
            ),
        );
        ifname
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            // wireguard-go daemonizes: end whatever still runs in our namespaces, by pid.
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: these processes run inside namespaces this lab created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for s in &self.wg_sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

fn run_ok(c: &mut Command) {
    let o = c.output().expect("run command");
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Public address of the hub in [`HubWorld`].
pub const HUB_PUBLIC: &str = "203.0.113.1";
/// The hub's second public address.
pub const HUB_PUBLIC_2: &str = "203.0.113.2";
/// The public address of a second hub host ([`HubWorld::add_second_hub_host`]).
#[allow(dead_code)]
pub const HUB2_PUBLIC: &str = "198.18.0.1";
/// The web server's address in the "internet".
pub const WEB: &str = "192.0.2.80";
/// The web server's IPv6 address in the "internet".
pub const WEB6: &str = "2001:db8:80::80";
/// The hub's public IPv6 address.
pub const HUB_PUBLIC6: &str = "2001:db8:1::1";
/// Public (post-NAT) address of the home router.
pub const HOME_PUBLIC: &str = "198.51.100.2";
/// Public (post-NAT) address of the cell router.
pub const CELL_PUBLIC: &str = "198.51.101.2";

/// The hub topology (see the module docs). Namespaces: `inet`, `hub`, `home`, `cell`, `dN`.
pub struct HubWorld {
    pub lab: Lab,
    pub web_log: PathBuf,
    /// Files the web server serves.
    pub web_root: PathBuf,
}

impl HubWorld {
    /// Builds the internet, the hub host, both routers, and starts the web server.
    pub fn new(tag: &str) -> HubWorld {
        let mut lab = Lab::new(tag);
        for n in ["inet", "hub", "home", "cell"] {
            lab.add_ns(n);
        }
        lab.link(
            "inet",
            "hub0",
            "203.0.113.254/24",
            "hub",
            "eth0",
            "203.0.113.1/24",
        );
        lab.link(
            "inet",
            "home0",
            "198.51.100.1/24",
            "home",
            "wan",
            "198.51.100.2/24",
        );
        lab.link(
            "inet",
            "cell0",
            "198.51.101.1/24",
            "cell",
            "wan",
            "198.51.101.2/24",
        );
        lab.sh_ok(
            "inet",
            "sysctl -qw net.ipv4.ip_forward=1 && ip addr add 192.0.2.80/32 dev lo",
        );
        // A second public address: replies must leave from the address a device dialled.
        lab.sh_ok(
            "hub",
            "ip route add default via 203.0.113.254 && ip addr add 203.0.113.2/24 dev eth0",
        );
        // IPv6 between the hub and the internet only (the devices' uplinks stay IPv4-only,
        // as on many home networks): the web server also answers on WEB6.
        lab.sh_ok(
            "inet",
            "sysctl -qw net.ipv6.conf.all.forwarding=1 && \
             ip addr add 2001:db8:1::254/64 dev hub0 nodad && ip addr add 2001:db8:80::80/128 dev lo",
        );
        lab.sh_ok(
            "hub",
            "ip addr add 2001:db8:1::1/64 dev eth0 nodad && ip -6 route add default via 2001:db8:1::254",
        );
        for (r, gw) in [("home", "198.51.100.1"), ("cell", "198.51.101.1")] {
            lab.sh_ok(
                r,
                &format!(
                    "ip route add default via {gw} && sysctl -qw net.ipv4.ip_forward=1 && \
                     nft add table ip nat && \
                     nft add chain ip nat post '{{ type nat hook postrouting priority 100; }}' && \
                     nft add rule ip nat post oifname wan masquerade"
                ),
            );
        }
        let web_root = lab.dir.path().join("www");
        std::fs::create_dir_all(&web_root).expect("web root");
        std::fs::write(web_root.join("hello"), "hello from the internet\n").expect("hello");
        let web_log = lab.dir.path().join("web.log");
        lab.spawn(
            "inet",
            &format!(
                "python3 -u -m http.server 80 --bind 192.0.2.80 --directory {}",
                web_root.display()
            ),
            &web_log,
        );
        lab.spawn(
            "inet",
            &format!(
                "python3 -u -m http.server 80 --bind 2001:db8:80::80 --directory {}",
                web_root.display()
            ),
            &web_log.with_extension("v6.log"),
        );
        let ok = lab.eventually(
            "inet",
            "curl -sf -m 2 http://192.0.2.80/hello && curl -sf -m 2 'http://[2001:db8:80::80]/hello'",
            Duration::from_secs(10),
        );
        assert!(ok, "web server did not come up");
        HubWorld {
            lab,
            web_log,
            web_root,
        }
    }

    /// Adds device namespace `dN` behind the home router (192.168.N.2/24); with `cell`, also
    /// behind the cell router (10.N.0.2/24, not the default route).
    pub fn add_device_ns(&mut self, n: u8, cell: bool) -> String {
        let d = format!("d{n}");
        self.lab.add_ns(&d);
        self.lab.link(
            "home",
            &format!("lan{n}"),
            &format!("192.168.{n}.1/24"),
            &d,
            "eth0",
            &format!("192.168.{n}.2/24"),
        );
        self.lab
            .sh_ok(&d, &format!("ip route add default via 192.168.{n}.1"));
        if cell {
            self.lab.link(
                "cell",
                &format!("lan{n}"),
                &format!("10.{n}.0.1/24"),
                &d,
                "eth1",
                &format!("10.{n}.0.2/24"),
            );
        }
        d
    }

    /// What the web server logged so far (both families).
    pub fn web_log(&self) -> String {
        std::fs::read_to_string(&self.web_log).unwrap_or_default()
            + &std::fs::read_to_string(self.web_log.with_extension("v6.log")).unwrap_or_default()
    }
}

/// A `cloudpc run` in the hub namespace of a [`HubWorld`].
pub struct HubRun {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// The hub's TUN (unique per test; also names the UAPI socket).
    pub interface: String,
    pub log: PathBuf,
    pub pid: Option<u32>,
    /// The namespace it runs in.
    pub ns: String,
}

impl HubRun {
    /// `cloudpc` with this hub's config and state dir, for CLI calls from the test process.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(cloudpc_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state_dir);
        c
    }

    /// Sets the admin page's password with `cloudpc admin password` (on standard input).
    pub fn set_admin_password(&self, password: &str) {
        use std::io::Write;
        let mut child = self
            .cli()
            .args(["admin", "password"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cloudpc");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{password}").expect("write the password");
        drop(stdin);
        let out = child.wait_with_output().expect("cloudpc admin password");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `cloudpc` binary under test: `CLOUDPC_TEST_BIN` when set (a release build for
/// measurements, or a copy when several worktrees share one target dir), else Cargo's.
pub fn cloudpc_bin() -> String {
    std::env::var("CLOUDPC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cloudpc").to_string())
}

/// A WireGuard key pair from `wg genkey | wg pubkey` (base64).
pub fn wg_keypair() -> (String, String) {
    let private = Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg genkey");
    let private = String::from_utf8_lossy(&private.stdout).trim().to_string();
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    use std::io::Write;
    c.stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("write key");
    let public = c.wait_with_output().expect("wg pubkey");
    (
        private,
        String::from_utf8_lossy(&public.stdout).trim().to_string(),
    )
}

impl HubWorld {
    /// Writes a config for a hub at [`HUB_PUBLIC`] and a fresh state dir; `extra` is appended.
    pub fn hub(&mut self, extra: &str) -> HubRun {
        self.hub_at("hub", HUB_PUBLIC, extra)
    }

    /// A second hub host: namespace `hub2` at [`HUB2_PUBLIC`] in the test internet.
    #[allow(dead_code)] // only the tests of two hubs use it
    pub fn add_second_hub_host(&mut self) {
        self.lab.add_ns("hub2");
        self.lab.link(
            "inet",
            "hubb0",
            "198.18.0.254/24",
            "hub2",
            "eth0",
            &format!("{HUB2_PUBLIC}/24"),
        );
        self.lab
            .sh_ok("hub2", "ip route add default via 198.18.0.254");
    }

    /// Writes a config for a hub in namespace `ns` whose devices dial `public`, and a fresh
    /// state dir; `extra` is appended.
    pub fn hub_at(&mut self, ns: &str, public: &str, extra: &str) -> HubRun {
        let interface = unique("cph");
        self.lab.remove_wg_socket_on_drop(&interface);
        let dir = self.lab.dir.path().join(&interface);
        std::fs::create_dir_all(&dir).expect("hub dir");
        let config = dir.join("cloudpc.toml");
        std::fs::write(
            &config,
            format!(
                "[wireguard]\nlisten_port = 51820\nendpoint = \"{public}:51820\"\n\
                 interface = \"{interface}\"\n\n[egress]\ninterface = \"auto\"\n{extra}"
            ),
        )
        .expect("write config");
        HubRun {
            config,
            state_dir: dir.join("state"),
            interface,
            log: dir.join("hub.log"),
            pid: None,
            ns: ns.to_string(),
        }
    }

    /// Starts `cloudpc run` in the hub namespace and waits until it serves (its UAPI socket
    /// answers `wg show`); panics with the log if it exits first.
    pub fn start_hub(&mut self, h: &mut HubRun) {
        let bin = cloudpc_bin();
        let cmd = format!(
            "env CLOUDPC_LOG=${{CLOUDPC_TEST_HUB_LOG:-cloudpc=debug}} {bin} run --config {} --state-dir {}",
            h.config.display(),
            h.state_dir.display()
        );
        let log = h.log.clone();
        let pid = self.lab.spawn(&h.ns, &cmd, &log);
        h.pid = Some(pid);
        // Ready = the UAPI socket answers (a stale socket left by a crash refuses).
        let probe = format!("wg show {} listen-port", h.interface);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if self.lab.sh_succeeds(&h.ns, &probe, 2) {
                return;
            }
            if self
                .lab
                .children
                .iter_mut()
                .any(|c| c.id() == pid && matches!(c.try_wait(), Ok(Some(_))))
            {
                panic!("hub exited at start:\n{}", h.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hub did not come up in 20 s:\n{}", h.log());
    }

    /// User+system CPU seconds the hub process has used so far.
    pub fn hub_cpu_secs(&self, h: &HubRun) -> f64 {
        let Some(pid) = h.pid else { return 0.0 };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Kills the hub with SIGKILL: no cleanup runs, as after a crash or power loss.
    pub fn crash_hub(&mut self, h: &mut HubRun) {
        if let Some(pid) = h.pid.take() {
            self.lab.kill(pid);
        }
    }

    /// Stops the hub with SIGTERM (as systemd would) and returns how it exited.
    pub fn stop_hub(&mut self, h: &mut HubRun) -> Option<std::process::ExitStatus> {
        let pid = h.pid.take()?;
        self.lab.stop(pid)
    }

    /// Registers device `name` on hub `h` and returns its wg-quick config (with a private
    /// key made here, so the hub never sees it). Uses `cloudpc device add NAME --pubkey KEY`
    /// when the CLI supports it, else writes through the store and renders the config.
    pub fn register(&self, h: &HubRun, name: &str) -> (String, String) {
        let (private, public) = wg_keypair();
        let out = h
            .cli()
            .args(["device", "add", name, "--pubkey", &public])
            .output()
            .expect("cloudpc device add");
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let via_cli = out.status.success() && printed.contains("[Peer]");
        if std::env::var_os("CLOUDPC_TEST_VERBOSE").is_some() {
            eprintln!("register {name}: via `device add --pubkey`: {via_cli}");
        }
        let config = if via_cli {
            // Only the config itself: from `[Interface]` on, sections, `Key = Value` lines,
            // comments and blanks (a note printed around it would break wg-quick).
            let start = printed.find("[Interface]").unwrap_or(0);
            let mut conf = String::new();
            for l in printed[start..].lines() {
                let t = l.trim();
                let keep = t.is_empty()
                    || t.starts_with('#')
                    || (t.starts_with('[') && t.ends_with(']'))
                    || t.contains('=');
                if !keep || t.starts_with("PrivateKey") {
                    continue;
                }
                conf.push_str(l);
                conf.push('\n');
                if l.trim() == "[Interface]" {
                    conf.push_str(&format!("PrivateKey = {private}\n"));
                }
            }
            conf
        } else {
            let cfg = cloudpc::config::Config::load(&h.config).expect("config");
            let mut store = cloudpc::store::Store::open(&h.state_dir).expect("store");
            let overlay = store.overlay(&cfg.wireguard).expect("overlay");
            let hub_key =
                cloudpc::enroll::keys::load_or_create_hub_key(&h.state_dir).expect("hub key");
            let d = store
                .add_device(name, &public, false, &overlay)
                .expect("add device");
            format!(
                "[Interface]\nPrivateKey = {private}\nAddress = {}/32, {}/128\nMTU = {}\n\n\
                 [Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 0.0.0.0/0, ::/0\n\
                 PersistentKeepalive = 25\n",
                d.ipv4,
                d.ipv6,
                cfg.wireguard.mtu,
                hub_key.public_b64(),
                cfg.wireguard.endpoint
            )
        };
        (config, public)
    }

    /// The overlay addresses (v4, v6) of device `name`.
    pub fn device_addrs(&self, h: &HubRun, name: &str) -> (String, String) {
        let store = cloudpc::store::Store::open(&h.state_dir).expect("store");
        let d = store.device(name).expect("device");
        (d.ipv4.to_string(), d.ipv6.to_string())
    }
}

impl Lab {
    /// Like [`Lab::ping_cmd`], waiting `wait_secs` (fractions allowed) for each reply.
    pub fn ping_cmd_wait(&self, dst: &str, count: u32, wait_secs: f32) -> String {
        let script = self.dir.path().join("icmp_ping.py");
        if !script.exists() {
            std::fs::write(&script, include_str!("icmp_ping.py")).expect("write ping script");
        }
        format!("python3 {} {dst} {count} {wait_secs}", script.display())
    }

    /// Takes down a device brought up with [`Lab::wg_up`] (`wg-quick down`).
    pub fn wg_down(&mut self, short: &str, ifname: &str) {
        let path = self.dir.path().join(format!("{ifname}.conf"));
        self.sh_ok(
            short,
            &format!(
                "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go wg-quick down {} 2>&1",
                path.display()
            ),
        );
    }
}

/// The wg-quick config in what `cloudpc device add` printed: from `[Interface]` on, sections,
/// `Key = Value` lines, comments and blanks. With `private`, that key is put in (a config
/// for a `--pubkey` device has none).
pub fn wg_quick_config(printed: &str, private: Option<&str>) -> String {
    let start = printed.find("[Interface]").unwrap_or(0);
    let mut conf = String::new();
    for l in printed[start..].lines() {
        let t = l.trim();
        let keep = t.is_empty()
            || t.starts_with('#')
            || (t.starts_with('[') && t.ends_with(']'))
            || t.contains('=');
        if !keep || (private.is_some() && t.starts_with("PrivateKey")) {
            continue;
        }
        conf.push_str(l);
        conf.push('\n');
        if let (Some(k), "[Interface]") = (private, t) {
            conf.push_str(&format!("PrivateKey = {k}\n"));
        }
    }
    conf
}

/// The addresses listed after `key =` in a wg-quick config (`Address`, `DNS`), without
/// prefix lengths: for `Address` the device's (v4, v6), for `DNS` the hub's.
pub fn conf_addrs(conf: &str, key: &str) -> (String, String) {
    let value = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {conf}"));
    let addrs: Vec<&str> = value
        .split(',')
        .map(|a| a.trim().split('/').next().unwrap_or(""))
        .collect();
    let v4 = addrs
        .iter()
        .find(|a| a.contains('.') && a.parse::<std::net::Ipv4Addr>().is_ok());
    let v6 = addrs.iter().find(|a| a.contains(':'));
    match (v4, v6) {
        (Some(a), Some(b)) => (a.to_string(), b.to_string()),
        _ => panic!("no IPv4 and IPv6 address in {key} of {conf}"),
    }
}

impl HubRun {
    /// `cloudpc device add NAME ARGS`, which must succeed; returns the device's wg-quick
    /// config. With `own_key` the key pair is made here and only `--pubkey` goes to the hub;
    /// otherwise the hub makes the key and prints it.
    pub fn add_device(&self, name: &str, own_key: bool, args: &[&str]) -> String {
        let mut c = self.cli();
        c.args(["device", "add", name]).args(args);
        let private = if own_key {
            let (private, public) = wg_keypair();
            c.args(["--pubkey", &public]);
            Some(private)
        } else {
            None
        };
        let out = c.output().expect("cloudpc device add");
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && printed.contains("[Peer]"),
            "device add {name} {args:?}: {printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = wg_quick_config(&printed, private.as_deref());
        assert!(conf.contains("PrivateKey = "), "{conf}");
        conf
    }

    /// Turns the query log on for a fresh owner key written under `dir`; returns the key's
    /// file (for `querylog pull --identity`).
    pub fn enable_querylog(&self, dir: &Path) -> PathBuf {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let file = dir.join("owner.key");
        std::fs::write(&file, id.to_string().expose_secret()).unwrap();
        let recipient = id.to_public().to_string();
        self.cli_ok(&["querylog", "enable", "--recipient", &recipient]);
        file
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli().args(args).output().expect("run cloudpc");
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
