//! The coordinated-omission test: the server stops answering for a known time while the open-loop
//! generator runs, and the percentiles show it as the theory predicts.
//!
//! Theory. At a constant rate R, a pause of length P starting at time s leaves the requests
//! intended during [s, s + P) waiting: the one intended at s + x completes when the pause ends, at
//! about s + P, so its latency counted from its *intended* send time is P − x. Those R·P requests
//! have latencies spread evenly over (0, P]. In a run of T seconds (R·T requests) they are the
//! fraction P/T of all requests, and the top 1% of all latencies is the top (T/P)% of them: with
//! P = 0.5 s and T = 2 s that is the top 4% of the pause, so the corrected p99 is about
//! P·(1 − 0.04) = 0.96·P. We assert ≥ 0.4·P, far from that, so a busy CI machine does not matter.
//!
//! The service time (from the actual send) sees the pause only in the requests that were already
//! on the wire when it began: at most one per connection with no pipelining, 8 of 2000 here, far
//! less than half, so its median stays at the server's normal answer time. A generator that waits
//! for each response before timing the next request (coordinated omission) would report exactly
//! that: a flat distribution with a few outliers, hiding the pause from every percentile.

use std::time::Duration;

use percore_bench::{hgrm::value_at_percentile, run_load, LoadConfig};

mod support;
use support::Server;

/// 1000 requests/s on one worker over `connections`, for `secs` without warm-up, each request
/// given up after `timeout_secs`.
fn open_loop(srv: &Server, connections: usize, secs: u64, timeout_secs: u64) -> LoadConfig {
    let mut cfg = LoadConfig::new(srv.addr, "/");
    cfg.threads = Some(1);
    cfg.connections = connections;
    cfg.rate = Some(1000);
    cfg.duration = Duration::from_secs(secs);
    cfg.warmup = Duration::ZERO;
    cfg.timeout = Duration::from_secs(timeout_secs);
    cfg
}

#[test]
fn a_server_pause_shows_in_corrected_percentiles_but_not_in_service_time() {
    let pause = Duration::from_millis(500);
    let srv = Server::start();
    // About 0.3 s into the run the server stops answering for 0.5 s.
    srv.pause_after(300, pause);
    let r = run_load(open_loop(&srv, 8, 2, 2)).unwrap();
    assert_eq!(r.intended, 2000);
    assert_eq!(
        r.requests, 2000,
        "errors {:?}, unsent {}",
        r.errors, r.unsent
    );

    let pause_us = pause.as_micros() as u64;
    let p99 = value_at_percentile(&r.corrected, 99.0);
    let p50_service = value_at_percentile(&r.uncorrected, 50.0);
    eprintln!("corrected p99 {p99} µs, service-time p50 {p50_service} µs, pause {pause_us} µs");
    assert!(
        p99 * 10 >= pause_us * 4,
        "corrected p99 {p99} µs should be near the {pause_us} µs pause"
    );
    assert!(
        p50_service < 50_000,
        "service-time p50 {p50_service} µs should not see the pause"
    );
    // The pause is in the max of both (the requests on the wire when it began waited it out).
    assert!(r.uncorrected.max() * 10 >= pause_us * 4);
    // Requests due during the pause waited for the server, with their connections full: that is
    // not the generator's lag. Counted from the due time instead, the lag's p99 would be the
    // corrected p99, near the whole pause.
    let lag_p99 = value_at_percentile(&r.send_lag, 99.0);
    assert_eq!(
        r.send_lag.len(),
        r.intended,
        "one send-lag sample per request sent"
    );
    assert!(
        lag_p99 * 2 < pause_us,
        "send lag p99 {lag_p99} µs: the pause was charged to the generator"
    );
}

/// A server that answers the whole window late has not kept up with the rate, even when every
/// request is answered in the end: the achieved rate is counted until the last of the window's
/// responses, so it falls below the target and the run says so.
#[test]
fn a_window_answered_late_is_under_the_target_rate() {
    let srv = Server::start();
    // The first request stops the server for longer than the whole measured window.
    srv.pause_after(0, Duration::from_millis(1500));
    let r = run_load(open_loop(&srv, 4, 1, 5)).unwrap();
    assert_eq!(
        r.requests, 1000,
        "errors {:?}, unsent {}",
        r.errors, r.unsent
    );
    assert!(
        r.duration >= Duration::from_millis(1400),
        "{:?}",
        r.duration
    );
    assert!(r.achieved_rps() < 750.0, "{}", r.achieved_rps());
    assert!(r.under_target());
    assert!(r.text_summary(false).contains("WARNING"));
}
