//! Keys with an inline, order-consistent head, so the map's tree can order most keys without
//! leaving its own nodes.
//!
//! The map's tree holds pointers to shared records. Comparing two keys by their bytes would
//! dereference the record and then the key's buffer, and in a map larger than the caches nearly
//! every one of the comparisons on the way down the tree would be a cache miss. Each tree
//! element therefore keeps the key's [`Key::head`] inline: a `u64` summary that orders keys the
//! same way the keys themselves do wherever the heads differ. Only keys with equal heads (for
//! byte strings: the same first 8 bytes) are compared in full.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

/// A key of an [`crate::LwwMap`]: an [`Ord`] type with a 64-bit *head* that never contradicts
/// the order of the keys.
///
/// Contract, for all keys `a` and `b`:
/// - `a < b` implies `a.head() <= b.head()` (equivalently, `a.head() < b.head()` implies
///   `a < b`), so ordering by head first and by the key second is the key order;
/// - a key and what it borrows as (`Bytes` as `[u8]`, `String` as `str`, `&T` as `T`) have the
///   same head, so a lookup by a borrowed form finds the stored key.
///
/// A constant head satisfies the contract but buys nothing. Byte strings use their first 8
/// bytes; integers use their value.
pub trait Key: Ord {
    /// The key's head (see the trait's contract).
    fn head(&self) -> u64;

    /// The key as a byte string, for keys ordered as byte strings: then the head must be the
    /// first 8 bytes (big-endian, zero padded), and a map may skip a prefix every key shares
    /// and take its heads from the bytes after it, so keys such as `user:000123` and
    /// `user:000456` do not all get the same head. `None` (the default) for other keys.
    fn as_bytes(&self) -> Option<&[u8]> {
        None
    }
}

/// The head a map's tree uses for `key` when every key of the tree starts with the same
/// `skip` bytes (which the caller knows `key` has): for byte strings, [`suffix_head`] of the
/// bytes after them; for other keys, [`Key::head`].
pub(crate) fn head_after<Q: Key + ?Sized>(key: &Q, skip: usize) -> u64 {
    match key.as_bytes() {
        Some(b) => suffix_head(&b[skip.min(b.len())..]),
        None => key.head(),
    }
}

/// The first 7 bytes of `suffix` (zero padded) and then its length capped at 8, as a
/// big-endian `u64`.
///
/// Order-consistent as [`bytes_head`] is: two suffixes that differ within their first 7 bytes
/// compare as those bytes do; when one is a proper prefix of the other and their padded first
/// 7 bytes agree, the shorter has the smaller length byte (or both have 8 and the heads tie,
/// which only says "compare in full"). And exact for short keys: equal heads with a length
/// byte below 8 mean both suffixes are those same bytes, so the tree tells two such keys equal
/// without reading either one's buffer.
pub(crate) fn suffix_head(suffix: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = suffix.len().min(7);
    bytes[..n].copy_from_slice(&suffix[..n]);
    bytes[7] = suffix.len().min(8) as u8;
    u64::from_be_bytes(bytes)
}

/// Whether a [`suffix_head`] determines its suffix (it is shorter than 8 bytes).
pub(crate) fn suffix_head_is_exact(head: u64) -> bool {
    head & 0xff < 8
}

/// The first 8 bytes of `bytes` as a big-endian `u64`, zero padded when shorter.
///
/// Why this is order-consistent (`a < b` in lexicographic byte order implies
/// `head(a) <= head(b)`): write `p(x)` for the 8-byte array of `x`'s first 8 bytes padded with
/// zeros; comparing the big-endian integers of two such arrays compares the arrays
/// lexicographically. Let `a < b`.
/// - If `a` is a proper prefix of `b`, `p(a)` and `p(b)` agree on the first
///   `min(a.len(), 8)` bytes, and after that `p(a)` holds zeros, which no byte is below, so
///   `p(a) <= p(b)`.
/// - Otherwise `a` and `b` first differ at some index `i`, with `a[i] < b[i]`. If `i < 8`, the
///   arrays agree before `i` and `p(a)[i] < p(b)[i]`, so `p(a) < p(b)`. If `i >= 8`, both arrays
///   are the same 8 bytes and the heads are equal.
///
/// Hence different heads order two keys exactly as their bytes do, and equal heads (a shared
/// first 8 bytes, or a key and the same key with trailing zero bytes) fall back to comparing
/// the bytes in full.
fn bytes_head(bytes: &[u8]) -> u64 {
    match bytes.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        None => {
            let mut padded = [0u8; 8];
            padded[..bytes.len()].copy_from_slice(bytes);
            u64::from_be_bytes(padded)
        }
    }
}

impl Key for [u8] {
    fn head(&self) -> u64 {
        bytes_head(self)
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<const N: usize> Key for [u8; N] {
    fn head(&self) -> u64 {
        bytes_head(self)
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Key for Vec<u8> {
    fn head(&self) -> u64 {
        bytes_head(self)
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Key for Bytes {
    fn head(&self) -> u64 {
        bytes_head(self)
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// `str` orders by its UTF-8 bytes.
impl Key for str {
    fn head(&self) -> u64 {
        bytes_head(self.as_bytes())
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        Some(str::as_bytes(self))
    }
}

impl Key for String {
    fn head(&self) -> u64 {
        bytes_head(self.as_bytes())
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        Some(str::as_bytes(self))
    }
}

impl<T: Key + ?Sized> Key for &T {
    fn head(&self) -> u64 {
        (**self).head()
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        (**self).as_bytes()
    }
}

impl<T: Key + ?Sized> Key for Box<T> {
    fn head(&self) -> u64 {
        (**self).head()
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        (**self).as_bytes()
    }
}

impl<T: Key + ?Sized> Key for Rc<T> {
    fn head(&self) -> u64 {
        (**self).head()
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        (**self).as_bytes()
    }
}

impl<T: Key + ?Sized> Key for Arc<T> {
    fn head(&self) -> u64 {
        (**self).head()
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        (**self).as_bytes()
    }
}

impl<T: Key + ToOwned + ?Sized> Key for Cow<'_, T> {
    fn head(&self) -> u64 {
        (**self).head()
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        (**self).as_bytes()
    }
}

/// Unsigned integers: the value itself, which orders exactly as the integer.
macro_rules! unsigned_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn head(&self) -> u64 {
                u64::from(*self)
            }
        }
    )*};
}
unsigned_key!(u8, u16, u32, u64, bool, char);

impl Key for usize {
    fn head(&self) -> u64 {
        // usize is at most 64 bits on every supported target.
        *self as u64
    }
}

impl Key for u128 {
    fn head(&self) -> u64 {
        // The high half: a truncation of an order-preserving map is still monotone.
        (*self >> 64) as u64
    }
}

/// Signed integers: sign-extended to `i64`, then the sign bit flipped, which maps
/// `i64::MIN..=i64::MAX` onto `0..=u64::MAX` in order.
macro_rules! signed_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn head(&self) -> u64 {
                (i64::from(*self) as u64) ^ (1 << 63)
            }
        }
    )*};
}
signed_key!(i8, i16, i32, i64);

impl Key for isize {
    fn head(&self) -> u64 {
        // isize is at most 64 bits on every supported target.
        (*self as i64 as u64) ^ (1 << 63)
    }
}

impl Key for i128 {
    fn head(&self) -> u64 {
        // The high half, sign bit flipped: monotone, like the signed mapping above.
        ((*self >> 64) as u64) ^ (1 << 63)
    }
}

impl Key for () {
    fn head(&self) -> u64 {
        0
    }
}

/// A head and a key in a borrowed form `Q`: what the tree is searched by when the caller holds
/// a `&Q` (say a `&[u8]`) rather than a stored key type.
///
/// The chunk index (a `BTreeMap`) searches through `Borrow`, which must hand out a reference,
/// and no tree element can be made from a `&Q` without building a record. Both the tree's elements and the query
/// therefore borrow as this trait object. The key is fetched only when the heads tie: for a
/// stored element it lives in the element's record, another cache line, which a comparison
/// decided by the heads never touches.
pub(crate) trait Probe<Q: ?Sized> {
    fn head(&self) -> u64;
    fn key(&self) -> &Q;
}

/// A search key made from a borrowed key.
pub(crate) struct Query<'q, Q: ?Sized> {
    head: u64,
    key: &'q Q,
    /// The head determines the key among keys with this tree's prefix (see [`suffix_head`]):
    /// a stored key with the same head is this key.
    pub(crate) exact: bool,
}

impl<'q, Q: Key + ?Sized> Query<'q, Q> {
    #[cfg(test)]
    pub(crate) fn new(key: &'q Q) -> Self {
        Query { head: key.head(), key, exact: false }
    }
    /// A query for a tree whose keys all start with the same `skip` bytes as `key`.
    pub(crate) fn after(key: &'q Q, skip: usize) -> Self {
        let head = head_after(key, skip);
        Query { head, key, exact: key.as_bytes().is_some() && suffix_head_is_exact(head) }
    }
}

impl<Q: ?Sized> Probe<Q> for Query<'_, Q> {
    fn head(&self) -> u64 {
        self.head
    }

    fn key(&self) -> &Q {
        self.key
    }
}

impl<Q: Ord + ?Sized> PartialEq for dyn Probe<Q> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<Q: Ord + ?Sized> Eq for dyn Probe<Q> + '_ {}

impl<Q: Ord + ?Sized> PartialOrd for dyn Probe<Q> + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<Q: Ord + ?Sized> Ord for dyn Probe<Q> + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head().cmp(&other.head()).then_with(|| self.key().cmp(other.key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How the map's tree orders two keys: by head, then by the keys themselves.
    fn tree_cmp<K: Key>(a: &K, b: &K) -> Ordering {
        let (qa, qb) = (Query::new(a), Query::new(b));
        let (pa, pb): (&dyn Probe<K>, &dyn Probe<K>) = (&qa, &qb);
        pa.cmp(pb)
    }

    /// Short keys, keys sharing their first 8 bytes and keys with trailing zero bytes are the
    /// cases where the head alone cannot decide.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..12),
            prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xff)], 0..12),
            (prop::collection::vec(any::<u8>(), 0..4), 0..4usize).prop_map(|(mut k, zeros)| {
                k.extend(std::iter::repeat_n(0, zeros));
                k
            }),
            prop::collection::vec(any::<u8>(), 0..6).prop_map(|tail| {
                let mut k = b"prefix:_".to_vec();
                k.extend(tail);
                k
            }),
        ]
    }

    proptest! {
        #[test]
        fn slot_order_is_the_byte_order(a in key(), b in key()) {
            prop_assert_eq!(tree_cmp(&a, &b), a.cmp(&b));
            if a < b {
                prop_assert!(a.head() <= b.head());
            }
            // A lookup by the borrowed form compares the same way.
            prop_assert_eq!(tree_cmp(&&a[..], &&b[..]), a.cmp(&b));
            prop_assert_eq!(tree_cmp(&Bytes::from(a.clone()), &Bytes::from(b.clone())), a.cmp(&b));
        }

        #[test]
        fn suffix_heads_are_order_consistent_and_exact_for_short_suffixes(a in key(), b in key()) {
            let (ha, hb) = (suffix_head(&a), suffix_head(&b));
            if a < b {
                prop_assert!(ha <= hb, "{:?} < {:?} but heads {:x} > {:x}", a, b, ha, hb);
            }
            if ha == hb && suffix_head_is_exact(ha) {
                prop_assert_eq!(&a, &b);
            }
            prop_assert_eq!(suffix_head_is_exact(ha), a.len() < 8);
        }

        #[test]
        fn heads_agree_across_borrowed_forms(k in key()) {
            let h = k.head();
            prop_assert_eq!(Bytes::from(k.clone()).head(), h);
            prop_assert_eq!(k[..].head(), h);
            prop_assert_eq!(Key::head(&&k[..]), h);
            prop_assert_eq!(Box::<[u8]>::from(&k[..]).head(), h);
            let s = String::from_utf8_lossy(&k).into_owned();
            prop_assert_eq!(s.head(), s.as_str().head());
        }

        #[test]
        fn string_slots_order_as_strings(a in ".{0,10}", b in ".{0,10}") {
            prop_assert_eq!(tree_cmp(&a, &b), a.cmp(&b));
        }

        #[test]
        fn integer_heads_are_monotone(a: i64, b: i64, c: u128, d: u128, e: i128, f: i128) {
            prop_assert_eq!(tree_cmp(&a, &b), a.cmp(&b));
            prop_assert_eq!(tree_cmp(&(a as i8), &(b as i8)), (a as i8).cmp(&(b as i8)));
            prop_assert_eq!(tree_cmp(&(a as u64), &(b as u64)), (a as u64).cmp(&(b as u64)));
            prop_assert_eq!(tree_cmp(&c, &d), c.cmp(&d));
            prop_assert_eq!(tree_cmp(&e, &f), e.cmp(&f));
        }
    }

    #[test]
    fn trailing_zeros_and_short_keys_keep_byte_order() {
        let keys: [&[u8]; 9] = [
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"a\0\0\0\0\0\0\0",
            b"a\0\0\0\0\0\0\0\0",
            b"a\0\0\0\0\0\0\0\x01",
            b"b",
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            assert_eq!(tree_cmp(&w[0], &w[1]), Ordering::Less, "{:?} < {:?}", w[0], w[1]);
        }
        assert_eq!(b"a".head(), b"a\0".head(), "trailing zeros share a head; the bytes decide");
        assert_eq!(i64::MIN.head(), 0);
        assert_eq!(i64::MAX.head(), u64::MAX);
    }
}
