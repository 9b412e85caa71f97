//! Malformed and oversized input: the offender gets an error (or is disconnected when the
//! stream cannot be resynchronised); other clients, the stored data and the node are unaffected.

mod common;

use common::*;

fn stored_state(node: &replica_node::Node) -> Vec<std::collections::BTreeMap<bytes::Bytes, bytes::Bytes>> {
    clients(node).iter().map(|c| c.list(b("")).unwrap()).collect()
}

#[test]
fn bad_input_hurts_only_the_offender() {
    let node = start_node(2);
    let cs = clients(&node);
    cs[0].put(b("keep"), b("safe")).unwrap();
    assert!(
        eventually(std::time::Duration::from_millis(500), || cs[1].get(b("keep")).unwrap().is_some())
            .is_some()
    );
    let before = stored_state(&node);
    let addr = node.description().client_addrs()[0];

    // A bystander with a pipelined request half sent: it must be served afterwards.
    let mut bystander = Raw::connect(addr);
    bystander.send(b"*2\r\n$3\r\nGET\r\n$4\r\nke");

    // Unknown command and wrong arity: an error, and the connection keeps working.
    let mut c = Raw::connect(addr);
    assert!(c.roundtrip(b"*1\r\n$7\r\nFLUBBER\r\n").starts_with("-ERR unknown command 'FLUBBER'"));
    assert!(c.roundtrip(b"*1\r\n$3\r\nGET\r\n").starts_with("-ERR wrong number of arguments"));
    assert!(c.roundtrip(b"NOSUCH thing\r\n").starts_with("-ERR unknown command"));
    assert_eq!(c.roundtrip(b"*1\r\n$4\r\nPING\r\n"), "+PONG\r\n");

    // Stream-breaking input: an error, then the connection is closed.
    let breaking: &[&[u8]] = &[
        b"*2\r\n$-5\r\nGET\r\n",                   // negative bulk length
        b"*2\r\n$99999999999\r\nGET\r\n",          // huge bulk length
        b"*-7\r\n",                                // negative count (not -1)
        b"*abc\r\n",                               // not a number
        b"*1\r\n$3\r\nGETX\r\n",                   // bulk longer than declared (no CRLF where due)
        b"*99999999999999999999\r\n",              // count overflows
        b"\x00\xff\xfe garbage \x01\x02\r\n*\r\n", // garbage then an empty count
    ];
    for bad in breaking {
        let mut c = Raw::connect(addr);
        c.send(bad);
        let (reply, closed) = c.read_some(usize::MAX);
        let text = String::from_utf8_lossy(&reply);
        assert!(closed, "connection kept open after {:?}", String::from_utf8_lossy(bad));
        assert!(
            text.is_empty() || text.starts_with("-ERR"),
            "{:?} got {text:?}",
            String::from_utf8_lossy(bad)
        );
    }

    // A truncated frame followed by a disconnect changes nothing.
    let mut c = Raw::connect(addr);
    c.send(b"*3\r\n$3\r\nSET\r\n$4\r\nkeep\r\n$100\r\nshort");
    drop(c);

    // A 9 MiB value is refused with an error; the connection stays usable.
    let mut c = Raw::connect(addr);
    let value = vec![b'x'; 9 * 1024 * 1024];
    let mut req = format!("*3\r\n$3\r\nSET\r\n$4\r\nkeep\r\n${}\r\n", value.len()).into_bytes();
    req.extend_from_slice(&value);
    req.extend_from_slice(b"\r\n");
    let reply = c.roundtrip(&req);
    assert!(reply.starts_with("-ERR value too large"), "{reply}");
    assert_eq!(c.roundtrip(b"PING\r\n"), "+PONG\r\n");

    // An oversized key too.
    let key = vec![b'k'; 65 * 1024];
    let mut req = format!("*3\r\n$3\r\nSET\r\n${}\r\n", key.len()).into_bytes();
    req.extend_from_slice(&key);
    req.extend_from_slice(b"\r\n$1\r\nv\r\n");
    assert!(c.roundtrip(&req).starts_with("-ERR key too large"));

    // The bystander finishes its request and gets its answer.
    bystander.send(b"ep\r\n");
    assert_eq!(bystander.read_some(15).0, b"$4\r\nsafe\r\n");

    // Nothing stored changed, and the node still serves everyone.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(stored_state(&node), before);
    cs[1].put(b("after"), b("ok")).unwrap();
    assert_eq!(cs[1].get(b("after")).unwrap(), Some(b("ok")));
}

#[test]
fn binary_keys_and_values_round_trip() {
    let node = start_node(2);
    let cs = clients(&node);
    let key = b(b"\x00bin\r\nkey\xff");
    let value = b((0..=255u8).collect::<Vec<_>>());
    cs[0].put(&key, &value).unwrap();
    assert_eq!(cs[0].get(&key).unwrap(), Some(value.clone()));
    assert!(
        eventually(std::time::Duration::from_millis(500), || cs[1].get(&key).unwrap() == Some(value.clone()))
            .is_some()
    );
    assert_eq!(cs[1].list(b(b"\x00bin")).unwrap().get(&key), Some(&value));
}
