//! End-to-end runs of the load engine against the small std server in `support`: every intended
//! request is accounted for, status codes, timeouts, reconnects and split responses are counted,
//! and the interval log adds up to the merged histogram.

use std::time::Duration;

use percore_bench::{
    hlog::{merge_histograms, read_hlog_file},
    run_load, write_reports, LoadConfig, ReportPaths, RequestSpec, RunResults,
};

mod support;
use support::Server;

fn config(srv: &Server, path: &str) -> LoadConfig {
    let mut cfg = LoadConfig::new(srv.addr, path);
    cfg.threads = Some(1);
    cfg.connections = 4;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_secs(1);
    cfg.timeout = Duration::from_secs(1);
    cfg
}

fn assert_accounted(r: &RunResults) {
    assert_eq!(
        r.intended,
        r.requests + r.errors.total() + r.unsent,
        "every intended request ends exactly once: {r:?}"
    );
    assert_eq!(r.corrected.len(), r.requests);
    assert_eq!(r.uncorrected.len(), r.requests);
    assert_eq!(r.status.values().sum::<u64>(), r.requests);
    let sum = merge_histograms(r.intervals.iter().map(|i| &i.histogram))
        .unwrap()
        .unwrap();
    assert_eq!(sum, r.corrected, "intervals add up to the merged histogram");
}

#[test]
fn open_loop_records_every_intended_request() {
    let srv = Server::start();
    let mut cfg = config(&srv, "/");
    cfg.rate = Some(1000);
    cfg.duration = Duration::from_secs(2);
    cfg.pipeline = 4;
    let r = run_load(cfg).unwrap();
    // m-th request due at t0 + m ms; the window [t0, t0 + 2 s) holds m = 0..2000.
    assert_eq!(r.intended, 2000);
    assert_eq!(r.requests, 2000, "{r:?}");
    assert_eq!(r.errors.total(), 0);
    assert_eq!(r.unsent, 0);
    assert_eq!(r.status.get(&200), Some(&2000));
    assert_eq!(r.target_rps, Some(1000.0));
    assert_accounted(&r);
    assert!(r.intervals.len() >= 2, "{} intervals", r.intervals.len());
}

#[test]
fn status_codes_are_counted_per_code() {
    let srv = Server::start();
    let mut cfg = config(&srv, "/");
    cfg.rate = Some(800);
    cfg.requests = vec![
        RequestSpec {
            weight: 2,
            ..RequestSpec::get("/")
        },
        RequestSpec::get("/404"),
        RequestSpec {
            method: "POST".into(),
            path: "/500".into(),
            body: b"payload".to_vec(),
            weight: 1,
        },
    ];
    let r = run_load(cfg).unwrap();
    // 800 intended over 4 connections = 200 each = 50 whole cycles of the 2:1:1 mix.
    assert_eq!(r.intended, 800);
    assert_eq!(r.status.get(&200), Some(&400), "{:?}", r.status);
    assert_eq!(r.status.get(&404), Some(&200));
    assert_eq!(r.status.get(&500), Some(&200));
    assert_eq!(r.errors.total(), 0);
    assert_accounted(&r);
    let text = r.text_summary(false);
    assert!(text.contains("Non-2xx or 3xx responses: 400"), "{text}");
}

#[test]
fn timeouts_are_counted_and_nothing_is_lost() {
    let srv = Server::start();
    let mut cfg = config(&srv, "/stall");
    cfg.rate = Some(100);
    cfg.connections = 2;
    cfg.timeout = Duration::from_millis(200);
    let r = run_load(cfg).unwrap();
    assert_eq!(r.intended, 100);
    assert_eq!(r.requests, 0);
    assert!(r.errors.timeout >= 2, "{:?}", r.errors);
    assert!(r.reconnects >= 2, "a timed-out connection is replaced");
    assert_accounted(&r);
    assert!(r.text_summary(false).contains("timeout"));
}

#[test]
fn closed_loop_with_pipelining_and_split_chunked_responses() {
    let srv = Server::start();
    let mut cfg = config(&srv, "/chunked");
    cfg.pipeline = 8;
    let r = run_load(cfg).unwrap();
    assert!(r.requests > 100, "{r:?}");
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert_eq!(r.unsent, 0);
    assert_eq!(r.target_rps, None);
    assert_accounted(&r);
}

#[test]
fn connection_close_responses_reconnect_without_errors() {
    let srv = Server::start();
    let mut cfg = config(&srv, "/close");
    cfg.rate = Some(200);
    cfg.connections = 2;
    let r = run_load(cfg).unwrap();
    assert_eq!(r.intended, 200);
    assert_eq!(r.requests, 200, "{:?}", r.errors);
    assert!(r.reconnects >= 100, "{}", r.reconnects);
    assert_accounted(&r);
}

#[test]
fn connect_failures_are_counted() {
    // A port nobody listens on: bind, note the port, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = LoadConfig::new(addr, "/");
    cfg.threads = Some(1);
    cfg.connections = 2;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_millis(500);
    cfg.timeout = Duration::from_millis(200);
    cfg.rate = Some(100);
    let r = run_load(cfg).unwrap();
    assert_eq!(r.intended, 50);
    assert_eq!(r.requests, 0);
    assert!(r.errors.connect > 0, "{:?}", r.errors);
    assert_eq!(r.intended, r.errors.total() + r.unsent);
}

#[test]
fn hlog_decodes_back_to_the_merged_histogram() {
    let srv = Server::start();
    let mut cfg = config(&srv, "/");
    cfg.rate = Some(500);
    cfg.warmup = Duration::from_millis(300);
    let r = run_load(cfg).unwrap();
    assert_eq!(r.intended, 500);
    assert_eq!(r.requests, 500);
    assert!(r.warmup_requests >= 100, "{}", r.warmup_requests);
    let dir = std::env::temp_dir().join(format!("pb-hlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths = ReportPaths {
        hgrm: Some(dir.join("r.hgrm")),
        hlog: Some(dir.join("r.hlog")),
        json: Some(dir.join("r.json")),
        svg: Some(dir.join("r.svg")),
    };
    write_reports(&r, &paths).unwrap();
    let log = read_hlog_file(&dir.join("r.hlog")).unwrap();
    assert_eq!(log.intervals.len(), r.intervals.len());
    let merged = merge_histograms(log.intervals.iter().map(|i| &i.histogram))
        .unwrap()
        .unwrap();
    assert_eq!(merged, r.corrected);
    let hgrm = std::fs::read_to_string(dir.join("r.hgrm")).unwrap();
    let parsed = percore_bench::parse_hgrm(&hgrm, "r.hgrm").unwrap();
    assert_eq!(parsed.total_count, Some(500));
    let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    std::fs::remove_dir_all(&dir).unwrap();
}
