//! The resolver end to end: the real `cloudpc run` in front of a real authoritative server
//! (Knot), asked by real clients (dig, kdig, curl).

mod support;

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use support::*;

/// A config for `cloudpc run` on `ip` forwarding to `upstream` with the test list.
fn config(ip: &str, upstream: &str, dir: &Path, extra_dns: &str, extra: &str) -> String {
    let list = dir.join("test-list.txt");
    std::fs::write(&list, TEST_LIST).unwrap();
    format!(
        r#"[dns]
listen = ["{ip}:53"]
upstreams = ["udp://{upstream}:53"]
cache_size = 10000
{extra_dns}
[filter]
lists = ["{list}"]
block = ["blocked-by-config.test"]
allow = ["allowed.adtracker.test"]
[wireguard]
enabled = false
endpoint = "vpn.example.test"
{extra}
"#,
        list = list.display()
    )
}

struct Setup {
    knot: Knot,
    hub: Cloudpc,
    _dir: tempfile::TempDir,
}

fn setup(extra_dns: &str, extra: &str) -> Setup {
    let knot = Knot::start(&unique_ip());
    let dir = tempfile::tempdir().unwrap();
    let ip = unique_ip();
    let hub = Cloudpc::start(&ip, &config(&ip, &knot.ip, dir.path(), extra_dns, extra));
    Setup {
        knot,
        hub,
        _dir: dir,
    }
}

#[test]
fn forwards_a_and_aaaa_and_negative_answers() {
    let s = setup("", "");
    assert_eq!(s.hub.short("www.example.test", "A"), ["192.0.2.10"]);
    assert_eq!(s.hub.short("www.example.test", "AAAA"), ["2001:db8::10"]);
    assert_eq!(s.hub.rcode("nothing-here.test", "A"), "NXDOMAIN");
    let fine = s.hub.short("fine.example.test", "A");
    assert_eq!(fine, ["www.example.test.", "192.0.2.10"]);
    let out = s.hub.dig(&["www.example.test", "A"]);
    assert!(out.contains("flags: qr rd ra"), "{out}");
}

#[test]
fn answers_come_from_cache_with_ttls_counting_down_and_negative_answers_cached() {
    let mut s = setup("upstream_timeout = 1", "");
    assert_eq!(s.hub.short("www.example.test", "A"), ["192.0.2.10"]);
    assert_eq!(s.hub.rcode("missing.example.test", "A"), "NXDOMAIN");
    assert_eq!(s.hub.short("short.example.test", "A"), ["192.0.2.21"]);
    s.knot.stop();
    std::thread::sleep(Duration::from_millis(1100));
    // Upstream gone: cached positive and negative answers still come back.
    let out = s.hub.dig(&["www.example.test", "A", "+noall", "+answer"]);
    let ttl: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((290..300).contains(&ttl), "TTL counts down: {out}");
    assert_eq!(s.hub.rcode("missing.example.test", "A"), "NXDOMAIN");
    // A name never asked cannot be answered: SERVFAIL, counted as an upstream failure.
    let out = s.hub.dig(&["v4only.example.test", "A", "+time=5"]);
    assert_eq!(rcode_of(&out), "SERVFAIL");
    // The 5-second TTL runs out: no stale answer.
    std::thread::sleep(Duration::from_secs(5));
    let out = s.hub.dig(&["short.example.test", "A", "+time=5"]);
    assert_eq!(rcode_of(&out), "SERVFAIL");
    let st = s.hub.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["dns"]["cache_hits"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["dns"]["upstream_failures"].as_u64().unwrap() >= 2, "{v}");
}

#[test]
fn every_kind_of_list_entry_blocks_with_its_subdomains() {
    let s = setup("", "");
    for name in [
        "ads.example.test",
        "x.ads.example.test",
        "hosts-listed.test",
        "deep.hosts-listed.test",
        "plain-listed.test",
        "blocked-by-config.test",
        "sub.blocked-by-config.test",
    ] {
        assert_eq!(s.hub.short(name, "A"), ["0.0.0.0"], "{name}");
        assert_eq!(s.hub.short(name, "AAAA"), ["::"], "{name}");
    }
    let out = s.hub.dig(&["ads.example.test", "A", "+noall", "+answer"]);
    let ttl: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ttl <= 10, "short TTL on blocked answers: {out}");
    assert_eq!(s.hub.short("www.example.test", "A"), ["192.0.2.10"]);
}

#[test]
fn allow_beats_block_and_exceptions_apply() {
    let s = setup("", "");
    assert_eq!(
        s.hub.short("exception.ads.example.test", "A"),
        ["192.0.2.44"]
    );
    assert_eq!(s.hub.short("allowed.adtracker.test", "A"), ["192.0.2.45"]);
    assert_eq!(s.hub.short("other.adtracker.test", "A"), ["0.0.0.0"]);
}

#[test]
fn blocked_cname_target_blocks_the_answer() {
    let s = setup("", "");
    assert_eq!(s.hub.short("cloaked.example.test", "A"), ["0.0.0.0"]);
    assert_eq!(s.hub.short("cloaked.example.test", "AAAA"), ["::"]);
}

#[test]
fn blocked_answer_nxdomain_and_refused_modes() {
    let s = setup(r#"blocked_answer = "nxdomain""#, "");
    assert_eq!(s.hub.rcode("ads.example.test", "A"), "NXDOMAIN");
    assert_eq!(s.hub.rcode("www.example.test", "A"), "NOERROR");
    let r = setup(r#"blocked_answer = "refused""#, "");
    assert_eq!(r.hub.rcode("ads.example.test", "A"), "REFUSED");
}

#[test]
fn runtime_block_and_allow_apply_without_restart() {
    let s = setup("", "");
    assert_eq!(s.hub.short("runtime.example.test", "A"), ["192.0.2.46"]);
    let out = s.hub.cli(&["block", "add", "runtime.example.test"]);
    assert!(out.status.success(), "{out:?}");
    // In force when the command returns.
    assert_eq!(s.hub.short("runtime.example.test", "A"), ["0.0.0.0"]);
    let out = s.hub.cli(&["allow", "add", "ads.example.test"]);
    assert!(out.status.success());
    assert_eq!(s.hub.short("ads.example.test", "A"), ["192.0.2.40"]);
    s.hub.cli(&["block", "remove", "runtime.example.test"]);
    assert_eq!(s.hub.short("runtime.example.test", "A"), ["192.0.2.46"]);
    let bad = s.hub.cli(&["block", "add", "not a domain"]);
    assert!(!bad.status.success());
}

#[test]
fn dns64_synthesises_only_when_no_aaaa_exists() {
    let s = setup("", "");
    assert_eq!(
        s.hub.short("v4only.example.test", "AAAA"),
        ["64:ff9b::c000:214"]
    );
    assert_eq!(s.hub.short("www.example.test", "AAAA"), ["2001:db8::10"]);
    let off = setup("dns64 = false", "");
    assert!(off.hub.short("v4only.example.test", "AAAA").is_empty());
}

#[test]
fn device_names_ptr_and_zone_files_answer_locally() {
    let knot = Knot::start(&unique_ip());
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("mesh.zone"),
        "$ORIGIN mesh.\n$TTL 300\nnas IN CNAME laptop.mesh.\nprinter IN A 100.96.9.9\n",
    )
    .unwrap();
    let ip = unique_ip();
    let cfg = config(
        &ip,
        &knot.ip,
        dir.path(),
        &format!("zones_dir = \"{}\"", zones.display()),
        "",
    );
    let hub = Cloudpc::start(&ip, &cfg);
    let add = hub.cli(&["device", "add", "laptop"]);
    assert!(add.status.success(), "{add:?}");
    let list = hub.cli(&["device", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let v4 = v[0]["ipv4"].as_str().unwrap().to_string();
    let v6 = v[0]["ipv6"].as_str().unwrap().to_string();
    // A running resolver answers for the new device when the command returns.
    assert_eq!(hub.short("laptop.mesh", "A"), [v4.as_str()]);
    assert_eq!(hub.short("LAPTOP.mesh", "AAAA"), [v6.as_str()]);
    assert_eq!(
        hub.dig(&["-x", &v4, "+short"]).trim(),
        "laptop.mesh.",
        "PTR for the IPv4 overlay address"
    );
    assert_eq!(hub.dig(&["-x", &v6, "+short"]).trim(), "laptop.mesh.");
    assert_eq!(hub.short("nas.mesh", "A"), ["laptop.mesh.", v4.as_str()]);
    assert_eq!(hub.short("printer.mesh", "A"), ["100.96.9.9"]);
    // Never forwarded, and no DNS64 inside the local zone.
    assert_eq!(hub.rcode("nobody.mesh", "A"), "NXDOMAIN");
    assert!(hub.short("printer.mesh", "AAAA").is_empty());
    assert_eq!(hub.rcode("printer.mesh", "AAAA"), "NOERROR");
    let out = hub.dig(&["laptop.mesh", "A"]);
    assert!(
        out.contains(" aa "),
        "local answers are authoritative: {out}"
    );
    hub.cli(&["device", "rename", "laptop", "desktop"]);
    assert_eq!(hub.short("desktop.mesh", "A"), [v4.as_str()]);
    assert_eq!(hub.rcode("laptop.mesh", "A"), "NXDOMAIN");
}

#[test]
fn dot_and_doh_answer_over_http1_and_http2() {
    let knot = Knot::start(&unique_ip());
    let dir = tempfile::tempdir().unwrap();
    let ip = unique_ip();
    let extra = format!("tls_listen = [\"{ip}:853\"]\nhttps_listen = [\"{ip}:443\"]\n");
    let hub = Cloudpc::start(&ip, &config(&ip, &knot.ip, dir.path(), &extra, ""));
    let cert = hub.state.join("tls/cert.pem");
    assert!(
        cert.exists(),
        "self-signed certificate kept in the state dir"
    );
    let kdig = |mode: &str, name: &str| {
        let out = std::process::Command::new("kdig")
            .args([&format!("@{ip}"), mode, name, "A", "+short", "+timeout=3"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(kdig("+tls", "www.example.test"), "192.0.2.10");
    assert_eq!(kdig("+tls", "ads.example.test"), "0.0.0.0");
    assert_eq!(kdig("+https", "www.example.test"), "192.0.2.10");
    assert_eq!(kdig("+https-get", "v4only.example.test"), "192.0.2.20");
    // curl as a DoH client (POST, HTTP/2) resolving a name for a real transfer.
    let web = std::process::Command::new("python3")
        .args(["-m", "http.server", "18080", "--bind", "127.0.0.1"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _web = Proc(web);
    assert!(eventually(5, || {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{remote_ip}",
                "--doh-insecure",
                "--doh-url",
                &format!("https://{ip}/dns-query"),
                "http://web.example.test:18080/",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout) == "200 127.0.0.1"
    }));
    // Raw RFC 8484 requests over HTTP/1.1 and HTTP/2.
    let query = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlBHRlc3QAAAEAAQ"; // www.example.test A, id 0
    for ver in ["--http1.1", "--http2"] {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                ver,
                "-w",
                "\n%{http_version} %{content_type}",
                &format!("https://{ip}/dns-query?dns={query}"),
            ])
            .output()
            .unwrap();
        let body = out.stdout;
        assert!(
            contains(&body, "\u{c0}\u{0}\u{2}\u{a}")
                || body.windows(4).any(|w| w == [192, 0, 2, 10]),
            "{ver}: answer holds 192.0.2.10"
        );
        let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(40)..]).to_string();
        assert!(tail.contains("application/dns-message"), "{ver}: {tail}");
        let want = if ver == "--http2" { "2 " } else { "1.1 " };
        assert!(tail.contains(want), "{ver}: {tail}");
    }
    let nf = std::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{ip}/other"),
        ])
        .output()
        .unwrap();
    // Any other path is the admin page, which sends a visitor off the overlay to log in.
    assert_eq!(String::from_utf8_lossy(&nf.stdout), "303");
}

#[test]
fn encrypted_upstreams_verify_certificates_and_fail_over() {
    // Hub A serves DoT/DoH with its self-signed certificate; hub B uses A as upstream.
    let knot = Knot::start(&unique_ip());
    let dir = tempfile::tempdir().unwrap();
    let a_ip = unique_ip();
    let extra = format!("tls_listen = [\"{a_ip}:853\"]\nhttps_listen = [\"{a_ip}:443\"]\n");
    let a = Cloudpc::start(&a_ip, &config(&a_ip, &knot.ip, dir.path(), &extra, ""));
    let ca = a.state.join("tls/cert.pem");
    let dead = unique_ip();
    for upstream in [
        format!("tls://{a_ip}:853#cloudpc"),
        format!("https://cloudpc/dns-query#{a_ip}"),
    ] {
        let b_ip = unique_ip();
        let cfg = format!(
            "[dns]\nlisten = [\"{b_ip}:53\"]\nupstreams = [\"udp://{dead}:53\", \"{upstream}\"]\nupstream_ca = \"{}\"\nupstream_timeout = 1\n[filter]\nlists = []\n[wireguard]\nenabled = false\n",
            ca.display()
        );
        let b = Cloudpc::start(&b_ip, &cfg);
        assert!(
            eventually(10, || b.short("www.example.test", "A") == ["192.0.2.10"]),
            "{upstream}: {}",
            b.logs()
        );
        // Without the CA the certificate is refused: no answer.
        let c_ip = unique_ip();
        let cfg = format!(
            "[dns]\nlisten = [\"{c_ip}:53\"]\nupstreams = [\"{upstream}\"]\nupstream_timeout = 1\n[filter]\nlists = []\n[wireguard]\nenabled = false\n"
        );
        let c = Cloudpc::start(&c_ip, &cfg);
        assert_eq!(c.rcode("www.example.test", "A"), "SERVFAIL", "{upstream}");
    }
}

#[test]
fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let s = setup("", "");
    let udp = s
        .hub
        .dig(&["big.example.test", "TXT", "+ignore", "+noedns"]);
    assert!(udp.contains(" tc"), "TC bit over classic UDP: {udp}");
    let tcp = s
        .hub
        .dig(&["big.example.test", "TXT", "+tcp", "+noall", "+answer"]);
    assert_eq!(tcp.matches("IN\tTXT").count(), 3, "{tcp}");
    let edns = s
        .hub
        .dig(&["big.example.test", "TXT", "+ignore", "+bufsize=4096"]);
    assert!(!edns.contains(" tc"), "fits in 1232 bytes: {edns}");
}

#[test]
fn malformed_messages_get_formerr_notimp_or_nothing_and_the_server_survives() {
    let mut s = setup("", "");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let target = format!("{}:53", s.hub.ip);
    let ask = |msg: &[u8]| -> Option<Vec<u8>> {
        sock.send_to(msg, &target).unwrap();
        let mut buf = [0u8; 1500];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    };
    // Zero questions → FORMERR.
    let r = ask(&[0, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!((r[0], r[1], r[3] & 0x0F), (0, 7, 1));
    // Two questions → FORMERR.
    let mut two = vec![0, 8, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0];
    two.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01\x01b\x00\x00\x01\x00\x01");
    assert_eq!(ask(&two).unwrap()[3] & 0x0F, 1);
    // UPDATE opcode (asked with CD) → NOTIMP with the opcode echoed and neither RA nor CD.
    let mut upd = vec![0, 9, 0x28, 0x10, 0, 1, 0, 0, 0, 0, 0, 0];
    upd.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
    let r = ask(&upd).unwrap();
    assert_eq!(r[3] & 0x0F, 4);
    assert_eq!((r[2] >> 3) & 0x0F, 5, "opcode echoed");
    assert_eq!(r[3] & 0x90, 0, "no RA, no CD");
    // A compression loop → FORMERR.
    let mut lp = vec![0, 10, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    lp.extend_from_slice(
        b"\x01a\x00\x00\x01\x00\x01\xc0\x13\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00",
    );
    assert_eq!(ask(&lp).unwrap()[3] & 0x0F, 1);
    // Truncated message and a response: no answer.
    assert!(ask(&[1, 2, 3]).is_none());
    let mut resp = upd.clone();
    resp[2] = 0x81;
    assert!(ask(&resp).is_none());
    // A burst of garbage (bounded: 20,000 datagrams).
    let mut seed = 0x1234_5678u32;
    for i in 0..20_000u32 {
        let len = (i % 700) as usize;
        let mut b = vec![0u8; len];
        for x in b.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *x = seed as u8;
        }
        let _ = sock.send_to(&b, &target);
    }
    // A TCP peer that sends a length prefix and stops is closed, not waited on forever.
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(&target).unwrap();
    t.write_all(&[0, 40, 1, 2]).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = std::time::Instant::now();
    let mut b = [0u8; 16];
    let n = t.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "connection closed");
    assert!(started.elapsed() < Duration::from_secs(14));
    assert!(s.hub.alive(), "survived: {}", s.hub.logs());
    assert_eq!(s.hub.short("www.example.test", "A"), ["192.0.2.10"]);
}

#[test]
fn tcp_pipelined_queries_all_get_answers() {
    let s = setup("", "");
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(format!("{}:53", s.hub.ip)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut batch = Vec::new();
    for id in 0..10u16 {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
        batch.extend_from_slice(&(q.len() as u16).to_be_bytes());
        batch.extend_from_slice(&q);
    }
    t.write_all(&batch).unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
        t.read_exact(&mut m).unwrap();
        ids.push(u16::from_be_bytes([m[0], m[1]]));
    }
    ids.sort();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
}

#[test]
fn no_query_leaves_a_trace_on_disk_or_in_logs() {
    let mut s = setup("", "");
    for name in [
        "www.example.test",
        "ads.example.test",
        "secret-name.example.test",
    ] {
        s.hub.dig(&[name, "A"]);
    }
    s.hub.cli(&["device", "add", "phone"]);
    std::thread::sleep(Duration::from_millis(500));
    s.hub.stop();
    let bytes = all_bytes(&s.hub.state);
    for name in ["www.example", "ads.example", "secret-name"] {
        assert!(!contains(&bytes, name), "{name} found in the state dir");
        assert!(!s.hub.logs().contains(name), "{name} found in the log");
    }
    assert!(
        !s.hub.logs().contains("127.0.0.1"),
        "no client address in the log"
    );
}

#[test]
fn bad_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[dns]\nlisten = [\"nonsense\"]\n", "dns.listen"),
        ("[dns]\nblocked_answer = \"maybe\"\n", "dns.blocked_answer"),
        ("[dns]\nupstreams = [\"ftp://x\"]\n", "dns.upstreams"),
        (
            "[dns]\ndns64_prefix = \"64:ff9b::/64\"\n",
            "dns.dns64_prefix",
        ),
        ("[filter]\nlistz = []\n", "listz"),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(dir.path().join("s"))
            .arg("run")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn broken_list_is_reported_and_others_keep_filtering() {
    let knot = Knot::start(&unique_ip());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.txt");
    std::fs::write(&bad, b"\x00\x01\x02binary\xff\xfe junk\n").unwrap();
    let ip = unique_ip();
    let cfg = config(&ip, &knot.ip, dir.path(), "", "").replace(
        "lists = [",
        &format!(
            "lists = [\"{}\", \"{}\", ",
            bad.display(),
            dir.path().join("missing.txt").display()
        ),
    );
    let hub = Cloudpc::start(&ip, &cfg);
    assert_eq!(hub.short("ads.example.test", "A"), ["0.0.0.0"]);
    let logs = hub.logs();
    assert!(
        logs.contains("broken.txt") && logs.contains("missing.txt"),
        "{logs}"
    );
    let st = hub.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["list_errors"].as_u64().unwrap() >= 2, "{v}");
}
