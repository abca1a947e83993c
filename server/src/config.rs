//! Server settings: limits and timeouts (the TOML file and hot reload build on this).

use std::time::Duration;

use crate::http::Limits;

/// Default absolute deadline for a request head. nginx waits 60 s (`client_header_timeout`),
/// hyper 30 s; 10 s is plenty for any real client and bounds slowloris-style trickling.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive idle timeout: nginx's 75 s.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default body inactivity timeout: nginx's `client_body_timeout` is 60 s; 30 s.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default send timeout: how long a client may leave the responses queued for it unread
/// before the connection is closed (nginx's `send_timeout` is 60 s).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on response bytes queued for a client that does not read: 1 MiB. With 4 MiB a
/// client pipelining 1 MB echoes without reading held 6.8 MB of the server's memory until the
/// send timeout, with 1 MiB 2.1 MB, and 1 MB echoes ran at the same rate.
pub const MAX_UNSENT: usize = 1 << 20;

/// Settings every connection reads.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Request size limits.
    pub limits: Limits,
    /// Absolute deadline for a request head.
    pub header_timeout: Duration,
    /// Keep-alive idle timeout.
    pub keepalive_timeout: Duration,
    /// Body inactivity timeout.
    pub body_timeout: Duration,
    /// How long queued responses may wait for the client to read them.
    pub send_timeout: Duration,
    /// Response bytes queued before the connection stops reading and answering.
    pub max_unsent: usize,
    /// `Server` header value.
    pub server_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            header_timeout: HEADER_TIMEOUT,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
            max_unsent: MAX_UNSENT,
            server_name: "percore".into(),
        }
    }
}
