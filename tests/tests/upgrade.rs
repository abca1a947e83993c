//! Hot restart under load: ten upgrades in a row while percore-bench sends a constant rate over
//! keep-alive connections lose nothing (no connect error, reset, timeout or non-2xx), and the
//! serving pid changes every time. A SIGTERM to the old process in the middle of a hot restart
//! leaves the successor serving.

mod support;
use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use support::{bench_bin, temp_dir, Server};

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The server's stderr (its successors write there too), line by line, from a reader thread.
fn stderr_lines(srv: &mut Server) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = srv.stderr.take().unwrap();
    std::thread::spawn(move || {
        // Raw lines, decoded lossily: a stall report's backtrace must not end the reader.
        let mut r = std::io::BufReader::new(stderr);
        let mut buf = Vec::new();
        while r
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let _ = tx.send(String::from_utf8_lossy(&buf).trim_end().to_string());
            buf.clear();
        }
    });
    rx
}

/// Polls a condition that another process makes true (a file's content, a process's exit).
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a server on CPU 0 that can be hot-restarted: a pid file and a control socket in
/// `dir`, plus `extra` arguments. Returns it and its pid file.
fn start_upgradable(dir: &std::path::Path, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let pid_file = dir.join("percore.pid");
    let ctl = dir.join("control.sock");
    let mut args = vec![
        "--cpus",
        "0",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--control-socket",
        ctl.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Server::start(&args), pid_file)
}

#[test]
fn ten_upgrades_under_load_lose_nothing() {
    let dir = temp_dir("upgrade");
    let (srv, pid_file) = start_upgradable(&dir, &[]);
    let json = dir.join("load.json");
    let load = Command::new(bench_bin())
        .args([
            "-c",
            "16",
            "-R",
            "3000",
            "-d",
            "20s",
            "--warmup",
            "0",
            "--timeout",
            "5s",
            "--cpus",
            "1",
            "--json",
        ])
        .arg(&json)
        .arg(format!("http://{}/", srv.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids = vec![read_pid(&pid_file).unwrap()];
    for i in 0..10 {
        let old = *pids.last().unwrap();
        // SAFETY: kill(2) with a pid we read from our own server's pid file.
        unsafe { libc::kill(old as i32, libc::SIGUSR2) };
        wait_for(
            &format!("upgrade {i}: a new pid in the pid file"),
            Duration::from_secs(30),
            || read_pid(&pid_file).is_some_and(|p| p != old),
        );
        let new = read_pid(&pid_file).unwrap();
        assert!(alive(new), "the new server runs");
        wait_for(
            &format!("upgrade {i}: pid {old} drained and exited"),
            Duration::from_secs(40),
            || !alive(old),
        );
        pids.push(new);
    }
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(&json).unwrap();
    let v: serde_json_lite::Value = serde_json_lite::parse(&summary);
    let last = *pids.last().unwrap();
    // SAFETY: as above; the last server is not our child, stop it.
    unsafe { libc::kill(last as i32, libc::SIGTERM) };
    wait_for("the last server to exit", Duration::from_secs(40), || {
        !alive(last)
    });
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        11,
        "the serving pid changed every time: {pids:?}"
    );
    let errors = v.get("errors");
    assert!(
        errors.values_all_zero(),
        "errors during upgrades: {summary}\n{text}"
    );
    assert!(
        v.get("status").only_key_is("200"),
        "non-2xx during upgrades: {summary}"
    );
    assert!(v.get("requests").as_f64() > 30_000.0, "{summary}");
    eprintln!("{text}");
}

/// Just enough JSON reading for the summary (the tests crate has no JSON dependency).
mod serde_json_lite {
    pub struct Value(String);
    pub fn parse(s: &str) -> Value {
        Value(s.to_string())
    }
    impl Value {
        /// The raw text of a top-level field's value.
        pub fn get(&self, key: &str) -> Value {
            let pat = format!("\"{key}\":");
            let i = self
                .0
                .find(&pat)
                .unwrap_or_else(|| panic!("no field {key} in {}", self.0))
                + pat.len();
            let rest = self.0[i..].trim_start();
            let end = if rest.starts_with('{') {
                rest.find('}').unwrap() + 1
            } else {
                rest.find([',', '}']).unwrap()
            };
            Value(rest[..end].to_string())
        }
        pub fn as_f64(&self) -> f64 {
            self.0.trim().parse().unwrap()
        }
        pub fn values_all_zero(&self) -> bool {
            self.0
                .trim_matches(['{', '}'])
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .all(|p| p.rsplit(':').next().unwrap().trim() == "0")
        }
        pub fn only_key_is(&self, key: &str) -> bool {
            let keys: Vec<&str> = self
                .0
                .trim_matches(['{', '}'])
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.split(':').next().unwrap().trim().trim_matches('"'))
                .collect();
            keys == [key]
        }
    }
}

#[test]
fn a_successor_with_a_bad_config_leaves_the_old_process_serving() {
    let dir = temp_dir("upgrade-fail");
    let cfg = dir.join("percore.toml");
    std::fs::write(&cfg, "[server]\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
    let (mut srv, pid_file) = start_upgradable(&dir, &["--config", cfg.to_str().unwrap()]);
    let old = read_pid(&pid_file).unwrap();
    let rx = stderr_lines(&mut srv);
    std::fs::write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus_field = 1\n",
    )
    .unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(old as i32, libc::SIGUSR2) };
    // The successor (sharing our stderr) reports its config error and exits.
    let want = format!("percore: {}:3:", cfg.display());
    let mut seen = Vec::new();
    let line = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with(&want) => break l,
            Ok(l) => seen.push(l),
            Err(e) => panic!(
                "no error line from the successor ({e}); its stderr: {seen:#?}; alive: {}",
                alive(old)
            ),
        }
    };
    assert!(line.contains("bogus_field"), "{line}");
    assert_eq!(
        read_pid(&pid_file),
        Some(old),
        "the pid file still names the old process"
    );
    let r = support::request(
        srv.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.body),
        (200, b"Hello, World!".to_vec()),
        "the old process still serves"
    );
    assert!(alive(old));
}

#[test]
fn a_second_sigusr2_during_an_upgrade_is_ignored() {
    let dir = temp_dir("upgrade-twice");
    let (mut srv, pid_file) = start_upgradable(&dir, &[]);
    let ctl = dir.join("control.sock");
    let old = read_pid(&pid_file).unwrap();
    let rx = stderr_lines(&mut srv);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(old as i32, libc::SIGUSR2) };
    // Once the first signal started a successor (two signals sent at once would merge into one),
    // a second one is ignored, whether it comes before the handover or during the drain after it.
    let mut seen = Vec::new();
    let mut resent = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("took over; draining") && resent => break,
            Ok(l) => {
                if l.contains("starting successor") && !resent {
                    // SAFETY: as above.
                    unsafe { libc::kill(old as i32, libc::SIGUSR2) };
                    resent = true;
                }
                seen.push(l);
            }
            Err(e) => panic!("no handover ({e}): {seen:#?}"),
        }
    }
    // The second signal's line may come just after the handover's.
    while !seen.iter().any(|l| l.contains("ignored")) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("the second SIGUSR2 was not reported ({e}): {seen:#?}"),
        }
    }
    let started = seen
        .iter()
        .filter(|l| l.contains("starting successor"))
        .count();
    assert_eq!(started, 1, "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("ignored")), "{seen:#?}");
    let new = read_pid(&pid_file).unwrap();
    assert_ne!(new, old);
    // The old process leaves the pid file and the control socket to its successor ...
    wait_for("the old server to exit", Duration::from_secs(40), || {
        !alive(old)
    });
    assert_eq!(read_pid(&pid_file), Some(new));
    assert!(ctl.exists(), "the successor's control socket");
    // SAFETY: the successor is not our child; stop it.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    wait_for("the successor to exit", Duration::from_secs(40), || {
        !alive(new)
    });
    // ... which removes both when it stops without a successor of its own.
    assert!(!pid_file.exists(), "a stale pid file");
    assert!(!ctl.exists(), "a stale control socket");
}

/// Fresh connections, one `GET /` each, one after the other until `stop`: returns how many were
/// answered 200 and what went wrong with the others. The first answer is announced on `started`.
fn new_connections(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    started: mpsc::Sender<()>,
) -> (u64, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let outcome = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        });
        match outcome {
            Ok(out) if out.starts_with(b"HTTP/1.1 200 ") => {
                ok += 1;
                let _ = started.send(());
            }
            Ok(out) => failed.push(String::from_utf8_lossy(&out).into_owned()),
            Err(e) => failed.push(e.to_string()),
        }
        // A steady trickle, not a flood: the shards share this machine's CPUs with the test.
        std::thread::sleep(Duration::from_millis(2));
    }
    (ok, failed)
}

/// Waits for a line that contains `what` (at most 30 s); returns it.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains(what) => return l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no line with {what:?} ({e}); before it: {seen:#?}"),
        }
    }
}

/// Sends SIGTERM to the serving process as soon as its stderr (which a successor shares) shows
/// `moment`, in the middle of a hot restart, and checks that the successor ends up serving the
/// port alone: no new connection is refused at any point, and the successor's shards do not
/// spin on failing accepts.
fn sigterm_during_a_hot_restart(tag: &str, moment: &str) {
    let dir = temp_dir(tag);
    // `--drain-accept 0s`: a plain drain would stop listening at once, the harshest case for
    // sockets a successor shares.
    let (mut srv, pid_file) =
        start_upgradable(&dir, &["--admin", "127.0.0.1:0", "--drain-accept", "0s"]);
    let old = read_pid(&pid_file).unwrap();
    let rx = stderr_lines(&mut srv);
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = mpsc::channel();
    let prober = {
        let (addr, stop) = (srv.addr, stop.clone());
        std::thread::spawn(move || new_connections(addr, stop, started_tx))
    };
    started.recv().expect("the first connection is answered");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(old as i32, libc::SIGUSR2) };
    let mut seen = Vec::new();
    wait_line(&rx, moment, &mut seen);
    // SAFETY: as above.
    unsafe { libc::kill(old as i32, libc::SIGTERM) };
    wait_for("a new pid in the pid file", Duration::from_secs(30), || {
        read_pid(&pid_file).is_some_and(|p| p != old)
    });
    let new = read_pid(&pid_file).unwrap();
    wait_for(
        &format!("pid {old} to drain and exit"),
        Duration::from_secs(40),
        || !alive(old),
    );
    assert_eq!(srv.child.wait().unwrap().code(), Some(0));
    // The successor serves the port alone now.
    let r = support::request(
        srv.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "the successor serves");
    stop.store(true, Ordering::SeqCst);
    let (answered, failed) = prober.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed: {:?}",
        failed.len(),
        answered + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    // Its accepts never failed (shards spinning on a dead socket count hundreds of thousands a
    // second).
    let stdout = srv.stdout_lines.lock().unwrap();
    let admin = loop {
        let line = stdout
            .recv_timeout(Duration::from_secs(30))
            .expect("the successor's admin line");
        if let Some(a) = line.strip_prefix("percore: admin on http://") {
            break a.trim().parse().unwrap();
        }
    };
    let metrics = support::request(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8(metrics.body).unwrap();
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("percore_accept_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        text.contains("percore_accept_errors_total{"),
        "the counter is exported: {text}"
    );
    assert_eq!(errors, 0.0, "{text}");
    // SAFETY: the successor is not our child; stop it.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    wait_for("the successor to exit", Duration::from_secs(40), || {
        !alive(new)
    });
    // Both processes have exited: read their stderr to the end. Nothing there says that a
    // listening socket died.
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("stderr still open ({e}): {seen:#?}"),
        }
    }
    assert!(!seen.iter().any(|l| l.contains("unusable")), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("pid {new} took over"))),
        "{seen:#?}"
    );
}

#[test]
fn sigterm_before_the_successor_connects_lets_it_take_over() {
    // The old process logs this line, then starts the successor: the signal arrives while the
    // successor starts up, before it asks for the sockets.
    sigterm_during_a_hot_restart("upgrade-term-early", "percore: starting successor");
}

#[test]
fn sigterm_while_the_successor_takes_the_sockets_over_leaves_it_serving() {
    // The successor logs this line once it holds the sockets, then starts its shards and only
    // then says READY: the signal arrives while the handoff is in flight.
    sigterm_during_a_hot_restart("upgrade-term-handoff", "percore: took over");
}
