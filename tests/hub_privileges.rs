//! Without CAP_NET_ADMIN, `cloudpc run` says what it needs and how to grant it, exits
//! non-zero, and leaves nothing behind. As root the capability is dropped with `setpriv`;
//! as a normal user the test runs as is.

use std::process::Command;

#[test]
fn run_without_net_admin_explains_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let iface = format!("cpp{:x}", std::process::id() & 0xfffff);
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[wireguard]\ninterface = \"{iface}\"\nlisten_port = 51999\n"),
    )
    .unwrap();
    let bin = std::env::var("CLOUDPC_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cloudpc").to_string());
    let bin = bin.as_str();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            "--",
            bin,
        ]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("run")
        .output()
        .expect("run cloudpc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without privileges: {err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(
        err.contains("setcap cap_net_admin,cap_net_bind_service+ep"),
        "{err}"
    );
    // Nothing half-started: no TUN, no UAPI socket.
    let link = Command::new("ip")
        .args(["link", "show", &iface])
        .output()
        .unwrap();
    assert!(!link.status.success(), "TUN left behind");
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{iface}.sock")).exists());
}
