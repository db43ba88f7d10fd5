//! Bytes on the wire, counted by the engines (one vocabulary for HTTP and
//! WebSocket, server and client).
//!
//! Every byte a connection reads or writes is either protocol *overhead*
//! (HTTP: start line, header fields, chunk-size lines and trailers;
//! WebSocket: frame headers, including the 4-byte masking key) or
//! *payload* (HTTP: body bytes as framed on the wire; WebSocket: frame
//! payload, compressed if permessage-deflate applies). The two always add
//! up to what crossed the transport. Counts saturate; nothing here reads a
//! socket.

/// One direction's bytes, split into overhead and payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// Protocol bytes (HTTP heads and chunk framing; WebSocket frame headers).
    pub overhead: u64,
    /// Body or frame payload bytes.
    pub payload: u64,
}

impl WireBytes {
    /// Overhead and payload together: what crossed the transport.
    pub fn total(&self) -> u64 {
        self.overhead.saturating_add(self.payload)
    }

    /// Counts `n` overhead bytes.
    pub fn add_overhead(&mut self, n: usize) {
        self.overhead = self.overhead.saturating_add(n as u64);
    }

    /// Counts `n` payload bytes.
    pub fn add_payload(&mut self, n: usize) {
        self.payload = self.payload.saturating_add(n as u64);
    }

    /// Both parts of `other` added to these.
    pub fn plus(self, other: WireBytes) -> WireBytes {
        WireBytes {
            overhead: self.overhead.saturating_add(other.overhead),
            payload: self.payload.saturating_add(other.payload),
        }
    }

    /// What was added to `earlier` to make these, part by part (zero for
    /// a part that did not grow): the delta a driver adds to its totals.
    pub fn since(self, earlier: WireBytes) -> WireBytes {
        WireBytes {
            overhead: self.overhead.saturating_sub(earlier.overhead),
            payload: self.payload.saturating_sub(earlier.payload),
        }
    }
}

/// Both directions of one connection (or of many, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// What this end read.
    pub received: WireBytes,
    /// What this end wrote.
    pub sent: WireBytes,
}

impl Traffic {
    /// Both directions of `other` added to these.
    pub fn plus(self, other: Traffic) -> Traffic {
        Traffic {
            received: self.received.plus(other.received),
            sent: self.sent.plus(other.sent),
        }
    }

    /// Every byte, both ways.
    pub fn total(&self) -> u64 {
        self.received.total().saturating_add(self.sent.total())
    }

    /// What was added to `earlier` to make these ([`WireBytes::since`],
    /// both directions).
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            received: self.received.since(earlier.received),
            sent: self.sent.since(earlier.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_and_saturate() {
        let mut w = WireBytes::default();
        w.add_overhead(10);
        w.add_payload(5);
        assert_eq!(w.total(), 15);
        let t = Traffic { received: w, sent: w }.plus(Traffic {
            received: w,
            sent: WireBytes::default(),
        });
        assert_eq!(t.received.total(), 30);
        assert_eq!(t.total(), 45);
        let max = WireBytes {
            overhead: u64::MAX,
            payload: 1,
        };
        assert_eq!(max.total(), u64::MAX);
        let grown = t.plus(Traffic { received: w, sent: w });
        assert_eq!(grown.since(t), Traffic { received: w, sent: w });
        assert_eq!(t.since(grown), Traffic::default(), "a part that shrank adds nothing");
    }
}
