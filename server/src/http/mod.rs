//! Pure HTTP/1.1 codec for percore: request-head parsing and validation,
//! strict chunked body decoding, response encoding and IMF-fixdate dates.
//!
//! Owns: only the module tree and the re-exports; this file is meant to be
//! copied verbatim as `server/src/http/mod.rs`, so it must only use paths
//! relative to itself (no `crate::`).
//!
//! Invariants: no unsafe code; no allocation on the request/response happy
//! path; no I/O, no clocks other than the `SystemTime` a caller passes in.
//!
//! Must not: perform I/O, spawn, log, or know about io_uring, sockets or
//! routing.

#![forbid(unsafe_code)]

pub mod chunked;
pub mod date;
pub mod error;
pub mod limits;
pub mod request;
pub mod response;

pub use chunked::ChunkedDecoder;
pub use date::{CachedDate, format_imf_fixdate};
pub use error::Error;
pub use limits::Limits;
pub use request::{
    BodyKind, Header, HeaderSlot, RequestHead, Status, TargetForm, later_minor_version,
    only_empty_lines, parse_head, starts_with_method,
};
pub use response::{
    CONTINUE_100, ConnectionHeader, Framing, ResponseHead, reason_phrase, write_chunk, write_error,
    write_head, write_head_with_prefix, write_last_chunk, write_prefix, write_response,
};

/// An unfilled header slot, to build the `[HeaderSlot; N]` array for [`parse_head`].
pub const HEADER_SLOT: HeaderSlot<'static> = HeaderSlot::uninit();
