//! Feeds arbitrary bytes to the client's RESP2/RESP3 reply parser: never a panic, and parsed
//! values re-encode to bytes that parse back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resp::harness::fuzz_value(data));
