//! Runs arbitrary schedules of writes, deletes, clock steps and message deliveries (reordered,
//! duplicated, dropped) on three replicas and checks them against a `BTreeMap` model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = lww_crdt::harness::run(data) {
        panic!("{e}");
    }
});
