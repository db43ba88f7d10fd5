//! Channel namespaces: rules per channel-name prefix (`chat:`, `ticker:`,
//! `user:`…), and who may subscribe to and publish on a channel.
//!
//! Theory of operation. [`Namespaces`] is a list of [`Namespace`]s, each
//! naming a prefix; a channel belongs to the one with the longest prefix it
//! starts with, or to the default namespace (prefix `""`: the server-wide
//! settings). A namespace says whether clients without a token may
//! subscribe (`anonymous`), whether clients may publish at all
//! (`client_publish`: the HTTP API, `POST /publish`, is the server's and
//! is not bound by it), whether presence (join/leave, member counts) is on,
//! and how much history its channels keep (size and age, which the brokers
//! read through [`Namespaces::history`]).
//!
//! [`Namespaces::may_subscribe`] and [`Namespaces::may_publish`] are the
//! one place where the namespace rules and a client's token meet, for every
//! transport. A [`Client`] is `Open` (no tokens configured: the development
//! mode, where only the `client_publish` rule applies), `Anonymous` (tokens
//! configured, none presented) or `Token` (its verified grants). A
//! `user:{sub}` channel is its subject's alone: no `anonymous` namespace
//! opens it to anyone else. This module decides; it never answers a client
//! (the transports turn a [`Refusal`] into `401`/`403` or an `error`).

use std::time::Duration;

use super::auth::Grants;
use super::ChannelName;

/// The prefix of the channels private to one token subject (`user:{sub}`).
pub const USER_PREFIX: &str = "user:";

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most publications kept (the newest); 0 keeps none.
    pub size: usize,
    /// The oldest a kept publication may be.
    pub ttl: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(600),
        }
    }
}

/// The rules of the channels whose names start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The channel-name prefix (`chat:`); `""` is the default namespace.
    pub prefix: String,
    /// Clients without a token may subscribe (with tokens configured).
    pub anonymous: bool,
    /// Clients may publish (still within their token's grants); `false`
    /// leaves publishing to the HTTP API.
    pub client_publish: bool,
    /// Presence (join and leave events, member counts) for subscribers
    /// that ask for it.
    pub presence: bool,
    /// The history its channels keep; `None`: the server-wide limits.
    pub history: Option<HistoryLimits>,
}

impl Namespace {
    /// The rules of a prefix with the defaults: subscribing needs a token,
    /// clients may publish, presence on, the server-wide history.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            anonymous: false,
            client_publish: true,
            presence: true,
            history: None,
        }
    }
}

/// Why namespaces cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    /// Two namespaces with the same prefix.
    #[error("namespace prefix {0:?} is given twice")]
    Duplicate(String),
    /// A prefix with a character no channel name has.
    #[error("namespace prefix {0:?}: a prefix uses only letters, digits and _ . : -")]
    BadPrefix(String),
    /// `anonymous` on the `user:` prefix, whose channels are private.
    #[error("namespace {USER_PREFIX:?} cannot be anonymous: user:{{sub}} channels are private to their subject")]
    AnonymousUsers,
}

/// Who a client is, as far as the hub's rules go.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// No tokens are configured: every client may do what the namespaces
    /// allow.
    Open,
    /// Tokens are configured and this client presented none (yet).
    Anonymous,
    /// A client with a verified token.
    Token(&'a Grants),
}

/// Why a subscribe or publish is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A token is needed (HTTP 401; on a WebSocket, `unauthorized` and
    /// close 1008).
    Unauthorized(String),
    /// Not with this token or in this namespace (HTTP 403; `forbidden` on
    /// a WebSocket, which stays open).
    Forbidden(&'static str),
}

/// Every namespace of a server (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    /// Longest prefix first; the default (`""`) last.
    list: Vec<Namespace>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            list: vec![Namespace::new("")],
        }
    }
}

impl Namespaces {
    /// These namespaces over `default`, the rules of every channel no
    /// prefix matches (its prefix is ignored). `user:` is never anonymous.
    pub fn new(default: Namespace, namespaces: Vec<Namespace>) -> Result<Self, NamespaceError> {
        let mut list = Vec::with_capacity(namespaces.len() + 1);
        for ns in namespaces {
            if !ns
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
            {
                return Err(NamespaceError::BadPrefix(ns.prefix));
            }
            if list.iter().any(|n: &Namespace| n.prefix == ns.prefix) || ns.prefix.is_empty() {
                return Err(NamespaceError::Duplicate(ns.prefix));
            }
            if ns.anonymous && ns.prefix.starts_with(USER_PREFIX) {
                return Err(NamespaceError::AnonymousUsers);
            }
            list.push(ns);
        }
        list.sort_by_key(|ns| std::cmp::Reverse(ns.prefix.len()));
        list.push(Namespace {
            prefix: String::new(),
            ..default
        });
        Ok(Self { list })
    }

    /// The namespace `channel` belongs to.
    pub fn of(&self, channel: &ChannelName) -> &Namespace {
        let name = channel.as_str();
        // The default's empty prefix matches every name.
        self.list
            .iter()
            .find(|ns| name.starts_with(&ns.prefix))
            .unwrap_or_else(|| &self.list[self.list.len() - 1])
    }

    /// How much history `channel` keeps (`server_wide` unless its namespace
    /// says otherwise).
    pub fn history(&self, channel: &ChannelName, server_wide: HistoryLimits) -> HistoryLimits {
        self.of(channel).history.unwrap_or(server_wide)
    }

    /// Whether `client` may subscribe to `channel`.
    pub fn may_subscribe(&self, client: Client<'_>, channel: &ChannelName) -> Result<(), Refusal> {
        let private = channel.as_str().starts_with(USER_PREFIX);
        match client {
            Client::Open => Ok(()),
            Client::Token(g) if g.may_subscribe(channel) => Ok(()),
            _ if self.of(channel).anonymous && !private => Ok(()),
            Client::Token(_) => Err(Refusal::Forbidden("the token does not allow this channel")),
            Client::Anonymous => Err(Refusal::Unauthorized("a token is required for this channel".into())),
        }
    }

    /// Whether `client` may publish on `channel`.
    pub fn may_publish(&self, client: Client<'_>, channel: &ChannelName) -> Result<(), Refusal> {
        if !self.of(channel).client_publish {
            return Err(Refusal::Forbidden("clients may not publish in this namespace"));
        }
        match client {
            Client::Open => Ok(()),
            Client::Token(g) if g.may_publish(channel) => Ok(()),
            Client::Token(_) => Err(Refusal::Forbidden("the token does not allow this channel")),
            Client::Anonymous => Err(Refusal::Unauthorized("a token is required to publish".into())),
        }
    }

    /// Whether presence is on for `channel`.
    pub fn presence(&self, channel: &ChannelName) -> bool {
        self.of(channel).presence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    fn sample() -> Namespaces {
        let chat = Namespace {
            anonymous: true,
            history: Some(HistoryLimits {
                size: 10,
                ttl: Duration::from_secs(5),
            }),
            ..Namespace::new("chat:")
        };
        let ticker = Namespace {
            anonymous: true,
            client_publish: false,
            presence: false,
            ..Namespace::new("ticker:")
        };
        let vip = Namespace::new("chat:vip:");
        Namespaces::new(Namespace::new("ignored"), vec![chat, ticker, vip]).unwrap()
    }

    #[test]
    fn the_longest_prefix_wins_and_the_default_takes_the_rest() {
        let ns = sample();
        assert_eq!(ns.of(&ch("chat:room1")).prefix, "chat:");
        assert_eq!(ns.of(&ch("chat:vip:1")).prefix, "chat:vip:");
        assert_eq!(ns.of(&ch("ticker:X")).prefix, "ticker:");
        assert_eq!(ns.of(&ch("news")).prefix, "");
        assert_eq!(ns.of(&ch("chat")).prefix, "");
        let wide = HistoryLimits::default();
        assert_eq!(ns.history(&ch("chat:a"), wide).size, 10);
        assert_eq!(ns.history(&ch("chat:vip:a"), wide), wide);
        assert!(!ns.presence(&ch("ticker:X")) && ns.presence(&ch("chat:a")));
    }

    #[test]
    fn anonymous_clients_read_only_anonymous_namespaces_and_never_user_channels() {
        let ns = sample();
        assert_eq!(ns.may_subscribe(Client::Anonymous, &ch("chat:room1")), Ok(()));
        assert!(matches!(
            ns.may_subscribe(Client::Anonymous, &ch("chat:vip:1")),
            Err(Refusal::Unauthorized(_))
        ));
        assert!(matches!(
            ns.may_subscribe(Client::Anonymous, &ch("news")),
            Err(Refusal::Unauthorized(_))
        ));
        assert!(matches!(
            ns.may_publish(Client::Anonymous, &ch("chat:room1")),
            Err(Refusal::Unauthorized(_))
        ));
        // Open (no tokens): everything but publishing where clients may not.
        assert_eq!(ns.may_subscribe(Client::Open, &ch("user:bob")), Ok(()));
        assert_eq!(ns.may_publish(Client::Open, &ch("chat:vip:1")), Ok(()));
        assert!(matches!(
            ns.may_publish(Client::Open, &ch("ticker:X")),
            Err(Refusal::Forbidden(_))
        ));
        let user = Namespace {
            anonymous: true,
            ..Namespace::new("user:")
        };
        assert_eq!(
            Namespaces::new(Namespace::new(""), vec![user]),
            Err(NamespaceError::AnonymousUsers)
        );
        // A catch-all anonymous default does not open user channels.
        let open_default = Namespace {
            anonymous: true,
            ..Namespace::new("")
        };
        let ns = Namespaces::new(open_default, vec![]).unwrap();
        assert_eq!(ns.may_subscribe(Client::Anonymous, &ch("news")), Ok(()));
        assert!(ns.may_subscribe(Client::Anonymous, &ch("user:bob")).is_err());
    }

    #[test]
    fn bad_and_repeated_prefixes_are_refused() {
        let d = || Namespace::new("");
        assert!(matches!(
            Namespaces::new(d(), vec![Namespace::new("chat/")]),
            Err(NamespaceError::BadPrefix(_))
        ));
        assert!(matches!(
            Namespaces::new(d(), vec![Namespace::new("a:"), Namespace::new("a:")]),
            Err(NamespaceError::Duplicate(_))
        ));
        assert!(matches!(
            Namespaces::new(d(), vec![Namespace::new("")]),
            Err(NamespaceError::Duplicate(_))
        ));
    }
}
