//! Configuration: `--check`, SIGHUP and file-change reloads served by every shard, rejected
//! broken files, rollback, the admin API's token, `/metrics` counters, the global rate limit,
//! and reloads under load, on the real binary.

mod support;
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{bench_bin, percore_bin, request, temp_dir, Server};

const GET_V: &str = "GET /v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const GET_ROOT: &str = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn config(body: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nserver_name = \"percore-{body}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n\n[[routes]]\npath = \"/v\"\nrespond = {{ status = 200, body = \"{body}\", content_type = \"text/plain\" }}\n\n[[routes]]\npath = \"/\"\nhandler = \"hello\"\n"
    )
}

fn admin(srv: &Server, method: &str, path: &str, token: Option<&str>) -> support::Resp {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    request(srv.admin.unwrap(), &format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"))
}

/// `percore serve` on 2 shards with an admin listener and the config file `f`.
fn start_two_shards(f: &std::path::Path) -> Server {
    Server::start_with(&[
        "serve",
        "--shards",
        "2",
        "--admin",
        "127.0.0.1:0",
        "--config",
        f.to_str().unwrap(),
    ])
}

/// Asks many fresh connections (spread over the shards by SO_REUSEPORT) for /v.
fn bodies(srv: &Server, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| String::from_utf8(request(srv.addr, GET_V).body).unwrap())
        .collect()
}

/// The `Server` field of `GET /` (a built-in handler) over many fresh connections.
fn server_names(srv: &Server, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = request(srv.addr, GET_ROOT);
            r.header("server").unwrap_or_default().to_string()
        })
        .collect()
}

/// The config generation every shard serves, from `/status`.
fn generation(srv: &Server) -> u64 {
    let s = String::from_utf8(admin(srv, "GET", "/status", None).body).unwrap();
    let i = s.find("\"config_generation\":").unwrap() + 20;
    s[i..]
        .split([',', '}'])
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The `errors` object of a percore-bench JSON summary, whitespace removed.
fn errors_of(json: &str) -> String {
    let compact: String = json.chars().filter(|c| !c.is_whitespace()).collect();
    let i = compact.find("\"errors\":{").unwrap();
    let end = compact[i..].find('}').unwrap() + i + 1;
    compact[i..end].to_string()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn check_reports_the_line_of_an_error() {
    let dir = temp_dir("check");
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[routes]]\npath = \"/x\"\nrespond = { status = 999, body = \"\" }\n").unwrap();
    let out = Command::new(percore_bin())
        .args(["serve", "--check", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.toml:6:") && err.contains("routes[0].respond.status"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::write(&f, config("one", "")).unwrap();
    let out = Command::new(percore_bin())
        .args(["serve", "--check", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // The example config in deploy/ is valid too.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/percore.example.toml"
    );
    assert_config_valid(example.as_ref());
    // `config print` shows the effective config, which parses back.
    let out = Command::new(percore_bin())
        .args(["config", "print"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("handler = \"kv\""), "{printed}");
    std::fs::write(&f, printed.as_bytes()).unwrap();
    assert_config_valid(&f);
}

/// `percore serve --check --config FILE` accepts the file (exit status 0).
fn assert_config_valid(file: &std::path::Path) {
    let out = Command::new(percore_bin())
        .args(["serve", "--check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sighup_reload_reaches_every_shard_a_broken_file_is_rejected_and_rollback_restores() {
    let dir = temp_dir("reload");
    let f = dir.join("percore.toml");
    std::fs::write(&f, config("one", "")).unwrap();
    let srv = start_two_shards(&f);
    assert!(bodies(&srv, 20).iter().all(|b| b == "one"));
    // A changed route, applied by SIGHUP (the file watcher may get there first; both are fine).
    std::fs::write(&f, config("two", "")).unwrap();
    srv.signal(libc::SIGHUP);
    wait_until("generation 2", || generation(&srv) >= 2);
    let seen = bodies(&srv, 40);
    assert!(
        seen.iter().all(|b| b == "two"),
        "every shard serves the new route: {seen:?}"
    );
    let names = server_names(&srv, 20);
    assert!(
        names.iter().all(|n| n == "percore-two"),
        "every shard names itself anew: {names:?}"
    );
    // A broken file is rejected; the old config keeps serving.
    std::fs::write(&f, "[server]\nlisten = 5\n").unwrap();
    let r = admin(&srv, "POST", "/reload", None);
    assert_eq!(r.status, 422);
    assert!(
        String::from_utf8_lossy(&r.body).contains("percore.toml:2:"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(bodies(&srv, 10).iter().all(|b| b == "two"));
    // Rollback to snapshot 1 restores the first behaviour.
    let r = admin(&srv, "POST", "/rollback/1", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(bodies(&srv, 20).iter().all(|b| b == "one"));
    assert!(server_names(&srv, 10).iter().all(|n| n == "percore-one"));
    let status = String::from_utf8(admin(&srv, "GET", "/status", None).body).unwrap();
    assert!(status.contains("\"reloads_failed\":"), "{status}");
}

#[test]
fn the_admin_api_refuses_requests_without_the_token() {
    let dir = temp_dir("token");
    let f = dir.join("percore.toml");
    std::fs::write(&f, config("one", "token = \"s3cret\"")).unwrap();
    let srv = Server::start_with(&[
        "serve",
        "--cpus",
        "0",
        "--admin",
        "127.0.0.1:0",
        "--config",
        f.to_str().unwrap(),
    ]);
    assert_eq!(admin(&srv, "GET", "/status", None).status, 401);
    assert_eq!(admin(&srv, "POST", "/reload", Some("wrong")).status, 401);
    assert_eq!(admin(&srv, "GET", "/status", Some("s3cret")).status, 200);
    let cfg = String::from_utf8(admin(&srv, "GET", "/config", Some("s3cret")).body).unwrap();
    assert!(!cfg.contains("s3cret"), "the token is redacted: {cfg}");
    // A reload rotates the token at once; a changed listen address is kept until a restart,
    // and the answer says so.
    let rotated = config("one", "token = \"n3w\"").replace("127.0.0.1:0\"]", "127.0.0.1:1\"]");
    std::fs::write(&f, rotated).unwrap();
    // The file watcher may apply the file before this request does: then the new token rules.
    let r = admin(&srv, "POST", "/reload", Some("s3cret"));
    let r = if r.status == 401 {
        admin(&srv, "POST", "/reload", Some("n3w"))
    } else {
        r
    };
    let body = String::from_utf8(r.body).unwrap();
    assert_eq!(r.status, 200, "{body}");
    assert!(
        body.contains("\"restart_required\":[\"server.listen\"]"),
        "{body}"
    );
    assert_eq!(admin(&srv, "GET", "/status", Some("s3cret")).status, 401);
    assert_eq!(admin(&srv, "GET", "/status", Some("n3w")).status, 200);
    assert_eq!(
        request(srv.addr, GET_V).body,
        b"one",
        "still serving on the first address"
    );
    // The admin routes are not on the public listener.
    assert_eq!(
        request(
            srv.addr,
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .status,
        404
    );
}

#[test]
fn concurrent_reloads_get_distinct_generations() {
    let dir = temp_dir("concurrent-reloads");
    let f = dir.join("percore.toml");
    std::fs::write(&f, config("one", "")).unwrap();
    let srv = start_two_shards(&f);
    let gens: Vec<u64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let srv = &srv;
                sc.spawn(move || {
                    let path = if i % 2 == 0 { "/reload" } else { "/rollback/1" };
                    let r = admin(srv, "POST", path, None);
                    let body = String::from_utf8(r.body).unwrap();
                    assert_eq!(r.status, 200, "{path}: {body}");
                    let i = body.find("\"generation\":").unwrap() + 13;
                    body[i..]
                        .split([',', '}'])
                        .next()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = gens.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 8, "generations handed out twice: {gens:?}");
    assert_eq!(generation(&srv), *sorted.last().unwrap());
}

#[test]
fn the_admin_api_serves_a_bounded_number_of_connections() {
    let srv = Server::start(&["--cpus", "0", "--admin", "127.0.0.1:0"]);
    // Clients that connect and send nothing hold a slot each, up to the cap ...
    let idle: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(srv.admin.unwrap()).unwrap())
        .collect();
    // ... and the next one is turned away at once instead of costing a thread and a descriptor.
    assert_eq!(admin(&srv, "GET", "/status", None).status, 503);
    // The public listener is not affected.
    assert_eq!(request(srv.addr, GET_ROOT).status, 200);
    drop(idle);
    // Their threads see the close and give their slots back.
    wait_until("an admin slot comes free", || {
        admin(&srv, "GET", "/status", None).status == 200
    });
}

/// The admin API answers as an HTTP server must (RFC 9110): `Date` on every response, HEAD as
/// GET without the content, and `Allow` on a 405.
#[test]
fn the_admin_api_serves_head_and_says_what_a_path_allows() {
    let srv = Server::start(&["--cpus", "0", "--admin", "127.0.0.1:0"]);
    let get = admin(&srv, "GET", "/status", None);
    assert_eq!(get.status, 200);
    assert_eq!(get.header("date").map(str::len), Some(29));
    // HEAD: the same head, no content.
    let mut s = std::net::TcpStream::connect(srv.admin.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let out = support::exchange_until_close(&mut s, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.contains("\r\nDate: "), "{text:?}");
    let (head, content) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(content, "", "HEAD has no content");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap();
    assert!(length.parse::<usize>().unwrap() > 0, "{head}");
    for (method, path, allow) in [
        ("PUT", "/status", "GET, HEAD"),
        ("POST", "/config", "GET, HEAD"),
        ("GET", "/reload", "POST"),
        ("GET", "/rollback/1", "POST"),
    ] {
        let r = admin(&srv, method, path, None);
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert!(r.header("date").is_some(), "{method} {path}");
    }
    assert_eq!(admin(&srv, "GET", "/nope", None).status, 404);
}

#[test]
fn metrics_parse_and_count_the_requests_sent() {
    let srv = Server::start(&["--shards", "2", "--admin", "127.0.0.1:0"]);
    for _ in 0..37 {
        assert_eq!(request(srv.addr, GET_ROOT).status, 200);
    }
    for _ in 0..5 {
        assert_eq!(
            request(
                srv.addr,
                "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .status,
            404
        );
    }
    let text = String::from_utf8(admin(&srv, "GET", "/metrics", None).body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, route: &str, status: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && s.labels.get("route") == Some(route)
                    && s.labels.get("status") == Some(status)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(value("percore_requests_total", "/", "2xx"), 37.0, "{text}");
    assert_eq!(
        value("percore_requests_total", "unmatched", "4xx"),
        5.0,
        "{text}"
    );
    assert!(
        text.contains("percore_request_duration_seconds_bucket"),
        "{text}"
    );
    // A cumulative count is a counter (so that `rate()` works on it), with its own help text.
    assert!(
        text.contains("# TYPE percore_accept_errors_total counter\n"),
        "{text}"
    );
    // The watchdog's rescues of stranded shards are exported (a count, normally 0).
    assert!(
        text.contains("# TYPE percore_rescues_total counter\npercore_rescues_total "),
        "{text}"
    );
    // So are the heap trims after bursts of large requests.
    assert!(
        text.contains("# TYPE percore_heap_trims_total counter\npercore_heap_trims_total "),
        "{text}"
    );
    // And the standard process metrics, with this process's values.
    let process = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let reported = process("process_resident_memory_bytes") / 1024.0;
    assert!(
        (reported - rss_kib).abs() < rss_kib / 2.0,
        "RSS {reported} KiB reported, {rss_kib} KiB in /proc"
    );
    let open = process("process_open_fds");
    let max = process("process_max_fds");
    assert!(open > 0.0 && open < max, "{open} of {max} descriptors");
    assert!(process("process_cpu_seconds_total") > 0.0);
    assert!(process("process_start_time_seconds") > 1.7e9);
    let generic = text
        .lines()
        .filter(|l| l.ends_with("Per-shard gauge."))
        .count();
    assert_eq!(
        generic, 0,
        "families without a help text of their own: {text}"
    );
}

/// Runs percore-bench against `srv` and returns the admitted (200) rate.
fn admitted_rate(srv: &Server, dir: &std::path::Path, conns: &str, rate: &str) -> (f64, String) {
    let json = dir.join(format!("load-{conns}.json"));
    let out = Command::new(bench_bin())
        .args([
            "-c", conns, "-R", rate, "-d", "3s", "--warmup", "1s", "--json",
        ])
        .arg(&json)
        .arg(format!("http://{}/", srv.addr))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = std::fs::read_to_string(&json).unwrap();
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let field = |key: &str| -> f64 {
        let i = compact
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in {s}"))
            + key.len()
            + 3;
        let rest = &compact[i..];
        rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
    };
    (field("200") / field("duration_s"), s)
}

#[test]
fn the_rate_limit_holds_the_global_rate_with_two_shards() {
    let dir = temp_dir("ratelimit");
    let f = dir.join("percore.toml");
    std::fs::write(
        &f,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath = \"/\"\nhandler = \"hello\"\nmiddleware = [{ kind = \"rate_limit\", rps = 1500, burst = 150 }]\n",
    )
    .unwrap();
    let srv = Server::start_with(&[
        "serve",
        "--admin",
        "127.0.0.1:0",
        "--config",
        f.to_str().unwrap(),
    ]);
    // Twice the allowed rate over 32 connections, which SO_REUSEPORT spreads over both shards.
    let (rate, s) = admitted_rate(&srv, &dir, "32", "3000");
    assert!(
        (1350.0..=1650.0).contains(&rate),
        "spread load: admitted {rate:.0}/s of 1500/s: {s}"
    );
    // The same over ONE connection: all traffic on one shard. A fixed per-shard split would
    // admit half the rate; the shares follow demand over the mesh, so the global rate holds.
    let (rate, s) = admitted_rate(&srv, &dir, "1", "3000");
    assert!(
        (1350.0..=1650.0).contains(&rate),
        "one connection: admitted {rate:.0}/s of 1500/s: {s}"
    );
}

#[test]
fn twenty_reloads_under_load_lose_no_request() {
    let dir = temp_dir("reload-load");
    let f = dir.join("percore.toml");
    std::fs::write(&f, config("v0", "")).unwrap();
    let srv = start_two_shards(&f);
    let json = dir.join("load.json");
    let load = Command::new(bench_bin())
        .args([
            "-c", "16", "-R", "3000", "-d", "6s", "--warmup", "0", "--json",
        ])
        .arg(&json)
        .arg(format!("http://{}/v", srv.addr))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for i in 1..=20 {
        std::fs::write(&f, config(&format!("v{i}"), "")).unwrap();
        let r = admin(&srv, "POST", "/reload", None);
        assert_eq!(
            r.status,
            200,
            "reload {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = std::fs::read_to_string(&json).unwrap();
    let errors = errors_of(&s);
    assert!(
        errors
            .trim_end_matches('}')
            .split(',')
            .all(|kv| kv.ends_with(":0")),
        "errors during reloads: {errors}"
    );
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let status = &compact[compact.find("\"status\":{").unwrap()..];
    let status = &status[..status.find('}').unwrap()];
    assert!(
        !status.contains("\"4") && !status.contains("\"5"),
        "non-2xx during reloads: {status}"
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn after_clients_disconnect_every_shard_returns_to_baseline() {
    use std::io::Write;
    let srv = Server::start(&["--shards", "2", "--admin", "127.0.0.1:0"]);
    // 100 connections, some mid-request (a head without its body) when they go away.
    let mut conns: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(srv.addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        if i % 2 == 0 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        } else {
            c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
                .unwrap();
        }
    }
    wait_until("all 100 connections open", || {
        let s = String::from_utf8(admin(&srv, "GET", "/status", None).body).unwrap();
        count_field(&s, "connections_open") >= 100
    });
    drop(conns);
    wait_until("every shard back to baseline", || {
        let s = String::from_utf8(admin(&srv, "GET", "/status", None).body).unwrap();
        // The admin request itself is not on a shard, so all counters can reach zero.
        count_field(&s, "connections_open") == 0
            && count_field(&s, "connection_tasks") == 0
            && count_field(&s, "buffers_in_use") == 0
            && count_field(&s, "recv_buffers_in_use") == 0
    });
}

/// Sum of a numeric field over every shard in a `/status` document.
fn count_field(s: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    s.match_indices(&pat)
        .map(|(i, _)| {
            s[i + pat.len()..]
                .split([',', '}'])
                .next()
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}
