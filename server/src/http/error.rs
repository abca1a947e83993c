//! The one error type of the HTTP/1.1 codec.
//!
//! Owns: [`Error`], every way a request head, a chunked body or a response
//! head handed to the encoder can be rejected, and the mapping of each to the
//! HTTP status the server must answer with ([`Error::status`]) and a short
//! static reason text ([`Error::reason`]) used in canned error bodies and logs.
//!
//! Invariants: every variant maps to exactly one status in 400..=599; the
//! reason text is short printable ASCII without CR/LF (it is written verbatim
//! into responses). Every request-side error means the connection must be
//! closed after the error response, because framing can no longer be trusted.
//!
//! Must not: allocate, carry borrowed request bytes (errors outlive buffers),
//! or carry anything a client could use to inject bytes into a response.

use core::fmt;

/// Everything the codec can reject. Matching must allow for new variants.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    // ---- request line -------------------------------------------------
    /// Method is empty or not an RFC 9110 token. 400.
    InvalidMethod,
    /// Request-target has a forbidden byte, bad percent-encoding, or a form
    /// not allowed with its method (asterisk-form without OPTIONS,
    /// authority-form without CONNECT, CONNECT without authority-form). 400.
    InvalidTarget,
    /// HTTP-version is not syntactically `HTTP/DIGIT.DIGIT`, or the request
    /// line has stray bytes/whitespace. 400.
    InvalidVersion,
    /// Well-formed HTTP-version other than 1.0 / 1.1 (HTTP/2.0, 1.2, 3). 505.
    UnsupportedVersion,
    /// Request line longer than `Limits::max_request_line`. 414.
    UriTooLong,
    // ---- framing of the head -----------------------------------------
    /// A bare LF or a CR not followed by LF where CRLF is required. 400.
    InvalidLineEnding,
    /// Invalid field name: non-token byte, whitespace before the colon, a
    /// line starting with whitespace (obs-fold), missing colon. 400.
    InvalidHeaderName,
    /// Invalid field value: a control byte (NUL, DEL, CR, ...) in it. 400.
    InvalidHeaderValue,
    /// Head larger than `Limits::max_head`. 431.
    HeadTooLarge,
    /// More header fields than `Limits::max_headers`. 431.
    TooManyHeaders,
    // ---- semantics of the head ---------------------------------------
    /// HTTP/1.1 request without Host. 400.
    MissingHost,
    /// More than one Host field line. 400.
    DuplicateHost,
    /// Host (or the authority of an absolute-form target) is not a valid
    /// `uri-host [":" port]`, or contains userinfo. 400.
    InvalidHost,
    /// Content-Length is not `1*DIGIT`, overflows u64, or is a list. 400.
    InvalidContentLength,
    /// More than one Content-Length field line (even with equal values). 400.
    DuplicateContentLength,
    /// Both Content-Length and Transfer-Encoding present. 400.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding is malformed, `chunked` is not the final coding or
    /// is repeated, or the final coding is not `chunked`. 400.
    InvalidTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 request. 400.
    TransferEncodingInHttp10,
    /// A transfer coding this server does not implement (anything but
    /// `chunked`). 501.
    UnsupportedTransferCoding,
    /// An Expect value other than `100-continue`. 417.
    UnsupportedExpectation,
    /// Body larger than `Limits::max_body`. 413.
    BodyTooLarge,
    // ---- chunked body --------------------------------------------------
    /// Chunk-size empty, not hex, more than 16 digits or overflowing. 400.
    InvalidChunkSize,
    /// Malformed chunk extension, or extension bytes over the limits. 400.
    InvalidChunkExtension,
    /// Chunk data not followed by CRLF. 400.
    InvalidChunkData,
    /// Malformed trailer field line. 400.
    InvalidTrailer,
    /// Trailer section larger than `Limits::max_trailer`. 431.
    TrailerTooLarge,
    // ---- connection ------------------------------------------------------
    /// The head or body did not arrive before its deadline. 408.
    RequestTimeout,
    /// The client closed the connection before the body was complete. 400 (never sent: the
    /// connection is gone; a streaming handler sees it).
    IncompleteBody,
    // ---- response encoder ----------------------------------------------
    /// The application passed a response header name that is not a token or
    /// a value containing CR, LF or NUL (response splitting). 500.
    InvalidResponseHeader,
}

impl Error {
    /// HTTP status code the server answers this error with.
    pub const fn status(self) -> u16 {
        match self {
            Error::InvalidMethod
            | Error::InvalidTarget
            | Error::InvalidVersion
            | Error::InvalidLineEnding
            | Error::InvalidHeaderName
            | Error::InvalidHeaderValue
            | Error::MissingHost
            | Error::DuplicateHost
            | Error::InvalidHost
            | Error::InvalidContentLength
            | Error::DuplicateContentLength
            | Error::ContentLengthWithTransferEncoding
            | Error::InvalidTransferEncoding
            | Error::TransferEncodingInHttp10
            | Error::InvalidChunkSize
            | Error::InvalidChunkExtension
            | Error::InvalidChunkData
            | Error::InvalidTrailer
            | Error::IncompleteBody => 400,
            Error::RequestTimeout => 408,
            Error::BodyTooLarge => 413,
            Error::UriTooLong => 414,
            Error::UnsupportedExpectation => 417,
            Error::HeadTooLarge | Error::TooManyHeaders | Error::TrailerTooLarge => 431,
            Error::InvalidResponseHeader => 500,
            Error::UnsupportedTransferCoding => 501,
            Error::UnsupportedVersion => 505,
        }
    }

    /// Short static description, printable ASCII, no CR/LF.
    pub const fn reason(self) -> &'static str {
        match self {
            Error::InvalidMethod => "invalid method",
            Error::RequestTimeout => "request timeout",
            Error::IncompleteBody => "connection closed before the body was complete",
            Error::InvalidTarget => "invalid request target",
            Error::InvalidVersion => "invalid HTTP version",
            Error::UnsupportedVersion => "HTTP version not supported",
            Error::UriTooLong => "request line too long",
            Error::InvalidLineEnding => "invalid line ending",
            Error::InvalidHeaderName => "invalid header name",
            Error::InvalidHeaderValue => "invalid header value",
            Error::HeadTooLarge => "request header section too large",
            Error::TooManyHeaders => "too many header fields",
            Error::MissingHost => "missing Host header",
            Error::DuplicateHost => "duplicate Host header",
            Error::InvalidHost => "invalid Host header",
            Error::InvalidContentLength => "invalid Content-Length",
            Error::DuplicateContentLength => "duplicate Content-Length",
            Error::ContentLengthWithTransferEncoding => "both Content-Length and Transfer-Encoding",
            Error::InvalidTransferEncoding => "invalid Transfer-Encoding",
            Error::TransferEncodingInHttp10 => "Transfer-Encoding in HTTP/1.0 request",
            Error::UnsupportedTransferCoding => "transfer coding not implemented",
            Error::UnsupportedExpectation => "expectation not supported",
            Error::BodyTooLarge => "request body too large",
            Error::InvalidChunkSize => "invalid chunk size",
            Error::InvalidChunkExtension => "invalid chunk extension",
            Error::InvalidChunkData => "chunk data not followed by CRLF",
            Error::InvalidTrailer => "invalid trailer field",
            Error::TrailerTooLarge => "trailer section too large",
            Error::InvalidResponseHeader => "invalid response header",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for Error {}

/// Every variant, for exhaustive tests elsewhere in the module tree.
#[cfg(test)]
pub(super) const ALL_ERRORS: [Error; 27] = [
    Error::InvalidMethod,
    Error::InvalidTarget,
    Error::InvalidVersion,
    Error::UnsupportedVersion,
    Error::UriTooLong,
    Error::InvalidLineEnding,
    Error::InvalidHeaderName,
    Error::InvalidHeaderValue,
    Error::HeadTooLarge,
    Error::TooManyHeaders,
    Error::MissingHost,
    Error::DuplicateHost,
    Error::InvalidHost,
    Error::InvalidContentLength,
    Error::DuplicateContentLength,
    Error::ContentLengthWithTransferEncoding,
    Error::InvalidTransferEncoding,
    Error::TransferEncodingInHttp10,
    Error::UnsupportedTransferCoding,
    Error::UnsupportedExpectation,
    Error::BodyTooLarge,
    Error::InvalidChunkSize,
    Error::InvalidChunkExtension,
    Error::InvalidChunkData,
    Error::InvalidTrailer,
    Error::TrailerTooLarge,
    Error::InvalidResponseHeader,
];

#[cfg(test)]
mod tests {
    use super::ALL_ERRORS;

    #[test]
    fn statuses_and_reasons_are_sane() {
        for e in ALL_ERRORS {
            let s = e.status();
            assert!((400..=599).contains(&s), "{e:?}");
            let r = e.reason();
            assert!(!r.is_empty() && r.len() < 64);
            assert!(r.bytes().all(|b| (0x20..0x7f).contains(&b)), "{e:?}");
        }
    }
}
