//! A connection's output queue, for both engines: small pieces (heads,
//! chunk lines, short bodies, small frames) are coalesced into one buffer so
//! a typical response or message is a single contiguous write; large bodies
//! and payloads (and frames encoded once for many connections) stay as their
//! own shared `Bytes` (no copy) and go out in the same vectored write. The
//! bytes stay queued until the driver reports them written (`consume`).

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Bodies up to this size are copied next to their head.
const COALESCE_LIMIT: usize = 4096;

/// Bytes waiting to be written, in order: `queue`, then `tail`.
#[derive(Debug, Default)]
pub(crate) struct Output {
    queue: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
    /// The most bytes held since the last release.
    high_water: usize,
}

impl Output {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The buffer heads are encoded into; call [`Self::wrote_tail`] after.
    pub(crate) fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Records that `n` bytes were appended through [`Self::tail_mut`].
    pub(crate) fn wrote_tail(&mut self, n: usize) {
        self.len += n;
        self.high_water = self.high_water.max(self.len);
    }

    pub(crate) fn push_slice(&mut self, b: &[u8]) {
        self.tail.extend_from_slice(b);
        self.len += b.len();
        self.high_water = self.high_water.max(self.len);
    }

    /// Queues `b`, copied next to what precedes it when small.
    pub(crate) fn push(&mut self, b: Bytes) {
        if b.len() <= COALESCE_LIMIT {
            self.push_slice(&b);
            return;
        }
        self.push_shared(b);
    }

    /// Queues `b` as it is, never copied (a large payload, a frame shared
    /// by many connections).
    pub(crate) fn push_shared(&mut self, b: Bytes) {
        if !self.tail.is_empty() {
            let tail = self.tail.split().freeze();
            self.queue.push_back(tail);
        }
        self.len += b.len();
        self.high_water = self.high_water.max(self.len);
        self.queue.push_back(b);
    }

    /// The pending bytes as slices, in order, for one vectored write.
    pub(crate) fn bufs(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.queue
            .iter()
            .map(|b| &b[..])
            .chain((!self.tail.is_empty()).then_some(&self.tail[..]))
    }

    /// Drops the first `n` bytes (they were written).
    pub(crate) fn consume(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            match self.queue.front_mut() {
                Some(front) if n >= front.len() => {
                    n -= front.len();
                    self.queue.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    n = 0;
                }
                None => {
                    self.tail.advance(n);
                    n = 0;
                }
            }
        }
        if self.len == 0 {
            self.tail.clear();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.tail.clear();
        self.len = 0;
    }

    /// The most bytes held since the last release (what its buffers may still hold).
    pub(crate) fn high_water(&self) -> usize {
        self.high_water
    }

    /// Heap capacity held (the queue's slots and the coalescing buffer).
    pub(crate) fn capacity(&self) -> usize {
        self.tail.capacity() + self.queue.capacity() * std::mem::size_of::<Bytes>()
    }

    /// Moves the (empty) coalescing buffer out, leaving none.
    pub(crate) fn take_buffer(&mut self) -> BytesMut {
        let tail = std::mem::take(&mut self.tail);
        self.release();
        tail
    }

    /// Uses `buf` as the coalescing buffer if there is none.
    pub(crate) fn give_buffer(&mut self, mut buf: BytesMut) {
        if self.len == 0 && self.tail.capacity() == 0 {
            buf.clear();
            self.tail = buf;
        }
    }

    /// Gives back all memory (an idle connection holds no buffer).
    pub(crate) fn release(&mut self) {
        *self = Output::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_small_and_keeps_order() {
        let mut o = Output::default();
        o.push_slice(b"head ");
        o.push(Bytes::from_static(b"small "));
        let big = Bytes::from(vec![b'x'; COALESCE_LIMIT + 1]);
        o.push(big.clone());
        o.push_slice(b" end");
        let all: Vec<u8> = o.bufs().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(all.len(), o.len());
        assert!(all.starts_with(b"head small x"));
        assert!(all.ends_with(b"x end"));
        assert_eq!(o.bufs().count(), 3);
        // Partial writes at every point keep the rest intact.
        for cut in [1, 11, 12, 500, all.len() - 1, all.len()] {
            let mut p = Output::default();
            p.push_slice(b"head ");
            p.push(Bytes::from_static(b"small "));
            p.push(big.clone());
            p.push_slice(b" end");
            p.consume(cut);
            let rest: Vec<u8> = p.bufs().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(&rest[..], &all[cut..]);
        }
    }
}
