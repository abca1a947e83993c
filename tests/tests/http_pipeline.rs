//! Pipelining: many requests in one write get ordered responses; a bad one in the middle gets
//! the earlier responses, then 400, then a close.

mod support;
use std::io::Write;

use support::{exchange_until_close, parse_responses, read_responses, Server};

#[test]
fn a_hundred_pipelined_gets_come_back_in_order() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    let mut req = Vec::new();
    for i in 0..100 {
        // Alternate two routes so that order is observable.
        if i % 2 == 0 {
            req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        } else {
            req.extend_from_slice(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n");
        }
    }
    s.write_all(&req).unwrap();
    let rs = read_responses(&mut s, 100);
    for (i, r) in rs.iter().enumerate() {
        let want: &[u8] = if i % 2 == 0 {
            b"Hello, World!"
        } else {
            br#"{"message":"Hello, World!"}"#
        };
        assert_eq!(r.body, want, "response {i}");
    }
}

#[test]
fn pipelined_requests_split_at_every_byte_still_parse() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    s.set_nodelay(true).unwrap();
    let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for b in req.iter() {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    let rs = read_responses(&mut s, 2);
    assert_eq!(rs[0].body, b"abc");
    assert_eq!(rs[1].body, b"Hello, World!");
}

#[test]
fn a_bad_request_mid_pipeline_answers_the_earlier_ones_then_400_and_close() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /json HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = exchange_until_close(&mut s, req);
    let statuses: Vec<u16> = parse_responses(&out).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![200, 200, 400],
        "nothing after the bad request is answered"
    );
}

/// Pipelines requests on `hog` until the server stops taking them (it queued responses the
/// client never reads), up to far more than the shard's whole receive ring (512 × 16 KiB).
fn write_until_refused(hog: &std::net::TcpStream, chunk: &[u8]) {
    hog.set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut w = hog;
    let mut written = 0usize;
    while written < 64 << 20 {
        match w.write(chunk) {
            Ok(n) => written += n,
            Err(_) => return,
        }
    }
    panic!("the server kept reading a client that never reads");
}

/// A client that pipelines requests and never reads the responses holds only its own
/// connection: the shard's receive buffers are shared, and it stops being read once it holds a
/// few unread, so another client is still served.
#[test]
fn a_client_that_never_reads_does_not_stall_the_others() {
    let srv = Server::start(&["--cpus", "0"]);
    let hog = srv.connect();
    write_until_refused(&hog, &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2048));
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].status, 200);
}

/// ... and its connection is closed after the send timeout (`timeouts.send`).
#[test]
fn a_client_that_never_reads_is_closed_after_the_send_timeout() {
    let dir = support::temp_dir("send-timeout");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("percore.toml");
    std::fs::write(&file, "[timeouts]\nsend = \"1s\"\nheader = \"60s\"\n").unwrap();
    let srv = Server::start(&["--cpus", "0", "--config", file.to_str().unwrap()]);
    let hog = srv.connect();
    let chunk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2048);
    write_until_refused(&hog, &chunk);
    // Writing fails once the server has closed the connection (a reset: it had unread bytes).
    hog.set_write_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut w = &hog;
    let err = loop {
        if let Err(e) = w.write(&chunk) {
            break e;
        }
    };
    assert!(
        !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the connection of a client that never reads stayed open: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's resident memory, from /proc.
fn rss_kib(srv: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Pipelined requests are answered only as fast as the client reads the answers: a few bytes
/// of GETs for a large value must not make the server queue every response at once.
#[test]
fn pipelined_requests_for_a_large_value_queue_no_more_than_the_unsent_limit() {
    let srv = Server::start(&["--cpus", "0"]);
    const SIZE: usize = 512 * 1024;
    const N: usize = 200;
    let mut put =
        format!("PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes();
    put.resize(put.len() + SIZE, b'v');
    let mut s = srv.connect();
    s.write_all(&put).unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].status, 201);
    let before = rss_kib(&srv);
    // 200 GETs in one write (7 KB); nothing is read yet.
    let mut hog = srv.connect();
    hog.write_all(
        b"GET /kv/big HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(N)
            .as_slice(),
    )
    .unwrap();
    // Another connection's request on the same shard is answered after the pipelined ones
    // were taken in.
    let r = support::request(
        srv.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let grown = rss_kib(&srv).saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "RSS grew by {grown} KiB for {N} unread answers of {SIZE} bytes"
    );
    // Once read, every answer comes, in order.
    let rs = read_responses(&mut hog, N);
    assert_eq!(rs.len(), N);
    assert!(rs.iter().all(|r| r.status == 200 && r.body.len() == SIZE));
}

/// A burst of large uploads does not pin its peak memory: once it is over, the server gives
/// back what those requests took (each buffered a 1 MB body in its arena and answered with
/// a 1 MB response).
#[test]
fn memory_taken_by_a_burst_of_large_uploads_is_given_back() {
    let srv = Server::start(&["--cpus", "0"]);
    let warm = support::request(
        srv.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(warm.status, 200);
    let before = rss_kib(&srv);
    const SIZE: usize = 1 << 20;
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.resize(req.len() + SIZE, b'a');
    std::thread::scope(|sc| {
        for _ in 0..40 {
            sc.spawn(|| {
                let mut s = srv.connect();
                let out = exchange_until_close(&mut s, &req);
                let r = parse_responses(&out);
                assert_eq!(r[0].status, 200);
                assert_eq!(r[0].body.len(), SIZE);
            });
        }
    });
    let peak = rss_kib(&srv);
    // Waits on the condition itself: the memory comes back once the burst has been over for a
    // moment, or the test fails after half a minute.
    let limit = before + 16 * 1024;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut now = peak;
    while now > limit && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = rss_kib(&srv);
    }
    assert!(
        now <= limit,
        "RSS {now} KiB half a minute after the burst (before it {before} KiB, right after {peak} KiB)"
    );
}

/// A server that runs out of file descriptors says so on stderr, naming the limit, and serves
/// again as soon as connections close.
#[test]
fn out_of_file_descriptors_is_reported_and_recovered_from() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        sync::mpsc,
        time::Duration,
    };
    /// Kills the server however the test ends (a failed assertion must not leave it running).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 48 && exec {} serve --listen 127.0.0.1:0 --cpus 0",
                support::percore_bin()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let err_tx = tx.clone();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(format!("stderr: {line}"));
        }
    });
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(format!("stdout: {line}"));
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a line from percore")
    };
    let addr: std::net::SocketAddr = loop {
        let line = next();
        if let Some(rest) = line.strip_prefix("stdout: percore: listening on http://") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Far more connections than the 48 descriptors allow; the kernel queues the rest.
    let clients: Vec<_> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let report = loop {
        let line = next();
        if line.contains("accepting on") {
            break line;
        }
    };
    assert!(report.contains("failed: Too many open files"), "{report}");
    assert!(report.contains("open files limit 48"), "{report}");
    drop(clients);
    let r = support::request(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
}
