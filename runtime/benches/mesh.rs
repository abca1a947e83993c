//! Cross-shard key-value operations: a `call` round trip over the mesh to the shard that owns the
//! key, and one-way mesh throughput, against the same get/insert on a `Mutex<HashMap>` shared by
//! two threads that both hammer it (the lock-based design the mesh replaces).
//!
//! Run with `cargo bench -p percore-runtime --bench mesh`. Pin nothing else to the CPUs meanwhile.

use std::{
    cell::RefCell,
    collections::HashMap,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use percore_runtime::{
    cpus::{allowed_cpus, CpuSelection},
    listener::ListenerTable,
    ControlHandle, EngineConfig, IdleStrategy, Mesh, MeshConfig, RuntimeBuilder, Shard,
};

#[derive(Clone, Debug)]
enum Kv {
    Put(u64, u64),
    Get(u64),
    Value(#[allow(dead_code)] Option<u64>), // reason: read only by the benchmark's callers' types
}

/// A job for shard 0: run `n` operations against shard 1 and report the elapsed time.
enum Job {
    Calls(u64, mpsc::Sender<Duration>),
    Casts(u64, mpsc::Sender<Duration>),
}

/// Starts two shards joined in a mesh; `spin` keeps idle shards polling instead of parking (a
/// parked shard needs a cross-CPU wake-up, which costs tens of µs in a VM).
fn start_mesh(spin: bool) -> ControlHandle<Job> {
    let mut engine = EngineConfig::default();
    if spin {
        engine.idle = IdleStrategy::Spin(Duration::from_secs(3600));
    }
    let n = allowed_cpus().len().min(2);
    let cfg = MeshConfig::<Kv>::new(n, 1024);
    let rt = RuntimeBuilder::default()
        .engine(engine)
        // The cast loop below runs for seconds without yielding, by design.
        .stall_threshold(None)
        .cpus(CpuSelection::Count(n))
        .spawn(
            Arc::new(ListenerTable::default()),
            move |mut shard: Shard<Job>| {
                let cfg = cfg.clone();
                async move {
                    let store = Rc::new(RefCell::new(HashMap::<u64, u64>::new()));
                    let s2 = store.clone();
                    let mesh: Mesh<Kv> = cfg
                        .join(shard.id, move |_from, m| match m {
                            Kv::Put(k, v) => {
                                s2.borrow_mut().insert(k, v);
                                None
                            }
                            Kv::Get(k) => Some(Kv::Value(s2.borrow().get(&k).copied())),
                            Kv::Value(_) => None,
                        })
                        .await
                        .expect("join mesh");
                    let target = (shard.id + 1) % shard.count;
                    shard
                        .take_inbox()
                        .run(move |job: Job| {
                            let mesh = mesh.clone();
                            glommio::spawn_local(async move {
                                match job {
                                    Job::Calls(n, done) => {
                                        let t = Instant::now();
                                        for i in 0..n {
                                            let _ = mesh.call(target, Kv::Get(i & 1023)).await;
                                        }
                                        let _ = done.send(t.elapsed());
                                    }
                                    Job::Casts(n, done) => {
                                        let t = Instant::now();
                                        for i in 0..n {
                                            let _ =
                                                mesh.send_to(target, Kv::Put(i & 1023, i)).await;
                                        }
                                        // One call behind the casts: the queue is FIFO, so when it
                                        // returns every cast has been handled.
                                        let _ = mesh.call(target, Kv::Get(0)).await;
                                        let _ = done.send(t.elapsed());
                                    }
                                }
                            })
                            .detach();
                        })
                        .await;
                }
            },
        )
        .expect("start shards");
    let ctl = rt.control();
    std::mem::forget(rt);
    ctl
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_kv");
    for (label, spin) in [("parked", false), ("spinning", true)] {
        let ctl = start_mesh(spin);
        g.bench_function(format!("mesh_call_roundtrip_{label}"), |b| {
            b.iter_custom(|iters| {
                let (tx, rx) = mpsc::channel();
                ctl.send(0, Job::Calls(iters, tx)).unwrap();
                rx.recv().unwrap()
            })
        });
        g.bench_function(format!("mesh_cast_throughput_{label}"), |b| {
            b.iter_custom(|iters| {
                let (tx, rx) = mpsc::channel();
                ctl.send(0, Job::Casts(iters, tx)).unwrap();
                rx.recv().unwrap()
            })
        });
        // Dropping the handle ends the shards' inbox loops, so the next pair can pin the same CPUs.
        drop(ctl);
    }
    // The peer: the same store behind a mutex, with a second thread hammering it.
    let map = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (map, stop) = (map.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                map.lock().unwrap().insert(i & 1023, i);
                i += 1;
            }
        })
    };
    g.bench_function("mutex_hashmap_get_contended", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            map.lock().unwrap().get(&(i & 1023)).copied()
        })
    });
    g.bench_function("mutex_hashmap_put_contended", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            map.lock().unwrap().insert(i & 1023, i)
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
