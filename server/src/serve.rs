//! `percore serve`: bind (or inherit) the listeners, start the shards, serve until told to stop.

use std::{sync::Arc, time::Duration};

use percore_runtime::{listener::ListenerTable, Conn, EngineConfig, IdleStrategy, RuntimeBuilder};

use crate::cli::ServeArgs;

/// Default address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Runs the server in the foreground.
pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    percore_runtime::sys::check_system()?;
    let mut listen = args.listen.clone();
    if listen.is_empty() {
        listen.push(DEFAULT_LISTEN.parse().expect("valid default"));
    }
    let mut engine = EngineConfig::default();
    if args.idle_spin_us > 0 {
        engine.idle = IdleStrategy::Spin(Duration::from_micros(args.idle_spin_us));
    }
    let builder = RuntimeBuilder::default()
        .cpus(args.cpu_selection()?)
        .engine(engine);
    let cpus = builder.resolve_cpus()?;
    let table = Arc::new(ListenerTable::bind(
        &listen,
        &cpus,
        percore_runtime::listener::DEFAULT_BACKLOG,
    )?);
    let rt = builder.spawn::<(), _, _>(table.clone(), |shard| async move {
        for l in shard.take_listeners() {
            let acc = shard.engine.listen(l.fd, l.local);
            glommio::spawn_local(async move {
                while let Ok(c) = acc.accept().await {
                    glommio::spawn_local(hello(c)).detach();
                }
            })
            .detach();
        }
        futures_lite::future::pending::<()>().await;
    })?;
    let cpu_list = percore_runtime::cpus::format_cpu_list(&{
        let mut c = rt.cpus().to_vec();
        c.sort_unstable();
        c
    });
    for addr in table.local_addrs() {
        println!(
            "percore: listening on http://{addr} ({} shards on cpus {cpu_list})",
            rt.shards()
        );
    }
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))?;
    }
    rt.wait()?;
    Ok(())
}

const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nServer: percore\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// Placeholder service: answers every request head with `Hello, World!`.
async fn hello(mut c: Conn) {
    // Bytes of "\r\n\r\n" matched so far across buffer boundaries.
    let mut matched = 0usize;
    while let Ok(Some(buf)) = c.recv().await {
        let mut n = 0;
        for &b in buf.iter() {
            matched = match (matched, b) {
                (0, b'\r') | (2, b'\r') => matched + 1,
                (1, b'\n') => 2,
                (3, b'\n') => {
                    n += 1;
                    0
                }
                (_, b'\r') => 1,
                _ => 0,
            };
        }
        drop(buf);
        for _ in 0..n {
            c.write_buf().extend_from_slice(HELLO);
        }
        if c.flush().is_err() {
            return;
        }
    }
}
