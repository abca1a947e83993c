//! Accepting and stopping: a listening socket that dies under its acceptor, and the end of
//! listening with connections still waiting in the accept queue or a successor holding the socket.

use std::{
    io::{ErrorKind, Read},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    rc::Rc,
    sync::{mpsc, Arc},
    time::Duration,
};

use percore_runtime::{
    cpus::CpuSelection, listener::ListenerTable, Acceptor, ControlHandle, Engine, EngineConfig,
    RuntimeBuilder,
};

/// A closure run on the shard with its acceptor and engine.
type Ctl = Box<dyn FnOnce(&Rc<Acceptor>, &Engine) + Send>;

/// One shard accepting on one socket; each connection gets `hello\n`, then a close.
struct OneShard {
    addr: SocketAddr,
    table: Arc<ListenerTable>,
    ctl: ControlHandle<Ctl>,
    /// What `accept` returned when it stopped returning connections.
    ended: mpsc::Receiver<String>,
}

impl OneShard {
    fn start() -> OneShard {
        let table =
            Arc::new(ListenerTable::bind(&["127.0.0.1:0".parse().unwrap()], &[0], 128).unwrap());
        let addr = table.local_addrs()[0];
        let (ended_tx, ended) = mpsc::channel();
        let rt = RuntimeBuilder::default()
            .cpus(CpuSelection::Count(1))
            .engine(EngineConfig::default())
            .spawn(
                table.clone(),
                move |mut shard: percore_runtime::Shard<Ctl>| {
                    let ended_tx = ended_tx.clone();
                    async move {
                        let l = shard.take_listeners().pop().expect("one listener");
                        let acc = Rc::new(shard.engine.listen(l.fd, l.local));
                        let (a, e) = (acc.clone(), shard.engine.clone());
                        glommio::spawn_local(shard.take_inbox().run(move |f: Ctl| f(&a, &e)))
                            .detach();
                        let err = loop {
                            match acc.accept().await {
                                Ok(mut c) => {
                                    c.write_buf().extend_from_slice(b"hello\n");
                                    glommio::spawn_local(async move {
                                        let _ = c.flushed().await;
                                    })
                                    .detach();
                                }
                                Err(e) => break e,
                            }
                        };
                        let _ = ended_tx.send(err.to_string());
                        futures_lite::future::pending::<()>().await;
                    }
                },
            )
            .unwrap();
        let ctl = rt.control();
        // The shard runs until the test process exits.
        std::mem::forget(rt);
        OneShard {
            addr,
            table,
            ctl,
            ended,
        }
    }

    /// Runs `f` on the shard and returns its result.
    fn on_shard<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Rc<Acceptor>, &Engine) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        self.ctl
            .send(
                0,
                Box::new(move |a: &Rc<Acceptor>, e: &Engine| {
                    let _ = tx.send(f(a, e));
                }),
            )
            .unwrap();
        rx.recv().unwrap()
    }

    /// Another descriptor of the shard's listening socket (as a successor would hold).
    fn socket(&self) -> OwnedFd {
        self.table.entries()[0].sockets[0].try_clone().unwrap()
    }
}

fn read_all(mut s: TcpStream) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Waits (poll(2), at most 10 s) until the listening socket has a connection in its queue.
fn wait_queued(fd: &OwnedFd) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one live pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 10_000) };
    assert_eq!(n, 1, "a connection in the accept queue");
}

#[test]
fn a_listening_socket_shut_down_by_another_holder_stops_its_acceptor_without_spinning() {
    let srv = OneShard::start();
    assert_eq!(
        read_all(TcpStream::connect(srv.addr).unwrap()).unwrap(),
        b"hello\n"
    );
    // What a predecessor did to its successor: shut the shared socket down under the acceptor.
    socket2::SockRef::from(&srv.socket())
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    let err = srv
        .ended
        .recv_timeout(Duration::from_secs(10))
        .expect("accept ends instead of re-arming for ever");
    assert!(err.contains("Invalid argument"), "{err}");
    // One failure, counted once: nothing re-arms.
    let stats = srv.on_shard(|_, e| e.stats());
    assert_eq!(stats.accept_errors, 1, "{stats:?}");
    assert_eq!(stats.accepted, 1, "{stats:?}");
}

#[test]
fn stop_listening_serves_the_connections_already_queued_and_refuses_new_ones() {
    let srv = OneShard::start();
    let (addr, sock, custody) = (srv.addr, srv.socket(), srv.table.custody().clone());
    // On the shard, which therefore cannot accept meanwhile: a client connects and waits in the
    // accept queue, then listening stops.
    let (client, stopped) = srv.on_shard(move |acc, _| {
        let client = TcpStream::connect(addr).unwrap();
        wait_queued(&sock);
        (client, acc.stop_listening(&custody))
    });
    assert!(stopped, "this process alone holds the socket");
    assert_eq!(
        read_all(client).expect("the queued client is answered, not reset"),
        b"hello\n"
    );
    let e = TcpStream::connect(srv.addr).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // The acceptor ends cleanly once its queue is empty.
    let err = srv.ended.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(err, "connection closed");
    assert_eq!(srv.on_shard(|_, e| e.stats()).accept_errors, 0);
}

#[test]
fn stop_listening_leaves_a_socket_that_a_successor_holds_listening() {
    let srv = OneShard::start();
    let successor = srv.socket();
    // The sockets are being handed over when the drain ends.
    assert!(srv.table.custody().lend());
    let custody = srv.table.custody().clone();
    assert!(!srv.on_shard(move |acc, _| acc.stop_listening(&custody)));
    assert_eq!(
        srv.ended.recv_timeout(Duration::from_secs(10)).unwrap(),
        "connection closed",
        "this process stopped accepting"
    );
    // A new client is not refused: it waits in the queue, and the successor accepts it.
    let client = TcpStream::connect(srv.addr).expect("still listening");
    wait_queued(&successor);
    let (conn, _) = socket2::SockRef::from(&successor).accept().unwrap();
    assert_eq!(
        conn.peer_addr().unwrap().as_socket().unwrap(),
        client.local_addr().unwrap()
    );
    srv.table.custody().settle(true);
}
