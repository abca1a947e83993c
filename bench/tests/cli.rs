//! The `percore-bench` binary end to end: a run writing `--hgrm`, `--hlog` and `--json`, the
//! `report merge|plot` subcommands on its files, and bad arguments (one line, exit 2).

use std::{path::Path, process::Command};

use percore_bench::{hlog::read_hlog_file, merge_hlog_files, parse_hgrm};

mod support;
use support::Server;

const BIN: &str = env!("CARGO_BIN_EXE_percore-bench");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn run_writes_reports_that_report_merge_and_plot_read_back() {
    let srv = Server::start();
    let dir = std::env::temp_dir().join(format!("pb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = srv.url("/");
    let mut totals = Vec::new();
    for name in ["a", "b"] {
        let (hgrm, hlog, json) = (
            dir.join(format!("{name}.hgrm")),
            dir.join(format!("{name}.hlog")),
            dir.join(format!("{name}.json")),
        );
        let out = run(&[
            "-t1",
            "-c4",
            "-d1s",
            "-R400",
            "--warmup",
            "0",
            "--latency",
            "--hgrm",
            s(&hgrm),
            "--hlog",
            s(&hlog),
            "--json",
            s(&json),
            &url,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Detailed Percentile spectrum"), "{stdout}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(summary["requests"], 400);
        assert_eq!(summary["intended"], 400);
        assert_eq!(summary["target_rps"], 400.0);
        assert_eq!(summary["status"]["200"], 400);
        let parsed = parse_hgrm(&std::fs::read_to_string(&hgrm).unwrap(), "x").unwrap();
        assert_eq!(parsed.total_count, Some(400));
        let log = read_hlog_file(&hlog).unwrap();
        let n: u64 = log.intervals.iter().map(|i| i.histogram.len()).sum();
        assert_eq!(n, 400);
        // The .hgrm's max is the merged histogram's max.
        let merged = merge_hlog_files(&[&hlog]).unwrap();
        assert_eq!(parsed.max_ms, Some(merged.max() as f64 / 1000.0));
        totals.push(merged);
    }

    // merge of the two logs = their sum
    let (a, b, m) = (dir.join("a.hlog"), dir.join("b.hlog"), dir.join("m.hgrm"));
    let out = run(&["report", "merge", s(&a), s(&b), "--hgrm", s(&m)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sum = totals[0].clone();
    sum.add(&totals[1]).unwrap();
    assert_eq!(merge_hlog_files(&[&a, &b]).unwrap(), sum);
    let parsed = parse_hgrm(&std::fs::read_to_string(&m).unwrap(), "m").unwrap();
    assert_eq!(parsed.total_count, Some(800));
    assert_eq!(parsed.max_ms, Some(sum.max() as f64 / 1000.0));

    // plot writes an SVG with one line per run
    let svg = dir.join("p.svg");
    let out = run(&[
        "report",
        "plot",
        s(&a),
        s(&dir.join("b.hgrm")),
        "--svg",
        s(&svg),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    assert!(text.matches("<polyline").count() >= 2);
    assert_eq!(text.matches("<svg").count(), text.matches("</svg>").count());

    let out = run(&["report", "diff", s(&a), s(&b)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("B/A"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_without_a_single_response_fails() {
    // A port nobody listens on: every connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let out = run(&["-c", "2", "-d", "300ms", "--warmup", "0", "--quiet", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no response"), "{err}");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let many = (std::thread::available_parallelism().unwrap().get() + 1).to_string();
    let threads = format!("-t{many}");
    let conns = format!("-c{many}");
    for args in [
        vec!["-c", "x", "http://127.0.0.1:1/"],
        vec!["-d", "10q", "http://127.0.0.1:1/"],
        vec!["https://127.0.0.1/"],
        vec!["--pipeline", "0", "http://127.0.0.1:1/"],
        vec!["--bogus"],
        vec![],
        vec!["--body", "/nonexistent/body", "http://127.0.0.1:1/"],
        vec!["--mix", "/nonexistent/mix", "http://127.0.0.1:1/"],
        // Found before the run, whose results would otherwise be lost.
        vec!["--hgrm", "/nonexistent/x.hgrm", "http://127.0.0.1:1/"],
        vec!["--json", "/nonexistent/x.json", "http://127.0.0.1:1/"],
        vec![threads.as_str(), conns.as_str(), "http://127.0.0.1:1/"],
        vec!["report", "merge"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("percore-bench: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--rate"));
}
