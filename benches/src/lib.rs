//! Benchmarks and measurement tools for the store.
