//! Resource limits of the HTTP/1.1 codec.
//!
//! Owns: every numeric bound the parser and the chunked decoder enforce, as
//! documented `pub const` defaults, gathered in [`Limits`] so that server
//! configuration can override them.
//!
//! Invariants: the defaults are chosen so that a single request head fits in
//! one 32 KiB per-connection read buffer, and so that a peer can never make the
//! codec do more than O(limit) work or hold more than O(limit) bytes per
//! request. A limit of `0` is legal but makes the corresponding item
//! impossible (e.g. `max_body = 0` rejects every request that has a body).
//!
//! Must not: allocate, read configuration files or environment variables, or
//! know about sockets. It only describes numbers.

/// Longest accepted request line (`method SP request-target SP HTTP-version`,
/// CRLF excluded), in bytes. Longer ones are answered `414 URI Too Long`.
///
/// nginx: `large_client_header_buffers 4 8k` - a request line must fit in
/// one 8 KiB buffer, else 414. Envoy has no separate request-line limit (it is
/// part of `max_request_headers_kb`, 60 KiB). hyper has none either (only its
/// total read buffer, ~400 KiB). We follow nginx: 8 KiB covers every sane URL
/// (browsers cap around 2-8 KiB anyway, RFC 9112 §3 recommends supporting at
/// least 8000 octets) and bounds the work done on a partial line.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Largest accepted request head (leading empty lines, request line, all
/// header lines and the final empty line), in bytes. Larger heads are
/// answered `431 Request Header Fields Too Large`.
///
/// nginx: 4 x 8 KiB buffers = 32 KiB (and 8 KiB per line). Envoy:
/// `max_request_headers_kb` = 60 KiB. hyper: no header-size limit besides its
/// ~400 KiB read buffer. 32 KiB (nginx) is enough for large cookie jars and
/// keeps one head inside one fixed-size per-connection buffer.
pub const MAX_HEAD: usize = 32 * 1024;

/// Maximum number of header fields in a request head; more are answered 431.
///
/// hyper: `DEFAULT_MAX_HEADERS` = 100. Envoy: `max_headers_count` = 100.
/// nginx: no count limit (bounded by its buffers). 100 keeps the caller's
/// `[httparse::Header; N]` array at 3.2 KiB of stack.
pub const MAX_HEADERS: usize = 100;

/// Largest accepted request body, in bytes, whether announced by
/// `Content-Length` (rejected before any body byte is read) or accumulated
/// by the chunked decoder. Larger bodies are answered `413 Content Too Large`.
///
/// nginx: `client_max_body_size 1m`. Envoy and hyper stream bodies and have no
/// default cap. 1 MiB (nginx) is the safe default for a server that buffers
/// bodies; configuration raises it for upload endpoints.
pub const MAX_BODY: u64 = 1024 * 1024;

/// Maximum number of hex digits in a chunk-size, leading zeros included.
///
/// RFC 9112 §7.1 puts no bound on `1*HEXDIG`, and nginx accepts leading zeros
/// beyond 16 digits; this bound only keeps a size line finite. The value
/// itself must fit in `u64` (at most 16 significant digits): hyper and llhttp
/// likewise reject sizes that overflow 64 bits; nginx rejects chunk sizes
/// above `off_t` max.
pub const MAX_CHUNK_SIZE_DIGITS: usize = 64;

/// Maximum bytes of chunk extensions (everything from the first `;` up to the
/// CR) on one chunk-size line. Longer lines are answered 400.
///
/// nginx and llhttp do not bound a single line separately (nginx bounds it
/// with its buffer size); hyper bounds only the per-body total (see
/// [`MAX_CHUNK_EXT_TOTAL`]). 1 KiB per line is far above any real use
/// (extensions are essentially unused) and bounds work per line.
pub const MAX_CHUNK_EXT_LINE: usize = 1024;

/// Maximum bytes of chunk extensions summed over a whole chunked body.
/// Exceeding it is answered 400.
///
/// hyper: `CHUNKED_EXTENSIONS_LIMIT` = 16 KiB per body, introduced against
/// "tiny chunk + huge extension" bandwidth/CPU amplification. We use the same.
pub const MAX_CHUNK_EXT_TOTAL: usize = 16 * 1024;

/// Maximum bytes of the trailer section of a chunked body (all trailer lines
/// and the final CRLF). Exceeding it is answered 431.
///
/// hyper: `TRAILER_LIMIT` = 16 KiB. nginx bounds trailers by its header
/// buffers. We discard trailers, so there is no reason to accept more than
/// 8 KiB of them.
pub const MAX_TRAILER: usize = 8 * 1024;

/// All limits of the codec, overridable by configuration.
///
/// `Limits::default()` uses the documented `pub const` values of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// See [`MAX_REQUEST_LINE`].
    pub max_request_line: usize,
    /// See [`MAX_HEAD`].
    pub max_head: usize,
    /// See [`MAX_HEADERS`]. The effective limit is the smaller of this and
    /// the length of the header array handed to the parser.
    pub max_headers: usize,
    /// See [`MAX_BODY`].
    pub max_body: u64,
    /// See [`MAX_CHUNK_EXT_LINE`].
    pub max_chunk_ext_line: usize,
    /// See [`MAX_CHUNK_EXT_TOTAL`].
    pub max_chunk_ext_total: usize,
    /// See [`MAX_TRAILER`].
    pub max_trailer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: MAX_REQUEST_LINE,
            max_head: MAX_HEAD,
            max_headers: MAX_HEADERS,
            max_body: MAX_BODY,
            max_chunk_ext_line: MAX_CHUNK_EXT_LINE,
            max_chunk_ext_total: MAX_CHUNK_EXT_TOTAL,
            max_trailer: MAX_TRAILER,
        }
    }
}
