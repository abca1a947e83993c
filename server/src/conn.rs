//! The HTTP/1.1 connection state machine: one task per connection, reading through the engine,
//! parsing in place, dispatching, and writing responses in batches.
//!
//! # States
//! ```text
//!   Idle ──bytes──▶ ReadingHead ──head complete──▶ ReadingBody ──body complete──▶ Dispatch
//!    ▲                  │ 408 at header deadline       │ 408 at body inactivity     │
//!    └──── keep-alive ◀─┴──────────── response written ◀───────────────────────────┘
//!                      close: error, `Connection: close`, HTTP/1.0, drain ─▶ Closing
//! ```
//! Every complete request already in the buffer is answered before the batch is flushed with one
//! send (pipelining). Bytes are parsed where the kernel put them (a [`percore_runtime::RecvBuf`]);
//! only the tail of an incomplete request is copied, into a pooled reassembly buffer that goes
//! back to the pool as soon as it is empty, so an idle connection holds no buffer.
//!
//! # Deadlines
//! - a new connection's first request: `header_timeout` (or `keepalive_timeout`, if shorter)
//!   for its first byte, then a silent close: a client that connects and sends nothing does not
//!   hold a descriptor for the whole keep-alive timeout (nginx waits `client_header_timeout`);
//! - idle keep-alive: `keepalive_timeout` after the last response;
//! - request head: `header_timeout` from its first byte, absolute (a client trickling a byte a
//!   second cannot stretch it), then `408` and close;
//! - body: `body_timeout` of inactivity, then `408` and close.
//!
//! # Closing
//! After an error response, or a response with `Connection: close`, the write side is shut down
//! and what the client still sends is read and discarded for a short while (a lingering close), so
//! that the client receives the response instead of a reset.

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use percore_runtime::{Conn, Error as RtError, RecvBuf, buf::arena_future};

use crate::{
    app::App,
    body::{BodyReader, End},
    handler::{Body, Handler, Middleware, Request, Response},
    http::{
        self, BodyKind, CONTINUE_100, ChunkedDecoder, ConnectionHeader, Framing, HEADER_SLOT,
        ResponseHead, Status, write_error,
    },
    metrics::{Method, RouteId},
    router::Found,
};

/// How long a closing connection reads and discards what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// What the parser needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Nothing buffered: waiting for a new request.
    Idle,
    /// Part of a head is buffered.
    Head,
    /// A head is complete, its body is not.
    Body,
    /// Requests are buffered but the client has not read what was answered so far
    /// (`max_unsent` bytes of answers are queued): answered once it has.
    Room,
}

/// A chunked body decoded so far, kept across receives: each new buffer is decoded from where the
/// last one stopped (decoding the buffered body from its start on every receive made a body sent
/// in 200-byte chunks cost 1.4 s of CPU per MB).
struct ChunkProgress {
    dec: ChunkedDecoder,
    /// Bytes of the input after the head already decoded.
    used: usize,
    /// The decoded body (a pooled buffer).
    body: Vec<u8>,
}

/// What a connection keeps between calls of [`process`] about the request whose body is still
/// arriving, and what a call hands back for the next one.
#[derive(Default)]
struct Carried {
    /// `100 Continue` went out for that request.
    continue_sent: bool,
    /// Its middleware's `on_head` hooks let it through before its body was asked for
    /// (`Expect: 100-continue`); they are not asked again once the body is complete.
    head_passed: bool,
    /// Its chunked body decoded so far. Boxed: the connection task's size is what every idle
    /// connection costs (unboxed, ~190 bytes more per idle connection at 10,000 connections).
    chunk: Option<Box<ChunkProgress>>,
    /// A streamed body ended inside a buffer its reader received: what followed it there (the
    /// start of the next request), in a pooled buffer.
    after_body: Option<Vec<u8>>,
}

impl Carried {
    /// Sends `100 Continue` unless it already went out for this request.
    fn send_continue(&mut self, c: &mut Conn) {
        if !self.continue_sent {
            c.write_buf().extend_from_slice(CONTINUE_100);
            let _ = c.flush();
            self.continue_sent = true;
        }
    }

    /// The request is answered (or abandoned): forget its body state.
    fn request_done(&mut self, app: &App) {
        self.continue_sent = false;
        self.head_passed = false;
        if let Some(p) = self.chunk.take() {
            app.engine.pool().give(p.body);
        }
    }
}

/// What processing a buffer did.
struct Step {
    consumed: usize,
    answered: usize,
    need: Need,
    close: bool,
}

/// Serves one connection until it closes.
///
/// The returned future is the connection's task, and its size is what every idle connection
/// costs, so it is built with care: the connection's state lives once, in a `Session` the future
/// captures (an `async fn` would keep its arguments twice, as arguments and as the locals they move
/// into), and each step is a future of its own, awaited at one place. Request processing runs
/// boxed in a pooled arena. 248 bytes, against 424 when this was an `async fn` keeping its state
/// in locals: 476 bytes of RSS per idle connection at 10,000 connections instead of 647.
pub fn serve(c: Conn, app: Rc<App>) -> impl Future<Output = ()> {
    let head_deadline = c.now();
    let mut s = Session {
        c,
        app,
        pending: Vec::new(),
        carried: Carried::default(),
        need: Need::Idle,
        head_deadline,
        served: false,
        reprocess: false,
    };
    async move {
        s.app.metrics.connection_accepted();
        s.run().await;
        if s.pending.capacity() != 0 {
            s.app.engine.pool().give(std::mem::take(&mut s.pending));
        }
        s.carried.request_done(&s.app);
        s.app.metrics.connection_closed();
    }
}

/// What a connection keeps from one receive to the next.
struct Session {
    c: Conn,
    app: Rc<App>,
    /// An incomplete request's bytes (a pooled buffer), when it did not arrive in one receive.
    pending: Vec<u8>,
    carried: Carried,
    need: Need,
    /// When the head of the request being received must be complete.
    head_deadline: Instant,
    /// A fresh connection is not idle until it has been served once: a drain must not close a
    /// connection whose first request is still on the wire.
    served: bool,
    /// What followed a streamed body is buffered: parse it before receiving more.
    reprocess: bool,
}

impl Session {
    /// The connection's loop. Each step is its own future, awaited at one place, so that this
    /// one's size is that of its largest step, not their sum.
    async fn run(&mut self) {
        let linger = loop {
            let buf = if self.reprocess {
                self.reprocess = false;
                None
            } else {
                match self.receive().await {
                    Ok(Some(b)) => Some(b),
                    Ok(None) => break false,
                    Err(RtError::TimedOut) if self.need != Need::Idle => {
                        write_error(
                            self.c.write_buf(),
                            http::Error::RequestTimeout,
                            false,
                            &self.app.date(),
                            &self.app.server_name(),
                        );
                        break true;
                    }
                    Err(_) => break false,
                }
            };
            self.c.set_idle(false);
            let step = self.answer(buf).await;
            if self.after(step) {
                break true;
            }
            if self.c.flush().is_err() {
                break false;
            }
            // A client that pipelines faster than it reads: stop reading until it catches up,
            // for at most the send timeout.
            let cfg = self.app.config();
            if self.c.unsent() > cfg.max_unsent || self.need == Need::Room {
                // Meanwhile it holds none of the shard's receive buffers (they are shared): what
                // it received moves to its own buffer, answered once the client reads.
                self.c.hold_recv(true);
                self.c.set_deadline(Some(self.c.now() + cfg.send_timeout));
                let flushed = loop {
                    while let std::task::Poll::Ready(Ok(Some(b))) = self.c.try_recv() {
                        if self.pending.capacity() == 0 {
                            self.pending = self.app.engine.pool().take();
                        }
                        self.pending.extend_from_slice(&b);
                        self.reprocess = true;
                    }
                    match self.c.flushed_or_received().await {
                        Ok(false) => continue,
                        done => break done,
                    }
                };
                self.c.hold_recv(false);
                if flushed.is_err() {
                    break false;
                }
                // Requests left unanswered when the output filled up: answer them now.
                self.reprocess |= self.need == Need::Room;
            }
            if self.need == Need::Idle && self.c.is_draining() {
                self.c.set_deadline(Some(self.c.now() + cfg.send_timeout));
                let _ = self.c.flushed().await;
                break false;
            }
        };
        if linger {
            linger_close(&mut self.c).await;
        }
    }

    /// Waits for bytes until the deadline of what the connection is waiting for.
    async fn receive(&mut self) -> Result<Option<RecvBuf>, RtError> {
        let cfg = self.app.config();
        let deadline = match self.need {
            Need::Idle if !self.served => {
                self.c.now() + cfg.header_timeout.min(cfg.keepalive_timeout)
            }
            Need::Idle => self.c.now() + cfg.keepalive_timeout,
            Need::Head => self.head_deadline,
            Need::Body => self.c.now() + cfg.body_timeout,
            // Not reached: the loop answers those requests once the output is flushed.
            Need::Room => self.c.now() + cfg.send_timeout,
        };
        self.c.set_idle(self.need == Need::Idle && self.served);
        self.c.set_deadline(Some(deadline));
        let buf = self.c.recv().await?;
        if let Some(b) = &buf {
            self.app.metrics.add_bytes_in(b.len() as u64);
            if self.need == Need::Idle {
                self.head_deadline = self.c.now() + cfg.header_timeout;
            }
        }
        Ok(buf)
    }

    /// Answers what `buf` (or, without one, the buffered bytes) completes. Bytes are parsed in
    /// place when nothing is buffered, else appended to what is. [`process`] runs boxed in a
    /// pooled arena, with its state (request head, parameters, the response under construction,
    /// the handler's future), instead of in the connection's task.
    ///
    /// Not an `async fn`, which would keep `buf` twice (as argument and as local): 112 bytes
    /// instead of 80, and this is the largest step the connection's task holds.
    #[allow(clippy::manual_async_fn)]
    fn answer(&mut self, mut buf: Option<RecvBuf>) -> impl Future<Output = Step> + '_ {
        async move {
            if !self.pending.is_empty()
                && let Some(b) = buf.take()
            {
                self.pending.extend_from_slice(&b);
            }
            let input: &[u8] = match &buf {
                Some(b) => b,
                None => &self.pending,
            };
            let outer = self.app.arenas.take();
            let step = arena_future(
                &outer,
                process(&mut self.c, &self.app, input, &mut self.carried),
            )
            .await;
            self.app.arenas.give(outer);
            match &buf {
                Some(b) if step.consumed < b.len() && !step.close => {
                    self.pending = self.app.engine.pool().take();
                    self.pending.extend_from_slice(&b[step.consumed..]);
                }
                Some(_) => {}
                None => {
                    self.pending.drain(..step.consumed.min(self.pending.len()));
                }
            }
            step
        }
    }

    /// Settles the connection's state after `step`; true if it must close.
    fn after(&mut self, mut step: Step) -> bool {
        // A streamed body ended inside a buffer its reader received: what followed it there is
        // the start of the next request.
        if let Some(carry) = self.carried.after_body.take() {
            if self.pending.capacity() != 0 {
                self.app
                    .engine
                    .pool()
                    .give(std::mem::take(&mut self.pending));
            }
            self.pending = carry;
            if !self.pending.is_empty() {
                step.need = Need::Head;
                self.reprocess = !step.close;
            }
        }
        if step.need != Need::Body {
            self.carried.request_done(&self.app);
        }
        self.served |= step.answered > 0;
        if self.pending.is_empty() && self.pending.capacity() != 0 {
            self.app
                .engine
                .pool()
                .give(std::mem::take(&mut self.pending));
        }
        self.need = if self.pending.is_empty() {
            Need::Idle
        } else {
            step.need
        };
        step.close
    }
}

/// Flushes, half-closes and reads what the client still sends for up to [`LINGER`].
async fn linger_close(c: &mut Conn) {
    if c.shutdown_write().await.is_err() {
        return;
    }
    c.set_deadline(Some(c.now() + LINGER));
    while let Ok(Some(_)) = c.recv().await {}
}

/// Answers every complete request in `input`; returns how much it consumed and what it needs.
/// `carried.chunk` belongs to the request at the start of `input` (a request waiting for its body
/// is always the first one left) and is given back when that request is answered. When a
/// streamed body ends inside a buffer its reader received, all of `input` is consumed and what
/// followed the body is put in `carried.after_body`.
async fn process(c: &mut Conn, app: &App, input: &[u8], carried: &mut Carried) -> Step {
    let cfg = app.config();
    let limits = &cfg.limits;
    let mut off = 0;
    let mut answered = 0;
    loop {
        // Only empty lines left after a request (a client's CRLF after its body): dropped, and
        // the connection is idle rather than halfway through a head (which would time out with
        // a 408 for a request that was never sent).
        if http::only_empty_lines(&input[off..]) {
            return Step {
                consumed: input.len(),
                answered,
                need: Need::Idle,
                close: false,
            };
        }
        let arena = app.arenas.take();
        let headers = arena.alloc_slice_fill_copy(limits.max_headers, HEADER_SLOT);
        let head = match http::parse_head(&input[off..], limits, headers) {
            Err(http::Error::UnsupportedVersion) => {
                match http::later_minor_version(&input[off..]) {
                    // HTTP/1.2 to 1.9 are processed as HTTP/1.1 (RFC 9110 §2.5): parse a copy
                    // of the head with the minor digit made 1 (httparse knows only 1.0 and
                    // 1.1). Same length, so offsets into `input` still hold.
                    Some(at) => {
                        let src = &input[off..input.len().min(off + limits.max_head + 1)];
                        let copy = arena.alloc_slice_copy(src);
                        copy[at] = b'1';
                        let headers = arena.alloc_slice_fill_copy(limits.max_headers, HEADER_SLOT);
                        http::parse_head(copy, limits, headers)
                    }
                    None => Err(http::Error::UnsupportedVersion),
                }
            }
            other => other,
        };
        let head = match head {
            Ok(Status::Complete(head, n)) => (head, n),
            Ok(Status::Partial) => {
                app.arenas.give(arena);
                return Step {
                    consumed: off,
                    answered,
                    need: Need::Head,
                    close: false,
                };
            }
            Err(e) => {
                app.arenas.give(arena);
                // The method is the first token (after any empty lines) even of a head that
                // failed to parse.
                let is_head = http::starts_with_method(&input[off..], b"HEAD");
                return reject(c, app, e, is_head, input.len(), answered);
            }
        };
        let (head, n) = head;
        let body_start = off + n;
        let rest = &input[body_start..];
        let router = app.router();
        let found = router.find(head.method, head.path);
        let streams = matches!(&found, Found::Handler(h, ..) if h.streams_body());
        let http10 = head.version == 0;
        let is_head = head.method == "HEAD";
        let method = Method::from_token(head.method);
        // From the engine turn that received the request (the shard's clock, no syscall) to the
        // response being encoded: includes the wait behind requests handled earlier that turn.
        let started = c.now();
        if streams && head.body != BodyKind::None {
            // The handler reads the body as it arrives: call it now.
            // Whether the client waits for a go-ahead: not once its whole body is here.
            let arrived = matches!(head.body, BodyKind::Length(n) if rest.len() as u64 >= n);
            let ask = head.expect_continue && !carried.continue_sent && !arrived;
            let length = match head.body {
                BodyKind::Length(n) => Some(n),
                _ => None,
            };
            let keep_alive = head.keep_alive;
            let reader = BodyReader::new(c.reader(), rest, length, limits, cfg.body_timeout);
            let Found::Handler(handler, middleware, params, route) = found else {
                unreachable!("checked above")
            };
            let route_id = app.route_id(route);
            let (status, close, end) = {
                let req = Request {
                    head,
                    params,
                    body: &[],
                    body_reader: Some(&reader),
                    arena: &arena,
                    shard: app.shard,
                };
                // Middleware decides before the body is asked for: an answer then goes out at
                // once, with a close (the client may or may not send the body after it).
                let refused = check_head(middleware, &req);
                if ask && refused.is_none() {
                    carried.send_continue(c);
                }
                carried.request_done(app);
                let cut_short = ask && refused.is_some();
                let resp = run_handler(handler.as_ref(), middleware, &req, Some(refused)).await;
                if cut_short {
                    let enc = encode(c, app, &resp, is_head, true, http10);
                    (enc.status, true, None)
                } else {
                    // The rest of the body is read (and dropped) before the response goes out.
                    let end = reader.finish().await;
                    app.metrics.add_bytes_in(reader.bytes_in());
                    match end {
                        Ok(end) => {
                            // Decided now: a drain may have begun while the body arrived.
                            let close = !keep_alive || c.is_draining();
                            let enc = encode(c, app, &resp, is_head, close, http10);
                            (enc.status, enc.close, Some(end))
                        }
                        Err(http::Error::IncompleteBody) => (400, true, None),
                        Err(e) => {
                            write_error(c.write_buf(), e, is_head, &app.date(), &app.server_name());
                            (e.status(), true, None)
                        }
                    }
                }
            };
            app.metrics.record(
                route_id,
                method,
                status,
                started.elapsed().as_micros() as u64,
            );
            app.arenas.give(arena);
            answered += 1;
            match end {
                Some(End::InFirst(used)) if !close => {
                    off = body_start + used;
                    continue;
                }
                Some(End::InBuf(buf)) if !close => {
                    let carry = buf.filter(|b| !b.is_empty()).map(|b| {
                        let mut v = app.engine.pool().take();
                        v.extend_from_slice(&b);
                        v
                    });
                    carried.after_body = carry;
                    return Step {
                        consumed: input.len(),
                        answered,
                        need: Need::Idle,
                        close: false,
                    };
                }
                _ => {
                    return Step {
                        consumed: input.len(),
                        answered,
                        need: Need::Idle,
                        close: true,
                    };
                }
            }
        }
        let body: Result<Option<(&[u8], usize)>, http::Error> = match head.body {
            BodyKind::None => Ok(Some((&[][..], 0))),
            BodyKind::Length(len) => {
                let len = len as usize;
                if rest.len() >= len {
                    Ok(Some((&rest[..len], len)))
                } else {
                    Ok(None)
                }
            }
            BodyKind::Chunked => {
                let p = carried.chunk.get_or_insert_with(|| {
                    Box::new(ChunkProgress {
                        dec: ChunkedDecoder::new(limits),
                        used: 0,
                        body: app.engine.pool().take(),
                    })
                });
                decode_chunked(rest, p).map(|done| done.then_some((&p.body[..], p.used)))
            }
        };
        // Asked to confirm before the body is sent, for a request no handler will read: answer
        // now instead of asking for content that would be thrown away (RFC 9110 §10.1.1), and
        // close, since the client may or may not send the body after a final status.
        // The same for a request whose route's middleware answers without it (a rate limit, a
        // missing token): its `on_head` hooks run now.
        let mut cut_short = false;
        let mut early = None;
        let (body, body_len) = match body {
            Ok(Some(b)) => b,
            Ok(None) => {
                let ask = head.expect_continue && !carried.continue_sent;
                let refused = match &found {
                    Found::Handler(_, middleware, params, _) if ask => {
                        let req = Request {
                            head,
                            params: params.clone(),
                            body: &[],
                            body_reader: None,
                            arena: &arena,
                            shard: app.shard,
                        };
                        check_head(middleware, &req)
                    }
                    _ => None,
                };
                if ask && (refused.is_some() || !matches!(found, Found::Handler(..))) {
                    early = refused;
                    cut_short = true;
                    (&[][..], rest.len())
                } else {
                    carried.head_passed |= ask;
                    if head.expect_continue {
                        carried.send_continue(c);
                    }
                    app.arenas.give(arena);
                    return Step {
                        consumed: off,
                        answered,
                        need: Need::Body,
                        close: false,
                    };
                }
            }
            Err(e) => {
                app.arenas.give(arena);
                return reject(c, app, e, is_head, input.len(), answered);
            }
        };
        let close = !head.keep_alive || c.is_draining() || cut_short;
        let mut route_id = RouteId::UNMATCHED;
        let resp = {
            match found {
                Found::Handler(handler, middleware, params, route) => {
                    route_id = app.route_id(route);
                    let req = Request {
                        head,
                        params,
                        body,
                        body_reader: None,
                        arena: &arena,
                        shard: app.shard,
                    };
                    let head = match early {
                        Some(answer) => Some(Some(answer)),
                        None if carried.head_passed => Some(None),
                        None => None,
                    };
                    let resp = run_handler(handler.as_ref(), middleware, &req, head).await;
                    encode(c, app, &resp, is_head, close, http10)
                }
                Found::MethodNotAllowed(allow) => {
                    let resp = Response::status_text(405, b"method not allowed\n")
                        .with_header("allow", allow);
                    encode(c, app, &resp, is_head, close, http10)
                }
                Found::NotFound => {
                    let resp = Response::status_text(404, b"not found\n");
                    encode(c, app, &resp, is_head, close, http10)
                }
                Found::Options(allow) => {
                    // No content: `Content-Length: 0` (RFC 9110 §9.3.7).
                    let resp = Response::new(200).with_header("allow", allow);
                    encode(c, app, &resp, is_head, close, http10)
                }
                Found::NotImplemented => {
                    let resp = Response::status_text(501, b"not implemented\n");
                    encode(c, app, &resp, is_head, close, http10)
                }
            }
        };
        app.metrics.record(
            route_id,
            method,
            resp.status,
            started.elapsed().as_micros() as u64,
        );
        app.arenas.give(arena);
        carried.request_done(app);
        answered += 1;
        off = body_start + body_len;
        if resp.close {
            return Step {
                consumed: off,
                answered,
                need: Need::Idle,
                close: true,
            };
        }
        if c.output_pending() > cfg.max_unsent && off < input.len() {
            // The client has not read the answers so far: stop here, and answer the rest once
            // it has. Answering the whole buffer first let 300 pipelined GETs of a 1 MB value
            // (10 KB sent) queue 300 MB.
            return Step {
                consumed: off,
                answered,
                need: Need::Room,
                close: false,
            };
        }
    }
}

/// Runs the route's middleware around its handler: `on_head`, then `before`, in order (the
/// first `Some` answers instead of the handler; `head` is `Some` when the `on_head` hooks
/// already ran, with their answer), then `after` in reverse order.
async fn run_handler<'r>(
    handler: &'r dyn Handler,
    middleware: &[Rc<dyn Middleware>],
    req: &'r Request<'r>,
    head: Option<Option<Response<'r>>>,
) -> Response<'r> {
    let early = match head {
        None => check_head(middleware, req),
        Some(answer) => answer,
    }
    .or_else(|| middleware.iter().find_map(|mw| mw.before(req)));
    let mut resp = match early {
        Some(r) => r,
        None => handler.call(req).await,
    };
    for mw in middleware.iter().rev() {
        mw.after(req, &mut resp);
    }
    resp
}

/// The route's middleware `on_head` hooks in order: the first answer stops the request.
fn check_head<'r>(middleware: &[Rc<dyn Middleware>], req: &Request<'r>) -> Option<Response<'r>> {
    middleware.iter().find_map(|mw| mw.on_head(req))
}

/// Answers a malformed request with its error status and closes: everything buffered is
/// consumed, nothing after it is answered.
fn reject(
    c: &mut Conn,
    app: &App,
    e: http::Error,
    is_head: bool,
    consumed: usize,
    answered: usize,
) -> Step {
    write_error(c.write_buf(), e, is_head, &app.date(), &app.server_name());
    Step {
        consumed,
        answered,
        need: Need::Idle,
        close: true,
    }
}

/// Decodes what arrived of a chunked body since the last call; true once the body is complete.
fn decode_chunked(rest: &[u8], p: &mut ChunkProgress) -> Result<bool, http::Error> {
    while !p.dec.is_done() {
        let (used, data) = p.dec.decode(&rest[p.used..])?;
        p.used += used;
        if let Some(d) = data {
            p.body.extend_from_slice(d);
        }
        if used == 0 && !p.dec.is_done() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What encoding a response decided.
struct Encoded {
    close: bool,
    status: u16,
}

/// Writes `resp` into the connection's write buffer. An invalid handler header, or a status that
/// cannot end an exchange (1xx, or anything outside 100-599), becomes a 500 and a close. A 205 goes out with
/// `Content-Length: 0` and no body, whatever the handler gave (RFC 9110 §15.3.6).
fn encode(
    c: &mut Conn,
    app: &App,
    resp: &Response<'_>,
    is_head: bool,
    close: bool,
    http10: bool,
) -> Encoded {
    let close = close || resp.close;
    let connection = if close {
        ConnectionHeader::Close
    } else if http10 {
        ConnectionHeader::KeepAlive
    } else {
        ConnectionHeader::Omit
    };
    let body = match resp.body {
        Body::Bytes(b) if resp.status != 205 => b,
        _ => &b""[..],
    };
    let date = app.date();
    let server = app.server_name();
    let head = ResponseHead {
        status: resp.status,
        reason: http::reason_phrase(resp.status),
        date: &date,
        server: &server,
        framing: if resp.status == 204 || resp.status == 304 || resp.status < 200 {
            Framing::None
        } else {
            Framing::Length(body.len() as u64)
        },
        connection,
        extra: resp.headers(),
    };
    let out = c.write_buf();
    let before = out.len();
    // A 1xx is interim: sent as the answer, the client would pair the next response with this
    // request, and every later one with the wrong request.
    let r = if (200..=599).contains(&resp.status) {
        app.write_head(out, &head)
    } else {
        Err(http::Error::InvalidResponseHeader)
    };
    let enc = encoded(
        out,
        r,
        &head,
        body,
        is_head,
        close,
        resp.status,
        &date,
        &server,
    );
    app.metrics.add_bytes_out((out.len() - before) as u64);
    enc
}

#[allow(clippy::too_many_arguments)] // reason: the pieces of one response, kept as plain arguments
fn encoded(
    out: &mut Vec<u8>,
    r: Result<(), http::Error>,
    head: &ResponseHead<'_>,
    body: &[u8],
    is_head: bool,
    close: bool,
    status: u16,
    date: &[u8; 29],
    server: &[u8],
) -> Encoded {
    let resp_status = status;
    match r {
        Ok(()) => {
            if !is_head && matches!(head.framing, Framing::Length(_)) {
                out.extend_from_slice(body);
            }
            Encoded {
                close,
                status: resp_status,
            }
        }
        Err(e) => {
            write_error(out, e, is_head, date, server);
            Encoded {
                close: true,
                status: e.status(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle keep-alive connection costs its task, so the connection future's size is
    /// watched: 424 bytes as an `async fn` keeping its state in locals (647 bytes of RSS per idle
    /// connection at 10,000), 248 since the state lives once in a `Session` and each step is a
    /// future of its own (476 bytes). Per-request state belongs in the arena (see
    /// `Session::answer`), not here.
    #[test]
    fn the_connection_task_stays_small() {
        let n = future_size(super::serve);
        assert!(n <= 256, "the connection future grew to {n} bytes");
    }
}
