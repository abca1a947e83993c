//! End-to-end tests of the `percore` binaries live in `tests/`; this library holds their helpers.
