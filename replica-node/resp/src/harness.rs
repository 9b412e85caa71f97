//! The checks behind the fuzz targets `resp_request` and `resp_value` (in `fuzz/`), compiled
//! for tests and with the feature `harness`, so the same checks run as unit tests on stable.
//!
//! A fuzz input is a read plan followed by the stream. Its first byte, modulo
//! `MAX_PLAN + 1`, says how many of the next bytes are the plan. Each plan byte is the length of one read:
//! one plus its low six bits times a unit its high two bits choose (1, 8, 64 or 1024 bytes);
//! the plan is taken in turn and repeated, and an empty plan feeds the stream one byte per
//! read. The fuzzer thus chooses where the reads split the stream just as it chooses the
//! bytes, and a failing input reproduces exactly.

use bytes::{Bytes, BytesMut};

use crate::{Protocol, ProtocolError, RequestParser, Value, ValueParser, encode_command};

/// Most plan bytes at the front of a fuzz input.
pub const MAX_PLAN: usize = 15;

/// Fuzz entry point for [`RequestParser`]: never panics on any input; feeding the stream in
/// the reads of the input's plan gives the same commands and the same verdict as feeding it
/// at once; and the commands parsed, re-encoded, parse back to themselves.
pub fn fuzz_request(input: &[u8]) {
    let (plan, data) = split_input(input);
    check_requests(data, plan);
}

/// Fuzz entry point for [`ValueParser`]: never panics; reading the stream as the plan says and
/// at once agree; parsed values re-encoded (RESP3) parse back to the same values.
pub fn fuzz_value(input: &[u8]) {
    let (plan, data) = split_input(input);
    check_values(data, plan);
}

/// Splits a fuzz input into its read plan and its stream.
fn split_input(input: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = input.split_first() else {
        return (&[], &[]);
    };
    rest.split_at((usize::from(first) % (MAX_PLAN + 1)).min(rest.len()))
}

/// The length of the read a plan byte stands for: the low six bits count, the high two choose
/// the unit (1, 8, 64 or 1024 bytes), so reads range from single bytes to 63 KiB.
fn read_len(plan_byte: u8) -> usize {
    const UNITS: [usize; 4] = [1, 8, 64, 1024];
    1 + usize::from(plan_byte & 0x3f) * UNITS[usize::from(plan_byte >> 6)]
}

/// Feeds `data` to `decode` the way a connection driver does: append one read to the buffer,
/// then decode until the decoder needs more. Reads follow `plan` (`None`: all of `data` in one
/// read). Returns what was decoded and whether the stream ended in an error.
fn drive<T>(
    data: &[u8],
    plan: Option<&[u8]>,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
) -> (Vec<T>, bool) {
    let mut lens =
        plan.map(|p| if p.is_empty() { &[0][..] } else { p }).map(|p| p.iter().cycle().map(|&b| read_len(b)));
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut fed = 0;
    while fed < data.len() {
        let n = lens.as_mut().and_then(Iterator::next).unwrap_or(data.len()).min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            match decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, true),
            }
        }
    }
    (items, false)
}

/// Every request in `data`, read as `plan` says, and whether the stream ended in an error.
fn requests(data: &[u8], plan: Option<&[u8]>) -> (Vec<Vec<Bytes>>, bool) {
    let mut parser = RequestParser::new();
    let (commands, err) = drive(data, plan, |buf| parser.parse(buf));
    assert!(commands.iter().all(|args| !args.is_empty()), "the parser returned an empty command");
    (commands, err)
}

/// Every reply in `data`, read as `plan` says, and whether the stream ended in an error.
fn values(data: &[u8], plan: Option<&[u8]>) -> (Vec<Value>, bool) {
    let mut parser = ValueParser::new();
    drive(data, plan, |buf| parser.parse(buf))
}

fn check_requests(data: &[u8], plan: &[u8]) {
    let (whole, whole_err) = requests(data, None);
    let (chunked, chunked_err) = requests(data, Some(plan));
    assert_eq!(whole, chunked, "chunked parsing differs");
    assert_eq!(whole_err, chunked_err, "chunked parsing ends differently");
    let mut encoded = Vec::new();
    for args in &whole {
        encode_command(&mut encoded, args);
    }
    let (again, err) = requests(&encoded, Some(plan));
    assert!(!err, "re-encoded commands do not parse");
    assert_eq!(again, whole, "re-encoded commands parse differently");
}

fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    values.iter().for_each(|v| v.encode(&mut out, Protocol::Resp3));
    out
}

fn check_values(data: &[u8], plan: &[u8]) {
    let (whole, whole_err) = values(data, None);
    let (chunked, chunked_err) = values(data, Some(plan));
    // Compared through their encoding: NaN is not equal to itself.
    let encoded = encode_all(&whole);
    assert_eq!(encoded, encode_all(&chunked), "chunked parsing differs");
    assert_eq!(whole_err, chunked_err, "chunked parsing ends differently");
    let (again, err) = values(&encoded, Some(plan));
    assert!(!err, "re-encoded values do not parse");
    assert_eq!(encode_all(&again), encoded, "re-encoded values parse differently");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testutil::{encode, parse_all};

    #[test]
    fn the_input_holds_the_plan_then_the_stream() {
        assert_eq!(split_input(b""), (&b""[..], &b""[..]));
        assert_eq!(split_input(b"\x02ab*1\r\n"), (&b"ab"[..], &b"*1\r\n"[..]));
        // 16 plan bytes wrap to 0; a plan longer than the input takes all of it.
        assert_eq!(split_input(b"\x10PING\r\n"), (&b""[..], &b"PING\r\n"[..]));
        assert_eq!(split_input(b"\x0fab"), (&b"ab"[..], &b""[..]));
        assert_eq!((read_len(0), read_len(0x3f), read_len(0x41), read_len(0xff)), (1, 64, 9, 1 + 63 * 1024));
    }

    #[test]
    fn reads_follow_the_plan() {
        // A decoder that takes the whole buffer each time shows the size of every read.
        let take_all = |buf: &mut BytesMut| {
            let n = buf.len();
            buf.clear();
            Ok::<_, ProtocolError>((n > 0).then_some(n))
        };
        assert_eq!(drive(b"abcdefg", Some(&[1, 0]), take_all), (vec![2, 1, 2, 1, 1], false));
        assert_eq!(drive(b"abc", Some(&[]), take_all), (vec![1, 1, 1], false));
        assert_eq!(drive(b"abc", None, take_all), (vec![3], false));
        let refuse = |_: &mut BytesMut| Err::<Option<()>, _>(ProtocolError::TooDeep);
        assert_eq!(drive(b"abc", Some(&[]), refuse), (vec![], true));
    }

    #[test]
    fn fuzz_regressions() {
        for case in [&b""[..], b"*", b"*1\r\n", b"\n", b"\"", b"*1\r\n$0\r\n\r\n", b"a\"b\"\n", b"*0\r\n"] {
            fuzz_request(case);
            fuzz_value(case);
            for plan in [&[][..], &[0x3f], &[0xff, 0]] {
                check_requests(case, plan);
                check_values(case, plan);
            }
        }
    }

    fn arb_command() -> impl Strategy<Value = Vec<Bytes>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from), 1..6)
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Simple),
            "ERR [a-z ]{0,20}".prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            prop::collection::vec(any::<u8>(), 0..30).prop_map(|b| Value::Bulk(b.into())),
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Boolean),
            prop::num::f64::NORMAL.prop_map(Value::Double),
            "-?[1-9][0-9]{0,30}".prop_map(Value::BigNumber),
            prop::collection::vec(any::<u8>(), 0..30)
                .prop_map(|b| Value::Verbatim { format: *b"txt", text: b.into() }),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Set),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Push),
                prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    /// A read plan, as a fuzz input carries it.
    fn arb_plan() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..=MAX_PLAN)
    }

    /// Fragments that make random input look like the protocol, reaching deeper states than
    /// uniformly random bytes.
    const PIECES: &[&[u8]] = &[
        b"*", b"$", b"\r\n", b"\r", b"\n", b"-1", b"0", b"3", b"abc", b" ", b"\"", b"'", b"\\x4", b"%", b"|",
        b"~", b">", b"=", b"_", b"#t", b",1.5", b"(", b":", b"+", b"!", b"1\r\n", b"2\r\n",
    ];

    proptest! {
        #[test]
        fn commands_round_trip(commands in prop::collection::vec(arb_command(), 0..20), plan in arb_plan()) {
            let data = encode(&commands);
            prop_assert_eq!(parse_all(&data).unwrap(), commands);
            check_requests(&data, &plan);
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
            fuzz_request(&data);
            fuzz_value(&data);
        }

        #[test]
        fn protocol_like_garbage_never_panics(
            parts in prop::collection::vec(prop::sample::select(PIECES), 0..60),
            plan in arb_plan(),
        ) {
            let data = parts.concat();
            check_requests(&data, &plan);
            check_values(&data, &plan);
        }

        #[test]
        fn mutated_pipelines_never_panic(
            commands in prop::collection::vec(arb_command(), 1..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            plan in arb_plan(),
        ) {
            let mut data = encode(&commands);
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            check_requests(&data, &plan);
        }

        #[test]
        fn values_round_trip(values_sent in prop::collection::vec(arb_value(), 0..5), plan in arb_plan()) {
            let data = encode_all(&values_sent);
            let (got, err) = values(&data, Some(&plan));
            prop_assert!(!err);
            prop_assert_eq!(got, values_sent);
            check_values(&data, &plan);
        }

        #[test]
        fn truncated_values_wait(value in arb_value(), cut in any::<prop::sample::Index>()) {
            let mut data = Vec::new();
            value.encode(&mut data, Protocol::Resp3);
            let cut = cut.index(data.len());
            let mut parser = ValueParser::new();
            let mut buf = BytesMut::from(&data[..cut]);
            prop_assert_eq!(parser.parse(&mut buf), Ok(None));
            buf.extend_from_slice(&data[cut..]);
            prop_assert_eq!(parser.parse(&mut buf), Ok(Some(value)));
        }
    }
}
