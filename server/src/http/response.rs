//! HTTP/1.1 response encoder writing straight into a caller's `Vec<u8>`.
//!
//! Owns: the bytes of status lines, response header sections, fixed-length
//! bodies, chunked body framing, the `100 Continue` interim response, canned
//! error responses for every [`Error`], and the reason-phrase table.
//!
//! Invariants:
//! * Only appends to `out`; never allocates when `out` already has enough
//!   spare capacity (numbers are formatted on the stack with `itoa` / a
//!   hand-written hex loop).
//! * Never emits a response that could be split or smuggled: the status must
//!   be 3 digits (100..=999); reason, `Server` and extra header values must
//!   not contain CR, LF, NUL or other CTLs (HTAB allowed); extra header names
//!   must be tokens and must not be `Content-Length`, `Transfer-Encoding` or
//!   `Connection` (framing is only set through [`Framing`] and
//!   [`ConnectionHeader`]); 1xx and 204 responses cannot carry a length or
//!   chunked framing. A violation returns [`Error::InvalidResponseHeader`]
//!   and leaves `out` exactly as it was.
//! * Always writes `HTTP/1.1` (RFC 9110 §6.2: a server sends its highest
//!   conformant minor version).
//!
//! Must not: decide keep-alive or framing policy (the server does: e.g. no
//! chunked framing toward HTTP/1.0 clients - use `Framing::None` plus
//! `ConnectionHeader::Close` for a close-delimited body; send
//! `ConnectionHeader::KeepAlive` to a HTTP/1.0 client that asked for it),
//! perform I/O, or read the clock (the caller passes the cached date).

use super::error::Error;
use super::request::{is_field_value_byte, is_tchar};

/// The interim response sent before reading a body announced with
/// `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n` (also for HEAD / 304, where no body follows).
    Length(u64),
    /// `Transfer-Encoding: chunked`; follow with [`write_chunk`] and
    /// [`write_last_chunk`]. Only for HTTP/1.1 clients.
    Chunked,
    /// Neither header: 1xx, 204, 304 without length, or a close-delimited
    /// body (then use [`ConnectionHeader::Close`]).
    None,
}

/// What to write as `Connection` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Nothing: persistent for HTTP/1.1 clients.
    Omit,
    /// `Connection: keep-alive` (for HTTP/1.0 clients that asked for it).
    KeepAlive,
    /// `Connection: close`: the server closes after this response.
    Close,
}

/// Everything of a response head except the body.
#[derive(Clone, Copy, Debug)]
pub struct ResponseHead<'a> {
    /// Status code, 100..=999.
    pub status: u16,
    /// Reason phrase; [`reason_phrase`] gives the standard one. May be empty.
    pub reason: &'a str,
    /// IMF-fixdate, from `CachedDate::get`.
    pub date: &'a [u8; 29],
    /// `Server` value; empty omits the header.
    pub server: &'a [u8],
    /// Body delimitation.
    pub framing: Framing,
    /// Connection header to send.
    pub connection: ConnectionHeader,
    /// Further header fields, written in order after the framing headers.
    pub extra: &'a [(&'a str, &'a [u8])],
}

/// Standard reason phrase for `status`, or `""` if unknown (an empty reason
/// is valid HTTP/1.1).
pub const fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| is_field_value_byte(b))
}

fn is_framing_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("connection")
}

fn validate(head: &ResponseHead<'_>) -> Result<(), Error> {
    if valid_prefix(head) && valid_rest(head) {
        Ok(())
    } else {
        Err(Error::InvalidResponseHeader)
    }
}

/// What [`write_prefix`] writes is valid: status, reason and `Server`.
fn valid_prefix(head: &ResponseHead<'_>) -> bool {
    (100..=999).contains(&head.status)
        && valid_value(head.reason.as_bytes())
        && valid_value(head.server)
}

/// The rest of the head is valid: framing for the status, the handler's fields.
fn valid_rest(head: &ResponseHead<'_>) -> bool {
    let s = head.status;
    ((s >= 200 && s != 204) || head.framing == Framing::None)
        && head.extra.iter().all(|(name, value)| {
            !name.is_empty()
                && name.bytes().all(is_tchar)
                && !is_framing_header(name)
                && valid_value(value)
        })
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
}

/// Append a response head (status line, headers, final CRLF) to `out`.
///
/// On error `out` is unchanged.
pub fn write_head(out: &mut Vec<u8>, head: &ResponseHead<'_>) -> Result<(), Error> {
    validate(head)?;
    put_prefix(out, head);
    put_rest(out, head);
    Ok(())
}

/// Append the start of `head` that depends only on its status, `Server` and `Date`: the status
/// line and those two fields, without their final CRLF. A shard keeps the result for its most
/// common status and hands it to [`write_head_with_prefix`] for every such response until the
/// date or the server name changes.
pub fn write_prefix(out: &mut Vec<u8>, head: &ResponseHead<'_>) -> Result<(), Error> {
    if !valid_prefix(head) {
        return Err(Error::InvalidResponseHeader);
    }
    put_prefix(out, head);
    Ok(())
}

/// [`write_head`] with the status line, `Server` and `Date` given as `prefix`, which
/// [`write_prefix`] made from a head with the same status, server and date as `head`.
///
/// On error `out` is unchanged.
pub fn write_head_with_prefix(
    out: &mut Vec<u8>,
    prefix: &[u8],
    head: &ResponseHead<'_>,
) -> Result<(), Error> {
    if !valid_rest(head) {
        return Err(Error::InvalidResponseHeader);
    }
    out.extend_from_slice(prefix);
    put_rest(out, head);
    Ok(())
}

fn put_prefix(out: &mut Vec<u8>, head: &ResponseHead<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    if !head.server.is_empty() {
        out.extend_from_slice(b"\r\nServer: ");
        out.extend_from_slice(head.server);
    }
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(head.date);
}

fn put_rest(out: &mut Vec<u8>, head: &ResponseHead<'_>) {
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"\r\nContent-Length: ");
            put_u64(out, n);
        }
        Framing::Chunked => out.extend_from_slice(b"\r\nTransfer-Encoding: chunked"),
        Framing::None => {}
    }
    match head.connection {
        ConnectionHeader::Omit => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        ConnectionHeader::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    for (name, value) in head.extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Append a complete response with a fixed body; `head.framing` is replaced
/// by `Framing::Length(body.len())`. On error `out` is unchanged.
pub fn write_response(
    out: &mut Vec<u8>,
    head: &ResponseHead<'_>,
    body: &[u8],
) -> Result<(), Error> {
    let head = ResponseHead {
        framing: Framing::Length(body.len() as u64),
        ..*head
    };
    write_head(out, &head)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Append one chunk (`hex-size CRLF data CRLF`). An empty `data` writes
/// nothing, since a zero-size chunk would end the body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = data.len() as u64;
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = HEX[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Append the last-chunk and an empty trailer section (`0 CRLF CRLF`).
pub fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Append the canned response for `err`: its status and standard reason
/// phrase, `Content-Type: text/plain`, `Content-Length`, `Connection: close`
/// and `err.reason()` plus LF as body, which an answer to `HEAD` (`head_request`)
/// leaves out (RFC 9110 §9.3.2; the length stays that of the body a GET would
/// get). `server` is omitted if invalid.
pub fn write_error(
    out: &mut Vec<u8>,
    err: Error,
    head_request: bool,
    date: &[u8; 29],
    server: &[u8],
) {
    let reason = err.reason();
    let status = err.status();
    let server = if valid_value(server) { server } else { b"" };
    let head = ResponseHead {
        status,
        reason: reason_phrase(status),
        date,
        server,
        framing: Framing::Length(reason.len() as u64 + 1),
        connection: ConnectionHeader::Close,
        extra: &[("Content-Type", b"text/plain; charset=utf-8")],
    };
    // Cannot fail: every field above is valid by construction.
    if write_head(out, &head).is_ok() && !head_request {
        out.extend_from_slice(reason.as_bytes());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::super::error::ALL_ERRORS;
    use super::*;

    const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn head(status: u16, framing: Framing) -> ResponseHead<'static> {
        ResponseHead {
            status,
            reason: reason_phrase(status),
            date: DATE,
            server: b"percore",
            framing,
            connection: ConnectionHeader::Omit,
            extra: &[],
        }
    }

    #[test]
    fn exact_bytes() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &ResponseHead {
                extra: &[("Content-Type", b"text/plain")],
                ..head(200, Framing::None)
            },
            b"hi",
        )
        .unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              Content-Length: 2\r\nContent-Type: text/plain\r\n\r\nhi"
        );
        out.clear();
        let h = ResponseHead {
            server: b"",
            connection: ConnectionHeader::Close,
            ..head(404, Framing::Chunked)
        };
        write_head(&mut out, &h).unwrap();
        write_chunk(&mut out, b"hello");
        write_chunk(&mut out, b"");
        write_chunk(&mut out, &[b'x'; 26]);
        write_last_chunk(&mut out);
        let mut want = b"HTTP/1.1 404 Not Found\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n1a\r\n"
            .to_vec();
        want.extend_from_slice(&[b'x'; 26]);
        want.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, want);
        out.clear();
        let h = ResponseHead {
            connection: ConnectionHeader::KeepAlive,
            reason: "",
            ..head(599, Framing::Length(0))
        };
        write_head(&mut out, &h).unwrap();
        assert!(out.starts_with(b"HTTP/1.1 599 \r\n"));
        assert!(out.ends_with(b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn continue_100_is_exact() {
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn no_allocation_when_capacity_suffices() {
        let mut out = Vec::with_capacity(512);
        let ptr = out.as_ptr();
        let cap = out.capacity();
        let h = ResponseHead {
            extra: &[("X-A", b"1"), ("X-B", b"2")],
            ..head(200, Framing::Chunked)
        };
        write_head(&mut out, &h).unwrap();
        write_chunk(&mut out, b"abc");
        write_last_chunk(&mut out);
        write_response(&mut out, &head(201, Framing::None), b"body").unwrap();
        write_error(&mut out, Error::BodyTooLarge, false, DATE, b"percore");
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
    }

    #[test]
    fn a_cached_prefix_gives_the_same_head() {
        let heads = [
            head(200, Framing::Length(13)),
            head(404, Framing::Chunked),
            ResponseHead {
                connection: ConnectionHeader::Close,
                extra: &[("Content-Type", b"text/plain"), ("X-A", b"1")],
                ..head(200, Framing::Length(0))
            },
            ResponseHead {
                server: b"",
                connection: ConnectionHeader::KeepAlive,
                ..head(304, Framing::None)
            },
        ];
        for h in &heads {
            let mut whole = Vec::new();
            write_head(&mut whole, h).unwrap();
            let mut prefix = Vec::new();
            write_prefix(&mut prefix, h).unwrap();
            let mut out = Vec::new();
            write_head_with_prefix(&mut out, &prefix, h).unwrap();
            assert_eq!(out, whole, "{h:?}");
        }
    }

    #[test]
    fn rejects_response_splitting() {
        let bad: &[ResponseHead<'static>] = &[
            ResponseHead {
                extra: &[("X", b"a\r\nSet-Cookie: x")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("X", b"a\nb")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("X", b"a\0b")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("X Y", b"a")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("", b"a")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("X:", b"a")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("content-length", b"5")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("Transfer-Encoding", b"chunked")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                extra: &[("Connection", b"close")],
                ..head(200, Framing::None)
            },
            ResponseHead {
                reason: "OK\r\nX: y",
                ..head(200, Framing::None)
            },
            ResponseHead {
                server: b"a\rb",
                ..head(200, Framing::None)
            },
            head(99, Framing::None),
            head(1000, Framing::None),
            head(204, Framing::Length(0)),
            head(101, Framing::Chunked),
        ];
        for h in bad {
            let mut out = b"prefix".to_vec();
            assert_eq!(
                write_head(&mut out, h),
                Err(Error::InvalidResponseHeader),
                "{h:?}"
            );
            assert_eq!(out, b"prefix");
            assert!(write_response(&mut out, h, b"x").is_err());
            assert_eq!(out, b"prefix");
            // Through a cached prefix: either the prefix or the rest is refused, nothing written.
            let mut cached = Vec::new();
            if write_prefix(&mut cached, h).is_ok() {
                assert_eq!(
                    write_head_with_prefix(&mut out, &cached, h),
                    Err(Error::InvalidResponseHeader),
                    "{h:?}"
                );
                assert_eq!(out, b"prefix");
            }
        }
        // allowed: HTAB and obs-text in values, 204 / 304 without framing
        let mut out = Vec::new();
        let ok = ResponseHead {
            extra: &[("X", b"a\tb\xff")],
            ..head(204, Framing::None)
        };
        assert!(write_head(&mut out, &ok).is_ok());
        assert!(write_head(&mut out, &head(304, Framing::Length(10))).is_ok());
    }

    #[test]
    fn canned_errors_parse_back() {
        for err in ALL_ERRORS {
            let mut out = Vec::new();
            write_error(&mut out, err, false, DATE, b"percore");
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(&out) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{err:?}: {other:?}"),
            };
            assert_eq!(resp.code, Some(err.status()));
            assert_eq!(resp.reason, Some(reason_phrase(err.status())));
            assert!(!reason_phrase(err.status()).is_empty(), "{err:?}");
            let get = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value)
            };
            assert_eq!(get("connection"), Some(&b"close"[..]));
            assert_eq!(get("date"), Some(&DATE[..]));
            let body = &out[n..];
            assert_eq!(
                get("content-length"),
                Some(body.len().to_string().as_bytes())
            );
            assert_eq!(body, format!("{}\n", err.reason()).as_bytes());
        }
    }

    #[test]
    fn hex_sizes() {
        for len in [1usize, 9, 10, 15, 16, 255, 256, 4096, 65535, 100_000] {
            let data = vec![b'z'; len];
            let mut out = Vec::new();
            write_chunk(&mut out, &data);
            let hex = format!("{len:x}\r\n");
            assert!(out.starts_with(hex.as_bytes()), "{len}");
            assert_eq!(out.len(), hex.len() + len + 2);
        }
    }
}
