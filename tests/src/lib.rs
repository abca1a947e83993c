//! End-to-end tests of percore live in `tests/tests/`, one file per area (`http_*`, `serve_*`,
//! `shutdown_*`), with shared helpers in `tests/tests/support/`. This library is empty: the
//! package exists to build the real binaries (`e2e-percore` from `server/src/main.rs`) and run
//! them on port 0.
