//! # percore-bench
//!
//! An HTTP/1.1 load generator on the percore runtime: one pinned worker per CPU, each owning its
//! connections on the shard's io_uring engine; open-loop schedules whose latencies count from each
//! request's *intended* send time (no coordinated omission) and closed-loop maximum throughput;
//! HdrHistogram reports (`.hgrm`, `.hlog`, JSON, SVG) and offline `report merge|diff|plot`.
//!
//! Library entry points: [`run_load`] / [`run_load_with`] with a [`LoadConfig`], giving
//! [`RunResults`]; [`write_reports`] for the files; [`main_cli`] is the whole program.
//!
//! ## Modules
//! - [`load`]: workers, connection tasks, schedules, counters; [`http`]: request encoding and the
//!   incremental response parser.
//! - [`run`]: arguments to configuration, live line, summary and files, [`main_cli`].
//! - [`cli`], [`values`], [`url`], [`mix`]: argument parsing; [`summary`], [`hgrm`], [`hlog`],
//!   [`dist`], [`diff`], [`plot`], [`report`]: reports; [`error`]: the crate's error type.

pub mod cli;
pub mod diff;
pub mod dist;
pub mod error;
pub mod hgrm;
pub mod hlog;
pub mod http;
pub mod load;
pub mod mix;
pub mod plot;
pub mod report;
pub mod run;
pub mod summary;
pub mod url;
pub mod values;

pub use cli::{parse_from, parse_or_exit, Cli, CliExit, Command, ReportCommand, RunArgs};
pub use dist::{load_distribution, Distribution};
pub use error::Error;
pub use hgrm::{format_hgrm, format_short_table, parse_hgrm, PercentileRow};
pub use hlog::{merge_hlog_files, read_hlog_file, HlogWriter, Interval};
pub use load::{run_load, run_load_with, LoadConfig, Progress, RequestSpec};
pub use mix::{read_mix_file, MixEntry, MixPicker};
pub use report::run_report;
pub use run::{main_cli, write_reports, ReportPaths};
pub use summary::{ErrorCounts, LatencyStats, RunResults, Summary};
pub use url::{parse_url, Target};
