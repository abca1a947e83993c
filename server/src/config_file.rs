//! The TOML configuration file: schema, defaults, whole-file validation, and error positions.
//!
//! Owns: the [`Config`] type and its sections (every field documented with its meaning, unit and
//! default), [`Config::parse`] / [`Config::load`] (TOML → validated `Config`), [`Config::to_toml`]
//! (the effective configuration, every field, for `percore config print` and `GET /config`), the
//! built-in default routes as config values ([`builtin_routes`]), and the conversions to the
//! settings the server already uses ([`Config::limits`], [`Config::server_config`],
//! [`Config::cpu_selection`]).
//!
//! Invariants:
//! - A `Config` returned by [`Config::parse`] or [`Config::load`] has passed [`Config::validate`]
//!   as a whole: a caller may apply it without further checks (route paths insert into a
//!   `matchit` router without conflict, statuses are 200-599, durations and sizes are in range).
//! - Every error is a [`ConfigError`] whose `Display` is exactly one line:
//!   `FILE:LINE: FIELD: MESSAGE` (the line is omitted only when nothing in the file locates it,
//!   e.g. a conflict between two defaulted values).
//! - `Config::parse(&c.to_toml(), ..) == Ok(c)` for every valid `c` (round trip), and
//!   `Config::default()` is valid.
//!
//! Must not: touch sockets, threads or the running server (applying a config is the caller's
//! business), read environment variables, or panic on any input text.
//!
//! How error lines are found: parse errors from `toml` carry a byte span. Validation errors carry
//! a field path (`routes[1].respond.status`); the document is parsed a second time into
//! a `SpanTree`, a generic tree of every value with its byte span, and the path is looked up there.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use percore_runtime::cpus::{CpuSelection, MAX_CPU, parse_cpu_list};
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, MapAccess, SeqAccess, Visitor},
};

use crate::{config::ServerConfig, http::Limits};

/// Default public listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listen address (loopback only: the admin API must not be public by accident).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default time a graceful drain waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `server.drain_accept`.
pub const DEFAULT_DRAIN_ACCEPT: Duration = Duration::from_secs(1);
/// Default `Server` header value.
pub const DEFAULT_SERVER_NAME: &str = "percore";
/// Default size of one I/O buffer (provided receive buffer and pooled connection buffer).
pub const DEFAULT_IO_BUFFER_SIZE: u32 = 16 * 1024;
/// Default number of provided receive buffers per shard.
pub const DEFAULT_RECV_BUFFERS: u32 = 512;
/// Largest accepted timeout or drain deadline: one day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest accepted `limits.max_request_line` and `limits.max_head`: 1 MiB.
pub const MAX_HEAD_LIMIT: usize = 1 << 20;
/// Largest accepted `limits.max_headers` (the header array lives in the request arena).
pub const MAX_HEADERS_LIMIT: usize = 4096;
/// Largest accepted `limits.max_body` and `limits.max_unsent`: 1 GiB (bodies are buffered).
pub const MAX_BODY_LIMIT: u64 = 1 << 30;
/// Accepted range of `buffers.io_buffer_size`.
pub const IO_BUFFER_SIZE_RANGE: (u32, u32) = (1024, 1 << 20);
/// Largest accepted `buffers.recv_buffers` (the kernel's provided-buffer-ring limit).
pub const MAX_RECV_BUFFERS: u32 = 32768;
/// Longest Unix socket path (`sun_path` is 108 bytes including the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// The whole configuration file. Every section and field is optional; missing ones take the
/// documented defaults, unknown ones are errors.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: public listeners, shard placement, drain, hot restart.
    pub server: ServerSection,
    /// `[admin]`: the admin API listener (status, config, reload, metrics).
    pub admin: AdminSection,
    /// `[limits]`: request size limits.
    pub limits: LimitsSection,
    /// `[timeouts]`: per-connection deadlines.
    pub timeouts: TimeoutsSection,
    /// `[buffers]`: I/O buffer sizes per shard.
    pub buffers: BuffersSection,
    /// `[[routes]]`: what is served. Empty (the default) means the built-in routes
    /// ([`builtin_routes`]); see [`Config::routes_or_default`].
    pub routes: Vec<RouteConfig>,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Public addresses to listen on, each `IP:PORT` (port 0 picks a free port).
    /// Default `["127.0.0.1:8080"]`.
    pub listen: Vec<SocketAddr>,
    /// CPUs to run shards on, one shard per CPU, as a list like `"0,2-5"`; each must be in the
    /// process's affinity mask. Not together with `shards`. Default: unset (every allowed CPU).
    pub cpus: Option<String>,
    /// Number of shards, placed on the first CPUs of the affinity mask. Not together with `cpus`.
    /// Default: unset (every allowed CPU).
    pub shards: Option<usize>,
    /// How long a graceful drain (SIGTERM, hot restart) waits for in-flight requests before
    /// closing connections, as a duration string (`"30s"`, `"500ms"`). Default `"30s"`.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// How long a drain (SIGTERM, not a hot restart) keeps accepting new connections, which get
    /// `Connection: close` while `/readyz` says 503; after it the listening sockets stop
    /// listening and new connections are refused. An idle process too stays this long. `"0s"`
    /// stops at once. Default `"1s"`.
    #[serde(deserialize_with = "de_duration")]
    pub drain_accept: Duration,
    /// Unix socket path the process listens on for a hot restart handoff (the new process
    /// connects here to take over the listening sockets). Default: unset (no hot restart).
    pub control_socket: Option<PathBuf>,
    /// Value of the `Server` response header. Default `"percore"`.
    pub server_name: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: vec![default_listen()],
            cpus: None,
            shards: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_accept: DEFAULT_DRAIN_ACCEPT,
            control_socket: None,
            server_name: DEFAULT_SERVER_NAME.to_string(),
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin API (`/status`, `/config`, `/reload`, `/metrics`, ...). Must differ
    /// from every public listen address. Default `"127.0.0.1:9090"`.
    pub listen: SocketAddr,
    /// Bearer token the admin API requires (`Authorization: Bearer <token>`); printable ASCII
    /// without spaces. Default: unset (no token; keep the admin listener on loopback).
    pub token: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

/// `[limits]`: mirrors [`crate::http::Limits`] (see its constants for the reasoning).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Longest request line, in bytes; longer is 414. Default 8192.
    pub max_request_line: usize,
    /// Largest request head (request line and all headers), in bytes; larger is 431.
    /// Default 32768.
    pub max_head: usize,
    /// Most header fields in a request; more is 431. Default 100.
    pub max_headers: usize,
    /// Largest request body, in bytes; larger is 413. Default 1048576 (1 MiB).
    pub max_body: u64,
    /// Response bytes queued for a client that does not read before the connection stops
    /// reading from it, in bytes. Default 1048576 (1 MiB).
    pub max_unsent: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_request_line: l.max_request_line,
            max_head: l.max_head,
            max_headers: l.max_headers,
            max_body: l.max_body,
            max_unsent: crate::config::MAX_UNSENT as u64,
        }
    }
}

/// `[timeouts]`: duration strings such as `"10s"`, `"500ms"`, `"2m"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsSection {
    /// Absolute deadline for receiving a request head; then 408. A new connection that sends
    /// nothing for this long is closed. Default `"10s"`.
    #[serde(deserialize_with = "de_duration")]
    pub header: Duration,
    /// How long an idle keep-alive connection is kept open. Default `"75s"`.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive: Duration,
    /// Longest pause between two pieces of a request body; then 408. Default `"30s"`.
    #[serde(deserialize_with = "de_duration")]
    pub body: Duration,
    /// How long responses may wait for a client that stopped reading them (more than
    /// `limits.max_unsent` queued, or a drain); then the connection is closed. Default `"60s"`.
    #[serde(deserialize_with = "de_duration")]
    pub send: Duration,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            header: crate::config::HEADER_TIMEOUT,
            keepalive: crate::config::KEEPALIVE_TIMEOUT,
            body: crate::config::BODY_TIMEOUT,
            send: crate::config::SEND_TIMEOUT,
        }
    }
}

/// `[buffers]`: memory per shard is about `recv_buffers * io_buffer_size` plus pooled buffers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuffersSection {
    /// Size of one I/O buffer (each provided receive buffer and each pooled connection buffer),
    /// in bytes, 1024..=1048576. Default 16384 (16 KiB).
    pub io_buffer_size: u32,
    /// Provided receive buffers per shard (the kernel fills these), a power of two,
    /// 1..=32768. Default 512.
    pub recv_buffers: u32,
}

impl Default for BuffersSection {
    fn default() -> Self {
        BuffersSection {
            io_buffer_size: DEFAULT_IO_BUFFER_SIZE,
            recv_buffers: DEFAULT_RECV_BUFFERS,
        }
    }
}

/// One `[[routes]]` entry: a path pattern, its methods, what answers, and its middleware.
///
/// Several entries may share a path (e.g. `GET` and `POST` served differently) as long as their
/// methods do not overlap and their `middleware` lists are equal (middleware is per path).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern in `matchit` syntax: `/users/{id}`, `/static/{*rest}`. Required.
    pub path: String,
    /// Methods served, uppercase (`HEAD` is served by `GET` automatically). Default `["GET"]`.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// A built-in handler. Exactly one of `handler` and `respond` must be set.
    #[serde(default)]
    pub handler: Option<BuiltinHandler>,
    /// A fixed response. Exactly one of `handler` and `respond` must be set.
    #[serde(default)]
    pub respond: Option<FixedResponse>,
    /// Middleware, outermost first. Default `[]`.
    #[serde(default)]
    pub middleware: Vec<MiddlewareConfig>,
}

/// The built-in handlers a route can name (`handler = "kv"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinHandler {
    /// `Hello, World!` as `text/plain`.
    Hello,
    /// `{"message":"Hello, World!"}`.
    Json,
    /// The request body back as `application/octet-stream`.
    Echo,
    /// The shard-owned key-value store; the path must have a `{key}` parameter.
    Kv,
    /// The same store behind a mutex (for comparison); the path must have a `{key}` parameter.
    KvMutex,
    /// Liveness: always `200 ok`.
    Healthz,
    /// Readiness: `200 ready`, `503` while draining.
    Readyz,
}

impl BuiltinHandler {
    /// The name used in the file (`"kv-mutex"`).
    pub fn name(self) -> &'static str {
        match self {
            BuiltinHandler::Hello => "hello",
            BuiltinHandler::Json => "json",
            BuiltinHandler::Echo => "echo",
            BuiltinHandler::Kv => "kv",
            BuiltinHandler::KvMutex => "kv-mutex",
            BuiltinHandler::Healthz => "healthz",
            BuiltinHandler::Readyz => "readyz",
        }
    }
}

/// `respond = { status = 200, body = "one", content_type = "text/plain", headers = {..} }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    /// HTTP status, 200..=599 (a 1xx is interim, not an answer). Default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response body (UTF-8 text). Must be empty for 204, 205 and 304. Default `""`.
    #[serde(default)]
    pub body: String,
    /// `Content-Type` header value. Default `"text/plain"`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Extra response headers, name → value (not `content-length`, `transfer-encoding`,
    /// `connection`, `date`, `server` or `content-type`, which the server or `content_type`
    /// sets). Default `{}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One middleware table in a route's `middleware` list, chosen by `kind`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MiddlewareConfig {
    /// `{ kind = "access_log" }`: one JSON line per request (method, path, status, duration,
    /// request id).
    AccessLog {},
    /// `{ kind = "request_id" }`: propagate `x-request-id` (or generate one) and W3C
    /// `traceparent`, and echo them on the response.
    RequestId {},
    /// `{ kind = "rate_limit", rps = 1000, burst = 100 }`: a token bucket for this route over the
    /// whole server (each shard enforces a share); 429 with `Retry-After` when exceeded.
    RateLimit {
        /// Sustained requests per second across all shards, at least 1. Required.
        rps: u64,
        /// Requests allowed in a burst above the sustained rate, at least 1.
        /// Default: unset, meaning `rps` (one second's worth).
        #[serde(default)]
        burst: Option<u64>,
    },
    /// `{ kind = "auth", token = "..." }`: require `Authorization: Bearer <token>`; 401 otherwise.
    Auth {
        /// The expected bearer token: printable ASCII without spaces, not empty. Required.
        token: String,
    },
    /// `{ kind = "headers", set = { "x-frame-options" = "DENY" } }`: add headers to every
    /// response of the route.
    Headers {
        /// Header name → value. Required.
        set: BTreeMap<String, String>,
    },
}

impl MiddlewareConfig {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            MiddlewareConfig::AccessLog {} => "access_log",
            MiddlewareConfig::RequestId {} => "request_id",
            MiddlewareConfig::RateLimit { .. } => "rate_limit",
            MiddlewareConfig::Auth { .. } => "auth",
            MiddlewareConfig::Headers { .. } => "headers",
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_methods() -> Vec<String> {
    vec!["GET".to_string()]
}
fn default_status() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain".to_string()
}

/// The built-in routes, as config values: what serves when the file has no `[[routes]]`.
///
/// `GET /` hello, `GET /json` json, `POST /echo` echo, `GET|PUT|DELETE /kv/{key}` kv,
/// `GET|PUT|DELETE /kv-mutex/{key}` kv-mutex, `GET /healthz` healthz, `GET /readyz` readyz.
pub fn builtin_routes() -> Vec<RouteConfig> {
    let r = |path: &str, methods: &[&str], h: BuiltinHandler| RouteConfig {
        path: path.to_string(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        handler: Some(h),
        respond: None,
        middleware: Vec::new(),
    };
    let kv = ["GET", "PUT", "DELETE"];
    vec![
        r("/", &["GET"], BuiltinHandler::Hello),
        r("/json", &["GET"], BuiltinHandler::Json),
        r("/echo", &["POST"], BuiltinHandler::Echo),
        r("/kv/{key}", &kv, BuiltinHandler::Kv),
        r("/kv-mutex/{key}", &kv, BuiltinHandler::KvMutex),
        r("/healthz", &["GET"], BuiltinHandler::Healthz),
        r("/readyz", &["GET"], BuiltinHandler::Readyz),
    ]
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A configuration error: where it is and what is wrong. `Display` is one line,
/// `FILE:LINE: FIELD: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from, as given to [`Config::parse`].
    pub origin: String,
    /// 1-based line of the offending key or value, when the document locates it.
    pub line: Option<usize>,
    /// Dotted path of the offending field (`routes[1].respond.status`); empty for errors that
    /// concern the whole file (TOML syntax, unreadable file).
    pub field: String,
    /// What is wrong, one line.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure before it is located in a document.
#[derive(Debug)]
struct Issue {
    /// The field the message is about.
    field: String,
    /// Other fields to point at, in order, when `field` is not written in the file.
    also: Vec<String>,
    message: String,
}

fn issue(field: impl Into<String>, message: impl Into<String>) -> Issue {
    Issue {
        field: field.into(),
        also: Vec::new(),
        message: message.into(),
    }
}

/// Collapses a possibly multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Parsing, loading, validation
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Parses and validates `text`; `origin` names it in errors (usually the file name).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => return Err(locate_parse_error(text, origin, &e)),
        };
        match config.check() {
            Ok(()) => Ok(config),
            Err(issue) => Err(locate_issue(text, origin, issue)),
        }
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &origin),
            Err(e) => Err(ConfigError {
                origin,
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Validates a config built or changed in code (e.g. after command-line overrides). Errors
    /// name the field but no line; `origin` is `<config>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|i| ConfigError {
            origin: "<config>".to_string(),
            line: None,
            field: i.field,
            message: i.message,
        })
    }

    /// The routes to serve: the configured ones, or [`builtin_routes`] when none are configured.
    pub fn routes_or_default(&self) -> Vec<RouteConfig> {
        if self.routes.is_empty() {
            builtin_routes()
        } else {
            self.routes.clone()
        }
    }

    /// This config with the default routes written out (what `percore config print` shows).
    pub fn effective(&self) -> Config {
        Config {
            routes: self.routes_or_default(),
            ..self.clone()
        }
    }

    /// This config with every token replaced by `"<redacted>"` (for `GET /config`, logs).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.admin.token.is_some() {
            c.admin.token = Some("<redacted>".to_string());
        }
        for r in &mut c.routes {
            for m in &mut r.middleware {
                if let MiddlewareConfig::Auth { token } = m {
                    *token = "<redacted>".to_string();
                }
            }
        }
        c
    }

    /// The codec limits (chunk-extension and trailer limits keep their defaults).
    pub fn limits(&self) -> Limits {
        Limits {
            max_request_line: self.limits.max_request_line,
            max_head: self.limits.max_head,
            max_headers: self.limits.max_headers,
            max_body: self.limits.max_body,
            ..Limits::default()
        }
    }

    /// The per-connection settings.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            limits: self.limits(),
            header_timeout: self.timeouts.header,
            keepalive_timeout: self.timeouts.keepalive,
            body_timeout: self.timeouts.body,
            send_timeout: self.timeouts.send,
            max_unsent: usize::try_from(self.limits.max_unsent).unwrap_or(usize::MAX),
            server_name: self.server.server_name.clone(),
        }
    }

    /// The fields read only when the process starts (listen addresses, CPUs, the drain timeout,
    /// the control socket, the admin address, buffer sizes) that differ between `self` and
    /// `next`: a reload to `next` keeps them as they are until the next (hot) restart.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.server, &next.server);
        [
            ("server.listen", a.listen != b.listen),
            ("server.cpus", a.cpus != b.cpus),
            ("server.shards", a.shards != b.shards),
            ("server.drain_timeout", a.drain_timeout != b.drain_timeout),
            ("server.drain_accept", a.drain_accept != b.drain_accept),
            (
                "server.control_socket",
                a.control_socket != b.control_socket,
            ),
            ("admin.listen", self.admin.listen != next.admin.listen),
            (
                "buffers.io_buffer_size",
                self.buffers.io_buffer_size != next.buffers.io_buffer_size,
            ),
            (
                "buffers.recv_buffers",
                self.buffers.recv_buffers != next.buffers.recv_buffers,
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }

    /// Where shards run: `server.cpus`, else `server.shards`, else every allowed CPU.
    pub fn cpu_selection(&self) -> Result<CpuSelection, String> {
        if let Some(list) = &self.server.cpus {
            return parse_cpu_list(list)
                .map(CpuSelection::List)
                .map_err(|e| e.to_string());
        }
        Ok(match self.server.shards {
            Some(n) => CpuSelection::Count(n),
            None => CpuSelection::All,
        })
    }

    /// `buffers.recv_buffers` as the engine wants it (validated to fit).
    pub fn recv_buffers(&self) -> u16 {
        u16::try_from(self.buffers.recv_buffers).unwrap_or(u16::MAX)
    }

    fn check(&self) -> Result<(), Issue> {
        check_server(&self.server)?;
        check_admin(&self.admin, &self.server.listen)?;
        check_limits(&self.limits)?;
        check_timeouts(&self.timeouts)?;
        check_buffers(&self.buffers)?;
        check_routes(&self.routes)
    }
}

fn check_server(s: &ServerSection) -> Result<(), Issue> {
    if s.listen.is_empty() {
        return Err(issue("server.listen", "at least one address is needed"));
    }
    for (i, a) in s.listen.iter().enumerate() {
        if a.port() == 0 {
            continue;
        }
        if let Some(j) = s.listen[..i].iter().position(|b| b == a) {
            return Err(issue(
                format!("server.listen[{i}]"),
                format!("{a} is already listed as server.listen[{j}]"),
            ));
        }
    }
    if let Some(list) = &s.cpus {
        if s.shards.is_some() {
            return Err(issue(
                "server.shards",
                "set either server.cpus or server.shards, not both",
            ));
        }
        if let Err(e) = parse_cpu_list(list) {
            let msg = e.to_string();
            let msg = msg.strip_prefix("cpus: ").unwrap_or(&msg);
            return Err(issue("server.cpus", format!("{list:?}: {msg}")));
        }
    }
    if let Some(n) = s.shards
        && !(1..=MAX_CPU).contains(&n)
    {
        return Err(issue(
            "server.shards",
            format!("{n} shards: must be 1..={MAX_CPU}"),
        ));
    }
    check_duration("server.drain_timeout", s.drain_timeout, true)?;
    check_duration("server.drain_accept", s.drain_accept, true)?;
    if let Some(p) = &s.control_socket {
        let len = p.as_os_str().len();
        if len == 0 {
            return Err(issue("server.control_socket", "empty path"));
        }
        if len > MAX_SOCKET_PATH {
            return Err(issue(
                "server.control_socket",
                format!("path is {len} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}"),
            ));
        }
    }
    if s.server_name.is_empty() || s.server_name.len() > 256 {
        return Err(issue("server.server_name", "must be 1 to 256 characters"));
    }
    if let Err(m) = check_header_value(&s.server_name) {
        return Err(issue("server.server_name", m));
    }
    Ok(())
}

/// Two addresses would collide if bound together: same port (not 0) and the same IP, or either
/// side is a wildcard address.
fn addr_overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_admin(a: &AdminSection, public: &[SocketAddr]) -> Result<(), Issue> {
    if let Some(i) = public.iter().position(|p| addr_overlaps(&a.listen, p)) {
        return Err(Issue {
            field: "admin.listen".to_string(),
            also: vec![format!("server.listen[{i}]")],
            message: format!(
                "{} overlaps the public listen address {} (server.listen[{i}]); the admin API \
                 must never be served on a public listener",
                a.listen, public[i]
            ),
        });
    }
    if let Some(t) = &a.token {
        check_token(t).map_err(|m| issue("admin.token", m))?;
    }
    Ok(())
}

fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("empty token (remove the key to disable the token)".to_string());
    }
    if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("a token must be printable ASCII without spaces".to_string());
    }
    Ok(())
}

fn check_limits(l: &LimitsSection) -> Result<(), Issue> {
    let range = |field: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(issue(
                format!("limits.{field}"),
                format!("{v} is out of range ({lo}..={hi})"),
            ))
        }
    };
    let head = MAX_HEAD_LIMIT as u64;
    range("max_request_line", l.max_request_line as u64, 16, head)?;
    range("max_head", l.max_head as u64, 64, head)?;
    range(
        "max_headers",
        l.max_headers as u64,
        1,
        MAX_HEADERS_LIMIT as u64,
    )?;
    range("max_body", l.max_body, 0, MAX_BODY_LIMIT)?;
    range("max_unsent", l.max_unsent, 1024, MAX_BODY_LIMIT)?;
    Ok(())
}

fn check_duration(field: &str, d: Duration, zero_ok: bool) -> Result<(), Issue> {
    if !zero_ok && d.is_zero() {
        return Err(issue(field, "must be greater than 0"));
    }
    if d > MAX_TIMEOUT {
        return Err(issue(
            field,
            format!(
                "{} is longer than the maximum {}",
                format_duration(d),
                format_duration(MAX_TIMEOUT)
            ),
        ));
    }
    Ok(())
}

fn check_timeouts(t: &TimeoutsSection) -> Result<(), Issue> {
    check_duration("timeouts.header", t.header, false)?;
    check_duration("timeouts.keepalive", t.keepalive, false)?;
    check_duration("timeouts.body", t.body, false)?;
    check_duration("timeouts.send", t.send, false)
}

fn check_buffers(b: &BuffersSection) -> Result<(), Issue> {
    let (lo, hi) = IO_BUFFER_SIZE_RANGE;
    if !(lo..=hi).contains(&b.io_buffer_size) {
        return Err(issue(
            "buffers.io_buffer_size",
            format!("{} is out of range ({lo}..={hi})", b.io_buffer_size),
        ));
    }
    if !b.recv_buffers.is_power_of_two() || b.recv_buffers > MAX_RECV_BUFFERS {
        return Err(issue(
            "buffers.recv_buffers",
            format!(
                "{} is not a power of two between 1 and {MAX_RECV_BUFFERS}",
                b.recv_buffers
            ),
        ));
    }
    Ok(())
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_header_name(n: &str) -> Result<(), String> {
    if n.is_empty() || !n.bytes().all(is_tchar) {
        return Err(format!("{n:?} is not a valid header name"));
    }
    Ok(())
}

fn check_header_value(v: &str) -> Result<(), String> {
    // Visible ASCII, space and tab; no leading or trailing whitespace (RFC 9110 §5.5).
    let ok = v.bytes().all(|b| b == b'\t' || (0x20..=0x7e).contains(&b));
    if !ok || v.starts_with([' ', '\t']) || v.ends_with([' ', '\t']) {
        return Err(format!(
            "{v:?} is not a valid header value (printable ASCII, no surrounding spaces)"
        ));
    }
    Ok(())
}

/// Response headers a fixed response or middleware may not set: the server writes them.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "date",
    "server",
];

fn check_headers(field: &str, headers: &BTreeMap<String, String>) -> Result<(), Issue> {
    for (name, value) in headers {
        let f = format!("{field}.{}", key_segment(name));
        check_header_name(name).map_err(|m| issue(&f, m))?;
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(issue(
                &f,
                format!("{name:?} is set by the server and cannot be configured"),
            ));
        }
        check_header_value(value).map_err(|m| issue(&f, m))?;
    }
    Ok(())
}

fn check_route(i: usize, r: &RouteConfig) -> Result<(), Issue> {
    let at = |f: &str| format!("routes[{i}].{f}");
    if !r.path.starts_with('/') {
        return Err(issue(
            at("path"),
            format!("{:?} must start with '/'", r.path),
        ));
    }
    if r.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(issue(
            at("path"),
            format!("{:?} contains whitespace or control characters", r.path),
        ));
    }
    if r.methods.is_empty() {
        return Err(issue(at("methods"), "at least one method is needed"));
    }
    for (j, m) in r.methods.iter().enumerate() {
        let f = format!("routes[{i}].methods[{j}]");
        if m.is_empty() || !m.bytes().all(is_tchar) {
            return Err(issue(f, format!("{m:?} is not a valid method")));
        }
        if m.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(issue(
                f,
                format!(
                    "{m:?}: methods are case-sensitive, write {:?}",
                    m.to_ascii_uppercase()
                ),
            ));
        }
        if r.methods[..j].contains(m) {
            return Err(issue(f, format!("{m} is listed twice")));
        }
    }
    match (&r.handler, &r.respond) {
        (Some(_), Some(_)) => {
            return Err(Issue {
                field: at("respond"),
                also: vec![at("handler")],
                message: "set either handler or respond, not both".to_string(),
            });
        }
        (None, None) => {
            return Err(Issue {
                field: format!("routes[{i}]"),
                also: vec![at("path")],
                message: "needs a handler (\"hello\", \"json\", \"echo\", \"kv\", \"kv-mutex\", \
                          \"healthz\", \"readyz\") or a respond table"
                    .to_string(),
            });
        }
        (Some(h @ (BuiltinHandler::Kv | BuiltinHandler::KvMutex)), None) => {
            if !r.path.contains("{key}") {
                return Err(Issue {
                    field: at("path"),
                    also: vec![at("handler")],
                    message: format!(
                        "handler {:?} needs a {{key}} parameter in the path (e.g. \"/kv/{{key}}\")",
                        h.name()
                    ),
                });
            }
        }
        (Some(_), None) => {}
        (None, Some(resp)) => {
            let f = |s: &str| format!("routes[{i}].respond.{s}");
            if !(200..=599).contains(&resp.status) {
                let why = if (100..200).contains(&resp.status) {
                    "is an interim status, not an answer"
                } else {
                    "is not an HTTP status"
                };
                return Err(issue(
                    f("status"),
                    format!("{} {why} (a route responds with 200-599)", resp.status),
                ));
            }
            let bodyless = matches!(resp.status, 204 | 205 | 304);
            if bodyless && !resp.body.is_empty() {
                return Err(issue(
                    f("body"),
                    format!("a {} response cannot have a body", resp.status),
                ));
            }
            check_header_value(&resp.content_type).map_err(|m| issue(f("content_type"), m))?;
            check_headers(&f("headers"), &resp.headers)?;
            if let Some(name) = resp
                .headers
                .keys()
                .find(|n| n.eq_ignore_ascii_case("content-type"))
            {
                return Err(issue(
                    format!("{}.{}", f("headers"), key_segment(name)),
                    "set the content type with respond.content_type",
                ));
            }
            let max = crate::handler::MAX_RESPONSE_HEADERS - 1;
            if resp.headers.len() > max {
                return Err(issue(
                    f("headers"),
                    format!("{} headers; at most {max}", resp.headers.len()),
                ));
            }
        }
    }
    for (j, m) in r.middleware.iter().enumerate() {
        let f = |s: &str| format!("routes[{i}].middleware[{j}].{s}");
        match m {
            MiddlewareConfig::AccessLog {} | MiddlewareConfig::RequestId {} => {}
            MiddlewareConfig::RateLimit { rps, burst } => {
                if *rps == 0 {
                    return Err(issue(f("rps"), "must be at least 1"));
                }
                if *burst == Some(0) {
                    return Err(issue(f("burst"), "must be at least 1"));
                }
            }
            MiddlewareConfig::Auth { token } => {
                check_token(token).map_err(|m| issue(f("token"), m))?;
            }
            MiddlewareConfig::Headers { set } => check_headers(&f("set"), set)?,
        }
    }
    Ok(())
}

fn check_routes(routes: &[RouteConfig]) -> Result<(), Issue> {
    for (i, r) in routes.iter().enumerate() {
        check_route(i, r)?;
    }
    // Entries that share a path: methods must not overlap, middleware must be equal.
    for (i, r) in routes.iter().enumerate() {
        if let Some(j) = routes[..i].iter().position(|p| p.path == r.path) {
            let first = &routes[j];
            for (k, m) in r.methods.iter().enumerate() {
                if first.methods.contains(m) {
                    return Err(issue(
                        format!("routes[{i}].methods[{k}]"),
                        format!("{m} {} is already served by routes[{j}]", r.path),
                    ));
                }
            }
            if first.middleware != r.middleware {
                return Err(Issue {
                    field: format!("routes[{i}].middleware"),
                    also: vec![format!("routes[{i}].path")],
                    message: format!(
                        "routes[{j}] has the same path {:?} with different middleware; \
                         middleware applies per path, so give both the same list",
                        r.path
                    ),
                });
            }
        }
    }
    // Every distinct path must insert into one router.
    let mut router = matchit::Router::new();
    for (i, r) in routes.iter().enumerate() {
        if routes[..i].iter().any(|p| p.path == r.path) {
            continue;
        }
        if let Err(e) = router.insert(r.path.as_str(), i) {
            let msg = match &e {
                matchit::InsertError::Conflict { with } => {
                    match routes[..i].iter().position(|p| &p.path == with) {
                        Some(j) => format!("{:?} conflicts with {with:?} (routes[{j}])", r.path),
                        None => format!("{:?} conflicts with {with:?}", r.path),
                    }
                }
                other => format!("{:?}: {other}", r.path),
            };
            return Err(issue(format!("routes[{i}].path"), msg));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// Parses a duration string: a non-negative decimal number and a unit, one of `ns`, `us` (or
/// `µs`), `ms`, `s`, `m`, `h`: `"30s"`, `"500ms"`, `"1.5s"`, `"2m"`. A bare number is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    percore_bench::values::parse_duration_with(s, false)
}

/// Formats a duration in the largest unit that represents it exactly (`"30s"`, `"2m"`,
/// `"1500ms"`); [`parse_duration`] reads it back to the same value.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    for (unit, per) in UNITS {
        if ns.is_multiple_of(per) {
            return format!("{}{unit}", ns / per);
        }
    }
    format!("{ns}ns")
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\" or \"500ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

// ---------------------------------------------------------------------------------------------
// Writing TOML
// ---------------------------------------------------------------------------------------------

/// A TOML basic string: `"..."` with `\` `"` and control characters escaped.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key as written in TOML: bare when it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { k.to_string() } else { toml_str(k) }
}

/// A key as written in a field path of an error message.
fn key_segment(k: &str) -> String {
    toml_key(k)
}

fn toml_str_array<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

fn toml_inline_map(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "{}".to_string();
    }
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v)))
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

fn toml_middleware(m: &MiddlewareConfig) -> String {
    let kind = format!("kind = {}", toml_str(m.kind()));
    match m {
        MiddlewareConfig::AccessLog {} | MiddlewareConfig::RequestId {} => format!("{{ {kind} }}"),
        MiddlewareConfig::RateLimit { rps, burst } => match burst {
            Some(b) => format!("{{ {kind}, rps = {rps}, burst = {b} }}"),
            None => format!("{{ {kind}, rps = {rps} }}"),
        },
        MiddlewareConfig::Auth { token } => format!("{{ {kind}, token = {} }}", toml_str(token)),
        MiddlewareConfig::Headers { set } => {
            format!("{{ {kind}, set = {} }}", toml_inline_map(set))
        }
    }
}

impl Config {
    /// The configuration as TOML, every field written out (unset optional fields as comments);
    /// [`Config::parse`] reads it back to an equal `Config`. Routes are written as configured:
    /// call [`Config::effective`] first to show the built-in routes when none are configured.
    pub fn to_toml(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let s = &self.server;
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        // `write!` to a String cannot fail.
        let _ = writeln!(o, "[server]");
        let _ = writeln!(o, "listen = {}", toml_str_array(&listen));
        match &s.cpus {
            Some(c) => {
                let _ = writeln!(o, "cpus = {}", toml_str(c));
            }
            None => o.push_str("# cpus = (unset: every allowed CPU)\n"),
        }
        match s.shards {
            Some(n) => {
                let _ = writeln!(o, "shards = {n}");
            }
            None => o.push_str("# shards = (unset)\n"),
        }
        let _ = writeln!(
            o,
            "drain_timeout = {}",
            toml_str(&format_duration(s.drain_timeout))
        );
        let _ = writeln!(
            o,
            "drain_accept = {}",
            toml_str(&format_duration(s.drain_accept))
        );
        match &s.control_socket {
            Some(p) => {
                let _ = writeln!(o, "control_socket = {}", toml_str(&p.to_string_lossy()));
            }
            None => o.push_str("# control_socket = (unset: no hot restart)\n"),
        }
        let _ = writeln!(o, "server_name = {}", toml_str(&s.server_name));

        let _ = writeln!(o, "\n[admin]");
        let _ = writeln!(o, "listen = {}", toml_str(&self.admin.listen.to_string()));
        match &self.admin.token {
            Some(t) => {
                let _ = writeln!(o, "token = {}", toml_str(t));
            }
            None => o.push_str("# token = (unset: no token)\n"),
        }

        let l = &self.limits;
        let _ = writeln!(o, "\n[limits]");
        let _ = writeln!(o, "max_request_line = {}", l.max_request_line);
        let _ = writeln!(o, "max_head = {}", l.max_head);
        let _ = writeln!(o, "max_headers = {}", l.max_headers);
        let _ = writeln!(o, "max_body = {}", l.max_body);
        let _ = writeln!(o, "max_unsent = {}", l.max_unsent);

        let t = &self.timeouts;
        let _ = writeln!(o, "\n[timeouts]");
        for (k, d) in [
            ("header", t.header),
            ("keepalive", t.keepalive),
            ("body", t.body),
            ("send", t.send),
        ] {
            let _ = writeln!(o, "{k} = {}", toml_str(&format_duration(d)));
        }

        let _ = writeln!(o, "\n[buffers]");
        let _ = writeln!(o, "io_buffer_size = {}", self.buffers.io_buffer_size);
        let _ = writeln!(o, "recv_buffers = {}", self.buffers.recv_buffers);

        if self.routes.is_empty() {
            o.push_str("\n# no [[routes]]: the built-in routes serve\n");
        }
        for r in &self.routes {
            let _ = writeln!(o, "\n[[routes]]");
            let _ = writeln!(o, "path = {}", toml_str(&r.path));
            let _ = writeln!(o, "methods = {}", toml_str_array(&r.methods));
            if let Some(h) = r.handler {
                let _ = writeln!(o, "handler = {}", toml_str(h.name()));
            }
            if let Some(f) = &r.respond {
                let _ = writeln!(
                    o,
                    "respond = {{ status = {}, body = {}, content_type = {}, headers = {} }}",
                    f.status,
                    toml_str(&f.body),
                    toml_str(&f.content_type),
                    toml_inline_map(&f.headers)
                );
            }
            if r.middleware.is_empty() {
                let _ = writeln!(o, "middleware = []");
            } else {
                let _ = writeln!(o, "middleware = [");
                for m in &r.middleware {
                    let _ = writeln!(o, "  {},", toml_middleware(m));
                }
                let _ = writeln!(o, "]");
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------------------------
// Locating errors: a tree of every value in the document with its byte span
// ---------------------------------------------------------------------------------------------

/// `toml`'s private protocol for `toml::Spanned` (serde_spanned 0.6): a value asked for as this
/// struct is handed over as a map of start, end and the value itself — when the parser knows its
/// span. Implicit tables (`a.b = 1` makes `a` implicit) have none and come as plain maps, which
/// `toml::Spanned<T>` cannot take; this tree takes both. If a future `toml` changes the names,
/// every value just comes without a span and errors lose their line, nothing worse (a test
/// checks lines, so the change would be noticed).
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_FIELDS: &[&str] = &[
    SPANNED_START,
    "$__serde_spanned_private_end",
    "$__serde_spanned_private_value",
];

/// One value of the document.
#[derive(Debug)]
struct SpanNode {
    span: Option<Range<usize>>,
    kind: SpanKind,
}

#[derive(Debug)]
enum SpanKind {
    Table(Vec<(String, SpanNode)>),
    Array(Vec<SpanNode>),
    Leaf,
}

/// Deserializes a value asking for its span.
struct WithSpan;
/// Deserializes a value as it is.
struct Plain;

impl<'de> DeserializeSeed<'de> for WithSpan {
    type Value = SpanNode;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SpanNode, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor { spanned: true })
    }
}

impl<'de> DeserializeSeed<'de> for Plain {
    type Value = SpanNode;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SpanNode, D::Error> {
        d.deserialize_any(NodeVisitor { spanned: false })
    }
}

struct NodeVisitor {
    /// The map may be the span protocol's.
    spanned: bool,
}

fn leaf() -> SpanNode {
    SpanNode {
        span: None,
        kind: SpanKind::Leaf,
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = SpanNode;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<SpanNode, E> {
        Ok(leaf())
    }
    fn visit_i64<E>(self, _: i64) -> Result<SpanNode, E> {
        Ok(leaf())
    }
    fn visit_u64<E>(self, _: u64) -> Result<SpanNode, E> {
        Ok(leaf())
    }
    fn visit_f64<E>(self, _: f64) -> Result<SpanNode, E> {
        Ok(leaf())
    }
    fn visit_str<E>(self, _: &str) -> Result<SpanNode, E> {
        Ok(leaf())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<SpanNode, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = a.next_element_seed(WithSpan)? {
            items.push(n);
        }
        Ok(SpanNode {
            span: None,
            kind: SpanKind::Array(items),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<SpanNode, A::Error> {
        let mut entries = Vec::new();
        let Some(first) = a.next_key::<String>()? else {
            return Ok(SpanNode {
                span: None,
                kind: SpanKind::Table(entries),
            });
        };
        if self.spanned && first == SPANNED_START {
            let start: usize = a.next_value()?;
            let _end_key = a.next_key::<String>()?;
            let end: usize = a.next_value()?;
            let _value_key = a.next_key::<String>()?;
            let mut node = a.next_value_seed(Plain)?;
            node.span = Some(start..end.max(start));
            return Ok(node);
        }
        entries.push((first, a.next_value_seed(WithSpan)?));
        while let Some(k) = a.next_key::<String>()? {
            entries.push((k, a.next_value_seed(WithSpan)?));
        }
        Ok(SpanNode {
            span: None,
            kind: SpanKind::Table(entries),
        })
    }
}

impl<'de> Deserialize<'de> for SpanNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SpanNode, D::Error> {
        Plain.deserialize(d)
    }
}

/// One value of a flattened [`SpanTree`].
struct SpanEntry {
    /// Field path, `routes[1].respond.status`.
    path: String,
    /// The last key, when the value is a table entry (not an array element).
    key: Option<String>,
    /// Byte span of the value, when the parser knows it.
    span: Option<Range<usize>>,
}

/// Every value of a document by field path (`routes[1].respond.status`), with its span.
struct SpanTree {
    /// Parents before children.
    entries: Vec<SpanEntry>,
}

impl SpanTree {
    /// `None` when `text` is not valid TOML.
    fn new(text: &str) -> Option<SpanTree> {
        let root: SpanNode = toml::from_str(text).ok()?;
        let mut entries = Vec::new();
        flatten(&root, String::new(), None, &mut entries);
        Some(SpanTree { entries })
    }

    /// The span of `path`, or of a table's first located descendant when the table has none.
    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .filter(|e| e.path == path || is_descendant(&e.path, path))
            .find_map(|e| e.span.clone())
    }

    /// The path of the innermost value whose span contains `offset`; else the first value that
    /// starts on the same line.
    fn path_at(&self, text: &str, offset: usize) -> Option<String> {
        let inner = self
            .entries
            .iter()
            .filter_map(|e| e.span.as_ref().map(|s| (&e.path, s)))
            .filter(|(_, s)| s.start <= offset && offset < s.end.max(s.start + 1))
            .min_by_key(|(_, s)| s.end - s.start);
        if let Some((p, _)) = inner {
            return Some(p.clone());
        }
        let line = line_of(text, offset);
        self.entries
            .iter()
            .find(|e| {
                e.span
                    .as_ref()
                    .is_some_and(|s| line_of(text, s.start) == line)
            })
            .map(|e| e.path.clone())
    }

    /// The first value named `key` at or below `path`.
    fn find_key_below(&self, path: &str, key: &str) -> Option<(String, Range<usize>)> {
        self.entries
            .iter()
            .filter(|e| {
                e.key.as_deref() == Some(key) && (path.is_empty() || is_descendant(&e.path, path))
            })
            .find_map(|e| e.span.clone().map(|s| (e.path.clone(), s)))
    }
}

fn is_descendant(p: &str, ancestor: &str) -> bool {
    p.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn flatten(node: &SpanNode, path: String, key: Option<String>, out: &mut Vec<SpanEntry>) {
    if !path.is_empty() {
        out.push(SpanEntry {
            path: path.clone(),
            key,
            span: node.span.clone(),
        });
    }
    match &node.kind {
        SpanKind::Table(entries) => {
            for (k, child) in entries {
                let p = if path.is_empty() {
                    key_segment(k)
                } else {
                    format!("{path}.{}", key_segment(k))
                };
                flatten(child, p, Some(k.clone()), out);
            }
        }
        SpanKind::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                flatten(child, format!("{path}[{i}]"), None, out);
            }
        }
        SpanKind::Leaf => {}
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The name inside "unknown field `name`, expected ...".
fn unknown_field_name(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

fn locate_parse_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let message = one_line(e.message());
    let Some(span) = e.span() else {
        return ConfigError {
            origin: origin.to_string(),
            line: None,
            field: String::new(),
            message,
        };
    };
    let Some(tree) = SpanTree::new(text) else {
        // Not even valid TOML: a syntax error, located by its span alone.
        return ConfigError {
            origin: origin.to_string(),
            line: Some(line_of(text, span.start)),
            field: String::new(),
            message: format!("invalid TOML: {message}"),
        };
    };
    let mut line = line_of(text, span.start);
    let mut field = tree.path_at(text, span.start).unwrap_or_default();
    if let Some(name) = unknown_field_name(&message) {
        // The span may cover the enclosing table or array; point at the key itself.
        if let Some((p, s)) = tree.find_key_below(&field, name) {
            field = p;
            line = line_of(text, s.start);
        }
    }
    ConfigError {
        origin: origin.to_string(),
        line: Some(line),
        field,
        message,
    }
}

fn locate_issue(text: &str, origin: &str, issue: Issue) -> ConfigError {
    let line = SpanTree::new(text).and_then(|tree| {
        let mut candidates = vec![issue.field.clone()];
        candidates.extend(issue.also.iter().cloned());
        // Then the ancestors of the field, nearest first.
        let mut p = issue.field.as_str();
        while let Some(i) = p.rfind(['.', '[']) {
            p = &p[..i];
            candidates.push(p.to_string());
        }
        candidates
            .iter()
            .find_map(|c| tree.span_of(c))
            .map(|s| line_of(text, s.start))
    });
    ConfigError {
        origin: origin.to_string(),
        line,
        field: issue.field,
        message: issue.message,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text, "percore.toml") {
            Ok(c) => panic!("accepted:\n{text}\n{c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_match_the_server_defaults() {
        let c = Config::parse("", "empty.toml").expect("empty file is valid");
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
        assert_eq!(c.admin.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        assert_eq!(c.server.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.server.server_name, "percore");
        assert_eq!(c.limits(), Limits::default());
        let sc = c.server_config();
        let def = ServerConfig::default();
        assert_eq!(sc.limits, def.limits);
        assert_eq!(sc.header_timeout, def.header_timeout);
        assert_eq!(sc.keepalive_timeout, def.keepalive_timeout);
        assert_eq!(sc.body_timeout, def.body_timeout);
        assert_eq!(sc.max_unsent, def.max_unsent);
        assert_eq!(sc.server_name, def.server_name);
        assert_eq!(
            c.buffers.io_buffer_size as usize,
            percore_runtime::buf::DEFAULT_BUFFER_SIZE
        );
        assert_eq!(
            c.recv_buffers(),
            percore_runtime::engine::DEFAULT_RECV_BUFFERS
        );
        assert!(matches!(c.cpu_selection(), Ok(CpuSelection::All)));
        assert!(c.routes.is_empty());
        assert_eq!(c.routes_or_default(), builtin_routes());
        Config::default().validate().expect("default is valid");
    }

    #[test]
    fn configs_can_cross_threads() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<Config>();
        send_sync::<ConfigError>();
    }

    #[test]
    fn builtin_routes_are_the_documented_list() {
        let got: Vec<(String, Vec<String>, &str)> = builtin_routes()
            .into_iter()
            .map(|r| (r.path, r.methods, r.handler.map_or("", |h| h.name())))
            .collect();
        let want = [
            ("/", "GET", "hello"),
            ("/json", "GET", "json"),
            ("/echo", "POST", "echo"),
            ("/kv/{key}", "GET PUT DELETE", "kv"),
            ("/kv-mutex/{key}", "GET PUT DELETE", "kv-mutex"),
            ("/healthz", "GET", "healthz"),
            ("/readyz", "GET", "readyz"),
        ];
        assert_eq!(got.len(), want.len());
        for ((p, m, h), (wp, wm, wh)) in got.iter().zip(want) {
            assert_eq!((p.as_str(), m.join(" "), *h), (wp, wm.to_string(), wh));
        }
        Config::default().effective().validate().expect("valid");
    }

    #[test]
    fn default_round_trips() {
        let d = Config::default();
        let text = d.to_toml();
        assert_eq!(Config::parse(&text, "printed").unwrap(), d, "{text}");
        let e = d.effective();
        assert_eq!(Config::parse(&e.to_toml(), "printed").unwrap(), e);
    }

    #[test]
    fn a_full_config_round_trips() {
        let text = r#"
[server]
listen = ["0.0.0.0:80", "[::1]:8080"]
cpus = "0,2-3"
drain_timeout = "1500ms"
control_socket = "/run/percore.sock"
server_name = "edge \"1\""

[admin]
listen = "127.0.0.1:9999"
token = "s3cret"

[limits]
max_body = 0

[timeouts]
header = "2m"
keepalive = "1h"
body = "250us"

[buffers]
io_buffer_size = 4096
recv_buffers = 1024

[[routes]]
path = "/v"
methods = ["GET", "POST"]
respond = { status = 201, body = "line\nwith \\ and \"quotes\"", content_type = "application/json", headers = { "x-a" = "b", "x.dotted" = "c" } }
middleware = [
  { kind = "access_log" },
  { kind = "request_id" },
  { kind = "rate_limit", rps = 1000, burst = 100 },
  { kind = "rate_limit", rps = 5 },
  { kind = "auth", token = "t" },
  { kind = "headers", set = { "x-frame-options" = "DENY" } },
]

[[routes]]
path = "/kv/{key}"
methods = ["GET", "PUT"]
handler = "kv"
"#;
        let c = Config::parse(text, "full.toml").unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_millis(1500));
        assert_eq!(c.timeouts.body, Duration::from_micros(250));
        assert_eq!(c.server.server_name, "edge \"1\"");
        assert!(matches!(c.cpu_selection(), Ok(CpuSelection::List(v)) if v == [0, 2, 3]));
        let resp = c.routes[0].respond.as_ref().unwrap();
        assert_eq!(resp.body, "line\nwith \\ and \"quotes\"");
        assert_eq!(resp.headers.len(), 2);
        assert_eq!(c.routes[0].middleware.len(), 6);
        assert_eq!(
            c.routes[0].middleware[3],
            MiddlewareConfig::RateLimit {
                rps: 5,
                burst: None
            }
        );
        let printed = c.to_toml();
        assert_eq!(Config::parse(&printed, "printed").unwrap(), c, "{printed}");
        let red = c.redacted();
        assert_eq!(red.admin.token.as_deref(), Some("<redacted>"));
        assert!(!red.to_toml().contains("s3cret"));
    }

    #[test]
    fn durations_parse_and_format_exactly() {
        for (s, d) in [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        for bad in [
            "",
            "10",
            "s",
            "ten s",
            "1.s",
            ".5s",
            "10x",
            "-1s",
            "1e3s",
            "99999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Each bad config must be reported at exactly this line, naming this field.
    #[test]
    fn errors_name_file_line_and_field() {
        let cases: &[(&str, &str)] = &[
            // unknown field
            (
                "[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n",
                "percore.toml:3: server.lisen: unknown field `lisen`",
            ),
            // unknown top-level section
            (
                "\n[sever]\nx = 1\n",
                "percore.toml:2: sever: unknown field `sever`",
            ),
            // wrong type
            (
                "[server]\n\nshards = \"4\"\n",
                "percore.toml:3: server.shards: invalid type: string \"4\", expected usize",
            ),
            // bad socket address
            (
                "[admin]\n# c\nlisten = \"localhost\"\n",
                "percore.toml:3: admin.listen: invalid socket address syntax",
            ),
            // invalid status
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\n\n[[routes]]\npath = \"/v\"\n\
                 respond = { status = 999, body = \"one\" }\n",
                "percore.toml:7: routes[1].respond.status: 999 is not an HTTP status (a route responds with 200-599)",
            ),
            // invalid status in a standard table
            (
                "[[routes]]\npath = \"/v\"\n[routes.respond]\nbody = \"x\"\nstatus = 42\n",
                "percore.toml:5: routes[0].respond.status: 42 is not an HTTP status (a route responds with 200-599)",
            ),
            // invalid duration
            (
                "[timeouts]\nheader = \"10s\"\nkeepalive = \"10 parsecs\"\n",
                "percore.toml:3: timeouts.keepalive: \"10 parsecs\" is not a duration: unknown unit",
            ),
            (
                "[timeouts]\nbody = \"0s\"\n",
                "percore.toml:2: timeouts.body: must be greater than 0",
            ),
            // invalid cpu list
            (
                "[server]\nshards = 2\n[server.x]\n",
                "percore.toml:3: server.x: unknown field `x`",
            ),
            (
                "[server]\n\ncpus = \"0,5-3\"\n",
                "percore.toml:3: server.cpus: \"0,5-3\": descending range",
            ),
            (
                "[server]\ncpus = \"1\"\nshards = 2\n",
                "percore.toml:3: server.shards: set either server.cpus or server.shards",
            ),
            // route path conflict and invalid path
            (
                "[[routes]]\npath = \"/a/{x}\"\nhandler = \"hello\"\n\n[[routes]]\npath = \"/a/{y}\"\n\
                 handler = \"json\"\n",
                "percore.toml:6: routes[1].path: \"/a/{y}\" conflicts with \"/a/{x}\" (routes[0])",
            ),
            (
                "[[routes]]\npath = \"/a/{x\"\nhandler = \"hello\"\n",
                "percore.toml:2: routes[0].path: \"/a/{x\": Parameters must be registered",
            ),
            (
                "[[routes]]\nhandler = \"hello\"\npath = \"nope\"\n",
                "percore.toml:3: routes[0].path: \"nope\" must start with '/'",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\n[[routes]]\npath = \"/a\"\n\
                 methods = [\"POST\", \"GET\"]\nhandler = \"echo\"\n",
                "percore.toml:6: routes[1].methods[1]: GET /a is already served by routes[0]",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = [\"get\"]\nhandler = \"hello\"\n",
                "percore.toml:3: routes[0].methods[0]: \"get\": methods are case-sensitive",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"kv\"\n",
                "percore.toml:2: routes[0].path: handler \"kv\" needs a {key} parameter",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"nope\"\n",
                "percore.toml:3: routes[0].handler: unknown variant `nope`",
            ),
            (
                "[server]\n[[routes]]\npath = \"/a\"\n",
                "percore.toml:2: routes[0]: needs a handler",
            ),
            (
                "[[routes]]\nmethods = [\"GET\"]\n\n[[routes]]\npath = \"/b\"\n",
                "percore.toml:1: routes[0]: missing field `path`",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\nrespond = { status = 200 }\n",
                "percore.toml:4: routes[0].respond: set either handler or respond, not both",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrespond = { status = 204, body = \"x\" }\n",
                "percore.toml:3: routes[0].respond.body: a 204 response cannot have a body",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrespond = { status = 205, body = \"x\" }\n",
                "percore.toml:3: routes[0].respond.body: a 205 response cannot have a body",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrespond = { status = 101 }\n",
                "percore.toml:3: routes[0].respond.status: 101 is an interim status, not an answer (a route responds with 200-599)",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrespond = { headers = { \"content-length\" = \"3\" } }\n",
                "percore.toml:3: routes[0].respond.headers.content-length: \"content-length\" is set by the server",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrespond = { headers = { \"x-a\" = \"b\\r\\nx: y\" } }\n",
                "percore.toml:3: routes[0].respond.headers.x-a: \"b\\r\\nx: y\" is not a valid header value",
            ),
            // admin listen equal to a public listen address
            (
                "[server]\nlisten = [\"127.0.0.1:8080\", \"0.0.0.0:9000\"]\n[admin]\n\nlisten = \"127.0.0.1:9000\"\n",
                "percore.toml:5: admin.listen: 127.0.0.1:9000 overlaps the public listen address 0.0.0.0:9000 (server.listen[1])",
            ),
            // ... even when the admin address is the default: point at the public one
            (
                "[server]\nlisten = [\n  \"127.0.0.1:1\",\n  \"127.0.0.1:9090\",\n]\n",
                "percore.toml:4: admin.listen: 127.0.0.1:9090 overlaps",
            ),
            (
                "[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
                "percore.toml:2: server.listen[1]: 127.0.0.1:1 is already listed",
            ),
            // rate limit rps = 0
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\nmiddleware = [\n  { kind = \"access_log\" },\n  \
                 { kind = \"rate_limit\", rps = 0 },\n]\n",
                "percore.toml:6: routes[0].middleware[1].rps: must be at least 1",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\nmiddleware = [\n  { kind = \"access_log\" },\n  \
                 { kind = \"rate_limit\", rps = 1, bogus = 2 },\n]\n",
                "percore.toml:6: routes[0].middleware[1].bogus: unknown field `bogus`",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\nmiddleware = [\n  { kind = \"access_log\", x = 1 },\n]\n",
                "percore.toml:5: routes[0].middleware[0].x: unknown field `x`",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\nmiddleware = [{ kind = \"gzip\" }]\n",
                "percore.toml:4: routes[0].middleware[0].kind: unknown variant `gzip`",
            ),
            // empty token
            (
                "[admin]\ntoken = \"\"\n",
                "percore.toml:2: admin.token: empty token",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\n\nmiddleware = [{ kind = \"auth\", token = \"\" }]\n",
                "percore.toml:5: routes[0].middleware[0].token: empty token",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"hello\"\nmiddleware = [{ kind = \"headers\", set = { \"bad name\" = \"x\" } }]\n",
                "percore.toml:4: routes[0].middleware[0].set.\"bad name\": \"bad name\" is not a valid header name",
            ),
            // sizes
            (
                "[limits]\nmax_headers = 0\n",
                "percore.toml:2: limits.max_headers: 0 is out of range (1..=4096)",
            ),
            (
                "[buffers]\nrecv_buffers = 1000\n",
                "percore.toml:2: buffers.recv_buffers: 1000 is not a power of two",
            ),
            (
                "[buffers]\nio_buffer_size = -1\n",
                "percore.toml:2: buffers.io_buffer_size: invalid value: integer `-1`, expected u32",
            ),
            // dotted keys and implicit tables still locate
            (
                "[[routes]]\npath = \"/a\"\nrespond.status = 600\n",
                "percore.toml:3: routes[0].respond.status: 600 is not an HTTP status",
            ),
            // syntax errors
            ("[server]\nlisten = \n", "percore.toml:2: invalid TOML: "),
            ("[server]\n[server]\n", "percore.toml:2: invalid TOML: "),
        ];
        let mut failures = String::new();
        for (text, want) in cases {
            let got = err(text);
            if !got.starts_with(want) || got.contains('\n') {
                failures.push_str(&format!(
                    "\n--- config:\n{text}\n--- want prefix: {want}\n--- got:         {got}\n"
                ));
            }
        }
        assert!(failures.is_empty(), "{failures}");
    }

    #[test]
    fn validate_without_a_document_names_the_field() {
        let mut c = Config::default();
        c.admin.listen = c.server.listen[0];
        let e = c.validate().unwrap_err();
        assert_eq!(e.line, None);
        assert_eq!(e.field, "admin.listen");
        assert!(e.to_string().starts_with("<config>: admin.listen: "), "{e}");
        // Port 0 never collides.
        let mut c = Config::default();
        c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.admin.listen = "127.0.0.1:0".parse().unwrap();
        c.validate().expect("port 0 is ephemeral on both sides");
    }

    #[test]
    fn load_reports_unreadable_files() {
        let e = Config::load(Path::new("/nonexistent/percore.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/percore.toml: cannot read: "),
            "{e}"
        );
    }

    #[test]
    fn the_example_config_parses_and_round_trips() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/percore.example.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.routes.is_empty());
        assert_eq!(Config::parse(&c.to_toml(), "printed").unwrap(), c);
    }

    #[test]
    fn garbage_never_panics() {
        let samples = [
            "\u{0}",
            "[[routes]]\n[[routes]]\n",
            "routes = 3",
            "routes = [1, 2]",
            "[server]\nlisten = [[]]\n",
            "[limits]\nmax_body = 1e99\n",
            "[limits]\nmax_body = 18446744073709551616\n",
            "a.b.c.d = 1\n",
            "[server]\ndrain_timeout = 30\n",
            "[server]\ndrain_timeout = \"18446744073709551615s\"\n",
            "[[routes]]\npath = \"/{*a}/b\"\nhandler = \"hello\"\n",
            "[[routes]]\npath = \"/{a}{b}\"\nhandler = \"hello\"\n",
        ];
        for s in samples {
            let e = Config::parse(s, "x.toml").unwrap_err().to_string();
            assert!(e.starts_with("x.toml"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
