//! Frame-once broadcast: one encoding, shared bytes, many connections.

use std::sync::Mutex;

use tether_proto::ws::EncodedFrame;

use super::socket::{TrySendError, WsSender};

/// A set of connections that receive the same messages. Each message is
/// encoded into a frame once and its bytes (`Bytes`) are shared by every
/// recipient. A recipient whose queue is full is handled by its
/// [`super::OverflowPolicy`]: reported (skipped for this message) or closed
/// with 1008; closed recipients are removed.
#[derive(Debug, Default)]
pub struct Broadcast {
    members: Mutex<Vec<WsSender>>,
}

/// What one broadcast did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Recipients whose queue took the frame.
    pub queued: usize,
    /// Recipients skipped because their queue was full.
    pub full: usize,
    /// Recipients removed because they were closed (or closed as slow).
    pub removed: usize,
}

impl Broadcast {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection.
    pub fn join(&self, sender: WsSender) {
        self.members.lock().expect("broadcast lock").push(sender);
    }

    /// How many connections are in the set.
    pub fn len(&self) -> usize {
        self.members.lock().expect("broadcast lock").len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends a text message to every member.
    pub fn send_text(&self, text: &str) -> Delivery {
        self.send_frame(&EncodedFrame::text(text))
    }

    /// Sends a binary message to every member.
    pub fn send_binary(&self, data: &[u8]) -> Delivery {
        self.send_frame(&EncodedFrame::binary(data))
    }

    /// Sends an already encoded frame to every member.
    pub fn send_frame(&self, frame: &EncodedFrame) -> Delivery {
        let mut d = Delivery::default();
        let mut members = self.members.lock().expect("broadcast lock");
        members.retain(|m| match m.try_send_encoded(frame) {
            Ok(()) => {
                d.queued += 1;
                true
            }
            Err(TrySendError::Full(_)) => {
                d.full += 1;
                true
            }
            Err(TrySendError::Closed(_)) => {
                d.removed += 1;
                false
            }
        });
        d
    }
}
