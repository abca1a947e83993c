//! percore-bench (in progress).
