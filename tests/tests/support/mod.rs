#![allow(dead_code)] // reason: each test file uses a subset
//! Helpers for the end-to-end tests: start the real `percore` binary on port 0, wait for the line
//! that names its address (never a sleep), talk raw bytes to it, and stop it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, ChildStderr, Command, Stdio},
    time::Duration,
};

/// Path of the server binary built for these tests.
pub fn percore_bin() -> &'static str {
    env!("CARGO_BIN_EXE_e2e-percore")
}

/// Path of the load generator built for these tests.
pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_e2e-percore-bench")
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("percore-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `percore serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin API's address, when started with `--admin`.
    pub admin: Option<SocketAddr>,
    pub stderr: Option<ChildStderr>,
    /// Lines printed on stdout after the listening line(s) were read (by this process, and by
    /// a hot-restart successor, which inherits its stdout).
    /// (Behind a lock only so that a `&Server` can be shared between threads.)
    pub stdout_lines: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Server {
    /// Starts `percore serve --listen 127.0.0.1:0 <extra>` and waits for its listening line.
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// Starts the binary with exactly `args` and waits for the first listening line.
    pub fn start_with(args: &[&str]) -> Server {
        let mut child = Command::new(percore_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start percore");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("percore: listening on http://") {
                        let addr = rest.split_whitespace().next().unwrap();
                        break addr.parse().unwrap();
                    }
                }
                _ => {
                    let mut err = String::new();
                    child.stderr.take().unwrap().read_to_string(&mut err).ok();
                    panic!("percore exited before listening: {err}");
                }
            }
        };
        // With an admin listener, its address comes on a later line.
        let mut admin = None;
        if args.contains(&"--admin") {
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some(rest) = line.strip_prefix("percore: admin on http://") {
                    admin = Some(rest.trim().parse().unwrap());
                    break;
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        let (tx, stdout_lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines {
                match line {
                    Ok(l) => {
                        let _ = tx.send(l);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
                    Err(_) => break,
                }
            }
        });
        let stderr = child.stderr.take();
        Server {
            child,
            addr,
            admin,
            stderr,
            stdout_lines: std::sync::Mutex::new(stdout_lines),
        }
    }

    /// Opens a connection with a generous read timeout (a hang fails the test instead of
    /// blocking it forever).
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) takes no pointers; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap()
    }

    /// Everything the server wrote on stderr until it exited.
    pub fn stderr_text(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            e.read_to_string(&mut s).ok();
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection (`Connection: close`); returns the parsed response.
pub fn request(addr: SocketAddr, req: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let out = exchange_until_close(&mut s, req.as_bytes());
    parse_responses(&out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response to {req:?}"))
}

/// Sends `req`, reads until the server closes, returns everything it sent.
pub fn exchange_until_close(s: &mut TcpStream, req: &[u8]) -> Vec<u8> {
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// One parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// A header value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses consecutive responses (Content-Length framed; 1xx and 204/304 without body).
pub fn parse_responses(mut b: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = match b.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => i,
            None => panic!("incomplete response head: {:?}", String::from_utf8_lossy(b)),
        };
        let head = std::str::from_utf8(&b[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let body_start = end + 4;
        let body = b[body_start..body_start + len].to_vec();
        b = &b[body_start + len..];
        out.push(Resp {
            status,
            headers,
            body,
        });
    }
    out
}

/// Reads exactly `n` complete responses from a keep-alive connection.
pub fn read_responses(s: &mut TcpStream, n: usize) -> Vec<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(r) = try_parse_n(&buf, n) {
            return r;
        }
        let k = s.read(&mut chunk).unwrap();
        assert!(
            k > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..k]);
    }
}

fn try_parse_n(b: &[u8], n: usize) -> Option<Vec<Resp>> {
    // Framing only, without copying bodies: this runs after every read, and copying every
    // complete body each time made reading 100 MB of answers take most of a minute. The bodies
    // are copied once, when all `n` are in.
    let mut end_of_n = 0;
    for _ in 0..n {
        let rest = &b[end_of_n..];
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..end]).ok()?;
        let len: usize = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse().unwrap())
            .unwrap_or(0);
        if rest.len() < end + 4 + len {
            return None;
        }
        end_of_n += end + 4 + len;
    }
    Some(parse_responses(&b[..end_of_n]))
}
