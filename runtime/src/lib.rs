//! # percore-runtime
//!
//! A thread-per-core runtime for network servers: one pinned glommio executor per CPU (a *shard*),
//! each with its own SO_REUSEPORT listening socket, its own io_uring socket ring, its own
//! connection slab, buffers and arenas. Shards share nothing but messages.
//!
//! ```text
//!   control thread ──inbox──▶ shard 0 @cpu0   shard 1 @cpu1   …   (one LocalExecutor each)
//!                             ├ engine: io_uring ring (SINGLE_ISSUER|DEFER_TASKRUN)
//!                             │   multishot accept · multishot recv into provided buffers · sends
//!                             ├ slab of connections (generation-checked ids)
//!                             ├ buffer pool · arena pool
//!                             └ mesh ◀────── bounded queues per pair of shards ──────▶
//! ```
//!
//! ## Modules
//! - [`shard`]: starting, pinning and supervising shards; the control inbox.
//! - [`engine`]: the per-shard io_uring socket engine and its connection API (server and client).
//! - [`listener`]: per-shard listening sockets keyed by bind address (hot-restart groundwork).
//! - [`mesh`]: typed `send_to` / `broadcast` / `call` between shards.
//! - [`slab`], [`buf`]: generation-checked connection table; buffer and arena pools.
//! - [`cpus`]: CPU lists and the affinity mask.
//! - [`probe`]: request-path accounting for allocation tests.
//! - [`handoff`]: passing the listening sockets to a successor process (hot restart).
//! - [`sys`]: the raw syscalls the above need, kept in one place.
//! - [`watchdog`]: the stall watchdog (a shard holding its CPU without yielding).
//!
//! Only `sys`, `engine`, `handoff` (SCM_RIGHTS), `buf` (arena futures), `probe` (a pin
//! projection) and `watchdog` (thread CPU clocks, a backtrace signal) contain `unsafe`, each block
//! with its `// SAFETY:` reason.
//! Nothing here knows HTTP.

pub mod buf;
pub mod cpus;
pub mod engine;
pub mod error;
pub mod handoff;
pub mod listener;
pub mod mesh;
pub mod probe;
pub mod shard;
pub mod slab;
pub mod sys;
pub mod watchdog;

pub use engine::{
    Acceptor, Conn, ConnId, ConnReader, DrainReport, Engine, EngineConfig, EngineStats,
    IdleStrategy, RecvBuf,
};
pub use error::{Error, Result};
pub use listener::ListenerTable;
pub use mesh::{Mesh, MeshConfig, MeshHandler};
pub use shard::{ControlHandle, Runtime, RuntimeBuilder, Shard};
