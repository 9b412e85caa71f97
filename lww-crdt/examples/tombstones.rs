//! Deletes are writes: a tombstone beats every older write of its key, wherever it arrives
//! first. Once every replica holds a tombstone, it can be collected to keep memory flat.
//!
//! ```sh
//! cargo run -p lww-crdt --example tombstones
//! ```

use lww_crdt::{Hlc, LwwMap, Timestamp};

fn main() {
    let mut clock = Hlc::new(1);
    let mut map: LwwMap<String, String> = LwwMap::new();
    for i in 0..5 {
        map.put(format!("session:{i}"), "open".into(), clock.now(1_000 + i));
    }
    // Delete two keys: they stay as tombstones, not as values.
    let deleted_at = clock.now(2_000);
    map.delete("session:1".into(), deleted_at);
    map.delete("session:3".into(), clock.now(2_001));
    println!("{} live keys, {} tombstones", map.len(), map.tombstones());

    // A write of session:1 made before the delete arrives late (say, from a replica that was
    // partitioned): the tombstone wins, the key stays deleted.
    let late = Timestamp::new(1_500, 0, 2);
    assert!(!map.put("session:1".into(), "open".into(), late));
    assert!(map.get("session:1").is_none());

    // Once every replica has every write older than a horizon (the caller's business: the
    // store waits for acknowledgements from every server), tombstones below it can go.
    let horizon = Timestamp::new(3_000, 0, 0);
    let collected = map.collect_tombstones(horizon);
    println!("collected {collected}; {} live keys, {} tombstones", map.len(), map.tombstones());
    assert_eq!((map.len(), map.tombstones()), (3, 0));
}
