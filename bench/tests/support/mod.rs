//! A small HTTP/1.1 server for the generator's end-to-end tests: std threads on 127.0.0.1:0, one
//! per connection, keep-alive, pipelining, answers chosen by path:
//!
//! - `/404`, `/500`: that status; `/stall`: never answers (for timeouts); `/close`: answers with
//!   `Connection: close` and closes; `/chunked`: a chunked body written in several pieces;
//!   anything else: `200 OK` with body `ok`.
//! - [`Server::pause_after`]: after the n-th answered request, every connection stops answering
//!   for a fixed time (the server's stall, decided by the server itself, not by test timing).

#![allow(dead_code)] // reason: each test file uses a different subset

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Shared server state.
#[derive(Default)]
pub struct State {
    /// Requests answered so far.
    pub answered: AtomicU64,
    pause: Mutex<Pause>,
}

/// The planned pause.
#[derive(Default)]
struct Pause {
    /// After how many answers, for how long.
    trigger: Option<(u64, Duration)>,
    /// The pause's end, once it began.
    until: Option<Instant>,
}

/// A running test server; it lives until the test process exits.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(stream, &st));
            }
        });
        Server { addr, state }
    }

    /// After `after` answered requests, stop answering for `pause`.
    pub fn pause_after(&self, after: u64, pause: Duration) {
        self.state.pause.lock().unwrap().trigger = Some((after, pause));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Blocks while a pause is on; starts it when the answer count reaches the trigger.
fn maybe_pause(st: &State) {
    let until = {
        let mut p = st.pause.lock().unwrap();
        if p.until.is_none() {
            if let Some((after, len)) = p.trigger {
                if st.answered.load(Ordering::SeqCst) >= after {
                    p.until = Some(Instant::now() + len);
                }
            }
        }
        p.until
    };
    if let Some(until) = until {
        let now = Instant::now();
        if until > now {
            // This sleep *is* the server's stall under test, not synchronisation.
            std::thread::sleep(until - now);
        }
    }
}

fn serve(mut s: TcpStream, st: &State) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every complete request in the buffer, then write them all at once.
        let mut out = Vec::new();
        let mut close = false;
        let mut stall = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(n)) = req.parse(&buf) else {
                break;
            };
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < n + len {
                break;
            }
            let path = req.path.unwrap_or("/").to_string();
            buf.drain(..n + len);
            maybe_pause(st);
            match path.as_str() {
                "/404" => {
                    out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
                }
                "/500" => out.extend_from_slice(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad",
                ),
                "/stall" => stall = true,
                "/close" => {
                    out.extend_from_slice(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                    );
                    close = true;
                }
                "/chunked" => {
                    // Written in pieces, so responses span the client's receive buffers.
                    let pieces: [&[u8]; 4] = [
                        b"HTTP/1.1 200 OK\r\nTransfer-",
                        b"Encoding: chunked\r\n\r\n5\r\nhel",
                        b"lo\r\n3;x=y\r\n, w\r\n",
                        b"0\r\n\r\n",
                    ];
                    if s.write_all(&out).is_err() {
                        return;
                    }
                    out.clear();
                    for p in pieces {
                        if s.write_all(p).is_err() {
                            return;
                        }
                    }
                }
                _ => out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            }
            if !stall {
                st.answered.fetch_add(1, Ordering::SeqCst);
            }
            if close || stall {
                break;
            }
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
        if close {
            return;
        }
        if stall {
            // Keep the connection open, answer nothing, until the client goes away.
            while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
