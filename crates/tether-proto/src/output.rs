//! A connection's output queue, for both engines: small pieces (heads,
//! chunk lines, short bodies, small frames) are coalesced into one buffer so
//! a typical response or message is a single contiguous write; large bodies
//! and payloads (and frames encoded once for many connections) stay as their
//! own shared `Bytes` (no copy) and go out in the same vectored write. The
//! bytes stay queued until the driver reports them written (`consume`).
//!
//! It also counts what its engine sends ([`Output::sent`]): every piece is
//! pushed with the [`Part`] it is (overhead, payload, or a frame: a header
//! then its payload), and counted as it is queued, with two additions per
//! piece and nothing per byte. Queued bytes are the ones the engine sends:
//! on a connection that ends normally every one of them is written, so the
//! count is exactly what the transport took; on one that ends abruptly
//! (reset, write timeout) it includes what was still queued. Counting on
//! `consume` instead would need each piece's boundaries kept until written.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::wire::WireBytes;

/// Bodies up to this size are copied next to their head.
const COALESCE_LIMIT: usize = 4096;

/// What a piece of output is, for the count of bytes sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Protocol bytes: an HTTP head, chunk framing, a frame header.
    Overhead,
    /// Body or frame payload.
    Payload,
    /// A whole frame: `header` bytes of header, the rest payload.
    Frame { header: usize },
}

/// Bytes waiting to be written, in order: `queue`, then `tail`.
#[derive(Debug, Default)]
pub(crate) struct Output {
    queue: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
    /// The most bytes held since the last release.
    high_water: usize,
    /// Every byte ever queued, split (kept across releases).
    sent: WireBytes,
}

impl Output {
    /// Bytes queued so far (see the module documentation), split.
    pub(crate) fn sent(&self) -> WireBytes {
        self.sent
    }

    /// Counts bytes sent before this output existed (the HTTP exchange
    /// that opened a WebSocket).
    pub(crate) fn count_earlier(&mut self, sent: WireBytes) {
        self.sent = self.sent.plus(sent);
    }

    #[inline]
    /// Counts `n` payload bytes that went to the socket around this queue
    /// (a body sent directly from a file).
    pub(crate) fn count_direct(&mut self, n: u64) {
        self.sent.add_payload(usize::try_from(n).unwrap_or(usize::MAX));
    }

    fn count(&mut self, len: usize, part: Part) {
        match part {
            Part::Overhead => self.sent.add_overhead(len),
            Part::Payload => self.sent.add_payload(len),
            Part::Frame { header } => {
                self.sent.add_overhead(header);
                self.sent.add_payload(len - header);
            }
        }
    }

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

    /// Records that `n` bytes, all `part`, were appended through [`Self::tail_mut`].
    pub(crate) fn wrote_tail(&mut self, n: usize, part: Part) {
        self.count(n, part);
        self.len += n;
        self.high_water = self.high_water.max(self.len);
    }

    pub(crate) fn push_slice(&mut self, b: &[u8], part: Part) {
        self.count(b.len(), part);
        self.tail.extend_from_slice(b);
        self.len += b.len();
        self.high_water = self.high_water.max(self.len);
    }

    /// Queues `b`, copied next to what precedes it when small.
    pub(crate) fn push(&mut self, b: Bytes, part: Part) {
        if b.len() <= COALESCE_LIMIT {
            self.push_slice(&b, part);
            return;
        }
        self.push_shared(b, part);
    }

    /// Queues `b` as it is, never copied (a large payload, a frame shared
    /// by many connections).
    pub(crate) fn push_shared(&mut self, b: Bytes, part: Part) {
        self.count(b.len(), part);
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

    /// Gives back all memory (an idle connection holds no buffer); the
    /// count of bytes sent stays.
    pub(crate) fn release(&mut self) {
        *self = Output {
            sent: self.sent,
            ..Output::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_small_and_keeps_order() {
        let mut o = Output::default();
        o.push_slice(b"head ", Part::Overhead);
        o.push(Bytes::from_static(b"small "), Part::Payload);
        let big = Bytes::from(vec![b'x'; COALESCE_LIMIT + 1]);
        o.push(big.clone(), Part::Payload);
        o.push_slice(b" end", Part::Overhead);
        let all: Vec<u8> = o.bufs().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(all.len(), o.len());
        assert!(all.starts_with(b"head small x"));
        assert!(all.ends_with(b"x end"));
        assert_eq!(o.bufs().count(), 3);
        // Partial writes at every point keep the rest intact.
        for cut in [1, 11, 12, 500, all.len() - 1, all.len()] {
            let mut p = Output::default();
            p.push_slice(b"head ", Part::Overhead);
            p.push(Bytes::from_static(b"small "), Part::Payload);
            p.push(big.clone(), Part::Payload);
            p.push_slice(b" end", Part::Overhead);
            p.consume(cut);
            let rest: Vec<u8> = p.bufs().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(&rest[..], &all[cut..]);
        }
    }

    #[test]
    fn counts_what_is_queued_by_part_and_keeps_it_across_releases() {
        let mut o = Output::default();
        o.push_slice(b"head ", Part::Overhead);
        o.push(Bytes::from_static(b"body"), Part::Payload);
        let frame = Bytes::from(vec![0u8; COALESCE_LIMIT + 10]);
        o.push_shared(frame, Part::Frame { header: 10 });
        let tail = o.tail_mut();
        tail.extend_from_slice(b"\r\n");
        o.wrote_tail(2, Part::Overhead);
        let expect = WireBytes {
            overhead: 5 + 10 + 2,
            payload: 4 + COALESCE_LIMIT as u64,
        };
        assert_eq!(o.sent(), expect);
        assert_eq!(o.sent().total(), o.len() as u64);
        o.consume(o.len());
        o.release();
        assert_eq!(o.sent(), expect);
        o.count_earlier(WireBytes {
            overhead: 1,
            payload: 2,
        });
        assert_eq!(o.sent().total(), expect.total() + 3);
    }
}
