//! The built-in routes of the embedded default config:
//! `GET /` (13-byte plaintext), `GET /json`, `POST /echo`, `GET|PUT|DELETE /kv/{key}` (the
//! shard-owned store) and `/kv-mutex/{key}` (the same behind a mutex, for comparison),
//! `GET /healthz` (liveness) and `GET /readyz` (503 while draining).

use std::rc::Rc;

use crate::{
    handler::{Handler, HandlerFuture, Request, Response, handler_fn},
    kv::{Kv, MutexKv},
    router::RouterBuilder,
};

/// The plaintext reply of `GET /`.
pub const HELLO: &[u8] = b"Hello, World!";
/// The reply of `GET /json`.
pub const JSON: &[u8] = br#"{"message":"Hello, World!"}"#;

/// `POST /echo`: reads the body as it arrives (a streaming handler) and sends it back.
struct Echo;

impl Handler for Echo {
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        req.reply(async move {
            let body = match req.body_reader {
                Some(r) => match r.read_to_end(req.arena).await {
                    Ok(b) => b,
                    // The server answers a body error itself (its status, then close).
                    Err(e) => return Response::new(e.status()),
                },
                None => req.body,
            };
            Response::new(200)
                .with_header("content-type", b"application/octet-stream")
                .with_body(body)
        })
    }

    fn streams_body(&self) -> bool {
        true
    }
}

struct KvRoute {
    kv: Rc<Kv>,
}

impl Handler for KvRoute {
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        req.reply(async move {
            let key = req.param("key").unwrap_or("").as_bytes();
            let result = match req.method() {
                "GET" | "HEAD" => {
                    self.kv
                        .get(key, |v| match v {
                            Some(v) => Response::new(200)
                                .with_header("content-type", b"application/octet-stream")
                                .with_body(req.arena.alloc_slice_copy(v)),
                            None => Response::status_text(404, b"no such key\n"),
                        })
                        .await
                }
                "PUT" => self
                    .kv
                    .put(key, req.body)
                    .await
                    .map(|new| Response::new(if new { 201 } else { 204 })),
                "DELETE" => self.kv.delete(key).await.map(|had| {
                    if had {
                        Response::new(204)
                    } else {
                        Response::status_text(404, b"no such key\n")
                    }
                }),
                _ => Ok(Response::new(405)),
            };
            result.unwrap_or_else(|_| Response::status_text(503, b"key owner unavailable\n"))
        })
    }
}

struct MutexKvRoute {
    kv: MutexKv,
}

impl Handler for MutexKvRoute {
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        let key = req.param("key").unwrap_or("").as_bytes();
        let resp = match req.method() {
            "GET" | "HEAD" => self.kv.get(key, |v| match v {
                Some(v) => Response::new(200)
                    .with_header("content-type", b"application/octet-stream")
                    .with_body(req.arena.alloc_slice_copy(v)),
                None => Response::status_text(404, b"no such key\n"),
            }),
            "PUT" => Response::new(if self.kv.put(key, req.body) { 201 } else { 204 }),
            "DELETE" => {
                if self.kv.delete(key) {
                    Response::new(204)
                } else {
                    Response::status_text(404, b"no such key\n")
                }
            }
            _ => Response::new(405),
        };
        req.reply(std::future::ready(resp))
    }
}

/// A fixed response from the config (`respond = { ... }`).
struct Fixed {
    status: u16,
    body: Box<[u8]>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Handler for Fixed {
    fn call<'r>(&'r self, req: &'r Request<'r>) -> HandlerFuture<'r> {
        let mut r = Response::new(self.status).with_body(&self.body);
        for (n, v) in &self.headers {
            r.add_header(n, v);
        }
        req.reply(std::future::ready(r))
    }
}

/// Builds a shard's router from the config's routes (or the built-in list when it has none).
pub fn router_from_config(cx: &crate::serve::ShardContext) -> RouterBuilder {
    let (cfg, kv, mutex_kv, engine, shard, shards) = (
        &cx.config,
        cx.kv.clone(),
        cx.mutex_kv.clone(),
        cx.engine.clone(),
        cx.shard,
        cx.shards,
    );
    use crate::config_file::{BuiltinHandler as B, MiddlewareConfig as M};
    let hello = handler_fn(|_r| Response::text(HELLO));
    let json = handler_fn(|_r| Response::json(JSON));
    let echo: Rc<dyn Handler> = Rc::new(Echo);
    let kv_route: Rc<dyn Handler> = Rc::new(KvRoute { kv });
    let mkv: Rc<dyn Handler> = Rc::new(MutexKvRoute { kv: mutex_kv });
    let health = handler_fn(|_r| Response::text(b"ok\n"));
    let e = engine;
    let ready = handler_fn(move |_r| {
        if e.is_draining() {
            Response::status_text(503, b"draining\n")
        } else {
            Response::text(b"ready\n")
        }
    });
    let mut b = RouterBuilder::new();
    let mut layered: Vec<String> = Vec::new();
    for route in cfg.routes_or_default() {
        let h: Rc<dyn Handler> = match (&route.handler, &route.respond) {
            (Some(B::Hello), _) => hello.clone(),
            (Some(B::Json), _) => json.clone(),
            (Some(B::Echo), _) => echo.clone(),
            (Some(B::Kv), _) => kv_route.clone(),
            (Some(B::KvMutex), _) => mkv.clone(),
            (Some(B::Healthz), _) => health.clone(),
            (Some(B::Readyz), _) => ready.clone(),
            (None, Some(f)) => {
                let mut headers = vec![(
                    "content-type".to_string(),
                    f.content_type.clone().into_bytes(),
                )];
                headers.extend(
                    f.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
                );
                Rc::new(Fixed {
                    status: f.status,
                    body: f.body.clone().into_bytes().into(),
                    headers,
                })
            }
            (None, None) => continue, // rejected by validation
        };
        for m in &route.methods {
            b.add(m, &route.path, h.clone());
        }
        // Several entries may share a path (validation makes their middleware equal): layer once.
        if layered.contains(&route.path) {
            continue;
        }
        layered.push(route.path.clone());
        for mw in &route.middleware {
            let layer: Rc<dyn crate::handler::Middleware> = match mw {
                M::AccessLog {} => Rc::new(crate::middleware::AccessLog),
                M::RequestId {} => Rc::new(crate::middleware::RequestId::new(shard)),
                M::RateLimit { rps, burst } => {
                    let key = crate::kv::owner_hash(route.path.as_bytes());
                    let l = Rc::new(crate::middleware::RateLimit::new(
                        key,
                        *rps,
                        burst.unwrap_or(*rps),
                        shard,
                        shards,
                    ));
                    cx.limiters.add(l.clone());
                    l
                }
                M::Auth { token } => Rc::new(crate::handler::BearerAuth::new(token)),
                M::Headers { set } => Rc::new(crate::middleware::SetHeaders::new(
                    set.iter()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect(),
                )),
            };
            b = b.layer_on(&route.path, layer);
        }
    }
    b
}
