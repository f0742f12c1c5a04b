//! dataplane: an append-only, log-structured key/value engine and `zdb`.
