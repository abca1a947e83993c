//! Large responses: io_uring `send` (the engine's) against `send_zc` (zero-copy send), over a
//! loopback TCP connection, for payloads of 16 KiB to 1 MiB.
//!
//! The sender runs a ring set up like a shard's (SINGLE_ISSUER, DEFER_TASKRUN) on CPU 0 and keeps
//! one send in flight, as the engine does per connection; with `send_zc` a buffer is reused only
//! after its notification (the kernel is done with the pages), so two buffers alternate. A plain
//! thread on CPU 1 reads and discards. Reported: throughput and CPU time per MiB of the sending
//! thread and of the receiving thread (from `getrusage(RUSAGE_THREAD)`).
//!
//! Run with `cargo bench -p percore-runtime --bench send_zc`. On loopback the kernel copies
//! zero-copy pages when it delivers them to the local socket, so this measures the notification
//! overhead against the copy saved on the sending side; on a NIC the copy is gone altogether.

use std::{
    io::{self, Read},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use io_uring::{cqueue, opcode, types, IoUring};
use percore_runtime::sys;

/// Bytes sent per measurement.
const TOTAL: usize = 512 << 20;
const SIZES: [usize; 4] = [16 << 10, 64 << 10, 256 << 10, 1 << 20];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Send,
    SendZc,
}

struct Sample {
    secs: f64,
    sender_cpu: Duration,
    receiver_cpu: Duration,
}

fn pin(cpu: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

/// Reads and discards until EOF; returns the bytes read and the thread's CPU time.
fn receive(mut s: TcpStream) -> (usize, Duration) {
    let cpu0 = sys::thread_cpu();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("receive: {e}"),
        }
    }
    (n, sys::thread_cpu() - cpu0)
}

fn run(mode: Mode, size: usize, cpus: usize) -> io::Result<Sample> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = thread::spawn(move || {
        pin(1 % cpus);
        let (s, _) = listener.accept().expect("accept");
        receive(s)
    });
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let fd = types::Fd(stream.as_raw_fd());
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(64)?;
    let bufs: Vec<Vec<u8>> = (0..2).map(|i| vec![i as u8 + 1; size]).collect();
    // Per buffer: zero-copy notifications outstanding (the kernel still holds its pages).
    let mut notifs = [0usize; 2];
    let mut sent = 0usize;
    let mut cur = 0usize;
    let mut off = 0usize;
    let cpu0 = sys::thread_cpu();
    let start = Instant::now();
    while sent < TOTAL {
        // Before a buffer starts a new message, wait until the kernel is done with its pages
        // (the rest of a partly sent message goes out from the same, unchanged buffer at once).
        while off == 0 && notifs[cur] > 0 {
            reap(&mut ring, &mut notifs, 1)?;
        }
        let ptr = bufs[cur][off..].as_ptr();
        let len = (size - off) as u32;
        let entry = match mode {
            Mode::Send => opcode::Send::new(fd, ptr, len).build(),
            Mode::SendZc => opcode::SendZc::new(fd, ptr, len).build(),
        }
        .user_data(cur as u64);
        // SAFETY: the buffer stays alive and unmodified until its completion (and, for
        // send_zc, its notification) has been reaped: `bufs` is never written and outlives the
        // loop, and the ring is drained of notifications before it is dropped.
        unsafe { ring.submission().push(&entry) }.map_err(|_| io::Error::other("sq full"))?;
        let n = loop {
            ring.submitter()
                .submit_with_args(1, &types::SubmitArgs::new())?;
            if let Some(n) = reap(&mut ring, &mut notifs, 0)? {
                break n;
            }
        };
        sent += n;
        off += n;
        if off == size {
            off = 0;
            cur ^= 1;
        }
    }
    while notifs.iter().any(|&n| n > 0) {
        reap(&mut ring, &mut notifs, 1)?;
    }
    let sender_cpu = sys::thread_cpu() - cpu0;
    drop(stream);
    let (received, receiver_cpu) = receiver.join().expect("receiver");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(received, sent, "bytes received");
    Ok(Sample {
        secs,
        sender_cpu,
        receiver_cpu,
    })
}

/// Reaps completions (waiting for at least `wait`); returns the bytes of a send's result if one
/// came. Counts outstanding zero-copy notifications per buffer.
fn reap(ring: &mut IoUring, notifs: &mut [usize; 2], wait: usize) -> io::Result<Option<usize>> {
    if wait > 0 {
        ring.submitter()
            .submit_with_args(wait, &types::SubmitArgs::new())?;
    }
    let mut result = None;
    for cqe in ring.completion() {
        let b = cqe.user_data() as usize;
        if cqueue::notif(cqe.flags()) {
            notifs[b] -= 1;
            continue;
        }
        if cqueue::more(cqe.flags()) {
            notifs[b] += 1;
        }
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        result = Some(cqe.result() as usize);
    }
    Ok(result)
}

fn main() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    pin(0);
    println!(
        "{} MiB per row, sender on CPU 0, receiver on CPU {}; CPU time per MiB sent",
        TOTAL >> 20,
        1 % cpus
    );
    println!(
        "{:>8} {:>8} {:>9} {:>12} {:>12} {:>12} {:>14}",
        "size", "mode", "GiB/s", "send µs/MiB", "recv µs/MiB", "total µs/MiB", "zc/send total"
    );
    for size in SIZES {
        let mut totals = [0f64; 2];
        for (i, mode) in [Mode::Send, Mode::SendZc].into_iter().enumerate() {
            // Best of three: the figure least disturbed by the rest of the machine.
            let mut best: Option<Sample> = None;
            for _ in 0..3 {
                let s = match run(mode, size, cpus) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("send_zc bench: {e} (send_zc needs Linux >= 6.0)");
                        return;
                    }
                };
                let total = |s: &Sample| s.sender_cpu + s.receiver_cpu;
                if best.as_ref().is_none_or(|b| total(&s) < total(b)) {
                    best = Some(s);
                }
            }
            let s = best.expect("three runs");
            let mib = (TOTAL >> 20) as f64;
            let per = |d: Duration| d.as_secs_f64() * 1e6 / mib;
            totals[i] = per(s.sender_cpu + s.receiver_cpu);
            let ratio = if i == 1 {
                format!("{:.2}", totals[1] / totals[0])
            } else {
                String::new()
            };
            println!(
                "{:>7}K {:>8} {:>9.2} {:>12.1} {:>12.1} {:>12.1} {:>14}",
                size >> 10,
                if mode == Mode::Send {
                    "send"
                } else {
                    "send_zc"
                },
                TOTAL as f64 / s.secs / (1u64 << 30) as f64,
                per(s.sender_cpu),
                per(s.receiver_cpu),
                totals[i],
                ratio
            );
        }
    }
}
