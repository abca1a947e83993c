//! # percore-server
//!
//! The HTTP/1.1 server on top of `percore-runtime`, and the `percore` command line.
//!
//! - [`cli`]: argument parsing and the subcommands (`serve`, `demo`).
//! - [`serve`]: bootstrap (bind or inherit listeners, start shards) and the per-shard service.

pub mod app;
pub mod body;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod control;
pub mod demo;
pub mod handler;
pub mod http;
pub mod kv;
pub mod lifecycle;
pub mod metrics;
pub mod middleware;
pub mod router;
pub mod serve;
