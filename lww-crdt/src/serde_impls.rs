//! serde support: a map serializes as a sequence of `(key, entry)` pairs in key order.
//!
//! Decoding builds the tree in bulk while the keys come strictly increasing, as an encoded map
//! always lists them; from the first repeated or out-of-order key (hand-made or hostile input)
//! it merges the pairs one by one, so such input still yields a valid map by last-writer-wins,
//! never a corrupt one.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::map::Builder;
use crate::{Entry, Key, LwwMap};

impl<K: Serialize, V: Serialize> Serialize for LwwMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.entry_count()))?;
        for pair in self.entries() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de, K, V> Deserialize<'de> for LwwMap<K, V>
where
    K: Deserialize<'de> + Key + Clone,
    V: Deserialize<'de> + Ord,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Key + Clone,
            V: Deserialize<'de> + Ord,
        {
            type Value = LwwMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (key, entry) pairs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The size hint comes from untrusted input: never preallocate from it.
                let mut builder = Builder::default();
                while let Some((k, e)) = seq.next_element::<(K, Entry<V>)>()? {
                    builder.push(k, e);
                }
                Ok(builder.finish())
            }
        }

        deserializer.deserialize_seq(MapVisitor(PhantomData))
    }
}
