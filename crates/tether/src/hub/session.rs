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
//!
//! With client tokens configured (`HubConfig::tokens`) a session is
//! `Pending` until a valid token arrives (`/ws?token=` at the upgrade, or
//! an `auth` command first): any other command before it, or a bad token,
//! is answered `unauthorized` and the connection closes with 1008. Once
//! `Granted`, a subscribe or publish outside the token's channels is
//! answered `forbidden` and the connection stays open; an `auth` with a new
//! token of the same subject refreshes it; at the token's expiry a timer
//! closes the connection with 1008 unless a refresh moved it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tether_proto::ws::{EncodedFrame, Message};

use super::auth::{Grants, TokenError};
use super::channel::Target;
use super::protocol::{self, Command, ProtocolError};
use super::{run_soon, ChannelName, Hub, PublishError, SubscribeRequest};
use crate::ws::push::Inlet;
use crate::ws::{CloseCode, Replies, WsService};

/// The hub's side of one `/ws` connection.
pub(crate) struct Session {
    hub: Hub,
    inlet: Arc<Inlet>,
    client: Arc<str>,
    /// Channel → subscription id.
    subscriptions: HashMap<ChannelName, u64>,
    auth: Auth,
}

/// What a session's client may do.
pub(crate) enum Auth {
    /// No tokens configured: everything.
    Open,
    /// Tokens configured, none presented yet: only `auth`.
    Pending,
    /// What its token allows, and the timer that closes the connection
    /// when the token expires.
    Granted(Grants, tokio::task::AbortHandle),
}

/// Why a command was refused (the connection closes for the first kind).
enum Refusal {
    Unauthorized(String),
    Forbidden,
}

impl Session {
    /// A session; `grants`: what the token presented at the upgrade allows
    /// (with tokens configured and none presented, the session waits for
    /// an `auth` command).
    pub(crate) fn new(hub: Hub, inlet: Arc<Inlet>, grants: Option<Grants>) -> Self {
        let client = hub.new_client();
        hub.stats().ws_connections.fetch_add(1, Ordering::Relaxed);
        let auth = match (hub.config().tokens.is_some(), grants) {
            (false, _) => Auth::Open,
            (true, None) => Auth::Pending,
            (true, Some(g)) => {
                let timer = expiry_timer(&inlet, &g);
                Auth::Granted(g, timer)
            }
        };
        Self {
            hub,
            inlet,
            client,
            subscriptions: HashMap::new(),
            auth,
        }
    }

    /// Whether the client may subscribe to (`publish`: publish on) `channel`.
    fn allowed(&self, channel: &ChannelName, publish: bool) -> Result<(), Refusal> {
        match &self.auth {
            Auth::Open => Ok(()),
            Auth::Pending => Err(Refusal::Unauthorized(
                "authenticate first: {\"type\":\"auth\",\"token\":…}".into(),
            )),
            Auth::Granted(g, _) if g.expired() => Err(Refusal::Unauthorized(TokenError::Expired.to_string())),
            Auth::Granted(g, _) if publish && !g.may_publish(channel) => Err(Refusal::Forbidden),
            Auth::Granted(g, _) if !publish && !g.may_subscribe(channel) => Err(Refusal::Forbidden),
            Auth::Granted(..) => Ok(()),
        }
    }

    /// An `auth` command: a first token or a refresh (same subject only).
    fn authenticate(&mut self, token: &str, id: Option<&str>) -> Result<(), Refusal> {
        let Some(verifier) = self.hub.config().tokens.as_ref() else {
            return Err(Refusal::Unauthorized("this server takes no tokens".into()));
        };
        let grants = verifier
            .verify(token)
            .map_err(|e| Refusal::Unauthorized(e.to_string()))?;
        if let Auth::Granted(old, _) = &self.auth {
            if old.subject != grants.subject {
                return Err(Refusal::Unauthorized(
                    "a refreshed token must have the same subject".into(),
                ));
            }
        }
        self.send(&protocol::authorized(&grants.subject, grants.expires, id));
        let timer = expiry_timer(&self.inlet, &grants);
        if let Auth::Granted(_, old_timer) = std::mem::replace(&mut self.auth, Auth::Granted(grants, timer)) {
            old_timer.abort();
        }
        Ok(())
    }

    /// Answers a refusal; an unauthorized client is disconnected (1008).
    fn refuse(&self, refusal: Refusal, channel: Option<&ChannelName>, id: Option<&str>, replies: &mut Replies<'_>) {
        match refusal {
            Refusal::Forbidden => self.fail(
                &ProtocolError::new("forbidden", "the token does not allow this channel"),
                channel,
                id,
            ),
            Refusal::Unauthorized(why) => {
                // Through the replies, not the inlet: the answer must go out
                // before the Close that follows it.
                let answer = protocol::error(&ProtocolError::new("unauthorized", why), channel, id);
                let _ = replies.send(Message::Text(answer.into()));
                let _ = replies.close(CloseCode::POLICY_VIOLATION, "unauthorized");
            }
        }
    }

    fn send(&self, text: &str) {
        let _ = self.inlet.push(&EncodedFrame::text(text));
    }

    fn fail(&self, e: &ProtocolError, channel: Option<&ChannelName>, id: Option<&str>) {
        self.send(&protocol::error(e, channel, id));
    }

    fn command(&mut self, text: &str, replies: &mut Replies<'_>) {
        let parsed = protocol::parse(text, self.hub.config().max_data);
        let id = parsed.id;
        // Every command but `auth` needs the client authorized first.
        let channel = match &parsed.command {
            Ok(Command::Subscribe { channel, .. }) => Some((channel, false)),
            Ok(Command::Publish { channel, .. }) => Some((channel, true)),
            Ok(Command::Unsubscribe { channel }) => Some((channel, false)),
            _ => None,
        };
        if let Some((channel, publish)) = channel {
            let check = match (&self.auth, &parsed.command) {
                // Leaving a channel needs a live token, not the grant.
                (Auth::Granted(g, _), Ok(Command::Unsubscribe { .. })) if !g.expired() => Ok(()),
                _ => self.allowed(channel, publish),
            };
            if let Err(refusal) = check {
                return self.refuse(refusal, Some(channel), id.as_deref(), replies);
            }
        } else if parsed.command.is_err() && matches!(self.auth, Auth::Pending) {
            let why = "authenticate first: {\"type\":\"auth\",\"token\":…}".to_string();
            return self.refuse(Refusal::Unauthorized(why), None, id.as_deref(), replies);
        }
        match parsed.command {
            Err(e) => self.fail(&e, None, id.as_deref()),
            Ok(Command::Auth { token }) => {
                if let Err(refusal) = self.authenticate(&token, id.as_deref()) {
                    self.refuse(refusal, None, id.as_deref(), replies);
                }
            }
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
    fn on_message(&mut self, message: Message, replies: &mut Replies<'_>) {
        match message {
            Message::Text(text) => self.command(text.as_str(), replies),
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
        if let Auth::Granted(_, timer) = &self.auth {
            timer.abort();
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

/// A task that closes the connection (1008, `token expired`) when
/// `grants` expire; aborted by a refresh or the connection's end.
fn expiry_timer(inlet: &Arc<Inlet>, grants: &Grants) -> tokio::task::AbortHandle {
    let inlet = Arc::downgrade(inlet);
    let after = grants.remaining();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some(inlet) = inlet.upgrade() {
            inlet.close_policy("token expired");
        }
    })
    .abort_handle()
}
