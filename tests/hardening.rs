//! Hardening, through the real `cloudpc` binary: one address holding thousands of idle TCP and
//! DoT connections while another address is still served, a damaged state database that is
//! refused and left alone, upstreams that fail (silence, garbage, a wrong id, a malformed
//! answer) turning into a timely SERVFAIL and recovering, and start-up time and memory with
//! 10,000 registered devices.
//!
//! The resolver runs on unique loopback addresses (127.0.0.0/8 binds anywhere on `lo`); the
//! 10,000-device hub runs in network namespaces the test creates. Run with `--nocapture` to see
//! the measurements.

mod support;

#[path = "common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{all_bytes, contains, eventually, unique_ip, Cloudpc, Knot};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A syntactically valid WireGuard public key (32 bytes, base64), distinct per `n`.
fn key(n: u32) -> String {
    use base64::Engine;
    let mut b = [0x3cu8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
fn raise_nofile(need: u64) {
    // SAFETY: getrlimit/setrlimit write to and read from a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < need {
            r.rlim_cur = r.rlim_max.max(need);
            r.rlim_max = r.rlim_cur;
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &r),
                0,
                "cannot raise RLIMIT_NOFILE to {need}"
            );
        }
    }
}

// --- DNS messages on the wire -------------------------------------------------------------

/// A recursive query for `name` (dotted) / A, class IN.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The rcode of an answer.
fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map(|b| b & 0x0f).unwrap_or(0xff)
}

/// True when the answer carries an A record with address `a` (rdlength 4, then the address).
fn has_a(msg: &[u8], a: [u8; 4]) -> bool {
    msg.windows(6)
        .any(|w| w[..2] == [0, 4] && w[2..] == a && msg.len() > 12)
}

/// Sends a length-prefixed query on a stream and reads the answer (RFC 7766).
fn stream_query<S: Read + Write>(s: &mut S, id: u16, name: &str) -> std::io::Result<Vec<u8>> {
    let q = dns_query(id, name);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed)?;
    s.flush()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut ans = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut ans)?;
    Ok(ans)
}

// --- a. idle connections from one address ----------------------------------------------------

/// A TCP connection from `from` to `to`, made within 3 s.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = format!("{from}:0").parse().expect("source address");
    s.bind(&src.into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(3))?;
    Ok(s.into())
}

/// True while the peer has not closed `s` (nothing to read, or data waiting).
fn open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv into a valid one-byte buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(s),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0 || (n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
}

/// Waits (up to 30 s) until at most `cap` of `conns` are still open; returns how many are.
fn settle(conns: &[TcpStream], cap: usize) -> usize {
    let mut n = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        n = conns.iter().filter(|c| open(c)).count();
        if n <= cap {
            // Give late accepts a moment, then count once more.
            std::thread::sleep(Duration::from_millis(300));
            return conns.iter().filter(|c| open(c)).count();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    n
}

/// A rustls client trusting the hub's self-signed certificate (`tls/cert.pem`).
fn tls_client(state: &Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(state.join("tls/cert.pem")).expect("the hub's certificate");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.expect("certificate")).expect("add root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A DoT connection from `from` with a completed handshake, or why not.
fn dot_from(from: &str, to: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    let mut tcp = connect_from(from, to).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let name = rustls::pki_types::ServerName::try_from("cloudpc").expect("server name");
    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// `kdig` from `src` to `server` over `mode` (`+tcp`, `+tls`): the A records it printed.
fn kdig_from(src: &str, server: &str, mode: &str, name: &str) -> String {
    let out = Command::new("kdig")
        .args([
            "-b",
            src,
            &format!("@{server}"),
            mode,
            name,
            "A",
            "+short",
            "+timeout=3",
            "+retry=0",
        ])
        .output()
        .expect("kdig (apt package knot-dnsutils) must be installed");
    text(&out.stdout).trim().to_string()
}

#[test]
fn one_address_holding_thousands_of_connections_leaves_room_for_others() {
    const FLOOD: usize = 3000;
    const PER_ADDRESS: usize = 64;
    raise_nofile(2 * FLOOD as u64 + 512);
    let knot = Knot::start(&unique_ip());
    let ip = unique_ip();
    // Idle connections are kept far longer than the test takes, so only the cap closes them.
    let hub = Cloudpc::start(
        &ip,
        &format!(
            "[dns]\nlisten = [\"{ip}:53\"]\ntls_listen = [\"{ip}:853\"]\n\
             upstreams = [\"udp://{}:53\"]\ntcp_idle_timeout = 600\n\
             [wireguard]\nenabled = false\nendpoint = \"vpn.example.test\"\n",
            knot.ip
        ),
    );
    let tcp: SocketAddr = format!("{ip}:53").parse().unwrap();
    let dot: SocketAddr = format!("{ip}:853").parse().unwrap();
    let (tcp_flooder, dot_flooder, other) = (unique_ip(), unique_ip(), unique_ip());

    // 3,000 idle TCP connections from one address: it keeps 64, the rest are closed at once.
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..FLOOD)
        .filter_map(|_| connect_from(&tcp_flooder, tcp).ok())
        .collect();
    let made = held.len();
    let open_tcp = settle(&held, PER_ADDRESS);
    eprintln!(
        "TCP flood from {tcp_flooder}: {made} of {FLOOD} connects completed in {:?}, {open_tcp} still open",
        started.elapsed()
    );
    assert_eq!(
        open_tcp,
        PER_ADDRESS,
        "one address should keep exactly {PER_ADDRESS} connections: {}",
        hub.logs()
    );
    held.retain(open);

    // 3,000 DoT connections from a second address: 64 complete the handshake.
    let cfg = tls_client(&hub.state);
    let started = Instant::now();
    let mut refused = 0;
    let mut held_tls: Vec<Tls> = Vec::new();
    for _ in 0..FLOOD {
        match dot_from(&dot_flooder, dot, &cfg) {
            Ok(s) => held_tls.push(s),
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "DoT flood from {dot_flooder}: {} handshakes held, {refused} refused, in {:?}",
        held_tls.len(),
        started.elapsed()
    );
    let tls_open = held_tls.iter().filter(|s| open(s.get_ref())).count();
    assert_eq!(held_tls.len(), PER_ADDRESS, "DoT connections held");
    assert_eq!(tls_open, PER_ADDRESS, "held DoT connections still open");

    // Another address still gets answers over TCP and DoT ...
    assert_eq!(
        kdig_from(&other, &ip, "+tcp", "www.example.test"),
        "192.0.2.10",
        "{}",
        hub.logs()
    );
    assert_eq!(
        kdig_from(&other, &ip, "+tls", "www.example.test"),
        "192.0.2.10"
    );
    // ... and so do the flooders on the connections they hold,
    let ans = stream_query(&mut held[0], 0x1234, "www.example.test").expect("held TCP");
    assert!(has_a(&ans, [192, 0, 2, 10]), "{ans:?}");
    let ans = stream_query(&mut held_tls[0], 0x4321, "v4only.example.test").expect("held DoT");
    assert!(has_a(&ans, [192, 0, 2, 20]), "{ans:?}");
    // but not on a new one: the cap counts an address across TCP and DoT.
    assert_eq!(kdig_from(&tcp_flooder, &ip, "+tcp", "www.example.test"), "");
    assert_eq!(kdig_from(&tcp_flooder, &ip, "+tls", "www.example.test"), "");

    // Closing the held connections gives the slots back.
    held.clear();
    held_tls.clear();
    assert!(
        eventually(5, || kdig_from(
            &tcp_flooder,
            &ip,
            "+tcp",
            "www.example.test"
        ) == "192.0.2.10"),
        "the flooder's slots did not come back"
    );
}

// --- b. a damaged state database ---------------------------------------------------------------

/// Waits up to `secs` for a child to exit; kills it otherwise.
fn wait_exit(mut c: std::process::Child, secs: u64) -> (Option<std::process::ExitStatus>, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Ok(Some(st)) = c.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// The way out a damaged-store message must name: the file, a backup, moving it away.
fn assert_names_the_way_out(what: &str, err: &str, db: &Path) {
    let l = err.to_lowercase();
    assert!(
        err.contains(&db.display().to_string()) && l.contains("backup") && l.contains("move"),
        "{what}: {err:?} should name {} and say to restore a backup or move the file away",
        db.display()
    );
}

#[test]
fn a_damaged_state_db_is_refused_and_left_alone() {
    let knot = Knot::start(&unique_ip());
    let ip = unique_ip();
    let mut hub = Cloudpc::stopped(
        &ip,
        &format!(
            "[dns]\nlisten = [\"{ip}:53\"]\nupstreams = [\"udp://{}:53\"]\n\
             [wireguard]\nenabled = false\nendpoint = \"vpn.example.test\"\n",
            knot.ip
        ),
    );
    hub.launch();
    hub.wait_api();
    let names: Vec<String> = (0..3).map(|n| format!("keep-me-{n}")).collect();
    for (n, name) in names.iter().enumerate() {
        let o = hub.cli(&["device", "add", name, "--pubkey", &key(n as u32)]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    hub.stop();
    // A CLI command without the hub is the last to close the database: SQLite moves the WAL
    // into the file, so what follows damages the devices themselves.
    let o = hub.cli(&["device", "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let db = hub.state.join("state.db");
    let good = std::fs::read(&db).unwrap();
    assert!(
        contains(&good, "keep-me-2"),
        "the devices are not in the file"
    );

    let mut header = good.clone();
    for (i, b) in header.iter_mut().take(100).enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xa5;
    }
    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("truncated to nothing", Vec::new()),
        ("garbage over the header", header),
    ];
    for (what, bytes) in cases {
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(hub.state.join(format!("state.db{ext}")));
        }
        std::fs::write(&db, &bytes).unwrap();

        let run = Command::new(support::bin())
            .arg("--config")
            .arg(&hub.config)
            .arg("--state-dir")
            .arg(&hub.state)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, err) = wait_exit(run, 20);
        let status = status.unwrap_or_else(|| panic!("{what}: `cloudpc run` kept running"));
        assert!(!status.success(), "{what}: `cloudpc run` succeeded: {err}");
        assert_names_the_way_out(&format!("{what}: cloudpc run"), &err, &db);

        for args in [
            vec!["device", "list"],
            vec!["device", "add", "newcomer", "--pubkey", &key(99)],
        ] {
            let o = hub.cli(&args);
            assert!(!o.status.success(), "{what}: {args:?} succeeded");
            assert_names_the_way_out(&format!("{what}: {args:?}"), &text(&o.stderr), &db);
        }
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{what}: the file was changed"
        );
        eprintln!(
            "{what}: {}",
            text(&hub.cli(&["device", "list"]).stderr).trim()
        );
    }

    // The way out works: with the good file back, every device is there.
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(hub.state.join(format!("state.db{ext}")));
    }
    std::fs::write(&db, &good).unwrap();
    let listed = text(&hub.cli(&["device", "list"]).stdout);
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} missing: {listed}");
    }
    assert!(contains(&all_bytes(&hub.state), "keep-me-0"));
}

// --- c. upstreams that fail -------------------------------------------------------------------

/// How the fake upstream behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    /// Answers correctly: every A query gets 192.0.2.99.
    None = 0,
    /// Never answers.
    Silent = 1,
    /// Answers with bytes that are not DNS.
    Garbage = 2,
    /// A correct answer with another id.
    WrongId = 3,
    /// The right id and question, then a record cut short.
    Malformed = 4,
}

/// A UDP "upstream" on `ip:53` in a thread, its behaviour switchable; stops on drop.
struct FakeUpstream {
    fault: Arc<AtomicU8>,
    queries: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start(ip: &str) -> FakeUpstream {
        let sock = UdpSocket::bind(format!("{ip}:53")).expect("bind fake upstream");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let queries = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, q, s) = (fault.clone(), queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let reply = match f.load(Ordering::Relaxed) {
                    1 => None,
                    2 => Some((0..48u8).map(|i| i.wrapping_mul(97) ^ 0x5c).collect()),
                    3 => fake_answer(&buf[..n], 0x5a5a, false),
                    4 => fake_answer(&buf[..n], 0, true),
                    _ => fake_answer(&buf[..n], 0, false),
                };
                if let Some(r) = reply {
                    let _ = sock.send_to(&r, from);
                }
            }
        });
        FakeUpstream {
            fault,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, f: Fault) {
        self.fault.store(f as u8, Ordering::Relaxed);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An answer to `query` (id XOR `id_xor`): A 192.0.2.99 for an A question, else no records;
/// with `cut`, the record stops after its name.
fn fake_answer(query: &[u8], id_xor: u16, cut: bool) -> Option<Vec<u8>> {
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + *query.get(i)? as usize;
    }
    let q_end = i + 5;
    let question = query.get(12..q_end)?;
    let is_a = question[question.len() - 4..] == [0, 1, 0, 1];
    let id = u16::from_be_bytes([query[0], query[1]]) ^ id_xor;
    let mut a = id.to_be_bytes().to_vec();
    a.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a || cut), 0, 0, 0, 0]);
    a.extend_from_slice(question);
    if cut {
        a.extend_from_slice(&[0xc0, 0x0c, 0, 1]);
    } else if is_a {
        a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99]);
    }
    Some(a)
}

/// Asks `server` over UDP; returns the answer and how long it took (`None` after 10 s).
fn udp_ask(server: &str, id: u16, name: &str) -> (Option<Vec<u8>>, Duration) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.send_to(&dns_query(id, name), format!("{server}:53"))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.recv(&mut buf) {
            Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                return (Some(buf[..n].to_vec()), started.elapsed())
            }
            Ok(_) => continue,
            Err(_) => return (None, started.elapsed()),
        }
    }
}

#[test]
fn failing_upstreams_give_a_timely_servfail_and_recover() {
    const UPSTREAM_TIMEOUT: u64 = 2;
    let up_ip = unique_ip();
    let up = FakeUpstream::start(&up_ip);
    let ip = unique_ip();
    let hub = Cloudpc::start(
        &ip,
        &format!(
            "[dns]\nlisten = [\"{ip}:53\"]\nupstreams = [\"udp://{up_ip}:53\"]\n\
             upstream_timeout = {UPSTREAM_TIMEOUT}\n\
             [wireguard]\nenabled = false\nendpoint = \"vpn.example.test\"\n"
        ),
    );
    let bound = Duration::from_secs(UPSTREAM_TIMEOUT + 2);
    let (ok, _) = udp_ask(&ip, 1, "before.fault.test");
    let ok = ok.expect("an answer while the upstream works");
    assert!(has_a(&ok, [192, 0, 2, 99]), "{ok:?}");

    let mut report = Vec::new();
    for (n, fault) in [
        Fault::Silent,
        Fault::Garbage,
        Fault::WrongId,
        Fault::Malformed,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("q{n}.fault.test");
        up.set(fault);
        let asked = up.queries.load(Ordering::Relaxed);
        let (ans, took) = udp_ask(&ip, 100 + n as u16, &name);
        let ans = ans.unwrap_or_else(|| panic!("{fault:?}: no answer at all in {took:?}"));
        assert_eq!(rcode(&ans), 2, "{fault:?}: SERVFAIL expected: {ans:?}");
        assert!(
            took < bound,
            "{fault:?}: SERVFAIL after {took:?}, more than {bound:?}"
        );
        assert!(
            up.queries.load(Ordering::Relaxed) > asked,
            "{fault:?}: the upstream was not asked"
        );
        // Over TCP the query goes to the general path at once (UDP listeners first wait up
        // to a second for an upstream they asked themselves).
        let mut tcp = TcpStream::connect(format!("{ip}:53")).expect("TCP to the resolver");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let ans = stream_query(&mut tcp, 150 + n as u16, &format!("t{n}.fault.test"))
            .unwrap_or_else(|e| panic!("{fault:?}: no answer over TCP: {e}"));
        let took_tcp = started.elapsed();
        assert_eq!(
            rcode(&ans),
            2,
            "{fault:?} over TCP: SERVFAIL expected: {ans:?}"
        );
        assert!(
            took_tcp < bound,
            "{fault:?}: SERVFAIL over TCP after {took_tcp:?}, more than {bound:?}"
        );
        report.push(format!(
            "{fault:?} {} ms (UDP) / {} ms (TCP)",
            took.as_millis(),
            took_tcp.as_millis()
        ));

        // Recovery: the same name, once the upstream answers again.
        up.set(Fault::None);
        let (ans, took) = udp_ask(&ip, 200 + n as u16, &name);
        let ans = ans.unwrap_or_else(|| panic!("{fault:?}: no answer after recovery"));
        assert_eq!(rcode(&ans), 0, "{fault:?}: after recovery: {ans:?}");
        assert!(has_a(&ans, [192, 0, 2, 99]), "{fault:?}: {ans:?}");
        assert!(
            took < Duration::from_secs(1),
            "{fault:?}: recovery took {took:?}"
        );
    }
    eprintln!(
        "SERVFAIL latency (upstream_timeout = {UPSTREAM_TIMEOUT} s): {}",
        report.join(", ")
    );
    drop(hub);
}

// --- d. 10,000 devices --------------------------------------------------------------------------

/// One HTTP/1.1 request on a kept-alive connection; returns (status, body).
fn http(
    conn: &mut std::os::unix::net::UnixStream,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: cloudpc\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).expect("write request");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut b).expect("read response head");
        head.push(b[0]);
    }
    let head = text(&head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).expect("read body");
    (status, text(&body))
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts the hub of `w` and times it until its API (`GET /v1/status`) and its DNS port (a
/// local answer for `probe_name`, from the device table) answer; returns both times and VmRSS
/// (KiB) at that point.
fn timed_start(
    w: &mut netns::HubWorld,
    hub: &mut netns::HubRun,
    probe_name: &str,
) -> (Duration, Duration, u64) {
    let sock = hub.state_dir.join("api.sock");
    let cmd = format!(
        "{} run --config {} --state-dir {}",
        netns::cloudpc_bin(),
        hub.config.display(),
        hub.state_dir.display()
    );
    let started = Instant::now();
    let log = hub.log.clone();
    let pid = w.lab.spawn("hub", &cmd, &log);
    hub.pid = Some(pid);
    let (mut api_at, mut dns_at) = (None, None);
    let probe = format!("dig @100.96.0.1 {probe_name} A +short +time=1 +tries=1");
    let deadline = started + Duration::from_secs(60);
    while (api_at.is_none() || dns_at.is_none()) && Instant::now() < deadline {
        if api_at.is_none() {
            if let Ok(mut c) = std::os::unix::net::UnixStream::connect(&sock) {
                c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                if http(&mut c, "GET", "/v1/status", "").0 == 200 {
                    api_at = Some(started.elapsed());
                }
            }
        }
        if dns_at.is_none() && !w.lab.sh_timeout("hub", &probe, 3).stdout.is_empty() {
            dns_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss = rss_kib(pid);
    (
        api_at.unwrap_or_else(|| panic!("the API did not answer in 60 s:\n{}", hub.log())),
        dns_at.unwrap_or_else(|| panic!("DNS did not answer in 60 s:\n{}", hub.log())),
        rss,
    )
}

#[test]
fn ten_thousand_devices_start_up_time_and_memory() {
    if !netns::root_or_skip("ten_thousand_devices") {
        return;
    }
    const DEVICES: u32 = 10_000;
    let mut w = netns::HubWorld::new("cpk");
    // No lists to fetch and an upstream that is not there: this test sends nothing outside.
    let mut hub = w.hub("[dns]\nupstreams = [\"udp://127.0.0.1:5399\"]\n[filter]\nlists = []\n");

    // Through the store, as `cloudpc device add` does without a running hub, in this process:
    // a process start per device would take ~30 ms each, and through a running hub's API each
    // add rebuilds the hub's whole device state (measured below).
    let started = Instant::now();
    {
        let cfg = cloudpc::config::Config::load(&hub.config).expect("config");
        let mut store = cloudpc::store::Store::open(&hub.state_dir).expect("store");
        let overlay = store.overlay(&cfg.wireguard).expect("overlay");
        for n in 0..DEVICES {
            store
                .add_device(&format!("dev{n}"), &key(n), false, &overlay)
                .unwrap_or_else(|e| panic!("device {n}: {e}"));
        }
    }
    eprintln!(
        "registered {DEVICES} devices in the store in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let last = format!("dev{}.mesh", DEVICES - 1);

    let (api1, dns1, rss1) = timed_start(&mut w, &mut hub, &last);
    // A few adds through the running hub's API, as `cloudpc device add` makes them then.
    let sock = hub.state_dir.join("api.sock");
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("API socket");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    const API_ADDS: u32 = 10;
    for n in DEVICES..DEVICES + API_ADDS {
        let body = format!("{{\"name\": \"dev{n}\", \"public_key\": \"{}\"}}", key(n));
        let (status, answer) = http(&mut conn, "POST", "/v1/devices", &body);
        assert_eq!(status, 201, "device {n}: {answer}");
    }
    let per_add = started.elapsed() / API_ADDS;
    drop(conn);
    w.stop_hub(&mut hub);

    let (api2, dns2, rss2) = timed_start(&mut w, &mut hub, &last);
    let listed = {
        let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("API socket");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (status, body) = http(&mut c, "GET", "/v1/devices", "");
        assert_eq!(status, 200, "{body}");
        body.matches("\"public_key\"").count()
    };
    eprintln!(
        "{DEVICES} devices: first start: API after {} ms, DNS ({last}) after {} ms, VmRSS {} MiB; \
         restart: API after {} ms, DNS after {} ms, VmRSS {} MiB; one API add at this size: {} ms; \
         {listed} devices listed",
        api1.as_millis(),
        dns1.as_millis(),
        rss1 / 1024,
        api2.as_millis(),
        dns2.as_millis(),
        rss2 / 1024,
        per_add.as_millis()
    );
    assert_eq!(listed, (DEVICES + API_ADDS) as usize);
    for t in [api1, dns1, api2, dns2] {
        assert!(t < Duration::from_secs(30), "start-up took {t:?}");
    }
    for rss in [rss1, rss2] {
        assert!(rss > 0 && rss < 1024 * 1024, "VmRSS {rss} KiB");
    }
}
