//! `percore serve` as an operator sees it: shards pinned to their CPUs, one listening socket per
//! shard on one port, clear one-line errors with the right exit status.

mod support;
use std::process::Command;

use support::{percore_bin, Server};

#[test]
fn two_shards_are_pinned_and_each_has_a_listening_socket() {
    let cpus = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    if !cpus.contains('1') && !cpus.contains('-') {
        eprintln!("skipped: needs CPUs 0 and 1, have {cpus}");
        return;
    }
    let srv = Server::start(&["--cpus", "0,1"]);
    let pid = srv.child.id();
    let mut pinned = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm"))
            .unwrap()
            .trim()
            .to_string();
        if let Some(id) = name.strip_prefix("percore-shard-") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            pinned.push((id.to_string(), allowed));
        }
    }
    // glommio's helper threads of a shard (blocking pool, stall-detector timer) inherit its name
    // and its pinning; every thread of shard N must be on CPU N.
    pinned.sort();
    pinned.dedup();
    assert_eq!(
        pinned,
        vec![("0".into(), "0".into()), ("1".into(), "1".into())]
    );
    // Two sockets in LISTEN state (0A) on the port, as `ss -ltn` would show.
    let port_hex = format!(":{:04X}", srv.addr.port());
    let listening = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port_hex) && f[3] == "0A"
        })
        .count();
    assert_eq!(listening, 2);
}

#[test]
fn a_taken_port_fails_with_one_line_and_exit_1() {
    let srv = Server::start(&["--cpus", "0"]);
    let out = Command::new(percore_bin())
        .args(["serve", "--cpus", "0", "--listen", &srv.addr.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("percore: bind {}: address in use", srv.addr)
    );
    // A taken admin address given on the command line fails the same way, before the server
    // says it is listening (a supervisor waiting for that line must not see it first).
    let out = Command::new(percore_bin())
        .args(["serve", "--cpus", "0", "--listen", "127.0.0.1:0", "--admin"])
        .arg(srv.addr.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("admin bind {}", srv.addr)),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
}

#[test]
fn bad_arguments_fail_with_one_line_and_exit_2() {
    for args in [
        &["serve", "--cpus", "0,x"][..],
        &["serve", "--listen", "nonsense"],
        &["serve", "--cpus", "0", "--shards", "1"],
        &["serve", "--header-timeout", "5 parsecs"],
        &["serve", "--header-timeout", "0"],
        &["serve", "--shards", "0"],
        &["serve", "--cpus", "5-2"],
        &["serve", "--drain-timeout", "18446744073709551615"],
        &["frobnicate"],
        &[],
        &["demo", "--fraction", "-0.5"],
        &["ctl"],
    ] {
        let out = Command::new(percore_bin()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(stderr.starts_with("percore: "), "{stderr}");
    }
    // A CPU list that parses but names no allowed CPU is a runtime error (1), and `--check`
    // finds it too, as it finds more shards than CPUs.
    for args in [
        &["serve", "--cpus", "4000"][..],
        &["serve", "--check", "--cpus", "4000"],
        &["serve", "--check", "--shards", "4000"],
    ] {
        let out = Command::new(percore_bin()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("affinity mask") || stderr.contains("shards requested"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_privileged_port_without_permission_or_a_foreign_address_is_a_clear_error() {
    let out = Command::new(percore_bin())
        .args(["serve", "--cpus", "0", "--listen", "192.0.2.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "percore: bind 192.0.2.1:0: address not available"
    );
}
