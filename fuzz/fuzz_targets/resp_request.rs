//! Feeds arbitrary bytes, in arbitrary chunks, to the server's RESP request parser: it must
//! never panic, must parse the same commands whatever the chunking, and what it parses must
//! survive re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resp::harness::fuzz_request(data));
