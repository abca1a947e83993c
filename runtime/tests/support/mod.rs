//! Shared helpers for the runtime's integration tests: start shards on 127.0.0.1:0 with a
//! per-connection service, and run closures on a shard from the test thread.

#![allow(dead_code)] // reason: each test file uses a different subset

use std::{
    future::Future,
    net::SocketAddr,
    sync::{mpsc, Arc},
};

use percore_runtime::{
    cpus::{allowed_cpus, CpuSelection},
    listener::ListenerTable,
    Conn, ControlHandle, Engine, EngineConfig, RuntimeBuilder,
};

/// A control message: a closure run on the shard with its engine.
pub type Ctl = Box<dyn FnOnce(&Engine) + Send>;

/// A running test server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub ctl: ControlHandle<Ctl>,
}

/// Starts `shards` shards serving each accepted connection with `service`.
pub fn start<S, Fut>(shards: usize, engine: EngineConfig, service: S) -> TestServer
where
    S: Fn(Conn, Engine) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let n = shards.min(allowed_cpus().len());
    let table = Arc::new(
        ListenerTable::bind(&["127.0.0.1:0".parse().unwrap()], &vec![0; n], 1024).unwrap(),
    );
    let addr = table.local_addrs()[0];
    let rt = RuntimeBuilder::default()
        .cpus(CpuSelection::Count(n))
        .engine(engine)
        .spawn(table, move |mut shard: percore_runtime::Shard<Ctl>| {
            let service = service.clone();
            async move {
                let inbox = shard.take_inbox();
                let engine = shard.engine.clone();
                glommio::spawn_local(inbox.run(move |f: Ctl| f(&engine))).detach();
                for l in shard.take_listeners() {
                    let acc = shard.engine.listen(l.fd, l.local);
                    let engine = shard.engine.clone();
                    let service = service.clone();
                    glommio::spawn_local(async move {
                        while let Ok(c) = acc.accept().await {
                            glommio::spawn_local(service(c, engine.clone())).detach();
                        }
                    })
                    .detach();
                }
                futures_lite::future::pending::<()>().await;
            }
        })
        .unwrap();
    let ctl = rt.control();
    // The shards run until the test process exits.
    std::mem::forget(rt);
    TestServer { addr, ctl }
}

impl TestServer {
    /// Runs `f` on shard `shard` and returns its result.
    pub fn on_shard<T: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&Engine) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        self.ctl
            .send(
                shard,
                Box::new(move |e: &Engine| {
                    let _ = tx.send(f(e));
                }),
            )
            .unwrap();
        rx.recv().unwrap()
    }

    /// Engine stats and buffer-pool stats of every shard.
    pub fn stats(
        &self,
    ) -> Vec<(
        percore_runtime::EngineStats,
        percore_runtime::buf::PoolStats,
    )> {
        (0..self.ctl.shards())
            .map(|i| self.on_shard(i, |e| (e.stats(), e.pool().stats())))
            .collect()
    }

    /// Waits (on the engines' counters) until no connection is open on any shard.
    pub fn wait_closed(
        &self,
    ) -> Vec<(
        percore_runtime::EngineStats,
        percore_runtime::buf::PoolStats,
    )> {
        loop {
            let s = self.stats();
            if s.iter().all(|(e, _)| e.open == 0) {
                return s;
            }
            std::thread::yield_now();
        }
    }
}

/// Echoes every byte back until the peer closes.
pub async fn echo(mut c: Conn, _e: Engine) {
    // Accepted sockets inherit TCP_NODELAY from the listener; a shard panic fails the test run.
    assert!(c.nodelay().unwrap(), "accepted socket lacks TCP_NODELAY");
    while let Ok(Some(buf)) = c.recv().await {
        c.write_buf().extend_from_slice(&buf);
        drop(buf);
        if c.flush().is_err() {
            return;
        }
        if c.unsent() > 1 << 20 && c.flushed().await.is_err() {
            return;
        }
    }
    let _ = c.flushed().await;
}
