//! The handler API: what a request looks like to application code, what it returns, and the
//! middleware that wraps it.
//!
//! A [`Request`] borrows everything from the connection's buffer and the request's arena: method,
//! path, query, headers, path parameters and the body are slices, never copies. A handler returns
//! a [`Response`] whose headers and body live in the same arena (or are `'static`). Handlers are
//! async and run on the shard that accepted the connection; the future they return is boxed in
//! the request's arena ([`percore_runtime::buf::arena_future`]), so calling a handler allocates
//! nothing on the heap. The arena is reset after the response is encoded.
//!
//! Middleware ([`Middleware`]) runs before the handler (and may answer instead of it) and after it
//! (and may change the response). Both hooks are synchronous: they inspect and decorate; anything
//! that must wait belongs in a handler.

use std::{future::Future, rc::Rc};

use bumpalo::Bump;
use percore_runtime::buf::{ArenaFuture, arena_future};

use crate::{
    body::BodyReader,
    http::{Header, RequestHead},
};

/// Path parameters matched by the router (`/kv/{key}` gives `key`).
pub type Params<'r> = matchit::Params<'r, 'r>;

/// One request, borrowed from the connection's receive buffer and the request arena.
pub struct Request<'r> {
    /// The parsed head (method, target, headers, framing).
    pub head: RequestHead<'r, 'r>,
    /// Path parameters.
    pub params: Params<'r>,
    /// The whole body (read up to the configured limit before the handler runs); empty for a
    /// handler that streams its body (see [`Handler::streams_body`]).
    pub body: &'r [u8],
    /// The body as it arrives, for a handler that streams it.
    pub body_reader: Option<&'r BodyReader<'r>>,
    /// Scratch memory for this request; reset after the response is written.
    pub arena: &'r Bump,
    /// The shard serving the request.
    pub shard: usize,
}

impl<'r> Request<'r> {
    /// The method token (`GET`).
    pub fn method(&self) -> &'r str {
        self.head.method
    }
    /// The path, still percent-encoded.
    pub fn path(&self) -> &'r str {
        self.head.path
    }
    /// The query string after `?`.
    pub fn query(&self) -> Option<&'r str> {
        self.head.query
    }
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'r [u8]> {
        self.head.header(name)
    }
    /// All headers in order.
    pub fn headers(&self) -> &'r [Header<'r>] {
        self.head.headers
    }
    /// A path parameter.
    pub fn param(&self, name: &str) -> Option<&'r str> {
        self.params.get(name)
    }
    /// Boxes an async block in this request's arena: what [`Handler::call`] returns.
    pub fn reply<F>(&self, fut: F) -> HandlerFuture<'r>
    where
        F: Future<Output = Response<'r>> + 'r,
    {
        arena_future(self.arena, fut)
    }
}

/// A response body.
#[derive(Clone, Copy, Debug)]
pub enum Body<'r> {
    /// No body (`Content-Length: 0`).
    Empty,
    /// Bytes in the arena, the request, or static memory.
    Bytes(&'r [u8]),
}

/// At most this many headers per response besides the ones the server writes itself.
pub const MAX_RESPONSE_HEADERS: usize = 16;

/// A response under construction. Headers are kept in a small fixed array (no allocation).
pub struct Response<'r> {
    /// Status code.
    pub status: u16,
    headers: [(&'r str, &'r [u8]); MAX_RESPONSE_HEADERS],
    n_headers: usize,
    /// The body.
    pub body: Body<'r>,
    /// Close the connection after this response.
    pub close: bool,
}

impl<'r> Response<'r> {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: [("", &[]); MAX_RESPONSE_HEADERS],
            n_headers: 0,
            body: Body::Empty,
            close: false,
        }
    }
    /// `200` with a `text/plain` body.
    pub fn text(body: &'r [u8]) -> Self {
        Response::new(200)
            .with_header("content-type", b"text/plain")
            .with_body(body)
    }
    /// `200` with an `application/json` body.
    pub fn json(body: &'r [u8]) -> Self {
        Response::new(200)
            .with_header("content-type", b"application/json")
            .with_body(body)
    }
    /// A short `text/plain` response with `status` and `msg` as body.
    pub fn status_text(status: u16, msg: &'r [u8]) -> Self {
        Response::new(status)
            .with_header("content-type", b"text/plain")
            .with_body(msg)
    }
    /// Sets the body.
    pub fn with_body(mut self, body: &'r [u8]) -> Self {
        self.body = Body::Bytes(body);
        self
    }
    /// Adds a header (ignored past [`MAX_RESPONSE_HEADERS`]; the encoder rejects invalid ones
    /// with a 500 rather than sending them).
    pub fn with_header(mut self, name: &'r str, value: &'r [u8]) -> Self {
        self.add_header(name, value);
        self
    }
    /// Adds a header in place.
    pub fn add_header(&mut self, name: &'r str, value: &'r [u8]) {
        if self.n_headers < MAX_RESPONSE_HEADERS {
            self.headers[self.n_headers] = (name, value);
            self.n_headers += 1;
        }
    }
    /// The headers added so far.
    pub fn headers(&self) -> &[(&'r str, &'r [u8])] {
        &self.headers[..self.n_headers]
    }
    /// The body bytes.
    pub fn body_bytes(&self) -> &'r [u8] {
        match self.body {
            Body::Empty => b"",
            Body::Bytes(b) => b,
        }
    }
}

/// What a handler returns: its future, boxed in the request arena.
pub type HandlerFuture<'r> = ArenaFuture<'r, Response<'r>>;

/// Application code that answers requests. Implement it for a struct holding shard-local state
/// (`Rc`, `RefCell`), or wrap a plain function with [`handler_fn`].
pub trait Handler: 'static {
    /// Answers `req`. Use [`Request::reply`] to box an `async` block.
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r>;

    /// True for a handler that reads the request body itself, as it arrives, through
    /// [`Request::body_reader`]: it runs as soon as the head is parsed, and the server does not
    /// buffer the body for it. Whatever it leaves unread is discarded before the response is
    /// sent. The default (false) hands the handler the whole body in [`Request::body`].
    fn streams_body(&self) -> bool {
        false
    }
}

/// A synchronous handler made from a function.
pub struct FnHandler<F>(F);

/// Wraps `f(&Request) -> Response` as a [`Handler`].
pub fn handler_fn<F>(f: F) -> Rc<dyn Handler>
where
    F: for<'r> Fn(&'r Request<'r>) -> Response<'r> + 'static,
{
    Rc::new(FnHandler(f))
}

impl<F> Handler for FnHandler<F>
where
    F: for<'r> Fn(&'r Request<'r>) -> Response<'r> + 'static,
{
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        let resp = (self.0)(req);
        req.reply(std::future::ready(resp))
    }
}

/// Runs around handlers: `on_head` and `before` may answer instead of the handler (auth, rate
/// limits), `after` may change the response (headers, logging).
pub trait Middleware: 'static {
    /// Called once per request on its head alone, before its body is asked for or read
    /// (`req.body` is empty); `Some` answers instead of the handler. For checks that need only
    /// the head: an `Expect: 100-continue` upload refused here is answered at once, without
    /// its body being sent.
    fn on_head<'r>(&self, _req: &Request<'r>) -> Option<Response<'r>> {
        None
    }
    /// Called before the handler, after every `on_head`, with the whole request (the body in
    /// `req.body`, or `req.body_reader` for a handler that streams it); `Some` short-circuits
    /// the handler.
    fn before<'r>(&self, _req: &Request<'r>) -> Option<Response<'r>> {
        None
    }
    /// Called after the handler (or after a short-circuit) with the response about to be sent.
    fn after<'r>(&self, _req: &Request<'r>, _resp: &mut Response<'r>) {}
}

/// Middleware that adds fixed headers to every response.
pub struct AddHeaders {
    headers: Vec<(&'static str, &'static [u8])>,
}

impl AddHeaders {
    /// Adds each `(name, value)`.
    pub fn new(headers: Vec<(&'static str, &'static [u8])>) -> Self {
        AddHeaders { headers }
    }
}

impl Middleware for AddHeaders {
    fn after<'r>(&self, _req: &Request<'r>, resp: &mut Response<'r>) {
        for (n, v) in &self.headers {
            resp.add_header(n, v);
        }
    }
}

/// Middleware that requires `Authorization: Bearer <token>`; answers 401 otherwise.
pub struct BearerAuth {
    expected: Vec<u8>,
}

impl BearerAuth {
    /// Accepts exactly `token`.
    pub fn new(token: &str) -> Self {
        BearerAuth {
            expected: format!("Bearer {token}").into_bytes(),
        }
    }
}

impl Middleware for BearerAuth {
    fn on_head<'r>(&self, req: &Request<'r>) -> Option<Response<'r>> {
        match req.header("authorization") {
            Some(v) if constant_time_eq(v, &self.expected) => None,
            _ => Some(
                Response::status_text(401, b"unauthorized\n")
                    .with_header("www-authenticate", b"Bearer"),
            ),
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_headers_are_bounded_and_kept_in_order() {
        let mut r = Response::text(b"x");
        for _ in 0..40 {
            r.add_header("x-a", b"1");
        }
        assert_eq!(r.headers().len(), MAX_RESPONSE_HEADERS);
        assert_eq!(r.headers()[0], ("content-type", &b"text/plain"[..]));
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
