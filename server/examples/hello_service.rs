//! A small service to copy: custom routes with a path parameter, shard-local state, an async
//! handler that asks another shard over the built-in key-value store, and middleware.
//!
//! ```sh
//! cargo run --release -p percore-server --example hello_service
//! curl -s localhost:8080/hello/world          # Hello, world! (served by shard N, visit #k)
//! curl -s -X PUT --data hi localhost:8080/kv/x && curl -s localhost:8080/notes/x
//! ```

use std::{cell::Cell, rc::Rc, sync::Arc};

use percore_server::{
    handler::{AddHeaders, Handler, HandlerFuture, Request, Response, handler_fn},
    kv::Kv,
    serve::{ServeOptions, ShardContext, builtin_routes, start},
};

/// Greets by name and counts visits on this shard (shard-local state: no lock, no atomic).
struct Hello {
    visits: Cell<u64>,
    shard: usize,
}

impl Handler for Hello {
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        self.visits.set(self.visits.get() + 1);
        let name = req.param("name").unwrap_or("stranger");
        // Per-request text goes into the request's arena: no heap allocation.
        let body = bumpalo::format!(in req.arena, "Hello, {name}! (served by shard {}, visit #{})\n", self.shard, self.visits.get());
        req.reply(std::future::ready(Response::text(
            body.into_bump_str().as_bytes(),
        )))
    }
}

/// Reads a note from the key-value store: the key's owner shard may be another one, in which
/// case the read crosses the mesh and this handler awaits the reply.
struct Notes {
    kv: Rc<Kv>,
}

impl Handler for Notes {
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        req.reply(async move {
            let key = req.param("key").unwrap_or("").as_bytes();
            let found = self
                .kv
                .get(key, |v| v.map(|v| &*req.arena.alloc_slice_copy(v)))
                .await;
            match found {
                Ok(Some(v)) => Response::text(v),
                Ok(None) => Response::status_text(404, b"no such note\n"),
                Err(_) => Response::status_text(503, b"owner shard unavailable\n"),
            }
        })
    }
}

fn main() {
    let builtins = builtin_routes();
    let routes = Arc::new(move |cx: &ShardContext| {
        builtins(cx)
            .route(
                "GET",
                "/hello/{name}",
                Rc::new(Hello {
                    visits: Cell::new(0),
                    shard: cx.shard,
                }),
            )
            .route("GET", "/notes/{key}", Rc::new(Notes { kv: cx.kv.clone() }))
            .route(
                "GET",
                "/version",
                handler_fn(|_r| Response::text(env!("CARGO_PKG_VERSION").as_bytes())),
            )
            .layer(Rc::new(AddHeaders::new(vec![(
                "x-served-by",
                b"percore-example",
            )])))
    });
    let server = match start(ServeOptions {
        routes,
        ..ServeOptions::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hello_service: {e}");
            std::process::exit(1);
        }
    };
    for a in server.addrs() {
        println!("hello_service: listening on http://{a}");
    }
    // Runs until killed; a real service would handle SIGTERM like `percore serve` does.
    let _ = server.wait();
}
