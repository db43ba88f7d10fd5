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
//! Who may do what is `namespace`'s decision (the namespaces' rules and the
//! token). With client tokens configured (`HubConfig::tokens`) a session is
//! `Pending` until a valid token arrives (`/ws?token=` at the upgrade, or
//! an `auth` command): meanwhile it may subscribe only in anonymous
//! namespaces; anything that needs a token, or a bad token, is answered
//! `unauthorized` and the connection closes with 1008. Once `Granted`
//! (and its subject's connection slot taken: `too_many_connections` and
//! 1008 when it holds its limit), a subscribe or publish outside the
//! token's channels or the namespace's rules is answered `forbidden` and
//! the connection stays open; an `auth` with a new token of the same
//! subject refreshes it; at the token's expiry a timer closes the
//! connection with 1008 unless a refresh moved it.
//!
//! Every command first passes the connection's rate (`limits`): over it,
//! `rate_limited` (the connection stays open); over it for too long,
//! `rate_limited` and 1008.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tether_proto::ws::{EncodedFrame, Message};

use super::auth::{Grants, TokenError};
use super::channel::Target;
use super::limits::{CommandRate, SubjectSlot, Verdict};
use super::namespace::{Client, Refusal};
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
    auth: Auth,
    rate: CommandRate,
}

/// What a session's client may do.
pub(crate) enum Auth {
    /// No tokens configured: what the namespaces allow.
    Open,
    /// Tokens configured, none presented yet: `auth`, and what anonymous
    /// namespaces allow.
    Pending,
    /// A verified token.
    Granted(Granted),
}

/// What a session with a verified token holds.
pub(crate) struct Granted {
    /// What its token allows.
    grants: Grants,
    /// The timer that closes the connection when the token expires.
    expiry: tokio::task::AbortHandle,
    /// One of its subject's connections (`limits`), while the session lasts.
    _slot: SubjectSlot,
}

/// A first token presented at the upgrade (`/ws?token=`), verified, with
/// its subject's connection slot.
pub(crate) struct Admitted {
    pub grants: Grants,
    pub slot: SubjectSlot,
}

/// Why a command closes the connection (1008) after its `error` answer.
enum Fatal {
    /// `unauthorized`: no valid token where one is needed.
    Unauthorized(String),
    /// `too_many_connections`: its subject holds its limit already.
    TooManyConnections,
    /// `rate_limited`, with no strike left.
    Abusive,
}

impl Session {
    /// A session; `admitted`: the token presented at the upgrade (with
    /// tokens configured and none presented, the session waits for an
    /// `auth` command, serving only anonymous namespaces meanwhile).
    pub(crate) fn new(hub: Hub, inlet: Arc<Inlet>, admitted: Option<Admitted>) -> Self {
        let client = hub.new_client();
        hub.stats().ws_connections.fetch_add(1, Ordering::Relaxed);
        let auth = match (hub.config().tokens.is_some(), admitted) {
            (false, _) => Auth::Open,
            (true, None) => Auth::Pending,
            (true, Some(a)) => Auth::Granted(Granted {
                expiry: expiry_timer(&inlet, &a.grants),
                grants: a.grants,
                _slot: a.slot,
            }),
        };
        let rate = CommandRate::new(&hub.config().client_limits, Instant::now());
        Self {
            hub,
            inlet,
            client,
            subscriptions: HashMap::new(),
            auth,
            rate,
        }
    }

    /// Who the client is; an expired token is refused.
    fn who(&self) -> Result<Client<'_>, Refusal> {
        match &self.auth {
            Auth::Open => Ok(Client::Open),
            Auth::Pending => Ok(Client::Anonymous),
            Auth::Granted(g) if g.grants.expired() => Err(Refusal::Unauthorized(TokenError::Expired.to_string())),
            Auth::Granted(g) => Ok(Client::Token(&g.grants)),
        }
    }

    /// Whether the client may subscribe to (`publish`: publish on) `channel`.
    fn allowed(&self, channel: &ChannelName, publish: bool) -> Result<(), Refusal> {
        let who = self.who()?;
        let namespaces = &self.hub.config().namespaces;
        if publish {
            namespaces.may_publish(who, channel)
        } else {
            namespaces.may_subscribe(who, channel)
        }
    }

    /// An `auth` command: a first token or a refresh (same subject only).
    fn authenticate(&mut self, token: &str, id: Option<&str>) -> Result<(), Fatal> {
        let Some(verifier) = self.hub.config().tokens.as_ref() else {
            return Err(Fatal::Unauthorized("this server takes no tokens".into()));
        };
        let grants = verifier.verify(token).map_err(|e| Fatal::Unauthorized(e.to_string()))?;
        let authorized = EncodedFrame::text(&protocol::authorized(&grants.subject, grants.expires, id));
        // A refresh: the same subject, its slot kept, a new expiry.
        if let Auth::Granted(g) = &mut self.auth {
            if g.grants.subject != grants.subject {
                return Err(Fatal::Unauthorized(
                    "a refreshed token must have the same subject".into(),
                ));
            }
            let _ = self.inlet.push(&authorized);
            g.expiry.abort();
            g.expiry = expiry_timer(&self.inlet, &grants);
            g.grants = grants;
            return Ok(());
        }
        let slot = self
            .hub
            .enter_subject(&grants.subject)
            .ok_or(Fatal::TooManyConnections)?;
        let _ = self.inlet.push(&authorized);
        self.auth = Auth::Granted(Granted {
            expiry: expiry_timer(&self.inlet, &grants),
            grants,
            _slot: slot,
        });
        Ok(())
    }

    /// Answers a refusal: `forbidden` keeps the connection, `unauthorized`
    /// closes it (1008).
    fn refuse(&self, refusal: Refusal, channel: Option<&ChannelName>, id: Option<&str>) {
        match refusal {
            Refusal::Forbidden(why) => self.fail(&ProtocolError::new("forbidden", why), channel, id),
            Refusal::Unauthorized(why) => close(&self.inlet, Fatal::Unauthorized(why), channel, id),
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
        let channel = match &parsed.command {
            Ok(
                Command::Subscribe { channel, .. }
                | Command::Publish { channel, .. }
                | Command::Unsubscribe { channel },
            ) => Some(channel),
            _ => None,
        };
        match self.rate.take(&self.hub.config().client_limits, Instant::now()) {
            Verdict::Allowed => {}
            Verdict::Limited => {
                let e = ProtocolError::new("rate_limited", "too many commands: slow down");
                return self.fail(&e, channel, id.as_deref());
            }
            Verdict::Abusive => return close(&self.inlet, Fatal::Abusive, channel, id.as_deref()),
        }
        let check = match &parsed.command {
            Ok(Command::Subscribe { channel, .. }) => self.allowed(channel, false),
            Ok(Command::Publish { channel, .. }) => self.allowed(channel, true),
            // Leaving a channel needs only a token that has not expired.
            Ok(Command::Unsubscribe { .. }) => self.who().map(|_| ()),
            Ok(Command::Auth { .. }) => Ok(()),
            // Before its token, a client that sends nonsense is not told more.
            Err(_) if matches!(self.auth, Auth::Pending) => Err(Refusal::Unauthorized(
                "authenticate first: {\"type\":\"auth\",\"token\":…}".into(),
            )),
            Err(_) => Ok(()),
        };
        if let Err(refusal) = check {
            return self.refuse(refusal, channel, id.as_deref());
        }
        match parsed.command {
            Err(e) => self.fail(&e, None, id.as_deref()),
            Ok(Command::Auth { token }) => {
                if let Err(fatal) = self.authenticate(&token, id.as_deref()) {
                    close(&self.inlet, fatal, None, id.as_deref());
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
        if let Auth::Granted(g) = &self.auth {
            g.expiry.abort();
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

/// Answers `error` and closes the connection with 1008, both through the
/// inlet: every answer before goes out first, this one last, then the Close.
fn close(inlet: &Inlet, fatal: Fatal, channel: Option<&ChannelName>, id: Option<&str>) {
    let (code, why, reason) = match fatal {
        Fatal::Unauthorized(why) => ("unauthorized", why, "unauthorized"),
        Fatal::TooManyConnections => (
            "too_many_connections",
            "this token's subject holds all the connections it may".to_string(),
            "too many connections",
        ),
        Fatal::Abusive => (
            "rate_limited",
            "too many commands, for too long".to_string(),
            "rate limit exceeded",
        ),
    };
    let answer = protocol::error(&ProtocolError::new(code, why), channel, id);
    let _ = inlet.push(&EncodedFrame::text(&answer));
    inlet.close_after(reason);
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
