//! One shard's server state: its router, config snapshot, cached `Date`, arenas and the engine.
//!
//! Shard-local and never shared across threads (`Rc`/`RefCell`/`Cell`). A reload replaces the
//! config and router snapshots between requests: a request holds the `Rc` it started with, so it
//! sees the old or the new one, never a mix.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::{Duration, SystemTime},
};

use percore_runtime::{Engine, buf::ArenaPool};

use crate::{
    config::ServerConfig,
    http::{self, ConnectionHeader, Framing, ResponseHead, format_imf_fixdate},
    metrics::{RouteId, ShardMetrics},
    router::Router,
};

fn register(metrics: &ShardMetrics, router: &Router) -> Rc<[RouteId]> {
    router
        .patterns()
        .map(|p| metrics.register_route(p))
        .collect()
}

/// A shard's server state.
pub struct App {
    /// Shard id.
    pub shard: usize,
    /// Number of shards.
    pub shards: usize,
    /// The shard's engine.
    pub engine: Engine,
    /// Per-request arenas.
    pub arenas: ArenaPool,
    config: RefCell<Rc<ServerConfig>>,
    server_name: RefCell<Rc<[u8]>>,
    router: RefCell<Rc<Router>>,
    /// Metrics route id of each route index of the current router.
    route_ids: RefCell<Rc<[RouteId]>>,
    date: Cell<[u8; 29]>,
    /// The start of every `200 OK` head (status line, `Server`, `Date`), rebuilt with them.
    head_200: RefCell<Vec<u8>>,
    /// Per-shard counters and latency histograms.
    pub metrics: ShardMetrics,
    /// Generation of the config this shard serves.
    pub generation: Cell<u64>,
}

impl App {
    /// Builds the state; call [`App::start_clock`] to keep `Date` current.
    pub fn new(
        shard: usize,
        shards: usize,
        engine: Engine,
        arenas: ArenaPool,
        config: Rc<ServerConfig>,
        router: Rc<Router>,
    ) -> Rc<App> {
        let name: Rc<[u8]> = config.server_name.as_bytes().into();
        let metrics = ShardMetrics::new(shard);
        let route_ids = register(&metrics, &router);
        let app = Rc::new(App {
            route_ids: RefCell::new(route_ids),
            shard,
            shards,
            engine,
            arenas,
            config: RefCell::new(config),
            server_name: RefCell::new(name),
            router: RefCell::new(router),
            date: Cell::new(format_imf_fixdate(SystemTime::now())),
            head_200: RefCell::new(Vec::new()),
            metrics,
            generation: Cell::new(0),
        });
        app.rebuild_head_200();
        app
    }

    /// Remakes the cached start of `200 OK` heads from the current date and server name.
    fn rebuild_head_200(&self) {
        let mut v = self.head_200.borrow_mut();
        v.clear();
        let head = ResponseHead {
            status: 200,
            reason: http::reason_phrase(200),
            date: &self.date.get(),
            server: &self.server_name.borrow(),
            framing: Framing::None,
            connection: ConnectionHeader::Omit,
            extra: &[],
        };
        // A server name with a byte a field value may not hold leaves the cache empty: every
        // response then goes through `write_head`, which answers 500 for it.
        if http::write_prefix(&mut v, &head).is_err() {
            v.clear();
        }
    }

    /// Writes `head` into `out` (see [`http::write_head`]), a `200 OK` one from the cached start
    /// (`head` carries this shard's date and server name).
    pub fn write_head(
        &self,
        out: &mut Vec<u8>,
        head: &ResponseHead<'_>,
    ) -> Result<(), http::Error> {
        let prefix = self.head_200.borrow();
        if head.status == 200 && !prefix.is_empty() {
            http::write_head_with_prefix(out, &prefix, head)
        } else {
            http::write_head(out, head)
        }
    }

    /// Reformats `Date` once a second (per shard, as seastar does), instead of per response.
    pub fn start_clock(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                let Some(app) = weak.upgrade() else { return };
                let date = format_imf_fixdate(SystemTime::now());
                if date != app.date.get() {
                    app.date.set(date);
                    app.rebuild_head_200();
                }
            }
        })
        .detach();
    }

    /// The current config snapshot.
    pub fn config(&self) -> Rc<ServerConfig> {
        self.config.borrow().clone()
    }

    /// The current router snapshot.
    pub fn router(&self) -> Rc<Router> {
        self.router.borrow().clone()
    }

    /// The metrics id of route `index` of the current router.
    pub fn route_id(&self, index: usize) -> RouteId {
        self.route_ids
            .borrow()
            .get(index)
            .copied()
            .unwrap_or(RouteId::UNMATCHED)
    }

    /// Swaps in a new config and router (between requests).
    pub fn swap(&self, config: Rc<ServerConfig>, router: Rc<Router>) {
        *self.route_ids.borrow_mut() = register(&self.metrics, &router);
        *self.server_name.borrow_mut() = config.server_name.as_bytes().into();
        self.rebuild_head_200();
        *self.config.borrow_mut() = config;
        *self.router.borrow_mut() = router;
    }

    /// The cached `Date` value.
    pub fn date(&self) -> [u8; 29] {
        self.date.get()
    }

    /// The `Server` header value.
    pub fn server_name(&self) -> Rc<[u8]> {
        self.server_name.borrow().clone()
    }
}
