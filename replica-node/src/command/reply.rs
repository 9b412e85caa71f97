//! The output of one client connection: replies not yet written to the socket, bounded by the
//! client output limit.
//!
//! Small replies are appended to one contiguous buffer, so a pipeline of `GET`s costs one write.
//! A value of [`SHARE_FROM`] bytes or more is not copied: the buffer holds another handle to
//! the stored `Bytes` and the socket is written from the store's own memory. So a reply naming
//! one 8 MiB value many times costs a handle per mention, not 8 MiB per mention.
//!
//! The limit counts every unsent byte, shared or not: a stored value can be overwritten while
//! its reply waits for a slow reader, and the handle then keeps the old value alive for that
//! client alone. Once a reply would take the unsent bytes past the limit, the buffer stops
//! taking data and reports [`ReplyBuf::over_limit`]; the connection is then closed without
//! building the rest (a reply is refused, never built whole).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Values from this size on are shared with the store rather than copied into the output.
pub const SHARE_FROM: usize = 16 * 1024;

/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 64;

/// A connection's unsent replies; see the [module documentation](self).
#[derive(Debug)]
pub struct ReplyBuf {
    /// Finished segments, oldest first: copied replies and shared values.
    sealed: VecDeque<Bytes>,
    /// Bytes in `sealed`.
    sealed_len: usize,
    /// The newest bytes, still growing. Written only once `sealed` is empty.
    tail: Vec<u8>,
    /// Bytes at the front of `tail` already written.
    tail_pos: usize,
    /// Most unsent bytes allowed.
    limit: usize,
    /// A reply went past the limit: the connection must close.
    over: bool,
}

impl ReplyBuf {
    /// An empty buffer that refuses to hold more than `limit` unsent bytes.
    pub fn new(limit: usize) -> Self {
        ReplyBuf { sealed: VecDeque::new(), sealed_len: 0, tail: Vec::new(), tail_pos: 0, limit, over: false }
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.sealed_len + self.tail.len() - self.tail_pos
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a reply went past the limit (the rest of it was dropped).
    pub fn over_limit(&self) -> bool {
        self.over
    }

    /// The buffer small replies and headers are encoded into (with the `resp` encoders).
    pub fn raw(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    /// Whether `n` more bytes fit under the limit; marks the buffer over the limit otherwise.
    fn room_for(&mut self, n: usize) -> bool {
        if !self.over && self.len().saturating_add(n) > self.limit {
            self.over = true;
        }
        !self.over
    }

    /// Appends a bulk string of stored data, sharing large values instead of copying them.
    pub fn value(&mut self, data: &Bytes) {
        if !self.room_for(data.len() + 16) {
            return;
        }
        if data.len() < SHARE_FROM {
            resp::bulk(&mut self.tail, data);
            return;
        }
        self.tail.extend_from_slice(b"$");
        self.tail.extend_from_slice(data.len().to_string().as_bytes());
        self.tail.extend_from_slice(b"\r\n");
        self.seal();
        self.sealed_len += data.len();
        self.sealed.push_back(data.clone());
        self.tail.extend_from_slice(b"\r\n");
    }

    /// Appends a bulk string of other data (copied).
    pub fn bulk(&mut self, data: &[u8]) {
        if self.room_for(data.len() + 16) {
            resp::bulk(&mut self.tail, data);
        }
    }

    /// Moves the tail into the sealed segments.
    fn seal(&mut self) {
        if self.tail_pos == self.tail.len() {
            self.tail.clear();
            self.tail_pos = 0;
            return;
        }
        let mut done = Bytes::from(std::mem::take(&mut self.tail));
        done.advance(self.tail_pos);
        self.tail_pos = 0;
        self.sealed_len += done.len();
        self.sealed.push_back(done);
    }

    /// Writes as much as `w` takes. Returns the bytes written; stops at `WouldBlock` (not an
    /// error: the rest waits) and fails on any other error.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        while !self.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut used = 0;
                for (slot, seg) in slices.iter_mut().zip(&self.sealed) {
                    *slot = IoSlice::new(seg);
                    used += 1;
                }
                // The tail follows the sealed segments only when all of them are included.
                if self.sealed.len() < MAX_SLICES {
                    slices[used] = IoSlice::new(&self.tail[self.tail_pos..]);
                    used += 1;
                }
                match w.write_vectored(&slices[..used]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            written += n;
            self.consume(n);
        }
        if self.is_empty() {
            self.tail.clear();
            self.tail_pos = 0;
            // One huge reply should not pin its buffer for the connection's lifetime.
            if self.tail.capacity() > 1024 * 1024 {
                self.tail.shrink_to(64 * 1024);
            }
        }
        Ok(written)
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.sealed.front_mut() else {
                self.tail_pos += n;
                return;
            };
            let take = n.min(front.len());
            front.advance(take);
            self.sealed_len -= take;
            n -= take;
            if front.is_empty() {
                self.sealed.pop_front();
            }
        }
    }

    /// Everything unsent, as one buffer (tests).
    #[cfg(test)]
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out).expect("a Vec takes everything");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call and then blocks after `budget`.
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn expected(values: &[&[u8]]) -> Vec<u8> {
        let mut want = Vec::new();
        for v in values {
            resp::bulk(&mut want, v);
        }
        want
    }

    #[test]
    fn small_and_shared_values_come_out_in_order_through_partial_writes() {
        let big = Bytes::from(vec![7u8; SHARE_FROM * 3]);
        let small = Bytes::from_static(b"hi");
        let mut out = ReplyBuf::new(usize::MAX);
        for v in [&small, &big, &small, &big, &big, &small] {
            out.value(v);
        }
        assert_eq!(out.sealed.iter().filter(|b| b.len() == big.len()).count(), 3, "large values shared");
        let want = expected(&[&small, &big, &small, &big, &big, &small]);
        assert_eq!(out.len(), want.len());
        let mut w = Trickle { got: Vec::new(), chunk: 1000, budget: 5_000 };
        assert_eq!(out.write_to(&mut w).unwrap(), 5_000, "stops at WouldBlock without an error");
        assert_eq!(out.len(), want.len() - 5_000);
        // More replies arrive while the first ones are half written.
        out.value(&small);
        w.budget = usize::MAX;
        out.write_to(&mut w).unwrap();
        assert!(out.is_empty());
        let mut want = want;
        resp::bulk(&mut want, &small);
        assert_eq!(w.got, want);
    }

    #[test]
    fn a_reply_past_the_limit_is_dropped_not_built() {
        let big = Bytes::from(vec![1u8; 1024 * 1024]);
        let mut out = ReplyBuf::new(4 * 1024 * 1024);
        for _ in 0..4096 {
            out.value(&big);
        }
        assert!(out.over_limit());
        assert!(out.len() <= 4 * 1024 * 1024, "held {} bytes", out.len());
        let handles = out.sealed.iter().filter(|b| b.len() == big.len()).count();
        assert_eq!(handles, 3, "stopped taking handles at the limit");
        let mut fits = ReplyBuf::new(64);
        fits.bulk(b"0123456789");
        assert!(!fits.over_limit());
        fits.bulk(&[0; 64]);
        assert!(fits.over_limit());
    }

    #[test]
    fn write_errors_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = ReplyBuf::new(1024);
        out.bulk(b"x");
        assert_eq!(out.write_to(&mut Broken).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(ReplyBuf::new(8).write_to(&mut Broken).unwrap(), 0, "nothing to write, no call");
    }
}
