//! Two replicas that write concurrently and exchange deltas as bytes over a transport (here a
//! channel; a socket, a message queue or a file would do the same), then agree.
//!
//! ```sh
//! cargo run -p lww-crdt --features serde --example two_replicas
//! ```

use std::sync::mpsc;

use bytes::Bytes;
use lww_crdt::{BytesMap, Delta, DeltaBuffer, Entry, Hlc, ReplicaId};

/// One replica: its map, its clock, and the writes it has not sent yet.
struct Replica {
    map: BytesMap,
    clock: Hlc,
    pending: DeltaBuffer<Bytes, Bytes>,
}

impl Replica {
    fn new(id: ReplicaId) -> Self {
        Replica { map: BytesMap::new(), clock: Hlc::new(id), pending: DeltaBuffer::new() }
    }

    /// A local write (`None` deletes), stamped at the caller's wall-clock reading.
    fn write(&mut self, key: &str, value: Option<&str>, wall_ms: u64) {
        let ts = self.clock.now(wall_ms);
        let entry = match value {
            Some(v) => Entry::live(Bytes::copy_from_slice(v.as_bytes()), ts),
            None => Entry::tombstone(ts),
        };
        let key = Bytes::copy_from_slice(key.as_bytes());
        if self.map.apply(key.clone(), entry.clone()) {
            self.pending.record(key, entry);
        }
    }

    /// The writes since the last call, encoded for the wire (`None` when there are none).
    fn outgoing(&mut self) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        Some(rmp_serde::to_vec(&self.pending.flush()).expect("a map always encodes"))
    }

    /// Merges a delta received from the wire. The clock observes it, so a later local write
    /// wins over everything received.
    fn incoming(&mut self, bytes: &[u8]) -> Result<(), rmp_serde::decode::Error> {
        let delta: Delta<Bytes, Bytes> = rmp_serde::from_slice(bytes)?;
        let stats = self.map.merge(&delta);
        self.clock.observe(stats.newest);
        println!(
            "  merged {} entries ({} changed, {} already known)",
            stats.total(),
            stats.changed,
            stats.redundant
        );
        Ok(())
    }

    fn show(&self, name: &str) {
        let pairs: Vec<String> = self
            .map
            .iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
            .collect();
        println!("{name}: {}", pairs.join(" "));
    }
}

fn main() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    // The transport: one channel each way, carrying bytes.
    let (to_b, from_a) = mpsc::channel::<Vec<u8>>();
    let (to_a, from_b) = mpsc::channel::<Vec<u8>>();

    // Concurrent writes: both write "color"; B's write is 5 ms later, so it wins everywhere.
    a.write("color", Some("red"), 1_000);
    a.write("shape", Some("circle"), 1_001);
    b.write("color", Some("blue"), 1_005);
    b.write("size", Some("large"), 1_006);
    // A deletes a key B has not seen yet: the tombstone travels like any write.
    a.write("size", None, 1_010);

    if let Some(bytes) = a.outgoing() {
        println!("A sends {} bytes", bytes.len());
        to_b.send(bytes).expect("B is listening");
    }
    if let Some(bytes) = b.outgoing() {
        println!("B sends {} bytes", bytes.len());
        to_a.send(bytes).expect("A is listening");
    }
    println!("B receives:");
    b.incoming(&from_a.recv().expect("a delta from A")).expect("a valid delta");
    println!("A receives:");
    a.incoming(&from_b.recv().expect("a delta from B")).expect("a valid delta");

    a.show("A");
    b.show("B");
    assert_eq!(a.map, b.map, "the replicas agree");
    assert_eq!(a.map.get(&b"color"[..]).map(|v| &v[..]), Some(&b"blue"[..]));
    assert!(a.map.get(&b"size"[..]).is_none(), "A's delete came after B's write");

    // Delivering the same delta twice, or in another order, changes nothing: merge is
    // idempotent and commutative.
    let mut again = b.map.clone();
    again.merge(&a.map);
    assert_eq!(again, b.map);
}
