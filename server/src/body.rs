//! Request bodies read as they arrive, for handlers that opt in with
//! [`Handler::streams_body`](crate::handler::Handler::streams_body).
//!
//! Such a handler runs as soon as the request head is parsed. [`BodyReader::read`] copies the
//! next body bytes into the caller's buffer (framing removed: Content-Length or chunked), waiting
//! for the client as needed with the body inactivity timeout; [`BodyReader::read_to_end`] collects
//! the whole body in the request arena, up to the body limit. Whatever the handler leaves unread
//! is read and discarded by the server before the response goes out, so the next request on the
//! connection starts where this body ends.

use std::{
    cell::{Cell, RefCell},
    time::Duration,
};

use bumpalo::Bump;
use percore_runtime::{ConnReader, Error as RtError, RecvBuf};

use crate::http::{self, ChunkedDecoder};

/// The most [`BodyReader::read_to_end`] reserves up front for a body of announced length.
const PRESIZE_MAX: u64 = 4 << 20;

/// How the body is framed.
enum Frame {
    /// Content-Length: this many bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// Where the body ended, once it has.
pub(crate) enum End {
    /// Inside the bytes that came with the head: this many of them were body.
    InFirst(usize),
    /// Inside a later receive buffer: what follows the body in it.
    InBuf(Option<RecvBuf>),
}

struct State<'r> {
    conn: Option<ConnReader>,
    /// Bytes received with the head.
    first: &'r [u8],
    /// A receive buffer was needed (the body did not end within `first`).
    received: bool,
    /// How many bytes of `first` were consumed.
    first_used: usize,
    /// The receive buffer being consumed, once `first` is used up.
    cur: Option<RecvBuf>,
    frame: Frame,
    /// The connection ended, timed out or sent a malformed body.
    failed: Option<http::Error>,
    timeout: Duration,
}

/// A request body being received. Reads must not overlap (one task reads at a time).
pub struct BodyReader<'r> {
    st: RefCell<State<'r>>,
    done: Cell<bool>,
    /// Bytes received from the connection by this reader (for the connection's metrics).
    bytes_in: Cell<u64>,
    max_body: u64,
}

impl<'r> BodyReader<'r> {
    pub(crate) fn new(
        conn: ConnReader,
        first: &'r [u8],
        length: Option<u64>,
        limits: &http::Limits,
        timeout: Duration,
    ) -> Self {
        let frame = match length {
            Some(n) => Frame::Length(n),
            None => Frame::Chunked(ChunkedDecoder::new(limits)),
        };
        BodyReader {
            done: Cell::new(matches!(frame, Frame::Length(0))),
            bytes_in: Cell::new(0),
            st: RefCell::new(State {
                conn: Some(conn),
                first,
                first_used: 0,
                received: false,
                cur: None,
                frame,
                failed: None,
                timeout,
            }),
            max_body: limits.max_body,
        }
    }

    /// Bytes this reader received from the connection.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.get()
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.done.get()
    }

    /// Copies the next body bytes into `out` and returns how many; `Ok(0)` once the body is
    /// complete (or when `out` is empty). Errors: the client sent a malformed or too large body
    /// (its status), stopped sending for the body timeout (408), or closed the connection (400).
    pub async fn read(&self, out: &mut [u8]) -> Result<usize, http::Error> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done.get() {
                return Ok(0);
            }
            let n = self.take(out)?;
            if n > 0 || self.done.get() {
                return Ok(n);
            }
            self.receive().await?;
        }
    }

    /// Reads the rest of the body into the request arena (at most the body limit).
    pub async fn read_to_end(&self, arena: &'r Bump) -> Result<&'r [u8], http::Error> {
        // A Content-Length body gets its whole size at once (the head was checked against the
        // body limit), plus the last read's room: growing by doubling would leave the arena
        // with about twice the body in chunks, and copy it on every growth. Up to
        // `PRESIZE_MAX`: a client that announces a large body and sends nothing gets no more
        // than that reserved for it (pages it never sends are never touched either).
        let expected = match &self.st.borrow().frame {
            Frame::Length(n) => {
                usize::try_from((*n).min(self.max_body).min(PRESIZE_MAX)).unwrap_or(0)
            }
            Frame::Chunked(_) => 0,
        };
        let mut body = bumpalo::collections::Vec::with_capacity_in(
            if expected > 0 { expected + 4096 } else { 0 },
            arena,
        );
        loop {
            // Read straight into the arena vector's next 4 KiB (no bounce buffer).
            let len = body.len();
            body.resize(len + 4096, 0);
            let n = self.read(&mut body[len..]).await?;
            body.truncate(len + n);
            if n == 0 {
                return Ok(body.into_bump_slice());
            }
            if body.len() as u64 > self.max_body {
                return Err(http::Error::BodyTooLarge);
            }
        }
    }

    /// Takes what is already received (no waiting).
    fn take(&self, out: &mut [u8]) -> Result<usize, http::Error> {
        let mut st = self.st.borrow_mut();
        if let Some(e) = st.failed {
            return Err(e);
        }
        let st = &mut *st;
        let from_first = st.first_used < st.first.len();
        let input: &[u8] = if from_first {
            &st.first[st.first_used..]
        } else {
            match &st.cur {
                Some(b) => b,
                None => return Ok(0),
            }
        };
        let (used, produced, done) = match decode(&mut st.frame, input, out) {
            Ok(r) => r,
            Err(e) => {
                st.failed = Some(e);
                return Err(e);
            }
        };
        if from_first {
            st.first_used += used;
        } else if let Some(b) = &mut st.cur {
            b.advance(used);
            if b.is_empty() && !done {
                st.cur = None;
            }
        }
        self.done.set(done);
        Ok(produced)
    }

    /// Waits for the next receive buffer.
    async fn receive(&self) -> Result<(), http::Error> {
        let (mut conn, timeout) = {
            let mut st = self.st.borrow_mut();
            match st.conn.take() {
                Some(c) => (c, st.timeout),
                None => return Err(http::Error::IncompleteBody),
            }
        };
        conn.set_deadline(Some(conn.now() + timeout));
        let r = conn.recv().await;
        let mut st = self.st.borrow_mut();
        st.conn = Some(conn);
        let e = match r {
            Ok(Some(b)) => {
                self.bytes_in.set(self.bytes_in.get() + b.len() as u64);
                st.cur = Some(b);
                st.received = true;
                return Ok(());
            }
            Err(RtError::TimedOut) => http::Error::RequestTimeout,
            Ok(None) | Err(_) => http::Error::IncompleteBody,
        };
        st.failed = Some(e);
        Err(e)
    }

    /// Reads and discards the rest of the body; says where it ended.
    pub(crate) async fn finish(&self) -> Result<End, http::Error> {
        let mut sink = [0u8; 4096];
        while self.read(&mut sink).await? > 0 {}
        let mut st = self.st.borrow_mut();
        Ok(if st.received {
            End::InBuf(st.cur.take())
        } else {
            End::InFirst(st.first_used)
        })
    }
}

/// Decodes from `input` into `out`: (input bytes used, body bytes produced, body complete).
fn decode(
    frame: &mut Frame,
    input: &[u8],
    out: &mut [u8],
) -> Result<(usize, usize, bool), http::Error> {
    match frame {
        Frame::Length(left) => {
            let n = (*left).min(input.len() as u64).min(out.len() as u64) as usize;
            out[..n].copy_from_slice(&input[..n]);
            *left -= n as u64;
            Ok((n, n, *left == 0))
        }
        Frame::Chunked(dec) => {
            let (mut used, mut produced) = (0, 0);
            while !dec.is_done() && produced < out.len() {
                // Never more input than `out` has room for: a data slice is part of the input.
                let lim = (input.len() - used).min(out.len() - produced);
                let (u, data) = dec.decode(&input[used..used + lim])?;
                if let Some(d) = data {
                    out[produced..produced + d.len()].copy_from_slice(d);
                    produced += d.len();
                }
                used += u;
                if u == 0 {
                    break;
                }
            }
            Ok((used, produced, dec.is_done()))
        }
    }
}
