//! Deterministic cluster simulation (being written).
