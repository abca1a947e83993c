//! What a process is set up with before its first shard runs. In its own test binary: the state
//! checked belongs to the process, and any other test's runtime would set it first.

use std::sync::{mpsc, Arc, Mutex};

use percore_runtime::{cpus::CpuSelection, listener::ListenerTable, sys, RuntimeBuilder};

/// glommio registers the process for expedited membarriers on an executor's first sleep, and once
/// the process has several threads that waits for an RCU grace period, which stopped a load
/// generator's executors for 2–3 s on a busy machine. The runtime registers before its shards
/// start, so a shard finds the registration done before its executor ever sleeps.
#[test]
fn shards_start_with_the_membarrier_registration_done() {
    assert!(
        !sys::membarrier_registered(),
        "a fresh process is not registered yet"
    );
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(Some(tx));
    let _rt = RuntimeBuilder::default()
        .cpus(CpuSelection::Count(1))
        .spawn(
            Arc::new(ListenerTable::default()),
            move |_shard: percore_runtime::Shard<()>| {
                let tx = tx.lock().unwrap().take();
                async move {
                    if let Some(tx) = tx {
                        tx.send(sys::membarrier_registered()).unwrap();
                    }
                    futures_lite::future::pending::<()>().await
                }
            },
        )
        .unwrap();
    assert!(
        rx.recv().unwrap(),
        "the shard's first task ran before the process was registered"
    );
}
