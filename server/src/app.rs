//! One shard's server state: its router, config snapshot, cached `Date`, arenas and the engine.
//!
//! Shard-local and never shared across threads (`Rc`/`RefCell`/`Cell`). A reload replaces the
//! config and router snapshots between requests: a request holds the `Rc` it started with, so it
//! sees the old or the new one, never a mix.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
    /// When `date` goes stale: the system clock's next whole second, on the monotonic clock.
    date_until: Cell<Instant>,
    /// The start of every `200 OK` head (status line, `Server`, `Date`), rebuilt with them.
    head_200: RefCell<Vec<u8>>,
    /// Per-shard counters and latency histograms.
    pub metrics: ShardMetrics,
    /// Generation of the config this shard serves.
    pub generation: Cell<u64>,
}

impl App {
    /// Builds the state.
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
            date: Cell::new([b' '; 29]),
            date_until: Cell::new(Instant::now()),
            head_200: RefCell::new(Vec::new()),
            metrics,
            generation: Cell::new(0),
        });
        app.refresh_date();
        app
    }

    /// Reformats `Date` when the system clock has passed the second it shows: at most once a
    /// second, on the first response after the second turns (per shard, as seastar does), instead
    /// of per response or on a timer that wakes an idle shard.
    fn date_fresh(&self) {
        if self.engine.now() >= self.date_until.get() {
            self.refresh_date();
        }
    }

    fn refresh_date(&self) {
        let wall = SystemTime::now();
        let into_second = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let left = Duration::from_nanos(u64::from(1_000_000_000 - into_second));
        self.date_until.set(Instant::now() + left);
        let date = format_imf_fixdate(wall);
        if date != self.date.get() {
            self.date.set(date);
            self.rebuild_head_200();
        }
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
        // `head.date` came from `App::date`, which refreshed the date and this prefix with it.
        let prefix = self.head_200.borrow();
        if head.status == 200 && !prefix.is_empty() {
            http::write_head_with_prefix(out, &prefix, head)
        } else {
            http::write_head(out, head)
        }
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

    /// The `Date` value: the current second of the system clock.
    pub fn date(&self) -> [u8; 29] {
        self.date_fresh();
        self.date.get()
    }

    /// The `Server` header value.
    pub fn server_name(&self) -> Rc<[u8]> {
        self.server_name.borrow().clone()
    }
}
