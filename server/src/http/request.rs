//! HTTP/1.x request-head parser and validator (RFC 9112 §2-§6, RFC 9110).
//!
//! Owns: turning the bytes of one request head into a [`RequestHead`] whose
//! fields borrow from the input buffer, with message framing ([`BodyKind`]),
//! persistence (`keep_alive`), `Expect: 100-continue` and the target host
//! computed exactly once; and the byte classes (`tchar`, field-value bytes)
//! shared with the chunked decoder.
//!
//! Invariants:
//! * No allocation. Header fields go into the caller's `[httparse::Header]`
//!   array; every `&str`/`&[u8]` returned points into `buf`.
//! * A `Complete` result means the head is syntactically valid per RFC 9112
//!   with the strict choices below, its framing is unambiguous, and it is
//!   within every [`Limits`] bound. Anything else is an [`Error`] whose
//!   `status()` is the answer to send (then close the connection).
//! * `Partial` is only returned while no limit is already exceeded: a request
//!   line longer than `max_request_line` fails with 414 and a head longer than
//!   `max_head` with 431 as soon as the bytes so far prove it, so the caller
//!   never buffers more than those limits.
//! * Results do not depend on how the input was split across reads: for a
//!   valid head every prefix gives `Partial` and the whole gives `Complete`.
//!
//! Strict choices (and the httparse 1.10 leniencies guarded against):
//! * Bare LF line endings: httparse accepts `\n` alone everywhere (request
//!   line, fields, final empty line, leading empty lines). Rejected (400):
//!   after httparse accepts a head, every CR in it is known to be followed by
//!   LF, so "no bare LF" is checked as `count(CR) == count(LF)`.
//! * Leading empty lines: RFC 9112 §2.2 says a server SHOULD ignore at least
//!   one CRLF before the request line. httparse skips any number of CRLF/LF;
//!   we keep that for CRLF (they count toward `max_head`), bare LF is 400.
//!   Input made only of empty lines is no head at all ([`only_empty_lines`]):
//!   the connection layer drops it and stays idle (some clients send a CRLF
//!   after a POST body).
//! * obs-fold, whitespace between field name and colon, whitespace before the
//!   first field: httparse's request defaults already reject them
//!   (`allow_obsolete_multiline_headers_in_requests` does not exist, the
//!   request path hard-codes `false`; `allow_space_before_first_header_name`
//!   and `ignore_invalid_headers_in_requests` default to false and we never
//!   set them). Covered by tests so an httparse upgrade cannot loosen them.
//! * Field values: httparse rejects NUL, CR/LF inside values, DEL and every
//!   CTL except HTAB, and allows obs-text (0x80-0xFF) as RFC 9110 §5.5 does.
//! * Request line: httparse allows a single SP only (we never enable
//!   `allow_multiple_spaces_in_request_line_delimiters`), rejects HTAB, and
//!   accepts any UTF-8 (non-ASCII) and `#` in the target. We reject
//!   non-ASCII, `#` (a fragment is never sent) and malformed `%XX`. We accept
//!   the RFC 3986 "unwise" characters `" < > \ ^ ` { | }` as nginx and hyper
//!   do, because real clients send them unencoded in query strings.
//! * HTTP version: httparse only knows `HTTP/1.0` and `HTTP/1.1`; other
//!   well-formed `HTTP/x.y` (and `HTTP/x`, e.g. `HTTP/3`) are
//!   `UnsupportedVersion` (505), except that the connection layer parses
//!   `HTTP/1.2`..`HTTP/1.9` again as `HTTP/1.1` ([`later_minor_version`]),
//!   malformed versions 400.
//! * Content-Length: exactly `1*DIGIT` (leading zeros allowed), fits in u64,
//!   one field line only. Repeated lines or lists are rejected even when the
//!   values are equal (`5, 5`): RFC 9110 §8.6 allows either; strict is safer.
//! * Transfer-Encoding: rejected in HTTP/1.0 (400), together with
//!   Content-Length (400), empty list elements (400), `chunked` repeated or
//!   not last (400), final coding not `chunked` (400, also when it is an
//!   unknown coding: RFC 9112 §6.3). Unknown codings before `chunked` are 501;
//!   known ones (`gzip, chunked`) are 501 as well because this server does not
//!   decode transfer codings other than chunked.
//! * Host: exactly one field line for HTTP/1.1 (0 -> 400, >1 -> 400, also for
//!   HTTP/1.0 when present). The value must be `uri-host [":" port]` with a
//!   port of at most 5 digits; userinfo (`@`), `/`, spaces, non-ASCII -> 400.
//!   An empty value is allowed (RFC 9110 §7.2). For absolute-form targets
//!   `host` is the target's authority (RFC 9112 §3.2.2), the Host field is
//!   still required and validated.
//! * Expect: only `100-continue` (case-insensitive) in HTTP/1.1; any other
//!   expectation is 417. In HTTP/1.0 Expect is ignored (RFC 9110 §10.1.1).
//! * Connection options are a comma list of case-insensitive tokens; unknown
//!   or malformed options are ignored (they do not affect framing).
//!
//! Must not: allocate, decode percent-encoding or normalize paths (routing's
//! job), reply 405/501 for methods (the server's job), read body bytes.

use std::mem::MaybeUninit;

use super::error::Error;
use super::limits::Limits;
pub use httparse::Header;

/// A slot [`parse_head`] may fill with one header field; slots past the head's last field are
/// never written.
pub type HeaderSlot<'b> = MaybeUninit<Header<'b>>;

/// Result of parsing a possibly incomplete request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// The head is complete: the value and the number of bytes of `buf` it
    /// used (the body, if any, starts at that offset).
    Complete(T, usize),
    /// More bytes are needed; call again with the same prefix plus more.
    Partial,
}

/// How the request body is framed (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (no framing header, or `Content-Length: 0`).
    None,
    /// Exactly this many bytes follow the head (never 0, never over
    /// `Limits::max_body`).
    Length(u64),
    /// `Transfer-Encoding: chunked`; decode with `ChunkedDecoder`.
    Chunked,
}

/// The form of the request-target (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query` (path taken from it).
    Absolute,
    /// `host:port`, only with CONNECT.
    Authority,
    /// `*`, only with OPTIONS.
    Asterisk,
}

/// A parsed, validated request head borrowing from the input buffer (`'b`)
/// and the caller's header array (`'h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'h, 'b> {
    /// Method token, case-sensitive as received (e.g. `GET`).
    pub method: &'b str,
    /// The raw request-target.
    pub target: &'b str,
    /// Which form the target has.
    pub form: TargetForm,
    /// Path: target up to `?` (origin-form); the path of an absolute-form
    /// target (`/` if empty); the authority for authority-form; `*` for
    /// asterisk-form. Still percent-encoded.
    pub path: &'b str,
    /// Everything after the first `?` (may be empty), `None` without `?`.
    pub query: Option<&'b str>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// All header fields in order, values with surrounding OWS trimmed.
    pub headers: &'h [Header<'b>],
    /// Message body framing.
    pub body: BodyKind,
    /// Whether the connection may stay open after this exchange.
    pub keep_alive: bool,
    /// HTTP/1.1 `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Validated host (`uri-host[:port]`): the authority of an absolute- or
    /// authority-form target, else the Host field. `None` only for HTTP/1.0
    /// without Host.
    pub host: Option<&'b str>,
}

impl<'h, 'b> RequestHead<'h, 'b> {
    /// Value of the first field named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Values of every field named `name` (ASCII case-insensitive), in order.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// RFC 9110 `tchar`.
#[inline]
pub(super) const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~'
        | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// RFC 9110 field-value byte (`field-vchar / SP / HTAB`, obs-text included).
#[inline]
pub(super) const fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// [`is_unreserved_or_sub_delim`] as a table, for the per-request Host check.
static REG_NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_unreserved_or_sub_delim(b as u8);
        b += 1;
    }
    t
};

#[inline]
const fn is_unreserved_or_sub_delim(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
}

#[inline]
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parse one request head from the start of `buf`.
///
/// `headers` receives the fields (build it from [`super::HEADER_SLOT`]); at
/// most `min(headers.len(), limits.max_headers)` are accepted, more is 431.
/// On `Complete(head, n)`, `buf[n..]` is the body / the next request.
/// `Partial` means call again with more bytes (the same prefix); it is never
/// returned once a limit is already exceeded.
pub fn parse_head<'h, 'b>(
    buf: &'b [u8],
    limits: &Limits,
    headers: &'h mut [HeaderSlot<'b>],
) -> Result<Status<RequestHead<'h, 'b>>, Error> {
    let max = headers.len().min(limits.max_headers);
    // The slots are filled only as far as the head has fields: a request never pays for
    // initialising all `max_headers` of them (3.2 KB at the default 100).
    let mut req = httparse::Request::new(&mut []);
    let consumed = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut headers[..max],
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, limits)?;
            return Ok(Status::Partial);
        }
        Err(e) => return Err(map_httparse_error(e, buf)),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    // httparse sets all three on Complete; map a broken invariant to 400
    // rather than panic.
    let (Some(method), Some(target), Some(version)) = (method, path, version) else {
        return Err(Error::InvalidVersion);
    };
    let head = &buf[..consumed];
    if method.len() + target.len() + 10 > limits.max_request_line {
        return Err(Error::UriTooLong);
    }
    if consumed > limits.max_head {
        return Err(Error::HeadTooLarge);
    }
    // See module doc: httparse guarantees CR is always followed by LF in an
    // accepted head, so equal counts mean there is no bare LF.
    if !cr_lf_balanced(head) {
        return Err(Error::InvalidLineEnding);
    }
    let t = split_target(method, target)?;
    let sem = semantics(headers, version, limits)?;
    let host = match t.authority {
        Some(a) => Some(a),
        None => sem.host,
    };
    Ok(Status::Complete(
        RequestHead {
            method,
            target,
            form: t.form,
            path: t.path,
            query: t.query,
            version,
            headers,
            body: sem.body,
            keep_alive: sem.keep_alive,
            expect_continue: sem.expect_continue,
            host,
        },
        consumed,
    ))
}

/// `count(LF) == count(CR)`. Written as fixed 64-byte blocks with an `i8`
/// accumulator (|sum| <= 64 per block) so it vectorizes: ~6x faster than
/// two `filter().count()` passes, which matters at ~300-500 bytes per head.
fn cr_lf_balanced(head: &[u8]) -> bool {
    let mut acc: i64 = 0;
    let mut blocks = head.chunks_exact(64);
    for block in &mut blocks {
        let mut s: i8 = 0;
        for &b in block {
            s = s
                .wrapping_add(i8::from(b == b'\n'))
                .wrapping_sub(i8::from(b == b'\r'));
        }
        acc += i64::from(s);
    }
    for &b in blocks.remainder() {
        acc += i64::from(b == b'\n') - i64::from(b == b'\r');
    }
    acc == 0
}

/// Whether `buf` is nothing but complete empty lines (`CRLF` pairs), as left behind by a client
/// that ends a request with an extra CRLF (RFC 9112 §2.2 says to ignore them). False for a lone
/// CR or a bare LF: those are parsed as the start of a head.
pub fn only_empty_lines(buf: &[u8]) -> bool {
    buf.len().is_multiple_of(2) && buf.chunks_exact(2).all(|p| p == b"\r\n")
}

/// The method token of a head that may start with empty lines: what a failed head is answered
/// as (a HEAD request's error response has no body).
pub fn starts_with_method(buf: &[u8], method: &[u8]) -> bool {
    buf[leading_empty(buf)..]
        .strip_prefix(method)
        .is_some_and(|rest| rest.first() == Some(&b' '))
}

/// Where the minor digit of an `HTTP/1.x` request line with x > 1 is, for a head that
/// [`parse_head`] answered with [`Error::UnsupportedVersion`]. RFC 9110 §2.5: a recipient of a
/// higher minor version of a major version it implements SHOULD process the message as the
/// highest minor version it knows; the caller parses a copy with that digit made `1`.
pub fn later_minor_version(buf: &[u8]) -> Option<usize> {
    let start = leading_empty(buf);
    let line_end = buf[start..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(buf.len(), |i| start + i);
    let line = &buf[start..line_end];
    match line {
        [
            ..,
            b' ',
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            b'2'..=b'9',
        ] => Some(line_end - 1),
        _ => None,
    }
}

/// Number of leading CR/LF bytes (empty lines before the request line).
fn leading_empty(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// Limit checks on an incomplete head (414 / 431 as early as provable).
fn check_partial(buf: &[u8], limits: &Limits) -> Result<(), Error> {
    let rest = &buf[leading_empty(buf)..];
    match rest.iter().position(|&b| b == b'\n') {
        None => {
            // A final CR may be the first half of the line's CRLF.
            let line = rest.strip_suffix(b"\r").unwrap_or(rest);
            if line.len() > limits.max_request_line {
                return Err(Error::UriTooLong);
            }
        }
        Some(lf) => {
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > limits.max_request_line {
                return Err(Error::UriTooLong);
            }
        }
    }
    if buf.len() > limits.max_head {
        return Err(Error::HeadTooLarge);
    }
    Ok(())
}

fn map_httparse_error(e: httparse::Error, buf: &[u8]) -> Error {
    match e {
        httparse::Error::HeaderName => Error::InvalidHeaderName,
        httparse::Error::HeaderValue => Error::InvalidHeaderValue,
        httparse::Error::TooManyHeaders => Error::TooManyHeaders,
        // Token, Version, NewLine (and the response-only Status): find
        // which part of the request line (or a later line ending) is wrong.
        _ => classify_line_error(buf),
    }
}

/// Called only when httparse rejected `buf`; says why, as precisely as the
/// request line allows.
fn classify_line_error(buf: &[u8]) -> Error {
    let lead = leading_empty(buf);
    // e.g. "\rX": CR not followed by LF among the leading empty lines.
    if (0..lead).any(|i| buf[i] == b'\r' && buf.get(i + 1) != Some(&b'\n')) {
        return Error::InvalidLineEnding;
    }
    let mut rest = &buf[lead..];
    // method
    let m = rest
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(rest.len());
    if m == 0 || rest.get(m).is_some_and(|&b| b != b' ') {
        return Error::InvalidMethod;
    }
    rest = rest.get(m + 1..).unwrap_or(&[]);
    // target: what httparse accepts (VCHAR or obs-text)
    let t = rest
        .iter()
        .position(|&b| !(b > 0x20 && b != 0x7f))
        .unwrap_or(rest.len());
    if t == 0 || rest.get(t).is_some_and(|&b| b != b' ') || !rest[..t].is_ascii() {
        return Error::InvalidTarget;
    }
    rest = rest.get(t + 1..).unwrap_or(&[]);
    // version: "HTTP/" DIGIT [ "." DIGIT ]
    let Some(v) = rest.strip_prefix(b"HTTP/") else {
        return Error::InvalidVersion;
    };
    let (major, after) = match v {
        [d @ b'0'..=b'9', after @ ..] => (*d, after),
        _ => return Error::InvalidVersion,
    };
    let (minor, after) = match after {
        [b'.', d @ b'0'..=b'9', after @ ..] => (Some(*d), after),
        [b'.'] => return Error::InvalidVersion,
        _ => (None, after),
    };
    let well_terminated = matches!(after, [] | [b'\r', ..] | [b'\n', ..]);
    if !well_terminated {
        return Error::InvalidVersion;
    }
    match (major, minor) {
        // "HTTP/1" alone is not an HTTP-version.
        (b'1', None) => return Error::InvalidVersion,
        (b'1', Some(b'0' | b'1')) => {}
        // HTTP/2.0, HTTP/1.2, HTTP/3, HTTP/0.9 ...
        _ => return Error::UnsupportedVersion,
    }
    // Request line fine: the error is a CR not followed by LF somewhere.
    Error::InvalidLineEnding
}

struct Target<'b> {
    form: TargetForm,
    path: &'b str,
    query: Option<&'b str>,
    authority: Option<&'b str>,
}

#[inline]
fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    }
}

/// Printable ASCII except `#`, with valid `%XX` escapes.
fn valid_target_bytes(t: &[u8]) -> bool {
    let mut i = 0;
    while i < t.len() {
        match t[i] {
            b'%' => {
                let ok = t.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && t.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                if !ok {
                    return false;
                }
                i += 3;
            }
            b'#' => return false,
            0x21..=0x7e => i += 1,
            _ => return false,
        }
    }
    true
}

fn split_target<'b>(method: &str, target: &'b str) -> Result<Target<'b>, Error> {
    let bytes = target.as_bytes();
    if bytes.is_empty() || !valid_target_bytes(bytes) {
        return Err(Error::InvalidTarget);
    }
    if method == "CONNECT" {
        // authority-form = uri-host ":" port, port mandatory.
        if !valid_host(bytes) || !has_port(bytes) {
            return Err(Error::InvalidTarget);
        }
        return Ok(Target {
            form: TargetForm::Authority,
            path: target,
            query: None,
            authority: Some(target),
        });
    }
    if bytes[0] == b'/' {
        let (path, query) = split_query(target);
        return Ok(Target {
            form: TargetForm::Origin,
            path,
            query,
            authority: None,
        });
    }
    if target == "*" {
        if method != "OPTIONS" {
            return Err(Error::InvalidTarget);
        }
        return Ok(Target {
            form: TargetForm::Asterisk,
            path: target,
            query: None,
            authority: None,
        });
    }
    // absolute-form: only the http and https schemes, non-empty authority.
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(Error::InvalidTarget);
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(Error::InvalidTarget);
    }
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(auth_end);
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return Err(Error::InvalidTarget);
    }
    let (path, query) = split_query(path_query);
    Ok(Target {
        form: TargetForm::Absolute,
        path: if path.is_empty() { "/" } else { path },
        query,
        authority: Some(authority),
    })
}

fn has_port(h: &[u8]) -> bool {
    let after_host = if h.first() == Some(&b'[') {
        h.iter().position(|&b| b == b']').map_or(h.len(), |i| i + 1)
    } else {
        h.iter().position(|&b| b == b':').unwrap_or(h.len())
    };
    h.len() > after_host + 1
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2), port at most 5 digits and at
/// most 65535. The empty value is valid (RFC 9110 §7.2); an empty host with
/// a port is not. No userinfo, no path, ASCII only.
fn valid_host(h: &[u8]) -> bool {
    if h.is_empty() {
        return true;
    }
    let port = if h[0] == b'[' {
        // IP-literal: IPv6address / IPvFuture; loosely validated by charset.
        let Some(close) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &h[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| is_unreserved_or_sub_delim(b) || b == b':')
        {
            return false;
        }
        match &h[close + 1..] {
            [] => return true,
            [b':', port @ ..] => port,
            _ => return false,
        }
    } else {
        // reg-name (or IPv4address, a subset) up to the first ':', in one pass.
        let mut i = 0;
        while i < h.len() {
            let b = h[i];
            if REG_NAME_BYTE[b as usize] {
                i += 1;
            } else if b == b'%' {
                let ok = h.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && h.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                if !ok {
                    return false;
                }
                i += 3;
            } else if b == b':' {
                break;
            } else {
                return false;
            }
        }
        if i == 0 {
            return false;
        }
        match h.get(i + 1..) {
            None => return true,
            Some(port) => port,
        }
    };
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
            <= 65535
}

struct Semantics<'b> {
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    host: Option<&'b str>,
}

/// Iterate the non-empty, OWS-trimmed elements of a comma list.
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

#[derive(Default)]
struct TeState {
    seen: bool,
    chunked_count: u32,
    last_is_chunked: bool,
    unknown: bool,
    other_known: bool,
}

impl TeState {
    fn add(&mut self, value: &[u8]) -> Result<(), Error> {
        self.seen = true;
        for elem in value.split(|&b| b == b',') {
            let elem = trim_ows(elem);
            let (name, params) = match elem.iter().position(|&b| b == b';') {
                Some(i) => (trim_ows(&elem[..i]), Some(&elem[i..])),
                None => (elem, None),
            };
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(Error::InvalidTransferEncoding);
            }
            if name.eq_ignore_ascii_case(b"chunked") {
                if params.is_some() {
                    return Err(Error::InvalidTransferEncoding);
                }
                self.chunked_count += 1;
                self.last_is_chunked = true;
                continue;
            }
            self.last_is_chunked = false;
            let known = [
                &b"gzip"[..],
                b"x-gzip",
                b"deflate",
                b"compress",
                b"x-compress",
                b"identity",
            ]
            .iter()
            .any(|k| name.eq_ignore_ascii_case(k));
            if known {
                self.other_known = true;
            } else {
                self.unknown = true;
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<BodyKind, Error> {
        // RFC 9112 §6.3: a final coding other than chunked leaves the body's length unknown,
        // which MUST be a 400, whatever the codings are; only then is an unknown one a 501.
        if self.chunked_count != 1 || !self.last_is_chunked {
            return Err(Error::InvalidTransferEncoding);
        }
        if self.unknown {
            return Err(Error::UnsupportedTransferCoding);
        }
        if self.other_known {
            return Err(Error::UnsupportedTransferCoding);
        }
        Ok(BodyKind::Chunked)
    }
}

fn parse_content_length(v: &[u8]) -> Result<u64, Error> {
    if v.is_empty() {
        return Err(Error::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(Error::InvalidContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Error::InvalidContentLength)?;
    }
    Ok(n)
}

fn semantics<'b>(
    headers: &[Header<'b>],
    version: u8,
    limits: &Limits,
) -> Result<Semantics<'b>, Error> {
    let mut host: Option<&'b [u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut te = TeState::default();
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host.is_some() {
                    return Err(Error::DuplicateHost);
                }
                host = Some(value);
            }
            // HTTP/1.0: Expect is ignored (RFC 9110 §10.1.1).
            // A list (`#expectation`): an empty one expects nothing.
            6 if version == 1 && name.eq_ignore_ascii_case(b"expect") => {
                for e in list_elements(value).filter(|e| !e.is_empty()) {
                    if !e.eq_ignore_ascii_case(b"100-continue") {
                        return Err(Error::UnsupportedExpectation);
                    }
                    expect_continue = true;
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for opt in list_elements(value) {
                    if opt.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return Err(Error::DuplicateContentLength);
                }
                content_length = Some(parse_content_length(value)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if version == 0 {
                    return Err(Error::TransferEncodingInHttp10);
                }
                te.add(value)?;
            }
            _ => {}
        }
    }
    let body = match (te.seen, content_length) {
        (true, Some(_)) => return Err(Error::ContentLengthWithTransferEncoding),
        (true, None) => te.finish()?,
        (false, Some(0)) | (false, None) => BodyKind::None,
        (false, Some(n)) if n > limits.max_body => return Err(Error::BodyTooLarge),
        (false, Some(n)) => BodyKind::Length(n),
    };
    let host = match host {
        None if version == 1 => return Err(Error::MissingHost),
        None => None,
        Some(h) => {
            if !valid_host(h) {
                return Err(Error::InvalidHost);
            }
            // valid_host only admits ASCII, so this cannot fail.
            Some(core::str::from_utf8(h).map_err(|_| Error::InvalidHost)?)
        }
    };
    let keep_alive = !close && (version == 1 || keep_alive_token);
    Ok(Semantics {
        body,
        keep_alive,
        expect_continue,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::{
        BodyKind, Error, HeaderSlot, Limits, MaybeUninit, RequestHead, Status, TargetForm,
        parse_head,
    };

    const EMPTY: HeaderSlot<'static> = MaybeUninit::uninit();

    fn parse_with(input: &[u8], limits: &Limits) -> Result<Option<usize>, Error> {
        let mut h = [EMPTY; 128];
        match parse_head(input, limits, &mut h)? {
            Status::Complete(_, n) => Ok(Some(n)),
            Status::Partial => Ok(None),
        }
    }

    fn with_head(input: &[u8], f: impl FnOnce(&RequestHead<'_, '_>, usize)) {
        let mut h = [EMPTY; 128];
        match parse_head(input, &Limits::default(), &mut h) {
            Ok(Status::Complete(head, n)) => f(&head, n),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    /// (description, request head, expected error)
    const REJECT: &[(&str, &[u8], Error)] = &[
        // ---- framing headers
        ("CL + TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Error::ContentLengthWithTransferEncoding),
        ("TE + CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Error::ContentLengthWithTransferEncoding),
        ("CL plus sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Error::InvalidContentLength),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Error::InvalidContentLength),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", Error::InvalidContentLength),
        ("CL inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", Error::InvalidContentLength),
        ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", Error::InvalidContentLength),
        ("CL blank", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:   \r\n\r\n", Error::InvalidContentLength),
        ("CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", Error::InvalidContentLength),
        ("CL list equal", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Error::InvalidContentLength),
        ("CL list differing", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,6\r\n\r\n", Error::InvalidContentLength),
        ("CL decimal", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1.0\r\n\r\n", Error::InvalidContentLength),
        ("CL dup equal", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Error::DuplicateContentLength),
        ("CL dup differing", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", Error::DuplicateContentLength),
        ("TE gzip only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE chunked twice lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE chunked not last lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE chunked params", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE empty element", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE trailing comma", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE non-token", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun ked\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE unknown", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE unknown then chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n", Error::UnsupportedTransferCoding),
        ("TE gzip then chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Error::UnsupportedTransferCoding),
        ("TE chunkedx", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n", Error::InvalidTransferEncoding),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Error::TransferEncodingInHttp10),
        ("body too large", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", Error::BodyTooLarge),
        // ---- field syntax
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", Error::InvalidHeaderName),
        ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\tb\r\n\r\n", Error::InvalidHeaderName),
        ("space before first field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", Error::InvalidHeaderName),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Error::InvalidHeaderName),
        ("tab before colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", Error::InvalidHeaderName),
        ("TE space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", Error::InvalidHeaderName),
        ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nfoo\r\n\r\n", Error::InvalidHeaderName),
        ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", Error::InvalidHeaderName),
        ("non-token name", b"GET / HTTP/1.1\r\nHost: a\r\nX(A): x\r\n\r\n", Error::InvalidHeaderName),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Error::InvalidHeaderValue),
        ("SOH in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", Error::InvalidHeaderValue),
        ("US in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x1fb\r\n\r\n", Error::InvalidHeaderValue),
        ("DEL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", Error::InvalidHeaderValue),
        ("DEL in long value", b"GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x7fb\r\n\r\n", Error::InvalidHeaderValue),
        ("NUL in long value", b"GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\0b\r\n\r\n", Error::InvalidHeaderValue),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", Error::InvalidHeaderValue),
        // ---- line endings
        ("bare LF request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", Error::InvalidLineEnding),
        ("bare LF field", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", Error::InvalidLineEnding),
        ("bare LF end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", Error::InvalidLineEnding),
        ("bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n", Error::InvalidLineEnding),
        ("bare LF leading", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidLineEnding),
        ("bare LF empty field", b"GET / HTTP/1.1\r\nHost: a\r\nX:\n\r\n", Error::InvalidLineEnding),
        ("CR without LF after version", b"GET / HTTP/1.1\rHost: a\r\n\r\n", Error::InvalidLineEnding),
        ("CR without LF leading", b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidLineEnding),
        ("CR without LF at end", b"GET / HTTP/1.1\r\nHost: a\r\n\rX", Error::InvalidLineEnding),
        // ---- Host
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n", Error::MissingHost),
        ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", Error::DuplicateHost),
        ("duplicate Host 1.0", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", Error::DuplicateHost),
        ("Host space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Error::InvalidHost),
        ("Host slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Error::InvalidHost),
        ("Host userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Error::InvalidHost),
        ("Host port too big", b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", Error::InvalidHost),
        ("Host port too long", b"GET / HTTP/1.1\r\nHost: a:000080\r\n\r\n", Error::InvalidHost),
        ("Host port alpha", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", Error::InvalidHost),
        ("Host two colons", b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", Error::InvalidHost),
        ("Host unclosed v6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Error::InvalidHost),
        ("Host v6 junk after", b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", Error::InvalidHost),
        ("Host empty v6", b"GET / HTTP/1.1\r\nHost: []\r\n\r\n", Error::InvalidHost),
        ("Host port only", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", Error::InvalidHost),
        ("Host non-ascii", b"GET / HTTP/1.1\r\nHost: \xc3\xa9.com\r\n\r\n", Error::InvalidHost),
        ("Host bad pct", b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", Error::InvalidHost),
        ("Host backslash", b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", Error::InvalidHost),
        // ---- method
        ("method with @", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidMethod),
        ("method with paren", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidMethod),
        ("method tab", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidMethod),
        ("empty method", b" / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidMethod),
        ("method non-ascii", b"G\xc3\xa9T / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidMethod),
        // ---- target
        ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("tab after target", b"GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("asterisk with GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("bad pct", b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("short pct", b"GET /a%4 HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("non-ascii target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("non-utf8 target", b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("CTL in target", b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("DEL in target", b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("relative target", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("query only", b"GET ?a=b HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("authority-form with GET", b"GET a.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("CONNECT origin-form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("CONNECT without port", b"CONNECT a.com HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("CONNECT userinfo", b"CONNECT u@a.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("absolute ftp", b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("absolute empty authority", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("absolute userinfo", b"GET http://u:p@a/x HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("no target", b"GET HTTP/1.1\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        // ---- version
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Error::UnsupportedVersion),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Error::UnsupportedVersion),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Error::UnsupportedVersion),
        ("HTTP/3", b"GET / HTTP/3\r\nHost: a\r\n\r\n", Error::UnsupportedVersion),
        ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", Error::UnsupportedVersion),
        ("HTTP/1 alone", b"GET / HTTP/1\r\nHost: a\r\n\r\n", Error::InvalidVersion),
        ("HTTP/11", b"GET / HTTP/11\r\nHost: a\r\n\r\n", Error::InvalidVersion),
        ("HTTP/1.10", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", Error::InvalidVersion),
        ("lowercase http", b"GET / http/1.1\r\nHost: a\r\n\r\n", Error::InvalidVersion),
        ("trailing space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Error::InvalidVersion),
        ("no version", b"GET /\r\nHost: a\r\n\r\n", Error::InvalidTarget),
        ("garbage version", b"GET / FOO/1.1\r\nHost: a\r\n\r\n", Error::InvalidVersion),
        // ---- Expect
        ("Expect unknown", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", Error::UnsupportedExpectation),
        ("Expect list", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, foo\r\n\r\n", Error::UnsupportedExpectation),
    ];

    #[test]
    fn rejections_have_exact_error_and_status() {
        for (what, input, want) in REJECT {
            let got = parse_with(input, &Limits::default());
            assert_eq!(got, Err(*want), "{what}");
        }
    }

    #[test]
    fn rejection_statuses() {
        let status = |input: &[u8]| parse_with(input, &Limits::default()).unwrap_err().status();
        assert_eq!(status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n"),
            501
        );
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n"),
            417
        );
        for (what, input, want) in REJECT {
            assert_eq!(status(input), want.status(), "{what}");
        }
    }

    fn long_target(n: usize) -> Vec<u8> {
        let mut v = b"GET /".to_vec();
        v.resize(4 + n, b'a');
        v
    }

    #[test]
    fn uri_too_long_complete_and_partial() {
        let l = Limits::default();
        // exactly at the limit: method(3) + SP + target + SP + 8 = 8192
        let mut ok = long_target(8192 - 13);
        ok.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(parse_with(&ok, &l), Ok(Some(_))));
        let mut big = long_target(8192 - 12);
        let partial_line = big.clone();
        big.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(parse_with(&big, &l), Err(Error::UriTooLong));
        // request line complete but head not: 414 before the head ends
        assert_eq!(
            parse_with(&big[..big.len() - 4], &l),
            Err(Error::UriTooLong)
        );
        // no line end yet and already too long: fail early
        let mut t = partial_line;
        t.extend_from_slice(b"aaaaaaaaaa");
        assert_eq!(t.len(), 8194);
        assert_eq!(parse_with(&t, &l), Err(Error::UriTooLong));
        // a line of exactly the limit whose CR has arrived but not its LF
        let mut at_limit = long_target(8192 - 13);
        at_limit.extend_from_slice(b" HTTP/1.1\r");
        assert_eq!(parse_with(&at_limit, &l), Ok(None));
        at_limit.extend_from_slice(b"\nHost: a\r\n\r\n");
        assert!(matches!(parse_with(&at_limit, &l), Ok(Some(_))));
        // a shorter prefix is still Partial
        assert_eq!(parse_with(&t[..8000], &l), Ok(None));
        // configurable
        let small = Limits {
            max_request_line: 20,
            ..Limits::default()
        };
        assert_eq!(
            parse_with(b"GET /aaaaaaaaaaaaaaaaaaaa", &small),
            Err(Error::UriTooLong)
        );
        assert_eq!(
            parse_with(b"GET /aaaa HTTP/1.1\r\nHost: a\r\n\r\n", &small),
            Ok(Some(31))
        );
    }

    #[test]
    fn head_too_large_complete_and_partial() {
        let l = Limits {
            max_head: 100,
            ..Limits::default()
        };
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        req.resize(120, b'x');
        assert_eq!(parse_with(&req, &l), Err(Error::HeadTooLarge));
        assert_eq!(parse_with(&req[..100], &l), Ok(None));
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_with(&req, &l), Err(Error::HeadTooLarge));
        // default: 32 KiB of headers while partial
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        while big.len() <= 32 * 1024 {
            big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let mut h = [EMPTY; 1000];
        let lim = Limits {
            max_headers: 1000,
            ..Limits::default()
        };
        assert_eq!(parse_head(&big, &lim, &mut h), Err(Error::HeadTooLarge));
        // endless leading CRLFs are bounded too
        let crlf = b"\r\n".repeat(20 * 1024);
        assert_eq!(
            parse_with(&crlf, &Limits::default()),
            Err(Error::HeadTooLarge)
        );
    }

    #[test]
    fn too_many_headers() {
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..99 {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut ok = req.clone();
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(parse_with(&ok, &Limits::default()), Ok(Some(_))));
        req.extend_from_slice(b"X-100: v\r\n");
        // detected while still partial
        assert_eq!(
            parse_with(&req, &Limits::default()),
            Err(Error::TooManyHeaders)
        );
        req.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_with(&req, &Limits::default()),
            Err(Error::TooManyHeaders)
        );
        assert_eq!(Error::TooManyHeaders.status(), 431);
        // the caller's array length is a limit too
        let mut small = [EMPTY; 2];
        assert_eq!(
            parse_head(&req, &Limits::default(), &mut small),
            Err(Error::TooManyHeaders)
        );
    }

    #[test]
    fn body_limit_is_configurable_and_inclusive() {
        let l = Limits {
            max_body: 10,
            ..Limits::default()
        };
        with_head(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n",
            |h, _| {
                assert_eq!(h.body, BodyKind::Length(1024 * 1024));
            },
        );
        assert!(matches!(
            parse_with(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
                &l
            ),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_with(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
                &l
            ),
            Err(Error::BodyTooLarge)
        );
    }

    /// Valid heads, used by the accept and the split tests.
    const VALID: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET http://example.com HTTP/1.1\r\nHost: other\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab: a\tb\r\nX-Obs: \xe9t\xe9\r\n\r\n",
    ];

    #[test]
    fn accepted_forms() {
        with_head(VALID[0], |h, n| {
            assert_eq!(n, VALID[0].len());
            assert_eq!(
                (h.method, h.target, h.path, h.query),
                ("GET", "/", "/", None)
            );
            assert_eq!(h.form, TargetForm::Origin);
            assert_eq!(h.version, 1);
            assert_eq!(h.host, Some("example.com"));
            assert!(h.keep_alive && !h.expect_continue);
            assert_eq!(h.body, BodyKind::None);
        });
        with_head(VALID[1], |h, _| {
            assert_eq!((h.path, h.query), ("/a/b", Some("c=d&e")));
            assert_eq!(h.header("ACCEPT"), Some(&b"*/*"[..]));
            assert_eq!(h.header("x-missing"), None);
            assert_eq!(h.host, Some("example.com:8080"));
        });
        with_head(VALID[2], |h, n| {
            assert_eq!(h.body, BodyKind::Length(5));
            assert_eq!(&VALID[2][n..], b"hello");
        });
        with_head(VALID[3], |h, n| {
            assert_eq!(h.body, BodyKind::Chunked);
            assert!(VALID[3][n..].starts_with(b"5\r\n"));
        });
        with_head(VALID[4], |h, _| {
            assert_eq!(h.form, TargetForm::Absolute);
            assert_eq!((h.path, h.query), ("/", None));
            assert_eq!(h.host, Some("example.com"));
        });
        with_head(
            b"GET HTTPS://Example.com:8443/p/q?x=1 HTTP/1.1\r\nHost: b\r\n\r\n",
            |h, _| {
                assert_eq!(h.form, TargetForm::Absolute);
                assert_eq!((h.path, h.query), ("/p/q", Some("x=1")));
                assert_eq!(h.host, Some("Example.com:8443"));
            },
        );
        with_head(b"GET http://a?x HTTP/1.1\r\nHost: a\r\n\r\n", |h, _| {
            assert_eq!((h.path, h.query), ("/", Some("x")));
        });
        with_head(VALID[5], |h, _| {
            assert_eq!((h.form, h.path), (TargetForm::Asterisk, "*"));
        });
        with_head(VALID[6], |h, _| {
            assert_eq!(h.form, TargetForm::Authority);
            assert_eq!(h.host, Some("example.com:443"));
        });
        with_head(VALID[7], |h, _| {
            assert_eq!(h.version, 0);
            assert!(!h.keep_alive);
            assert_eq!(h.host, None);
        });
        with_head(VALID[8], |h, n| {
            assert_eq!(n, VALID[8].len());
            assert_eq!(h.method, "GET");
        });
        with_head(VALID[9], |h, _| {
            assert_eq!(h.header("x-empty"), Some(&b""[..]));
            assert_eq!(h.header("x-tab"), Some(&b"a\tb"[..]));
            assert_eq!(h.header("x-obs"), Some(&b"\xe9t\xe9"[..]));
        });
        with_head(b"GET /? HTTP/1.1\r\nHost: a\r\n\r\n", |h, _| {
            assert_eq!((h.path, h.query), ("/", Some("")));
        });
        with_head(b"GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n", |h, _| {
            assert_eq!((h.path, h.query), ("/a", Some("b?c")));
        });
        with_head(
            b"GET /%41%2f?q=%7B%7d HTTP/1.1\r\nHost: a\r\n\r\n",
            |h, _| {
                assert_eq!(h.path, "/%41%2f");
            },
        );
        with_head(
            b"GET /a|b?x={\"y\"}&z=<^`\\> HTTP/1.1\r\nHost: a\r\n\r\n",
            |h, _| {
                assert_eq!(h.path, "/a|b");
            },
        );
        with_head(b"gEt /x HTTP/1.1\r\nHost: a\r\n\r\n", |h, _| {
            assert_eq!(h.method, "gEt");
        });
        with_head(b"M-SEARCH* /x HTTP/1.1\r\nHost: a\r\n\r\n", |h, _| {
            assert_eq!(h.method, "M-SEARCH*");
        });
    }

    #[test]
    fn framing_semantics() {
        let cases: &[(&[u8], BodyKind, bool)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", BodyKind::None, true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", BodyKind::Length(7), true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  12 \t\r\n\r\n", BodyKind::Length(12), true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", BodyKind::Chunked, true),
            (b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  CHUNKED \r\n\r\n", BodyKind::Chunked, true),
            (b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n", BodyKind::Length(3), false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", BodyKind::None, false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", BodyKind::None, false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: foo ,close\r\n\r\n", BodyKind::None, false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", BodyKind::None, true),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", BodyKind::None, true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", BodyKind::None, true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", BodyKind::None, true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", BodyKind::None, false),
            (b"GET / HTTP/1.0\r\nConnection: foo\r\n\r\n", BodyKind::None, false),
        ];
        for (input, body, ka) in cases {
            with_head(input, |h, _| {
                assert_eq!(
                    (h.body, h.keep_alive),
                    (*body, *ka),
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            });
        }
    }

    #[test]
    fn expect_and_host() {
        with_head(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
            |h, _| {
                assert!(h.expect_continue);
            },
        );
        with_head(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            |h, _| {
                assert!(!h.expect_continue);
            },
        );
        with_head(b"POST / HTTP/1.0\r\nExpect: whatever\r\n\r\n", |h, _| {
            assert!(!h.expect_continue);
        });
        // A list: empty elements are no expectation (RFC 9110 §5.6.1, §10.1.1).
        for (value, expects) in [
            (&b""[..], false),
            (b" , ", false),
            (b", 100-continue,", true),
        ] {
            let head = [
                &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect:"[..],
                value,
                b"\r\n\r\n",
            ]
            .concat();
            with_head(&head, |h, _| assert_eq!(h.expect_continue, expects));
        }
        for host in [
            &b"a"[..],
            b"",
            b"a.b-c_d~e",
            b"a:",
            b"a:0",
            b"a:65535",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:8080",
            b"[v1.fe80::a+en1]",
            b"xn--nxasmq6b.example",
            b"a%20b",
            b"!$&'()*+,;=",
        ] {
            let mut req = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            req.extend_from_slice(host);
            req.extend_from_slice(b"\r\n\r\n");
            with_head(&req, |h, _| {
                assert_eq!(h.host.map(str::as_bytes), Some(host))
            });
        }
    }

    #[test]
    fn headers_named_iterates_all() {
        with_head(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\nx: 3\r\n\r\n",
            |h, _| {
                let all: Vec<&[u8]> = h.headers_named("X").collect();
                assert_eq!(all, [&b"1"[..], b"3"]);
                assert_eq!(h.headers.len(), 4);
            },
        );
    }

    #[test]
    fn every_split_is_partial_then_same_complete() {
        let limits = Limits::default();
        for input in VALID {
            let mut h = [EMPTY; 16];
            let Ok(Status::Complete(full, n)) = parse_head(input, &limits, &mut h) else {
                panic!("not complete: {:?}", String::from_utf8_lossy(input));
            };
            let full_dbg = format!("{full:?}");
            for cut in 0..n {
                let mut h2 = [EMPTY; 16];
                assert_eq!(
                    parse_head(&input[..cut], &limits, &mut h2),
                    Ok(Status::Partial),
                    "cut {cut} of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
            for end in n..=input.len() {
                let mut h2 = [EMPTY; 16];
                match parse_head(&input[..end], &limits, &mut h2) {
                    Ok(Status::Complete(head, n2)) => {
                        assert_eq!(n2, n);
                        assert_eq!(format!("{head:?}"), full_dbg);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn errors_are_found_from_partial_input_when_provable() {
        // version errors before the line ends
        assert_eq!(
            parse_with(b"GET / HTTP/2", &Limits::default()),
            Err(Error::UnsupportedVersion)
        );
        assert_eq!(
            parse_with(b"GET / HTTP/1.2", &Limits::default()),
            Err(Error::UnsupportedVersion)
        );
        assert_eq!(
            parse_with(b"GET / XTTP", &Limits::default()),
            Err(Error::InvalidVersion)
        );
        assert_eq!(
            parse_with(b"G(", &Limits::default()),
            Err(Error::InvalidMethod)
        );
        assert_eq!(parse_with(b"", &Limits::default()), Ok(None));
        assert_eq!(parse_with(b"\r\n", &Limits::default()), Ok(None));
    }

    #[test]
    fn only_complete_empty_lines_are_no_head() {
        assert!(super::only_empty_lines(b""));
        assert!(super::only_empty_lines(b"\r\n"));
        assert!(super::only_empty_lines(b"\r\n\r\n"));
        // A CRLF split across reads, a bare LF, anything else: parsed as a head.
        assert!(!super::only_empty_lines(b"\r"));
        assert!(!super::only_empty_lines(b"\r\n\r"));
        assert!(!super::only_empty_lines(b"\n"));
        assert!(!super::only_empty_lines(b"\n\r"));
        assert!(!super::only_empty_lines(b"\r\nG"));
    }

    #[test]
    fn a_later_minor_version_is_found_on_the_request_line() {
        use super::later_minor_version as v;
        assert_eq!(v(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), Some(13));
        assert_eq!(v(b"\r\nGET / HTTP/1.9\r\n"), Some(15));
        assert_eq!(v(b"GET / HTTP/1.2"), Some(13));
        assert_eq!(v(b"GET / HTTP/2.0\r\n"), None);
        assert_eq!(v(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(v(b"GET / HTTP/1.10\r\n"), None);
        assert_eq!(v(b"GET /HTTP/1.2\r\n"), None);
    }

    #[test]
    fn the_method_is_found_after_empty_lines() {
        use super::starts_with_method as m;
        assert!(m(b"HEAD / HTTP/1.1\r\n", b"HEAD"));
        assert!(m(b"\r\n\r\nHEAD /", b"HEAD"));
        assert!(!m(b"HEADX / HTTP/1.1", b"HEAD"));
        assert!(!m(b"HEAD", b"HEAD"));
        assert!(!m(b"GET / HTTP/1.1", b"HEAD"));
    }
}
