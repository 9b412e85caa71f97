//! Arbitrary bytes through every decoder of the durable log: as a record payload, as a run of
//! records, and as the body of a log segment and of a snapshot being recovered
//! (`replica_persist::harness::check_log_bytes`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    replica_persist::harness::check_log_bytes(data);
});
