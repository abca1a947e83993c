//! Hot-restart handoff: the serving process passes every listening socket to its successor over a
//! Unix socket, with SCM_RIGHTS, so that the SO_REUSEPORT group and the connections queued in it
//! survive the restart.
//!
//! Everything here runs on the control thread with plain blocking std I/O and socket timeouts;
//! never on a shard.
//!
//! ```text
//!   old process (serving)                          new process (successor)
//!   HandoffServer::bind(path)
//!   HandoffServer::accept ◀──────── HELLO ──────── receive(path, shards, timeout)
//!   HandoffRequest::send  ───── HANDSHAKE ───────▶   (validates every socket)
//!                         ───── FDS × k ─────────▶
//!   Successor::wait_ready ◀──── READY | FAIL ───── ReadyHandle::ready / fail  (drop = EOF = fail)
//!   (stop accepting, drain, exit)                  (serve)
//! ```
//!
//! ## Wire format, protocol version 1
//!
//! The connection is a `SOCK_STREAM` Unix socket. Every message is one *frame*: a big-endian
//! `u32` length `L` followed by `L` bytes of body, `1 <= L <= 65536` ([`MAX_FRAME`]); a larger or
//! empty frame is a protocol error. The body's first byte is the kind; the rest, the payload. All
//! integers are big-endian. A payload with bytes left over after its fields is a protocol error.
//!
//! | kind | name      | direction  | payload |
//! |------|-----------|------------|---------|
//! | 1    | HELLO     | new → old  | magic `b"PERCOREH"` (8 bytes), version `u16`, pid `u32`, shards `u32` |
//! | 2    | HANDSHAKE | old → new  | version `u16`, pid `u32`, shards `u32`, config generation `u64`, address count `u32`, then per address: requested *addr*, local *addr*, socket count `u32` |
//! | 3    | FDS       | old → new  | fd count `u32` (1..=64); the fds themselves travel as SCM_RIGHTS with this frame |
//! | 4    | READY     | new → old  | empty |
//! | 5    | FAIL      | either way | a reason, UTF-8 (at most 1024 bytes are sent) |
//!
//! An *addr* is a family byte `4` then 4 address bytes and a `u16` port, or `6` then 16 address
//! bytes, a `u16` port, `u32` flowinfo and `u32` scope id.
//!
//! The exchange:
//! 1. The successor connects and sends HELLO. The first 11 bytes of a HELLO's body (kind, magic,
//!    version) keep this layout in every version, so any server can read a client's version. A
//!    server that does not speak that version answers FAIL and closes (so does one that finds a
//!    malformed HELLO). A connection closed without a byte is a liveness probe (another process
//!    checking whether the socket file is stale) and is skipped silently.
//! 2. The server answers HANDSHAKE with its own pid, shard count (the largest socket count of any
//!    address), the configuration generation and the bind addresses in configuration order, then
//!    sends every socket: for each address in order, for each shard index in order, in FDS frames
//!    of at most [`FDS_PER_MESSAGE`] fds (the kernel's SCM_MAX_FD is 253). The successor checks
//!    the counts, that each fd is a listening TCP socket (`SO_ACCEPTCONN`), and that its
//!    `getsockname` is the announced local address.
//! 3. The successor builds its shards on the sockets, then sends READY, or FAIL with a reason. A
//!    connection closed before either (a crash) counts as failure. After READY the old process
//!    stops accepting and drains; after a failure it keeps serving.
//!
//! Both sides check the peer's credentials (`SO_PEERCRED`): the peer must be root or run as the
//! same user. The socket file is created with mode 0600, its directory (when created here) 0700.
//!
//! The received sockets share their open file description with the old process: they are already
//! non-blocking and listening; nothing on them must be changed while both processes serve.

use std::{
    collections::VecDeque,
    fs, io,
    mem::{size_of, size_of_val},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::{
    error::{Error, Result},
    listener::{BoundAddr, Custody, ListenerTable},
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The first bytes of every HELLO payload.
pub const MAGIC: [u8; 8] = *b"PERCOREH";
/// The largest frame body accepted or sent, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// The most fds sent in one FDS frame.
pub const FDS_PER_MESSAGE: usize = 64;
/// The most bind addresses one handshake may carry.
pub const MAX_ADDRS: usize = 1024;
/// The most sockets one bind address may carry.
pub const MAX_SOCKETS_PER_ADDR: usize = 4096;
/// How long the old process waits for a connected successor's HELLO, and for its own sends.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest FAIL reason sent, in bytes.
pub const MAX_REASON: usize = 1024;

const KIND_HELLO: u8 = 1;
const KIND_HANDSHAKE: u8 = 2;
const KIND_FDS: u8 = 3;
const KIND_READY: u8 = 4;
const KIND_FAIL: u8 = 5;

/// The kernel's SCM_MAX_FD: the most fds one message can carry; the receive buffer fits them.
const SCM_MAX_FD: usize = 253;

/// The default control socket path: `$XDG_RUNTIME_DIR/percore/control.sock` when that variable is
/// set, else `/run/percore/control.sock` when running as root, else `./percore-control.sock`.
pub fn default_control_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("percore").join("control.sock"),
        // SAFETY: geteuid takes no arguments and cannot fail.
        _ if unsafe { libc::geteuid() } == 0 => PathBuf::from("/run/percore/control.sock"),
        _ => PathBuf::from("./percore-control.sock"),
    }
}

// ---------------------------------------------------------------------------------------------
// Old process: the server.

/// The serving process's end: a Unix socket a successor connects to.
///
/// Dropping it removes the socket file, unless another process has replaced it since.
#[derive(Debug)]
pub struct HandoffServer {
    listener: UnixListener,
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file this server created.
    id: (u64, u64),
}

impl HandoffServer {
    /// A handle that removes this server's socket file when it drops (see [`SocketFile`]).
    pub fn socket_file(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            id: self.id,
        }
    }

    /// Takes over the control socket at `path` from the process that handed us its sockets: binds
    /// a fresh socket next to it and renames it over `path` (atomic), so the predecessor's socket
    /// file is replaced while it drains (its `Drop` sees a different inode and leaves ours alone).
    pub fn bind_replacing(path: &Path) -> Result<HandoffServer> {
        const OP: &str = "handoff bind";
        let tmp = path.with_extension(format!("new-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut server = HandoffServer::bind(&tmp)?;
        fs::rename(&tmp, path).map_err(|e| Error::io(OP, with_path(path, e)))?;
        server.path = path.to_path_buf();
        Ok(server)
    }

    /// Creates the control socket at `path` (and its directory, mode 0700, when missing).
    ///
    /// A socket file already there is reused when stale (nobody accepts on it); when a process
    /// accepts on it the call fails with an [`Error::Io`] of kind `AddrInUse`. A path that exists
    /// but is not a socket is never removed (kind `AlreadyExists`).
    pub fn bind(path: &Path) -> Result<HandoffServer> {
        const OP: &str = "handoff bind";
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if fs::symlink_metadata(dir).is_err() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Error::io(OP, with_path(dir, e)))?;
            }
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(Error::io(
                    OP,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: exists and is not a socket", path.display()),
                    ),
                ));
            }
            Ok(_) => match probe(path).map_err(|e| Error::io(OP, with_path(path, e)))? {
                Probe::Live => {
                    return Err(Error::io(
                        OP,
                        io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "{}: another process serves this control socket",
                                path.display()
                            ),
                        ),
                    ));
                }
                Probe::Stale => match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(OP, with_path(path, e))),
                },
                Probe::Gone => {}
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(OP, with_path(path, e))),
        }
        let listener = UnixListener::bind(path).map_err(|e| Error::io(OP, with_path(path, e)))?;
        let meta = fs::symlink_metadata(path).map_err(|e| Error::io(OP, with_path(path, e)))?;
        let server = HandoffServer {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        };
        // From here on, dropping `server` removes the file.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(OP, with_path(path, e)))?;
        server
            .listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(OP, e))?;
        Ok(server)
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a successor (at most `timeout`; `None` = for ever) and reads its HELLO (at most
    /// [`IO_TIMEOUT`] once connected).
    ///
    /// A successor speaking another protocol version, or sending anything malformed, is answered
    /// with FAIL and the call fails; the server stays usable.
    pub fn accept(&self, timeout: Option<Duration>) -> Result<HandoffRequest> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Some(req) = HandoffRequest::from_stream(stream)? {
                        return Ok(req);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_readable(self.listener.as_fd(), deadline)
                        .map_err(|e| Error::io("handoff accept", e))?
                    {
                        return Err(Error::io(
                            "handoff accept",
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no successor connected in time",
                            ),
                        ));
                    }
                }
                Err(e) if retryable_accept(&e) => {}
                Err(e) => return Err(Error::io("handoff accept", e)),
            }
        }
    }

    /// Like [`accept`](Self::accept) but returns `Ok(None)` at once when no successor is waiting
    /// (for a control loop that polls [`as_raw_fd`](AsRawFd::as_raw_fd) for readability).
    pub fn try_accept(&self) -> Result<Option<HandoffRequest>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return HandoffRequest::from_stream(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if retryable_accept(&e) => {}
                Err(e) => return Err(Error::io("handoff accept", e)),
            }
        }
    }
}

impl AsRawFd for HandoffServer {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl AsFd for HandoffServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for HandoffServer {
    fn drop(&mut self) {
        remove_if_same(&self.path, self.id);
    }
}

/// Removes `path` if it is still the file `id` names (not one a successor put there since).
fn remove_if_same(path: &Path, id: (u64, u64)) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if (meta.dev(), meta.ino()) == id {
            let _ = fs::remove_file(path);
        }
    }
}

/// The socket file of a [`HandoffServer`], removed when this drops if it is still that server's
/// (a successor's `bind_replacing` puts another file there): for the process that keeps it until
/// it exits while the server itself waits for successors on a thread that is never joined.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        remove_if_same(&self.path, self.id);
    }
}

/// A connected successor that has said HELLO; answer it with [`send`](Self::send) (or
/// [`reject`](Self::reject)).
#[derive(Debug)]
pub struct HandoffRequest {
    chan: Channel,
    pid: u32,
    shards: u32,
}

impl HandoffRequest {
    /// Reads the HELLO. `Ok(None)`: the peer closed without sending a byte (a liveness probe).
    fn from_stream(stream: UnixStream) -> Result<Option<HandoffRequest>> {
        const OP: &str = "handoff hello";
        stream
            .set_nonblocking(false)
            .map_err(|e| Error::io(OP, e))?;
        let mut chan = Channel::new(stream);
        if let Err(e) = check_peer(&chan.stream) {
            chan.fail_quietly(&e.to_string());
            return Err(Error::io(OP, e));
        }
        let deadline = Instant::now() + IO_TIMEOUT;
        let frame = match chan.recv_frame(deadline) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    chan.fail_quietly(&e.to_string());
                }
                return Err(Error::io(OP, e));
            }
        };
        match parse_hello(&frame) {
            Ok((pid, shards)) => Ok(Some(HandoffRequest { chan, pid, shards })),
            Err(HelloError::Version(v)) => {
                chan.fail_quietly(&format!(
                    "handoff protocol version {v} is not supported by the serving process \
                     (it speaks version {PROTOCOL_VERSION})"
                ));
                Err(Error::io(
                    OP,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "successor speaks handoff protocol version {v}, this process speaks \
                             version {PROTOCOL_VERSION}"
                        ),
                    ),
                ))
            }
            Err(HelloError::Invalid(e)) => {
                chan.fail_quietly(&e.to_string());
                Err(Error::io(OP, e))
            }
        }
    }

    /// The successor's pid, as it announced it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The successor's shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Refuses the handoff (for instance while already draining): sends FAIL with `reason`.
    pub fn reject(mut self, reason: &str) -> Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        self.chan
            .send_frame(KIND_FAIL, truncate(reason).as_bytes(), &[], deadline)
            .map_err(|e| Error::io("handoff reject", e))
    }

    /// Sends the handshake and every socket of `table` (per address, per shard index, in order),
    /// then returns the handle that waits for the successor's verdict.
    ///
    /// From here until that verdict the table's [`Custody`] counts the sockets as lent, so that
    /// this process does not shut them down under the successor; sockets this process has
    /// already shut down are not sent (the successor gets FAIL).
    pub fn send(mut self, table: &ListenerTable, config_generation: u64) -> Result<Successor> {
        const OP: &str = "handoff send";
        if !table.custody().lend() {
            let reason = "this process has stopped listening (it is shutting down)";
            self.chan.fail_quietly(reason);
            return Err(Error::io(OP, io::Error::other(reason)));
        }
        // Settles the lend on every return below, as the `Successor` does later.
        let mut lent = Lent::new(table.custody().clone());
        let entries = table.entries();
        let invalid = |m: String| Error::io(OP, io::Error::new(io::ErrorKind::InvalidInput, m));
        if entries.len() > MAX_ADDRS {
            return Err(invalid(format!(
                "{} bind addresses, the handoff carries at most {MAX_ADDRS}",
                entries.len()
            )));
        }
        let shards = entries.iter().map(|e| e.sockets.len()).max().unwrap_or(0);
        let mut enc = Enc::default();
        enc.u16(PROTOCOL_VERSION);
        enc.u32(std::process::id());
        enc.u32(shards as u32);
        enc.u64(config_generation);
        enc.u32(entries.len() as u32);
        for e in entries {
            if e.sockets.is_empty() || e.sockets.len() > MAX_SOCKETS_PER_ADDR {
                return Err(invalid(format!(
                    "{}: {} sockets, the handoff carries 1 to {MAX_SOCKETS_PER_ADDR}",
                    e.local,
                    e.sockets.len()
                )));
            }
            enc.addr(e.requested);
            enc.addr(e.local);
            enc.u32(e.sockets.len() as u32);
        }
        let deadline = Instant::now() + IO_TIMEOUT;
        self.chan
            .send_frame(KIND_HANDSHAKE, &enc.0, &[], deadline)
            .map_err(|e| Error::io(OP, e))?;
        let all: Vec<BorrowedFd<'_>> = entries
            .iter()
            .flat_map(|e| e.sockets.iter().map(|s| s.as_fd()))
            .collect();
        for batch in all.chunks(FDS_PER_MESSAGE) {
            self.chan
                .send_frame(
                    KIND_FDS,
                    &(batch.len() as u32).to_be_bytes(),
                    batch,
                    deadline,
                )
                .map_err(|e| Error::io(OP, e))?;
        }
        Ok(Successor {
            chan: self.chan,
            pid: self.pid,
            shards: self.shards,
            lent: lent.take(),
        })
    }
}

/// A [`Custody::lend`] not settled yet: dropping it settles it as a failure.
#[derive(Debug)]
struct Lent(Option<Custody>);

impl Lent {
    fn new(custody: Custody) -> Lent {
        Lent(Some(custody))
    }

    fn take(&mut self) -> Lent {
        Lent(self.0.take())
    }

    fn settle(&mut self, taken: bool) {
        if let Some(c) = self.0.take() {
            c.settle(taken);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// A successor that has received every socket; [`wait_ready`](Self::wait_ready) for its verdict.
/// Until READY the sockets count as lent (see [`Custody`]); a failure, or dropping this without
/// a verdict (the successor then fails its READY and exits), gives them back.
#[derive(Debug)]
pub struct Successor {
    chan: Channel,
    pid: u32,
    shards: u32,
    lent: Lent,
}

impl Successor {
    /// The successor's pid, as it announced it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The successor's shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Waits at most `timeout` for READY and returns the successor's pid. FAIL (with the
    /// successor's reason in the error), the connection closing, a timeout or anything malformed
    /// is an error: the old process then keeps serving.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<u32> {
        let verdict = self.read_verdict(timeout);
        self.lent.settle(verdict.is_ok());
        verdict
    }

    fn read_verdict(&mut self, timeout: Duration) -> Result<u32> {
        const OP: &str = "handoff wait ready";
        let pid = self.pid;
        let deadline = Instant::now() + timeout;
        let frame = match self.chan.recv_frame(deadline) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(Error::io(
                    OP,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("successor {pid} closed the connection before it was ready"),
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Error::io(
                    OP,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("successor {pid} was not ready within {timeout:?}"),
                    ),
                ))
            }
            Err(e) => return Err(Error::io(OP, e)),
        };
        match frame.kind {
            KIND_READY if frame.payload.is_empty() => Ok(pid),
            KIND_FAIL => Err(Error::io(
                OP,
                io::Error::other(format!(
                    "successor {pid} failed: {}",
                    sanitize(&frame.payload)
                )),
            )),
            k => Err(Error::io(
                OP,
                proto(format!(
                    "successor {pid} sent an unexpected frame (kind {k})"
                )),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// New process: the successor.

/// What a successor receives from the process it replaces.
#[derive(Debug)]
pub struct Inherited {
    /// The old process's pid.
    pub old_pid: u32,
    /// The old process's shard count (its largest socket count of any address).
    pub old_shards: u32,
    /// The old process's configuration generation.
    pub config_generation: u64,
    /// Every bind address with its sockets, in the old configuration's order, ready for
    /// [`ListenerTable::from_inherited`].
    pub entries: Vec<BoundAddr>,
}

/// The successor's end after it has received the sockets: say [`ready`](Self::ready) or
/// [`fail`](Self::fail). Dropping it without either closes the connection, which the old process
/// takes as failure.
#[derive(Debug)]
pub struct ReadyHandle {
    chan: Channel,
    old_pid: u32,
}

impl ReadyHandle {
    /// The old process's pid.
    pub fn old_pid(&self) -> u32 {
        self.old_pid
    }

    /// Tells the old process that this one serves: it stops accepting and drains.
    pub fn ready(mut self) -> Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        self.chan
            .send_frame(KIND_READY, &[], &[], deadline)
            .map_err(|e| Error::io("handoff ready", e))
    }

    /// Tells the old process that this one cannot serve, and why (at most [`MAX_REASON`] bytes
    /// are sent): it keeps serving and logs `reason`.
    pub fn fail(mut self, reason: &str) -> Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        self.chan
            .send_frame(KIND_FAIL, truncate(reason).as_bytes(), &[], deadline)
            .map_err(|e| Error::io("handoff fail", e))
    }
}

/// Connects to the serving process at `path`, announces `shards`, and receives its sockets; the
/// whole exchange takes at most `timeout`.
pub fn receive(path: &Path, shards: usize, timeout: Duration) -> Result<(Inherited, ReadyHandle)> {
    const OP: &str = "handoff receive";
    let deadline = Instant::now() + timeout;
    let shards = u32::try_from(shards)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| {
            Error::io(
                OP,
                io::Error::new(io::ErrorKind::InvalidInput, "shard count out of range"),
            )
        })?;
    let stream = connect(path, timeout).map_err(|e| Error::io("handoff connect", e))?;
    let mut chan = Channel::new(stream);
    check_peer(&chan.stream).map_err(|e| Error::io(OP, e))?;
    let mut hello = Enc::default();
    hello.bytes(&MAGIC);
    hello.u16(PROTOCOL_VERSION);
    hello.u32(std::process::id());
    hello.u32(shards);
    chan.send_frame(KIND_HELLO, &hello.0, &[], deadline)
        .map_err(|e| Error::io(OP, e))?;
    let inherited = receive_sockets(&mut chan, deadline).map_err(|e| Error::io(OP, e))?;
    let old_pid = inherited.old_pid;
    Ok((inherited, ReadyHandle { chan, old_pid }))
}

fn receive_sockets(chan: &mut Channel, deadline: Instant) -> io::Result<Inherited> {
    let frame = chan
        .recv_frame(deadline)?
        .ok_or_else(|| eof("the serving process closed the connection before the handshake"))?;
    match frame.kind {
        KIND_HANDSHAKE => {}
        KIND_FAIL => {
            return Err(io::Error::other(format!(
                "the serving process refused: {}",
                sanitize(&frame.payload)
            )))
        }
        k => return Err(proto(format!("expected a handshake, got frame kind {k}"))),
    }
    if !frame.fds.is_empty() {
        return Err(proto("file descriptors attached to the handshake"));
    }
    let mut d = Dec::new(&frame.payload);
    let version = d.u16()?;
    if version != PROTOCOL_VERSION {
        return Err(proto(format!(
            "the serving process answered with protocol version {version}, expected \
             {PROTOCOL_VERSION}"
        )));
    }
    let old_pid = d.u32()?;
    let old_shards = d.u32()?;
    let config_generation = d.u64()?;
    let naddrs = d.u32()? as usize;
    if naddrs > MAX_ADDRS {
        return Err(proto(format!("{naddrs} bind addresses announced")));
    }
    let mut layout = Vec::with_capacity(naddrs);
    let mut total = 0usize;
    for _ in 0..naddrs {
        let requested = d.addr()?;
        let local = d.addr()?;
        let n = d.u32()? as usize;
        if n == 0 || n > MAX_SOCKETS_PER_ADDR {
            return Err(proto(format!("{local}: {n} sockets announced")));
        }
        total += n;
        layout.push((requested, local, n));
    }
    d.end()?;

    let mut fds: Vec<OwnedFd> = Vec::with_capacity(total);
    while fds.len() < total {
        let frame = chan.recv_frame(deadline)?.ok_or_else(|| {
            eof("the serving process closed the connection while sending sockets")
        })?;
        match frame.kind {
            KIND_FDS => {}
            KIND_FAIL => {
                return Err(io::Error::other(format!(
                    "the serving process gave up: {}",
                    sanitize(&frame.payload)
                )))
            }
            k => return Err(proto(format!("expected sockets, got frame kind {k}"))),
        }
        let mut d = Dec::new(&frame.payload);
        let count = d.u32()? as usize;
        d.end()?;
        if count == 0 || count > SCM_MAX_FD || count > total - fds.len() {
            return Err(proto(format!(
                "a batch of {count} sockets announced, {} outstanding",
                total - fds.len()
            )));
        }
        if frame.fds.len() != count {
            return Err(proto(format!(
                "a batch announced {count} sockets but carried {}",
                frame.fds.len()
            )));
        }
        fds.extend(frame.fds);
    }

    let mut fds = fds.into_iter();
    let mut entries = Vec::with_capacity(layout.len());
    for (requested, local, n) in layout {
        let sockets: Vec<OwnedFd> = fds.by_ref().take(n).collect();
        for (i, fd) in sockets.iter().enumerate() {
            check_listener(fd, local)
                .map_err(|e| io::Error::new(e.kind(), format!("{local} socket {i}: {e}")))?;
        }
        entries.push(BoundAddr {
            requested,
            local,
            sockets,
        });
    }
    Ok(Inherited {
        old_pid,
        old_shards,
        config_generation,
        entries,
    })
}

/// Checks that `fd` is a listening TCP socket bound to `local`.
fn check_listener(fd: &OwnedFd, local: SocketAddr) -> io::Result<()> {
    let s = SockRef::from(fd);
    if s.r#type()? != Type::STREAM {
        return Err(proto("not a stream socket"));
    }
    if s.protocol()? != Some(Protocol::TCP) {
        return Err(proto("not a TCP socket"));
    }
    if !s.is_listener()? {
        return Err(proto("not listening"));
    }
    let got = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| proto("not an inet socket"))?;
    if got.ip() != local.ip() || got.port() != local.port() {
        return Err(proto(format!("bound to {got}, announced {local}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Framing and fd passing.

/// One received frame, with the fds that arrived with it.
struct Frame {
    kind: u8,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A connected stream that sends and receives frames with fds.
#[derive(Debug)]
struct Channel {
    stream: UnixStream,
    /// Fds received and not yet handed out with a frame.
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    fn new(stream: UnixStream) -> Channel {
        Channel {
            stream,
            fds: VecDeque::new(),
        }
    }

    /// Sends one frame with `fds` attached, all of it before `deadline`.
    fn send_frame(
        &mut self,
        kind: u8,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> io::Result<()> {
        let len = payload.len() + 1;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {len} bytes exceeds {MAX_FRAME}"),
            ));
        }
        let mut bytes = Vec::with_capacity(4 + len);
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(payload);
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.send_all(&bytes, &raw, deadline)
    }

    /// Sends `bytes` with `fds` attached to the first of them.
    fn send_all(&mut self, bytes: &[u8], fds: &[RawFd], deadline: Instant) -> io::Result<()> {
        if fds.len() > SCM_MAX_FD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many fds in one message",
            ));
        }
        let mut sent = 0;
        let mut fds = fds;
        while sent < bytes.len() {
            self.stream.set_write_timeout(Some(remaining(deadline)?))?;
            let rest = &bytes[sent..];
            let mut iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            let mut cbuf: Vec<u64> = Vec::new();
            // SAFETY: msghdr is plain old data (pointers, lengths, flags); all-zero is a valid,
            // empty header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                let payload = size_of_val(fds);
                // SAFETY: CMSG_SPACE only computes a size.
                let space = unsafe { libc::CMSG_SPACE(payload as libc::c_uint) } as usize;
                cbuf = vec![0u64; space.div_ceil(size_of::<u64>())];
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                // SAFETY: msg_control points at `space` zeroed, 8-byte aligned bytes, at least one
                // cmsghdr, so CMSG_FIRSTHDR returns a non-null, aligned header inside `cbuf`, and
                // CMSG_DATA leaves room for `payload` bytes (CMSG_SPACE(payload) were reserved).
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    (*cmsg).cmsg_level = libc::SOL_SOCKET;
                    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(payload as libc::c_uint) as _;
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    for (i, fd) in fds.iter().enumerate() {
                        data.add(i).write_unaligned(*fd);
                    }
                }
            }
            // SAFETY: `msg` points at `iov` (over `rest`, live) and, when fds are attached, at
            // `cbuf` (live); sendmsg only reads them.
            let n = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            drop(cbuf);
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Too many fds in flight for this user (RLIMIT_NOFILE): the peer is reading.
                    Some(libc::ETOOMANYREFS) => {
                        remaining(deadline)?;
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Some(libc::EAGAIN) => return Err(timed_out()),
                    _ => return Err(e),
                }
            }
            sent += n as usize;
            // The kernel attached the fds to the bytes just sent.
            fds = &[];
        }
        Ok(())
    }

    /// Receives one frame. `Ok(None)`: the peer closed the connection at a frame boundary.
    fn recv_frame(&mut self, deadline: Instant) -> io::Result<Option<Frame>> {
        let mut len = [0u8; 4];
        if !self.recv_exact(&mut len, deadline, true)? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(proto(format!(
                "a frame of {len} bytes (at most {MAX_FRAME} allowed)"
            )));
        }
        let mut body = vec![0u8; len];
        self.recv_exact(&mut body, deadline, false)?;
        let kind = body[0];
        body.remove(0);
        Ok(Some(Frame {
            kind,
            payload: body,
            fds: self.fds.drain(..).collect(),
        }))
    }

    /// Fills `buf`. Returns `Ok(false)` when the peer had closed before the first byte and
    /// `eof_ok`; an EOF anywhere else is an error.
    fn recv_exact(&mut self, buf: &mut [u8], deadline: Instant, eof_ok: bool) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            self.stream.set_read_timeout(Some(remaining(deadline)?))?;
            match self.recv_some(&mut buf[filled..]) {
                Ok(0) if filled == 0 && eof_ok => return Ok(false),
                Ok(0) => {
                    return Err(eof(
                        "the peer closed the connection in the middle of a frame",
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// One recvmsg: bytes into `buf`, fds onto `self.fds`.
    fn recv_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: CMSG_SPACE only computes a size.
        let space =
            unsafe { libc::CMSG_SPACE((SCM_MAX_FD * size_of::<libc::c_int>()) as libc::c_uint) }
                as usize;
        let mut cbuf = vec![0u64; space.div_ceil(size_of::<u64>())];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is a valid, empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = (cbuf.len() * size_of::<u64>()) as _;
        // SAFETY: `msg` points at `iov` (over `buf`, writable) and `cbuf` (writable, 8-byte
        // aligned), both live for the call and of the lengths given.
        let n = unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: recvmsg filled `msg.msg_controllen` bytes of `cbuf` with well-formed control
        // messages; CMSG_FIRSTHDR/CMSG_NXTHDR only return headers that lie inside them.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null, aligned and inside `cbuf` (see above).
            let (level, kind, len) = unsafe {
                (
                    (*cmsg).cmsg_level,
                    (*cmsg).cmsg_type,
                    (*cmsg).cmsg_len as usize,
                )
            };
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN only computes a size.
                let header = unsafe { libc::CMSG_LEN(0) } as usize;
                let count = len.saturating_sub(header) / size_of::<libc::c_int>();
                // SAFETY: the kernel wrote `count` fds after this header, inside `cbuf`.
                let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
                for i in 0..count {
                    // SAFETY: `i < count`, inside the control message (read unaligned to be
                    // safe); the fd was just installed in this process and nobody else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) };
                    self.fds.push_back(fd);
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR: the next header is inside `cbuf` or null.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(proto(
                "control data truncated (too many fds in one message)",
            ));
        }
        Ok(n as usize)
    }

    /// Best effort FAIL before giving up on a peer; errors are ignored (the peer may be gone).
    fn fail_quietly(&mut self, reason: &str) {
        let deadline = Instant::now() + Duration::from_millis(100);
        let _ = self.send_frame(KIND_FAIL, truncate(reason).as_bytes(), &[], deadline);
    }
}

enum HelloError {
    Version(u16),
    Invalid(io::Error),
}

/// Parses HELLO: (pid, shards).
fn parse_hello(frame: &Frame) -> std::result::Result<(u32, u32), HelloError> {
    if frame.kind != KIND_HELLO {
        return Err(HelloError::Invalid(proto(format!(
            "expected a hello, got frame kind {}",
            frame.kind
        ))));
    }
    if !frame.fds.is_empty() {
        return Err(HelloError::Invalid(proto(
            "file descriptors attached to the hello",
        )));
    }
    let mut d = Dec::new(&frame.payload);
    let magic = d.take(MAGIC.len()).map_err(HelloError::Invalid)?;
    if magic != MAGIC {
        return Err(HelloError::Invalid(proto("not a percore handoff hello")));
    }
    let version = d.u16().map_err(HelloError::Invalid)?;
    if version != PROTOCOL_VERSION {
        return Err(HelloError::Version(version));
    }
    let fields = (|| {
        let pid = d.u32()?;
        let shards = d.u32()?;
        d.end()?;
        if shards == 0 {
            return Err(proto("a successor with 0 shards"));
        }
        Ok((pid, shards))
    })();
    fields.map_err(HelloError::Invalid)
}

// ---------------------------------------------------------------------------------------------
// Encoding.

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
    fn addr(&mut self, a: SocketAddr) {
        match a {
            SocketAddr::V4(a) => {
                self.u8(4);
                self.bytes(&a.ip().octets());
                self.u16(a.port());
            }
            SocketAddr::V6(a) => {
                self.u8(6);
                self.bytes(&a.ip().octets());
                self.u16(a.port());
                self.u32(a.flowinfo());
                self.u32(a.scope_id());
            }
        }
    }
}

struct Dec<'a> {
    b: &'a [u8],
}

impl<'a> Dec<'a> {
    fn new(b: &'a [u8]) -> Self {
        Dec { b }
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(proto("truncated message"));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn addr(&mut self) -> io::Result<SocketAddr> {
        match self.u8()? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                let port = self.u16()?;
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = self.u16()?;
                let flowinfo = self.u32()?;
                let scope = self.u32()?;
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope)))
            }
            f => Err(proto(format!("unknown address family {f}"))),
        }
    }
    fn end(self) -> io::Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(proto(format!("{} unexpected trailing bytes", self.b.len())))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

enum Probe {
    /// Something accepts connections on the socket.
    Live,
    /// The file is a socket nobody listens on.
    Stale,
    /// The file went away meanwhile.
    Gone,
}

/// Connects (without blocking) to a socket file to tell a live server from a stale file.
fn probe(path: &Path) -> io::Result<Probe> {
    let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    s.set_nonblocking(true)?;
    match s.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(Probe::Live),
        Err(e) => match e.raw_os_error() {
            // A full backlog: someone listens but is slow to accept.
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(Probe::Live),
            Some(libc::ECONNREFUSED) => Ok(Probe::Stale),
            Some(libc::ENOENT) => Ok(Probe::Gone),
            _ => Err(e),
        },
    }
}

/// Connects to the control socket at `path`, waiting at most `timeout` on a full backlog.
fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    // SO_SNDTIMEO bounds a blocking connect's wait for room in the listener's backlog.
    if !timeout.is_zero() {
        s.set_write_timeout(Some(timeout))?;
    }
    let addr = SockAddr::unix(path).map_err(|e| with_path(path, e))?;
    match s.connect(&addr) {
        Ok(()) => Ok(UnixStream::from(OwnedFd::from(s))),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::ENOENT) => io::Error::new(
                e.kind(),
                format!("{}: no serving process (no control socket)", path.display()),
            ),
            Some(libc::ECONNREFUSED) => io::Error::new(
                e.kind(),
                format!(
                    "{}: no serving process (stale control socket)",
                    path.display()
                ),
            ),
            Some(libc::EAGAIN) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: the serving process does not accept", path.display()),
            ),
            _ => with_path(path, e),
        }),
    }
}

/// The peer must be root or run as our effective user.
fn check_peer(stream: &UnixStream) -> io::Result<()> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live ucred and its size; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid != 0 && cred.uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "peer pid {} runs as uid {}, this process as uid {me}",
                cred.pid, cred.uid
            ),
        ));
    }
    Ok(())
}

/// Waits until `fd` is readable or `deadline` passes (`None`: for ever). `Ok(false)`: timed out.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                // Round up so that a wait never ends just before the deadline.
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc > 0 {
            return Ok(true);
        }
    }
}

fn retryable_accept(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::ECONNABORTED)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(timed_out())
    } else {
        Ok(left)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `reason` cut to at most [`MAX_REASON`] bytes, on a character boundary.
fn truncate(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A peer's reason, made safe to log: lossy UTF-8, control characters escaped, bounded.
fn sanitize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REASON)]);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        thread,
    };

    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// A fresh directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("percore-handoff-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn join(&self, p: &str) -> PathBuf {
            self.0.join(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn kind(e: &Error) -> io::ErrorKind {
        match e {
            Error::Io { source, .. } => source.kind(),
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    fn table() -> ListenerTable {
        let any = "127.0.0.1:0".parse().unwrap();
        ListenerTable::bind(&[any, any], &[0, 0, 0], 128).unwrap()
    }

    fn cookie(fd: &OwnedFd) -> u64 {
        SockRef::from(fd).cookie().unwrap()
    }

    /// Runs the old side on this thread and `successor` (given the receive result) on another;
    /// returns what `wait_ready` said and what the successor returned.
    fn handoff<R: Send + 'static>(
        dir: &TempDir,
        table: &ListenerTable,
        successor: impl FnOnce(Inherited, ReadyHandle) -> R + Send + 'static,
    ) -> (Result<u32>, R) {
        let path = dir.join("control.sock");
        let server = HandoffServer::bind(&path).unwrap();
        let client = thread::spawn(move || {
            let (inherited, handle) = receive(&path, 2, T).unwrap();
            successor(inherited, handle)
        });
        let req = server.accept(Some(T)).unwrap();
        assert_eq!(req.pid(), std::process::id());
        assert_eq!(req.shards(), 2);
        let mut succ = req.send(table, 7).unwrap();
        let verdict = succ.wait_ready(T);
        (verdict, client.join().unwrap())
    }

    #[test]
    fn round_trip_hands_every_socket_to_the_successor() {
        let dir = TempDir::new("roundtrip");
        let table = table();
        let (verdict, inherited) = handoff(&dir, &table, |inherited, handle| {
            assert_eq!(handle.old_pid(), std::process::id());
            handle.ready().unwrap();
            inherited
        });
        assert_eq!(verdict.unwrap(), std::process::id());
        assert_eq!(inherited.old_pid, std::process::id());
        assert_eq!(inherited.old_shards, 3);
        assert_eq!(inherited.config_generation, 7);
        assert_eq!(inherited.entries.len(), 2);
        for (got, want) in inherited.entries.iter().zip(table.entries()) {
            assert_eq!(got.requested, want.requested);
            assert_eq!(got.local, want.local);
            assert_eq!(got.sockets.len(), 3);
            // The same sockets, in shard order (SO_COOKIE identifies a socket, not an fd).
            for (g, w) in got.sockets.iter().zip(&want.sockets) {
                assert_ne!(g.as_raw_fd(), w.as_raw_fd());
                assert_eq!(cookie(g), cookie(w));
            }
        }

        // A connection queued in the group is accepted from the received sockets.
        let e = &inherited.entries[1];
        let client = TcpStream::connect(e.local).unwrap();
        let mut pfds: Vec<libc::pollfd> = e
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 10_000) };
        assert_eq!(n, 1, "exactly one received socket holds the connection");
        let ready = pfds
            .iter()
            .position(|p| p.revents & libc::POLLIN != 0)
            .unwrap();
        let (conn, _) = SockRef::from(&e.sockets[ready]).accept().unwrap();
        assert_eq!(
            conn.peer_addr().unwrap().as_socket().unwrap(),
            client.local_addr().unwrap()
        );

        // The successor's table keeps every inherited socket, even with fewer shards.
        let t = ListenerTable::from_inherited(inherited.entries, &[0, 0], 128).unwrap();
        assert_eq!(t.entries()[0].sockets.len(), 3);
        assert_eq!(t.local_addrs(), table.local_addrs());
    }

    #[test]
    fn fail_reason_reaches_the_old_process() {
        let dir = TempDir::new("fail");
        let table = table();
        let (verdict, ()) = handoff(&dir, &table, |_, handle| {
            handle.fail("bad config").unwrap();
        });
        let e = verdict.unwrap_err();
        assert!(e.to_string().contains("bad config"), "{e}");
        // The sockets are this process's alone again: stopping may shut them down.
        assert!(!table.custody().is_shared());
        assert!(table.custody().close());
    }

    #[test]
    fn sockets_a_successor_took_are_never_shut_down_by_the_old_process() {
        let dir = TempDir::new("custody");
        let table = table();
        let custody = table.custody().clone();
        let (verdict, ()) = handoff(&dir, &table, move |_, handle| {
            // Sent, not yet confirmed: the old process must not shut them down meanwhile.
            assert!(custody.is_shared());
            assert!(!custody.close());
            handle.ready().unwrap();
        });
        verdict.unwrap();
        assert!(
            !table.custody().close(),
            "the successor holds them for good"
        );
    }

    #[test]
    fn sockets_already_shut_down_are_not_handed_over() {
        let dir = TempDir::new("closed");
        let table = table();
        assert!(table.custody().close());
        let path = dir.join("control.sock");
        let server = HandoffServer::bind(&path).unwrap();
        let client = thread::spawn(move || receive(&path, 2, T).map(|_| ()));
        let e = server.accept(Some(T)).unwrap().send(&table, 1).unwrap_err();
        assert!(e.to_string().contains("stopped listening"), "{e}");
        let e = client.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("stopped listening"), "{e}");
    }

    #[test]
    fn dropping_the_ready_handle_is_a_failure() {
        let dir = TempDir::new("drop");
        let table = table();
        let (verdict, ()) = handoff(&dir, &table, |_, handle| drop(handle));
        let e = verdict.unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn an_empty_table_hands_off_nothing() {
        let dir = TempDir::new("empty");
        let table = ListenerTable::default();
        let (verdict, inherited) = handoff(&dir, &table, |inherited, handle| {
            handle.ready().unwrap();
            inherited
        });
        assert_eq!(verdict.unwrap(), std::process::id());
        assert!(inherited.entries.is_empty());
    }

    #[test]
    fn many_sockets_travel_in_batches() {
        let dir = TempDir::new("batches");
        let any = "127.0.0.1:0".parse().unwrap();
        let table = ListenerTable::bind(&[any], &[0; 150], 16).unwrap();
        let (verdict, inherited) = handoff(&dir, &table, |inherited, handle| {
            handle.ready().unwrap();
            inherited
        });
        verdict.unwrap();
        let got = &inherited.entries[0].sockets;
        assert_eq!(got.len(), 150);
        for (g, w) in got.iter().zip(&table.entries()[0].sockets) {
            assert_eq!(cookie(g), cookie(w));
        }
    }

    fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(payload);
        v
    }

    fn hello(version: u16) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(&MAGIC);
        e.u16(version);
        e.u32(42);
        e.u32(1);
        raw_frame(KIND_HELLO, &e.0)
    }

    /// Reads one frame from a raw stream (test side).
    fn read_raw_frame(s: &mut UnixStream) -> (u8, Vec<u8>) {
        s.set_read_timeout(Some(T)).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        (body[0], body[1..].to_vec())
    }

    #[test]
    fn a_version_mismatch_is_refused_with_a_reason() {
        let dir = TempDir::new("version");
        let server = HandoffServer::bind(&dir.join("c.sock")).unwrap();
        let mut c = UnixStream::connect(server.path()).unwrap();
        c.write_all(&hello(99)).unwrap();
        let e = server.accept(Some(T)).unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("version 99"), "{e}");
        let (k, reason) = read_raw_frame(&mut c);
        assert_eq!(k, KIND_FAIL);
        let reason = String::from_utf8(reason).unwrap();
        assert!(reason.contains("version 99"), "{reason}");
        // The server is still usable.
        assert!(server.try_accept().unwrap().is_none());
    }

    #[test]
    fn garbage_from_a_client_is_refused_without_panic() {
        let dir = TempDir::new("garbage");
        let server = HandoffServer::bind(&dir.join("c.sock")).unwrap();
        let mut bad_magic = hello(PROTOCOL_VERSION);
        bad_magic[5] ^= 0xff;
        let mut trailing = hello(PROTOCOL_VERSION);
        trailing.push(0);
        trailing[3] += 1;
        let mut zero_shards = hello(PROTOCOL_VERSION);
        let n = zero_shards.len();
        zero_shards[n - 1] = 0;
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // a huge length
            vec![0, 0, 0, 0],                              // an empty frame
            vec![0, 1, 0, 1],                              // 65537 bytes
            raw_frame(9, b"what"),                         // an unknown kind
            raw_frame(KIND_READY, b""),                    // the wrong kind
            raw_frame(KIND_HELLO, b"PERC"),                // truncated magic
            raw_frame(KIND_HELLO, &MAGIC),                 // no version
            bad_magic,
            trailing,
            zero_shards,
            hello(PROTOCOL_VERSION)[..9].to_vec(), // cut in the middle, then closed
        ];
        for (i, bytes) in cases.into_iter().enumerate() {
            let mut c = UnixStream::connect(server.path()).unwrap();
            c.write_all(&bytes).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let e = server.accept(Some(T)).unwrap_err();
            let k = kind(&e);
            assert!(
                k == io::ErrorKind::InvalidData || k == io::ErrorKind::UnexpectedEof,
                "case {i}: {e}"
            );
        }
        // Still serving: a real successor gets through.
        let table = ListenerTable::default();
        let path = server.path().to_path_buf();
        let client = thread::spawn(move || receive(&path, 1, T).map(|(_, h)| h.ready()));
        let mut succ = server.accept(Some(T)).unwrap().send(&table, 1).unwrap();
        assert_eq!(succ.wait_ready(T).unwrap(), std::process::id());
        client.join().unwrap().unwrap().unwrap();
    }

    /// A fake old process: accepts one connection, reads the hello, then lets `reply` answer.
    fn fake_server(
        dir: &TempDir,
        reply: impl FnOnce(&mut Channel) + Send + 'static,
    ) -> (PathBuf, thread::JoinHandle<()>) {
        let path = dir.join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut chan = Channel::new(s);
            let f = chan.recv_frame(Instant::now() + T).unwrap().unwrap();
            assert!(parse_hello(&f).is_ok());
            reply(&mut chan);
            // Keep the connection open until the client is done with it.
            let _ = chan.recv_frame(Instant::now() + T);
        });
        (path, h)
    }

    fn handshake(addr: SocketAddr, sockets: u32) -> Vec<u8> {
        let mut e = Enc::default();
        e.u16(PROTOCOL_VERSION);
        e.u32(1);
        e.u32(sockets);
        e.u64(3);
        e.u32(1);
        e.addr(addr);
        e.addr(addr);
        e.u32(sockets);
        e.0
    }

    /// Sends a handshake announcing `sockets` listeners at `addr`, then one fds frame that says
    /// `sockets` and carries `fd`.
    fn send_handoff(c: &mut Channel, addr: SocketAddr, sockets: u32, fd: &OwnedFd) {
        c.send_frame(
            KIND_HANDSHAKE,
            &handshake(addr, sockets),
            &[],
            Instant::now() + T,
        )
        .unwrap();
        c.send_frame(
            KIND_FDS,
            &sockets.to_be_bytes(),
            &[fd.as_fd()],
            Instant::now() + T,
        )
        .unwrap();
    }

    #[test]
    fn garbage_from_the_server_is_refused_without_panic() {
        type Reply = Box<dyn FnOnce(&mut Channel) + Send>;
        let cases: Vec<(&str, Reply)> = vec![
            (
                "garbage",
                Box::new(|c: &mut Channel| {
                    c.stream.write_all(b"\xff\xff\xff\xffjunk").unwrap();
                }),
            ),
            (
                "refused",
                Box::new(|c: &mut Channel| {
                    c.send_frame(KIND_FAIL, b"draining\n", &[], Instant::now() + T)
                        .unwrap();
                }),
            ),
            (
                "bad family",
                Box::new(|c: &mut Channel| {
                    let mut h = handshake("127.0.0.1:1".parse().unwrap(), 1);
                    h[22] = 5;
                    c.send_frame(KIND_HANDSHAKE, &h, &[], Instant::now() + T)
                        .unwrap();
                }),
            ),
            (
                "not a listener",
                Box::new(|c: &mut Channel| {
                    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    let addr = udp.local_addr().unwrap();
                    send_handoff(c, addr, 1, &OwnedFd::from(udp));
                }),
            ),
            (
                "wrong address",
                Box::new(|c: &mut Channel| {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    send_handoff(c, "127.0.0.1:1".parse().unwrap(), 1, &OwnedFd::from(l));
                }),
            ),
            (
                "count mismatch",
                Box::new(|c: &mut Channel| {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let addr = l.local_addr().unwrap();
                    send_handoff(c, addr, 2, &OwnedFd::from(l));
                }),
            ),
        ];
        for (name, reply) in cases {
            let dir = TempDir::new(&format!("srvgarbage-{}", name.replace(' ', "-")));
            let (path, h) = fake_server(&dir, reply);
            let e = receive(&path, 1, T).map(|_| ()).unwrap_err();
            let msg = e.to_string();
            match name {
                "refused" => assert!(msg.contains("refused: draining\\n"), "{msg}"),
                "not a listener" => assert!(msg.contains("not a"), "{msg}"),
                "wrong address" => assert!(msg.contains("announced 127.0.0.1:1"), "{msg}"),
                _ => assert_eq!(kind(&e), io::ErrorKind::InvalidData, "{name}: {msg}"),
            }
            h.join().unwrap();
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = TempDir::new("silent");
        let path = dir.join("s.sock");
        // Listening but never accepting: connect and the hello succeed, the handshake never comes.
        let _listener = UnixListener::bind(&path).unwrap();
        let e = receive(&path, 1, Duration::from_millis(100))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::TimedOut, "{e}");
    }

    #[test]
    fn accept_times_out_when_nobody_connects() {
        let dir = TempDir::new("accept-timeout");
        let server = HandoffServer::bind(&dir.join("c.sock")).unwrap();
        let e = server.accept(Some(Duration::from_millis(20))).unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::TimedOut);
        assert!(server.try_accept().unwrap().is_none());
    }

    #[test]
    fn receive_without_a_server_fails_cleanly() {
        let dir = TempDir::new("noserver");
        let e = receive(&dir.join("none.sock"), 1, T)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn a_live_path_is_refused_and_a_stale_one_is_reused() {
        let dir = TempDir::new("live-stale");
        let path = dir.join("c.sock");
        let first = HandoffServer::bind(&path).unwrap();
        let e = HandoffServer::bind(&path).unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::AddrInUse, "{e}");
        // The liveness probe is skipped silently by the live server.
        assert!(first.try_accept().unwrap().is_none());
        assert!(path.exists(), "the failed bind left the live socket alone");

        // A socket file nobody listens on any more.
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let s = HandoffServer::bind(&stale).unwrap();
        assert!(s.try_accept().unwrap().is_none());
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = TempDir::new("notsocket");
        let path = dir.join("c.sock");
        fs::write(&path, b"keep me").unwrap();
        let e = HandoffServer::bind(&path).unwrap_err();
        assert_eq!(kind(&e), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn drop_removes_only_our_own_socket_file() {
        let dir = TempDir::new("dropfile");
        let path = dir.join("c.sock");
        drop(HandoffServer::bind(&path).unwrap());
        assert!(!path.exists());

        let server = HandoffServer::bind(&path).unwrap();
        // Someone else replaced the file (another server after a forced removal).
        fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        drop(server);
        assert!(path.exists(), "the other process's socket file stays");
    }

    #[test]
    fn bind_creates_a_private_directory_and_socket() {
        let dir = TempDir::new("private");
        let path = dir.join("a/b/control.sock");
        let _server = HandoffServer::bind(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("a/b")), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn default_control_path_follows_the_environment() {
        let p = default_control_path();
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => {
                assert_eq!(p, PathBuf::from(d).join("percore/control.sock"))
            }
            // SAFETY: geteuid takes no arguments and cannot fail.
            _ if unsafe { libc::geteuid() } == 0 => {
                assert_eq!(p, PathBuf::from("/run/percore/control.sock"))
            }
            _ => assert_eq!(p, PathBuf::from("./percore-control.sock")),
        }
    }

    #[test]
    fn addresses_round_trip_through_the_encoding() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:8080".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 443, 7, 3)),
        ];
        let mut e = Enc::default();
        for &a in &addrs {
            e.addr(a);
        }
        let mut d = Dec::new(&e.0);
        for &a in &addrs {
            assert_eq!(d.addr().unwrap(), a);
        }
        d.end().unwrap();
        // Every truncation is an error, never a panic.
        for cut in 0..e.0.len() {
            let mut d = Dec::new(&e.0[..cut]);
            let ok = (0..addrs.len()).all(|_| d.addr().is_ok());
            assert!(!ok, "a cut at {cut} parsed");
        }
    }

    #[test]
    fn reasons_are_bounded_and_made_printable() {
        let long = "é".repeat(MAX_REASON);
        let t = truncate(&long);
        assert!(t.len() <= MAX_REASON && t.len() >= MAX_REASON - 1);
        assert_eq!(
            sanitize(b"bad\x1b[31m config\n\xff"),
            "bad\\u{1b}[31m config\\n\u{fffd}"
        );
    }
}
