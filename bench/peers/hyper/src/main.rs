//! `peer-hyper ADDR [THREADS]`: hyper 1.x, one tokio current-thread runtime per thread, each
//! thread with its own SO_REUSEPORT listener on the same port. Port 0 picks a free port (the first
//! thread binds it, the others join it). Prints `listening on http://ADDR` once every thread
//! listens. Every path answers `Hello, World!` with `content-type: text/plain`.
use std::{convert::Infallible, net::SocketAddr, sync::mpsc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn serve(l: std::net::TcpListener) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::from_std(l).expect("listener");
        loop {
            let s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning or dying.
                    eprintln!("peer-hyper: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::task::spawn(async move {
                let svc = service_fn(|_r: Request<hyper::body::Incoming>| async {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
                    resp.headers_mut()
                        .insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match args.next().unwrap_or_else(|| "127.0.0.1:8091".into()).parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer-hyper: bad address: {e}");
            std::process::exit(2);
        }
    };
    let threads: usize = match args.next().map(|s| s.parse()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("peer-hyper: THREADS must be a positive number");
            std::process::exit(2);
        }
    };
    let first = listener(addr).unwrap_or_else(|e| {
        eprintln!("peer-hyper: bind {addr}: {e}");
        std::process::exit(1);
    });
    let bound = first.local_addr().expect("local addr");
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(listener(bound).unwrap_or_else(|e| {
            eprintln!("peer-hyper: bind {bound}: {e}");
            std::process::exit(1);
        }));
    }
    let (tx, rx) = mpsc::channel::<()>();
    let hs: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                drop(tx);
                serve(l)
            })
        })
        .collect();
    drop(tx);
    let _ = rx.recv(); // every thread has its listener (they were bound above)
    println!("peer-hyper: listening on http://{bound} ({threads} threads)");
    for h in hs {
        let _ = h.join();
    }
}
