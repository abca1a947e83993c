//! Hot-restart handoff (being written).
