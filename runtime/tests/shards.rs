//! Shards, mesh, drain and failure: the runtime as a whole, on real sockets and threads.

use std::{
    cell::Cell,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    rc::Rc,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use percore_runtime::{
    cpus::{allowed_cpus, CpuSelection},
    listener::ListenerTable,
    Conn, Engine, EngineConfig, Error, MeshConfig, RuntimeBuilder,
};

mod support;
use support::{echo, start};

#[test]
fn two_shards_share_two_hundred_connections_on_one_port() {
    if allowed_cpus().len() < 2 {
        eprintln!("skipped: needs 2 CPUs");
        return;
    }
    let srv = start(2, EngineConfig::default(), echo);
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let during = srv.stats();
    assert_eq!(during.iter().map(|(e, _)| e.open).sum::<u64>(), 200);
    for (shard, (e, _)) in during.iter().enumerate() {
        assert!(
            e.accepted > 0,
            "shard {shard} served none of 200 connections: {during:?}"
        );
    }
    drop(conns);
    for (e, pool) in srv.wait_closed() {
        assert_eq!(e.accepted, e.closed);
        assert_eq!(pool.in_use, 0, "pool back to baseline: {pool:?}");
        assert_eq!(e.recv_buffers_in_use, 0);
    }
}

/// Mesh messages: `Add(n)` adds to the receiving shard's counter; `Get` replies with it;
/// `Echo` replies with the receiving shard's id.
#[derive(Clone, Debug)]
enum Msg {
    Add(u64),
    Get,
    Value(u64),
    WhoAreYou,
    Shard(usize),
}

type MeshCtl = Box<dyn FnOnce(percore_runtime::Mesh<Msg>) + Send>;

#[test]
fn mesh_call_and_broadcast_reach_every_shard() {
    let n = allowed_cpus().len().min(2);
    let mesh_cfg = MeshConfig::<Msg>::new(n, 16);
    let rt = RuntimeBuilder::default()
        .cpus(CpuSelection::Count(n))
        .spawn(
            Arc::new(ListenerTable::default()),
            move |mut shard: percore_runtime::Shard<MeshCtl>| {
                let cfg = mesh_cfg.clone();
                async move {
                    let me = shard.id;
                    let counter = Rc::new(Cell::new(0u64));
                    let c2 = counter.clone();
                    let mesh = cfg
                        .join(me, move |_from: usize, m: Msg| match m {
                            Msg::Add(k) => {
                                c2.set(c2.get() + k);
                                None
                            }
                            Msg::Get => Some(Msg::Value(c2.get())),
                            Msg::WhoAreYou => Some(Msg::Shard(me)),
                            _ => None,
                        })
                        .await
                        .unwrap();
                    let inbox = shard.take_inbox();
                    inbox
                        .run(move |f: MeshCtl| {
                            let mesh = mesh.clone();
                            glommio::spawn_local(async move { f(mesh) }).detach();
                        })
                        .await;
                }
            },
        )
        .unwrap();
    let ctl = rt.control();
    // From shard 0: call every shard, then broadcast 1000 adds of 1, then read every counter.
    let (tx, rx) = mpsc::channel();
    ctl.send(
        0,
        Box::new(move |mesh: percore_runtime::Mesh<Msg>| {
            glommio::spawn_local(async move {
                let mut who = Vec::new();
                for s in 0..mesh.shards() {
                    who.push(match mesh.call(s, Msg::WhoAreYou).await.unwrap() {
                        Msg::Shard(id) => id,
                        other => panic!("unexpected {other:?}"),
                    });
                }
                // More messages than the queue holds: the sender waits, nothing is dropped.
                for _ in 0..1000 {
                    mesh.broadcast(Msg::Add(1)).await.unwrap();
                }
                let mut totals = Vec::new();
                for s in 0..mesh.shards() {
                    totals.push(match mesh.call(s, Msg::Get).await.unwrap() {
                        Msg::Value(v) => v,
                        other => panic!("unexpected {other:?}"),
                    });
                }
                assert!(matches!(
                    mesh.call(n + 5, Msg::Get).await,
                    Err(Error::Mesh(_))
                ));
                tx.send((who, totals, mesh.pending_calls())).unwrap();
            })
            .detach();
        }),
    )
    .unwrap();
    let (who, totals, pending) = rx.recv().unwrap();
    assert_eq!(who, (0..n).collect::<Vec<_>>(), "call reached every shard");
    assert_eq!(
        totals,
        vec![1000; n],
        "broadcast reached every shard, none dropped"
    );
    assert_eq!(pending, 0);
}

/// Messages to another shard are batched per turn and each outbox holds at most the queue's
/// depth (8 here): one-way messages and calls arrive in the order they were sent, and 500
/// concurrent calls each get their own reply, with nothing left pending.
#[test]
fn mesh_batches_keep_order_and_pair_every_reply_beyond_the_queue_depth() {
    let n = allowed_cpus().len().min(2);
    let mesh_cfg = MeshConfig::<u64>::new(n, 8);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let _rt = RuntimeBuilder::default()
        .cpus(CpuSelection::Count(n))
        .spawn(
            Arc::new(ListenerTable::default()),
            move |shard: percore_runtime::Shard<()>| {
                let cfg = mesh_cfg.clone();
                let tx = if shard.id == 0 {
                    tx.lock().unwrap().take()
                } else {
                    None
                };
                async move {
                    // Odd numbers are one-way "set"s; an even number is a call answered with the
                    // last value set and the call's own number.
                    let last = Rc::new(Cell::new(0u64));
                    let l2 = last.clone();
                    let mesh = cfg
                        .join(shard.id, move |_from, m: u64| {
                            if m % 2 == 1 {
                                l2.set(m);
                                None
                            } else {
                                Some(l2.get() * 1_000_000 + m)
                            }
                        })
                        .await
                        .unwrap();
                    let Some(tx) = tx else {
                        return futures_lite::future::pending::<()>().await;
                    };
                    let peer = mesh.shards() - 1;
                    // 100 sets (more than an outbox holds), then a call: it sees the last set.
                    for i in 0..100u64 {
                        mesh.send_to(peer, 2 * i + 1).await.unwrap();
                    }
                    let ordered = mesh.call(peer, 0).await.unwrap();
                    let tasks: Vec<_> = (0..500u64)
                        .map(|i| {
                            let mesh = mesh.clone();
                            glommio::spawn_local(
                                async move { mesh.call(peer, 2 * i).await.unwrap() },
                            )
                        })
                        .collect();
                    let mut replies = Vec::new();
                    for t in tasks {
                        replies.push(t.await % 1_000_000);
                    }
                    tx.send((ordered, replies, mesh.pending_calls())).unwrap();
                    futures_lite::future::pending::<()>().await
                }
            },
        )
        .unwrap();
    let (ordered, replies, pending) = rx.recv().unwrap();
    assert_eq!(
        ordered,
        199 * 1_000_000,
        "the call overtook a set sent before it"
    );
    assert_eq!(replies, (0..500u64).map(|i| 2 * i).collect::<Vec<_>>());
    assert_eq!(pending, 0);
}

#[test]
fn a_panicking_shard_ends_the_process_with_an_error() {
    if std::env::var_os("PERCORE_TEST_PANIC_CHILD").is_some() {
        // Child: shard 0 panics after start; the process must exit by itself, non-zero.
        let rt = RuntimeBuilder::default()
            .cpus(CpuSelection::Count(1))
            .spawn(
                Arc::new(ListenerTable::default()),
                |_shard: percore_runtime::Shard<()>| async {
                    panic!("injected shard failure");
                },
            )
            .unwrap();
        let _ = rt.wait();
        // Reaching here means the process did not exit: report it as success so the parent fails.
        std::process::exit(0);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panicking_shard_ends_the_process_with_an_error",
            "--nocapture",
        ])
        .env("PERCORE_TEST_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "stderr: {stderr}");
    assert!(
        stderr.contains("injected shard failure"),
        "the panic message is shown: {stderr}"
    );
    assert!(stderr.contains("percore: shard 0 panicked"), "{stderr}");
}

/// Spins without yielding until the watchdog has counted `n` stalls (or 20 s pass).
#[inline(never)]
fn hog_the_shard_until_reported(n: u64) {
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut x = 0u64;
    while percore_runtime::shard::stalls_total() < n && Instant::now() < give_up {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

#[test]
fn a_task_that_holds_its_shard_is_reported_once_with_a_backtrace() {
    if std::env::var_os("PERCORE_TEST_STALL_CHILD").is_some() {
        let rt = RuntimeBuilder::default()
            .cpus(CpuSelection::Count(1))
            .stall_threshold(Some(Duration::from_millis(20)))
            .spawn(
                Arc::new(ListenerTable::default()),
                |_shard: percore_runtime::Shard<()>| async {
                    hog_the_shard_until_reported(1);
                    // Idle afterwards: sleeping in the reactor is never a stall.
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                    // A second stall soon after is counted, but not reported again.
                    hog_the_shard_until_reported(2);
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                },
            )
            .unwrap();
        rt.wait().unwrap();
        println!("stalls={}", percore_runtime::shard::stalls_total());
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_task_that_holds_its_shard_is_reported_once_with_a_backtrace",
            "--nocapture",
        ])
        .env("PERCORE_TEST_STALL_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("stalls=2"), "two stalls counted: {stdout}");
    assert_eq!(
        stderr.matches("stalled: a task has held the shard").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("percore-shard-0 stalled"), "{stderr}");
    assert!(
        stderr.contains("hog_the_shard_until_reported"),
        "the backtrace names the hogging function: {stderr}"
    );
}

/// Replies "started\n" at once to any bytes, then "done\n" after the given work time; idle while
/// waiting for a request.
async fn worker(mut c: Conn, _e: Engine, work: Duration) {
    loop {
        c.set_idle(true);
        match c.recv().await {
            Ok(Some(buf)) => drop(buf),
            _ => return,
        }
        c.set_idle(false);
        c.write_buf().extend_from_slice(b"started\n");
        if c.flushed().await.is_err() {
            return;
        }
        glommio::timer::sleep(work).await;
        c.write_buf().extend_from_slice(b"done\n");
        if c.flushed().await.is_err() || c.is_draining() {
            return;
        }
    }
}

fn drain_scenario(
    work: Duration,
    deadline: Duration,
) -> (percore_runtime::DrainReport, Vec<u8>, Vec<u8>) {
    let srv = start(1, EngineConfig::default(), move |c, e| worker(c, e, work));
    let mut idle = TcpStream::connect(srv.addr).unwrap();
    let mut busy = TcpStream::connect(srv.addr).unwrap();
    busy.write_all(b"go").unwrap();
    let mut started = [0u8; 8];
    busy.read_exact(&mut started).unwrap();
    assert_eq!(&started, b"started\n");
    // Make sure the idle connection was accepted before the drain starts.
    while srv.stats()[0].0.open < 2 {
        std::thread::yield_now();
    }
    let report = srv.on_shard(0, move |e: &Engine| {
        let (tx, rx) = mpsc::channel();
        let e = e.clone();
        glommio::spawn_local(async move {
            let r = e
                .drain(&[], Instant::now() + deadline, Duration::ZERO)
                .await;
            let _ = tx.send(r);
        })
        .detach();
        rx
    });
    let mut idle_rest = Vec::new();
    idle.read_to_end(&mut idle_rest).unwrap();
    let mut busy_rest = Vec::new();
    let _ = busy.read_to_end(&mut busy_rest);
    (report.recv().unwrap(), idle_rest, busy_rest)
}

#[test]
fn drain_closes_idle_connections_and_lets_busy_ones_finish() {
    let (report, idle, busy) = drain_scenario(Duration::from_millis(200), Duration::from_secs(30));
    assert_eq!(idle, b"", "idle connection closed without a byte");
    assert_eq!(busy, b"done\n", "in-flight work finished");
    assert_eq!(report.open_at_start, 2);
    assert_eq!(report.force_closed, 0);
}

#[test]
fn drain_force_closes_at_the_deadline_and_reports_it() {
    let (report, idle, busy) = drain_scenario(Duration::from_secs(60), Duration::from_millis(100));
    assert_eq!(idle, b"");
    assert_eq!(busy, b"", "the 60 s job was cut off");
    assert_eq!(report.force_closed, 1);
}

#[test]
fn a_connection_deadline_ends_a_stalled_read() {
    let (tx, rx) = mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    let tx = Arc::new(tx);
    let srv = start(1, EngineConfig::default(), move |mut c: Conn, _e| {
        let tx = tx.clone();
        async move {
            c.set_deadline(Some(Instant::now() + Duration::from_millis(100)));
            let r = c.recv().await.map(|b| b.map(|b| b.len()));
            let _ = tx.lock().unwrap().send(format!("{r:?}"));
        }
    });
    let mut s = TcpStream::connect(srv.addr).unwrap();
    assert_eq!(rx.recv().unwrap(), "Err(TimedOut)");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "the server closed the timed-out connection"
    );
}

/// A connection task that calls another shard over the mesh gets its reply without waiting for
/// its shard's nap to end. The driver naps in its own ring after recent work, and a nap blocks
/// the thread: the mesh's flush task (woken when the call was posted) and then the caller (woken
/// by the reply) used to run only after it. With the 2 ms default nap every cross-shard call on
/// an idle server took ~4.4 ms; with the 60 s nap here, a call would take a minute.
#[test]
fn a_cross_shard_call_does_not_wait_for_the_callers_nap() {
    if allowed_cpus().len() < 2 {
        eprintln!("skipped: needs 2 CPUs");
        return;
    }
    let table =
        Arc::new(ListenerTable::bind(&["127.0.0.1:0".parse().unwrap()], &[0, 0], 1024).unwrap());
    let addr = table.local_addrs()[0];
    let mesh_cfg = MeshConfig::<u64>::new(2, 16);
    let nap = Duration::from_secs(60);
    let rt = RuntimeBuilder::default()
        .cpus(CpuSelection::Count(2))
        .engine(EngineConfig {
            nap,
            nap_for: nap,
            ..EngineConfig::default()
        })
        .spawn(table, move |shard: percore_runtime::Shard<()>| {
            let cfg = mesh_cfg.clone();
            async move {
                let mesh = cfg
                    .join(shard.id, |_from, m: u64| Some(m + 1))
                    .await
                    .unwrap();
                for l in shard.take_listeners() {
                    let acc = shard.engine.listen(l.fd, l.local);
                    let mesh = mesh.clone();
                    glommio::spawn_local(async move {
                        while let Ok(mut c) = acc.accept().await {
                            let mesh = mesh.clone();
                            glommio::spawn_local(async move {
                                // Each byte received is one call to the other shard, answered
                                // with the reply's shard-stamped value.
                                while let Ok(Some(buf)) = c.recv().await {
                                    let n = buf.len() as u64;
                                    drop(buf);
                                    let peer = 1 - mesh.shard();
                                    let v = mesh.call(peer, n).await.unwrap();
                                    c.write_buf().extend_from_slice(&v.to_le_bytes());
                                    if c.flush().is_err() {
                                        return;
                                    }
                                }
                            })
                            .detach();
                        }
                    })
                    .detach();
                }
                futures_lite::future::pending::<()>().await;
            }
        })
        .unwrap();
    std::mem::forget(rt);
    let started = Instant::now();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for _ in 0..3 {
            s.write_all(b"x").unwrap();
            let mut back = [0u8; 8];
            s.read_exact(&mut back)
                .expect("a cross-shard call waited for the caller's nap");
            assert_eq!(u64::from_le_bytes(back), 2);
        }
    }
    // Far below one nap: no call waited for a nap to end.
    assert!(started.elapsed() < nap / 2, "{:?}", started.elapsed());
}
