//! One `/ws` connection of the hub: its subscriptions, and the commands it
//! sends (see `protocol`).
//!
//! The connection is callback-served (`crate::ws::WsService`: no task of
//! its own, parked when idle) with an inlet (`crate::ws::push`) that every
//! frame for it goes through: answers to its commands and the publications
//! of its channels alike, so they reach the client in the order they were
//! produced. A command that needs the broker (subscribe, publish) runs at
//! once when the broker answers at once (the in-process one), else on a
//! task, and answers through the inlet when done. A bad command gets an
//! `error` answer; the connection stays open. When the connection ends,
//! every subscription ends with it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tether_proto::ws::{EncodedFrame, Message};

use super::channel::Target;
use super::protocol::{self, Command, ProtocolError};
use super::{run_soon, ChannelName, Hub, PublishError, SubscribeRequest};
use crate::ws::push::Inlet;
use crate::ws::{Replies, WsService};

/// The hub's side of one `/ws` connection.
pub(crate) struct Session {
    hub: Hub,
    inlet: Arc<Inlet>,
    client: Arc<str>,
    /// Channel → subscription id.
    subscriptions: HashMap<ChannelName, u64>,
}

impl Session {
    pub(crate) fn new(hub: Hub, inlet: Arc<Inlet>) -> Self {
        let client = hub.new_client();
        hub.stats().ws_connections.fetch_add(1, Ordering::Relaxed);
        Self {
            hub,
            inlet,
            client,
            subscriptions: HashMap::new(),
        }
    }

    fn send(&self, text: &str) {
        let _ = self.inlet.push(&EncodedFrame::text(text));
    }

    fn fail(&self, e: &ProtocolError, channel: Option<&ChannelName>, id: Option<&str>) {
        self.send(&protocol::error(e, channel, id));
    }

    fn command(&mut self, text: &str) {
        let parsed = protocol::parse(text, self.hub.config().max_data);
        let id = parsed.id;
        match parsed.command {
            Err(e) => self.fail(&e, None, id.as_deref()),
            Ok(Command::Subscribe {
                channel,
                since,
                epoch,
                presence,
            }) => self.subscribe(channel, since, epoch, presence, id),
            Ok(Command::Unsubscribe { channel }) => match self.subscriptions.remove(&channel) {
                Some(sub) if self.hub.unsubscribe(&channel, sub) => {
                    self.send(&protocol::unsubscribed(&channel, id.as_deref()));
                }
                _ => self.fail(
                    &ProtocolError::new("not_subscribed", "not subscribed to this channel"),
                    Some(&channel),
                    id.as_deref(),
                ),
            },
            Ok(Command::Publish { channel, data }) => {
                let hub = self.hub.clone();
                let inlet = self.inlet.clone();
                run_soon(async move {
                    let answer = match hub.publish(&channel, data).await {
                        Ok(p) => protocol::published(&channel, p.offset, id.as_deref()),
                        Err(PublishError::Invalid(e)) => protocol::error(&e, Some(&channel), id.as_deref()),
                        Err(PublishError::Broker(e)) => protocol::error(
                            &ProtocolError::new("unavailable", e.to_string()),
                            Some(&channel),
                            id.as_deref(),
                        ),
                    };
                    let _ = inlet.push(&EncodedFrame::text(&answer));
                });
            }
        }
    }

    fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Option<u64>,
        epoch: Option<String>,
        presence: bool,
        id: Option<Box<str>>,
    ) {
        // One the hub ended (the broker failed it) is forgotten here.
        if let Some(&sub) = self.subscriptions.get(&channel) {
            if !self.hub.has_subscription(&channel, sub) {
                self.subscriptions.remove(&channel);
            }
        }
        if self.subscriptions.contains_key(&channel) {
            let e = ProtocolError::new("already_subscribed", "already subscribed to this channel");
            return self.fail(&e, Some(&channel), id.as_deref());
        }
        let max = self.hub.config().max_subscriptions;
        if self.subscriptions.len() >= max {
            self.subscriptions.retain(|c, sub| self.hub.has_subscription(c, *sub));
        }
        if self.subscriptions.len() >= max {
            let e = ProtocolError::new(
                "too_many_subscriptions",
                format!("a connection may subscribe to at most {max} channels"),
            );
            return self.fail(&e, Some(&channel), id.as_deref());
        }
        let (sub, work) = self.hub.subscribe(SubscribeRequest {
            channel: channel.clone(),
            since,
            epoch,
            presence,
            client: self.client.clone(),
            target: Target::Ws(self.inlet.clone()),
            id,
        });
        self.subscriptions.insert(channel, sub);
        run_soon(work);
    }
}

impl WsService for Session {
    fn on_message(&mut self, message: Message, _replies: &mut Replies<'_>) {
        match message {
            Message::Text(text) => self.command(text.as_str()),
            Message::Binary(_) => self.fail(
                &ProtocolError::new("bad_request", "commands are JSON text frames"),
                None,
                None,
            ),
            _ => {}
        }
    }

    fn on_end(&mut self) {
        for (channel, sub) in self.subscriptions.drain() {
            self.hub.unsubscribe(&channel, sub);
        }
    }
}

/// However the connection ends (or if it never opened: a refused
/// handshake), its subscriptions and its count go.
impl Drop for Session {
    fn drop(&mut self) {
        self.on_end();
        self.hub.stats().ws_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
