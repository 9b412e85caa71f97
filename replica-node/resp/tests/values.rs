//! The reply parser ([`resp::ValueParser`]) through its public API: every RESP2/RESP3 type,
//! malformed replies, nesting and size bounds, replies arriving in pieces.

use bytes::{Bytes, BytesMut};
use resp::{MAX_DEPTH, Protocol, ProtocolError, Value, ValueParser, parse_value};

#[test]
fn replies_of_every_type() {
    let data = b"+OK\r\n-ERR no\r\n:-7\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n_\r\n#t\r\n#f\r\n\
                 ,1.5\r\n,inf\r\n,-inf\r\n(12345678901234567890\r\n=8\r\ntxt:abcd\r\n!3\r\nERR\r\n\
                 *2\r\n:1\r\n*0\r\n%1\r\n+k\r\n+v\r\n~1\r\n:1\r\n>1\r\n+p\r\n|1\r\n+ttl\r\n:3\r\n:9\r\n";
    let mut buf = BytesMut::from(&data[..]);
    let mut parser = ValueParser::new();
    let mut got = Vec::new();
    while let Some(v) = parser.parse(&mut buf).unwrap() {
        got.push(v);
    }
    let expected = vec![
        Value::Simple("OK".into()),
        Value::Error("ERR no".into()),
        Value::Integer(-7),
        Value::Bulk("abc".into()),
        Value::Nil,
        Value::Nil,
        Value::Nil,
        Value::Boolean(true),
        Value::Boolean(false),
        Value::Double(1.5),
        Value::Double(f64::INFINITY),
        Value::Double(f64::NEG_INFINITY),
        Value::BigNumber("12345678901234567890".into()),
        Value::Verbatim { format: *b"txt", text: "abcd".into() },
        Value::Error("ERR".into()),
        Value::Array(vec![Value::Integer(1), Value::Array(vec![])]),
        Value::Map(vec![(Value::Simple("k".into()), Value::Simple("v".into()))]),
        Value::Set(vec![Value::Integer(1)]),
        Value::Push(vec![Value::Simple("p".into())]),
        Value::Integer(9),
    ];
    assert_eq!(got, expected);
    assert!(buf.is_empty());
}

#[test]
fn bad_replies_are_errors() {
    let cases: &[&[u8]] = &[
        b"?\r\n",
        b":x\r\n",
        b"#x\r\n",
        b",abc\r\n",
        b"(1a\r\n",
        b"_x\r\n",
        b"$-2\r\n",
        b"*-2\r\n",
        b"%-1\r\n",
        b"$3\r\nabcd\r\n",
        b"=3\r\ntxt\r\n",
        b"=5\r\ntxtx1\r\n",
        b"$99999999999\r\n",
        b"*999999999999\r\n",
        b"+a\rb\r\n",
    ];
    for case in cases {
        assert!(parse_value(&mut BytesMut::from(&case[..])).is_err(), "{:?}", String::from_utf8_lossy(case));
    }
}

#[test]
fn nesting_is_bounded_and_attribute_chains_do_not_recurse() {
    let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
    assert_eq!(parse_value(&mut BytesMut::from(deep.as_bytes())), Err(ProtocolError::TooDeep));
    let ok = "*1\r\n".repeat(MAX_DEPTH) + ":1\r\n";
    assert!(parse_value(&mut BytesMut::from(ok.as_bytes())).unwrap().is_some());
    let chain = "|0\r\n".repeat(200_000) + ":5\r\n";
    assert_eq!(parse_value(&mut BytesMut::from(chain.as_bytes())), Ok(Some(Value::Integer(5))));
}

#[test]
fn partial_reply_leaves_buffer_and_resumes() {
    let mut full = Vec::new();
    Value::Array((0..500).map(|i| Value::Bulk(Bytes::from(format!("value-{i}")))).collect())
        .encode(&mut full, Protocol::Resp2);
    let mut parser = ValueParser::new();
    let mut buf = BytesMut::new();
    let mut result = None;
    for chunk in full.chunks(7) {
        assert!(result.is_none());
        buf.extend_from_slice(chunk);
        result = parser.parse(&mut buf).unwrap();
        if result.is_none() {
            // Nothing is consumed until the reply is complete.
            assert_eq!(buf.len() % 7, 0);
        }
    }
    let Some(Value::Array(items)) = result else {
        panic!("expected an array, got {result:?}");
    };
    assert_eq!(items.len(), 500);
    assert_eq!(items[499], Value::Bulk("value-499".into()));
}

#[test]
fn reply_size_is_bounded() {
    let mut parser = ValueParser::with_max_len(100);
    let mut buf = BytesMut::from(&b"$200\r\n"[..]);
    assert!(matches!(parser.parse(&mut buf), Err(ProtocolError::TooLarge { .. })));
    let mut buf = BytesMut::from(&b"*40\r\n"[..]);
    let err = ValueParser::with_max_len(100).parse(&mut buf);
    assert!(matches!(err, Err(ProtocolError::TooMany { .. })), "{err:?}");
}
