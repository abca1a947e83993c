//! Listening sockets: one per shard per bind address, all in one SO_REUSEPORT group.
//!
//! The [`ListenerTable`] is built once, on the control thread, before the shards start: it keeps
//! every listening socket keyed by bind address and shard index, and hands each shard a duplicate
//! of its own. The table's copies keep the sockets open for as long as the process may hand them to
//! a successor (hot restart), so a shard that stops accepting never closes a socket whose queue
//! still holds connections.
//!
//! A fresh start refuses a port that is already taken, even though SO_REUSEPORT would let it join
//! silently: before binding, a probe socket without SO_REUSEPORT tries the address.
//!
//! The table also keeps the sockets' [`Custody`]: whether this process alone holds them or has
//! handed them to a successor. A socket's state (listening or shut down) belongs to the socket,
//! not to a descriptor, so a process that shares its sockets must never shut them down.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::{Error, Result};

/// Default listen backlog (the accept queue per shard socket). nginx uses 511 unless told; 4096
/// matches today's `net.core.somaxconn` default and absorbs connection bursts during a restart.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// The listening sockets of one bind address, one per shard.
#[derive(Debug)]
pub struct BoundAddr {
    /// The address as configured (port 0 allowed).
    pub requested: SocketAddr,
    /// The address actually bound (the ephemeral port filled in).
    pub local: SocketAddr,
    /// One listening socket per shard, index = shard id.
    pub sockets: Vec<OwnedFd>,
}

/// Every listening socket of the process, keyed by bind address and shard.
#[derive(Debug, Default)]
pub struct ListenerTable {
    entries: Vec<BoundAddr>,
    custody: Custody,
}

/// Who holds a table's listening sockets: decides whether stopping may shut them down.
///
/// `shutdown(2)` acts on the socket, which a hot-restart successor shares with this process (the
/// same open file description): shutting down a socket it holds would leave it listening on
/// nothing. So shutting down is allowed only while no handoff is in flight and none has
/// succeeded ([`Custody::close`]), and a handoff only while the sockets are not shut down
/// ([`Custody::lend`]). Cloning gives another handle to the same state; the control thread and
/// every shard hold one. Not on the request path: the lock is taken once per handoff and once
/// per shard when it stops listening.
#[derive(Clone, Debug, Default)]
pub struct Custody(Arc<Mutex<CustodyState>>);

#[derive(Debug, Default)]
struct CustodyState {
    /// Handoffs in flight: sockets sent (or being sent), the successor's verdict not yet known.
    lent: u32,
    /// A successor said READY: it holds the sockets for good.
    handed: bool,
    /// This process has shut its sockets down: they can no longer be handed over.
    closed: bool,
}

impl Custody {
    fn state(&self) -> std::sync::MutexGuard<'_, CustodyState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before sending the sockets to a successor: false once they have been shut down (the
    /// successor would get sockets that listen on nothing). Every `true` is ended by one
    /// [`Custody::settle`].
    pub fn lend(&self) -> bool {
        let mut st = self.state();
        if st.closed {
            return false;
        }
        st.lent += 1;
        true
    }

    /// The successor of a [`Custody::lend`] answered: `taken` (READY) means it holds the sockets
    /// from now on; otherwise it failed and will exit, and they are this process's alone again.
    pub fn settle(&self, taken: bool) {
        let mut st = self.state();
        st.lent = st.lent.saturating_sub(1);
        st.handed |= taken;
    }

    /// Whether this process may shut the sockets down: true when it alone holds them (and from
    /// then on no handoff can start); false while a handoff is in flight or after one succeeded,
    /// when stopping must only stop accepting and leave the sockets to the successor.
    pub fn close(&self) -> bool {
        let mut st = self.state();
        if st.lent > 0 || st.handed {
            return false;
        }
        st.closed = true;
        true
    }

    /// Whether a successor holds the sockets or is taking them over.
    pub fn is_shared(&self) -> bool {
        let st = self.state();
        st.lent > 0 || st.handed
    }
}

/// One listening socket handed to a shard.
#[derive(Debug)]
pub struct ShardListener {
    /// The real bound address.
    pub local: SocketAddr,
    /// This shard's socket (a duplicate of the table's).
    pub fd: OwnedFd,
}

impl ListenerTable {
    /// Binds `addrs`, one socket per CPU in `cpus` for each, with `backlog`.
    ///
    /// Fails with [`Error::AddrInUse`] when another socket already listens on an address, even one
    /// that would let us join its SO_REUSEPORT group.
    pub fn bind(addrs: &[SocketAddr], cpus: &[usize], backlog: i32) -> Result<Self> {
        let mut entries = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            if addr.port() != 0 {
                probe_free(addr)?;
            }
            let mut sockets = Vec::with_capacity(cpus.len());
            let mut local = addr;
            for (i, &cpu) in cpus.iter().enumerate() {
                let s = new_listener(local, backlog, Some(cpu))?;
                if i == 0 {
                    local = s
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .ok_or_else(|| Error::Listen {
                            addr,
                            source: io::Error::other("no local address"),
                        })?;
                }
                sockets.push(OwnedFd::from(s));
            }
            entries.push(BoundAddr {
                requested: addr,
                local,
                sockets,
            });
        }
        Ok(ListenerTable {
            entries,
            custody: Custody::default(),
        })
    }

    /// Builds the table from sockets inherited from a predecessor (hot restart). Extra shards get
    /// new sockets bound into the same group; surplus sockets are kept (and served by shard
    /// `i % shards`) so that no queued connection is reset.
    pub fn from_inherited(entries: Vec<BoundAddr>, cpus: &[usize], backlog: i32) -> Result<Self> {
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            while e.sockets.len() < cpus.len() {
                let cpu = cpus[e.sockets.len()];
                e.sockets
                    .push(OwnedFd::from(new_listener(e.local, backlog, Some(cpu))?));
            }
            out.push(e);
        }
        Ok(ListenerTable {
            entries: out,
            custody: Custody::default(),
        })
    }

    /// Who holds these sockets (see [`Custody`]); a handle to share with the shards.
    pub fn custody(&self) -> &Custody {
        &self.custody
    }

    /// All bound addresses with their sockets.
    pub fn entries(&self) -> &[BoundAddr] {
        &self.entries
    }

    /// The real local addresses, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.entries.iter().map(|e| e.local).collect()
    }

    /// Duplicates of the sockets shard `shard` of `shards` serves: its own socket of each address,
    /// plus any surplus inherited socket whose index maps to it.
    pub fn for_shard(&self, shard: usize, shards: usize) -> Result<Vec<ShardListener>> {
        let mut out = Vec::new();
        for e in &self.entries {
            for (i, fd) in e.sockets.iter().enumerate() {
                if i % shards == shard {
                    let dup = fd.try_clone().map_err(|source| Error::Listen {
                        addr: e.local,
                        source,
                    })?;
                    out.push(ShardListener {
                        local: e.local,
                        fd: dup,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn map_bind_error(addr: SocketAddr, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => Error::AddrInUse(addr),
        Some(libc::EACCES) | Some(libc::EPERM) => Error::AddrPermission(addr),
        Some(libc::EADDRNOTAVAIL) => Error::AddrNotAvailable(addr),
        _ => Error::Listen { addr, source: e },
    }
}

/// Binds (without SO_REUSEPORT) and drops a socket: fails if anyone listens on `addr` already.
fn probe_free(addr: SocketAddr) -> Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::Listen { addr, source: e })?;
    s.set_reuse_address(true)
        .map_err(|e| Error::Listen { addr, source: e })?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    s.bind(&SockAddr::from(addr))
        .map_err(|e| map_bind_error(addr, e))?;
    Ok(())
}

fn new_listener(addr: SocketAddr, backlog: i32, cpu: Option<usize>) -> Result<Socket> {
    let err = |e| Error::Listen { addr, source: e };
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt per
    // listener instead of one per connection.
    s.set_nodelay(true).map_err(err)?;
    if let Some(cpu) = cpu {
        // SO_INCOMING_CPU: a hint that this socket serves `cpu`; older kernels lack it, ignore.
        let _ = s.set_cpu_affinity(cpu);
    }
    s.bind(&SockAddr::from(addr))
        .map_err(|e| map_bind_error(addr, e))?;
    s.listen(backlog).map_err(err)?;
    Ok(s)
}

/// The raw fd of a listener, for logging.
pub fn raw(l: &ShardListener) -> i32 {
    l.fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_shard_the_same_real_port() {
        let t = ListenerTable::bind(&["127.0.0.1:0".parse().unwrap()], &[0, 0, 0], 128).unwrap();
        let e = &t.entries()[0];
        assert_ne!(e.local.port(), 0);
        assert_eq!(e.sockets.len(), 3);
        for s in &e.sockets {
            let s = Socket::from(s.try_clone().unwrap());
            assert_eq!(s.local_addr().unwrap().as_socket().unwrap(), e.local);
        }
    }

    #[test]
    fn a_taken_port_is_refused_with_a_typed_error() {
        let first = ListenerTable::bind(&["127.0.0.1:0".parse().unwrap()], &[0, 0], 128).unwrap();
        let taken = first.local_addrs()[0];
        match ListenerTable::bind(&[taken], &[0], 128) {
            Err(Error::AddrInUse(a)) => assert_eq!(a, taken),
            other => panic!("expected AddrInUse, got {other:?}"),
        }
        // A plain std listener (no SO_REUSEPORT) is detected the same way.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        assert!(matches!(
            ListenerTable::bind(&[addr], &[0], 128),
            Err(Error::AddrInUse(_))
        ));
    }

    #[test]
    fn unavailable_address_is_a_typed_error() {
        // 192.0.2.0/24 is TEST-NET-1: never assigned to this machine.
        let r = ListenerTable::bind(&["192.0.2.1:0".parse().unwrap()], &[0], 128);
        assert!(matches!(r, Err(Error::AddrNotAvailable(_))), "{r:?}");
    }

    #[test]
    fn sockets_lent_or_handed_over_are_never_closed_and_closed_ones_never_lent() {
        let c = Custody::default();
        // A failed handoff gives the sockets back.
        assert!(c.lend());
        assert!(c.is_shared());
        assert!(!c.close(), "no shutdown while a successor is taking them");
        c.settle(false);
        assert!(!c.is_shared());
        // A successful one keeps them shared for good, even when a later handoff fails.
        assert!(c.lend());
        c.settle(true);
        assert!(c.lend());
        c.settle(false);
        assert!(c.is_shared());
        assert!(!c.close());
        // Once shut down, nothing is handed over; closing again (another shard) is allowed.
        let c = Custody::default();
        assert!(c.close());
        assert!(c.close());
        assert!(!c.lend());
        // Handles share one state.
        let t = ListenerTable::default();
        let shard_side = t.custody().clone();
        assert!(t.custody().lend());
        assert!(!shard_side.close());
    }

    #[test]
    fn shards_get_their_own_sockets_and_surplus_is_spread() {
        let t = ListenerTable::bind(&["127.0.0.1:0".parse().unwrap()], &[0, 0, 0], 128).unwrap();
        assert_eq!(t.for_shard(0, 3).unwrap().len(), 1);
        // A successor with 2 shards serves the 3 inherited sockets as 2 + 1.
        assert_eq!(t.for_shard(0, 2).unwrap().len(), 2);
        assert_eq!(t.for_shard(1, 2).unwrap().len(), 1);
    }
}
