//! The runtime's one error type.
//!
//! Every variant names the operation that failed and carries its cause, so that a caller can print
//! one line that an operator understands ("bind 127.0.0.1:8080: address in use") and a program can
//! match on the kind (`Error::AddrInUse`) without parsing text.

use std::{fmt, io, net::SocketAddr};

/// Errors of `percore-runtime`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Another socket (another process, or a server started twice) already listens on the address.
    AddrInUse(SocketAddr),
    /// The process may not bind the address (a port below 1024 without the capability).
    AddrPermission(SocketAddr),
    /// The address does not belong to this machine or cannot be bound.
    AddrNotAvailable(SocketAddr),
    /// Another socket-level failure while setting up a listener.
    Listen { addr: SocketAddr, source: io::Error },
    /// The CPU list is malformed or names CPUs the process may not run on.
    Cpus(String),
    /// The machine lacks something percore needs (kernel version, io_uring, memlock limit).
    Unsupported(String),
    /// A shard thread could not be started or its executor could not be built.
    Shard { shard: usize, source: io::Error },
    /// A shard panicked; the process is about to end.
    ShardPanicked { shard: usize, message: String },
    /// An I/O operation on a connection failed; `op` says which one.
    Io { op: &'static str, source: io::Error },
    /// A connection's deadline passed before the operation completed.
    TimedOut,
    /// The peer closed the connection or it was closed locally.
    Closed,
    /// A cross-shard message could not be delivered (the peer shard is gone or the id is invalid).
    Mesh(String),
}

impl Error {
    /// The error for a failed syscall or io_uring completion of `op` (a negative errno or an
    /// `io::Error`).
    pub fn io(op: &'static str, source: io::Error) -> Self {
        Error::Io { op, source }
    }

    /// The error for a negative CQE result.
    pub fn from_cqe(op: &'static str, res: i32) -> Self {
        Error::Io {
            op,
            source: io::Error::from_raw_os_error(-res),
        }
    }

    /// Whether this is the peer going away (reset, broken pipe, EOF): routine on a server, not a fault.
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED)
            ),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AddrInUse(a) => write!(f, "bind {a}: address in use"),
            Error::AddrPermission(a) => write!(f, "bind {a}: permission denied"),
            Error::AddrNotAvailable(a) => write!(f, "bind {a}: address not available"),
            Error::Listen { addr, source } => write!(f, "listen {addr}: {source}"),
            Error::Cpus(m) => write!(f, "cpus: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported system: {m}"),
            Error::Shard { shard, source } => write!(f, "start shard {shard}: {source}"),
            Error::ShardPanicked { shard, message } => {
                write!(f, "shard {shard} panicked: {message}")
            }
            Error::Io { op, source } => write!(f, "{op}: {source}"),
            Error::TimedOut => f.write_str("deadline passed"),
            Error::Closed => f.write_str("connection closed"),
            Error::Mesh(m) => write!(f, "mesh: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Listen { source, .. }
            | Error::Shard { source, .. }
            | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
