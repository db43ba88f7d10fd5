//! The hub's JSON protocol: the commands a client sends on `/ws` and every
//! message the hub sends back (on `/ws`, and the data of `/poll` and
//! `/sse`).
//!
//! Client → server (one JSON object per text frame):
//! `{"type":"subscribe","channel":"c"}` (optionally `"since":N`,
//! `"epoch":"…"`, `"presence":true`), `{"type":"unsubscribe","channel":"c"}`,
//! `{"type":"publish","channel":"c","data":<any JSON>}`. Any command may
//! carry `"id":<any JSON>`, echoed in its answer.
//!
//! Server → client: `subscribed`, `message`, `published`, `unsubscribed`,
//! `join`/`leave` (presence) and `error` objects (see the README). Text is
//! built here and nowhere else; channel names need no escaping (see
//! [`ChannelName`]) and every other string goes through `serde_json`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::broker::{Epoch, Publication};
use super::name::{ChannelName, ChannelNameError};

/// An error code and message, as an `error` object carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// A stable code (`bad_json`, `bad_request`, `unknown_type`,
    /// `bad_channel`, `too_large`, `already_subscribed`, `not_subscribed`,
    /// `too_many_subscriptions`, `unavailable`).
    pub code: &'static str,
    /// What was wrong, for a human.
    pub message: String,
}

impl ProtocolError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ChannelNameError> for ProtocolError {
    fn from(e: ChannelNameError) -> Self {
        Self::new("bad_channel", e.to_string())
    }
}

/// A parsed client command.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        channel: ChannelName,
        since: Option<u64>,
        epoch: Option<String>,
        presence: bool,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Publish {
        channel: ChannelName,
        data: Bytes,
    },
    /// A client token, first or refreshed (`{"type":"auth","token":"…"}`).
    Auth {
        token: String,
    },
}

/// A command as it arrives, before its fields are checked.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    channel: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    presence: Option<bool>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    token: Option<String>,
}

/// A client command and its `id` tag (the raw JSON, echoed in the answer).
pub(crate) struct Parsed {
    pub id: Option<Box<str>>,
    pub command: Result<Command, ProtocolError>,
}

/// Parses one text frame. `max_data` bounds a publication's data.
pub(crate) fn parse(text: &str, max_data: usize) -> Parsed {
    let raw: Raw<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            return Parsed {
                id: None,
                command: Err(ProtocolError::new(
                    "bad_json",
                    format!("not a JSON command object: {e}"),
                )),
            }
        }
    };
    let id = raw.id.map(|id| compact(id.get()).into_boxed_str());
    Parsed {
        id,
        command: command(raw, max_data),
    }
}

fn command(raw: Raw<'_>, max_data: usize) -> Result<Command, ProtocolError> {
    let kind = raw
        .kind
        .ok_or_else(|| ProtocolError::new("bad_request", "a command needs a \"type\""))?;
    let channel = || -> Result<ChannelName, ProtocolError> {
        let name = raw
            .channel
            .as_deref()
            .ok_or_else(|| ProtocolError::new("bad_request", format!("\"{kind}\" needs a \"channel\"")))?;
        Ok(ChannelName::new(name)?)
    };
    match kind.as_str() {
        "subscribe" => Ok(Command::Subscribe {
            channel: channel()?,
            since: raw.since,
            epoch: raw.epoch,
            presence: raw.presence.unwrap_or(false),
        }),
        "unsubscribe" => Ok(Command::Unsubscribe { channel: channel()? }),
        "publish" => {
            let channel = channel()?;
            let data = raw
                .data
                .ok_or_else(|| ProtocolError::new("bad_request", "\"publish\" needs \"data\""))?;
            Ok(Command::Publish {
                channel,
                data: checked_data(data.get(), max_data)?,
            })
        }
        "auth" => Ok(Command::Auth {
            token: raw
                .token
                .ok_or_else(|| ProtocolError::new("bad_request", "\"auth\" needs a \"token\""))?,
        }),
        other => Err(ProtocolError::new(
            "unknown_type",
            format!("unknown command type {}", json_string(other)),
        )),
    }
}

/// A publication's data as kept and sent: the JSON value made compact,
/// at most `max_data` bytes.
pub(crate) fn checked_data(json: &str, max_data: usize) -> Result<Bytes, ProtocolError> {
    let data = compact(json);
    if data.len() > max_data {
        return Err(ProtocolError::new(
            "too_large",
            format!("data is {} bytes, more than the {max_data} allowed", data.len()),
        ));
    }
    Ok(Bytes::from(data))
}

/// A valid JSON text without the white space between its tokens (so it
/// holds no raw line break: one SSE `data:` line). Strings are kept as
/// they are, escapes included.
pub(crate) fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// `"id":…,` (with the comma) when the command carried an id.
fn id_field(id: Option<&str>) -> String {
    id.map(|id| format!(",\"id\":{id}")).unwrap_or_default()
}

/// `{"type":"message","channel":"c","offset":N,"data":…}`
pub(crate) fn message(p: &Publication) -> String {
    let data = std::str::from_utf8(&p.data).unwrap_or("null");
    format!(
        "{{\"type\":\"message\",\"channel\":\"{}\",\"offset\":{},\"data\":{data}}}",
        p.channel, p.offset
    )
}

/// What a `subscribed` answer says.
pub(crate) struct Subscribed<'a> {
    pub channel: &'a ChannelName,
    pub offset: u64,
    pub epoch: &'a Epoch,
    pub recovered: bool,
    /// With presence: this connection's client id and the member count.
    pub presence: Option<(&'a str, usize)>,
    pub id: Option<&'a str>,
}

pub(crate) fn subscribed(s: &Subscribed<'_>) -> String {
    let presence = s
        .presence
        .map(|(client, members)| format!(",\"client\":{},\"members\":{members}", json_string(client)))
        .unwrap_or_default();
    format!(
        "{{\"type\":\"subscribed\",\"channel\":\"{}\",\"offset\":{},\"epoch\":{},\"recovered\":{}{presence}{}}}",
        s.channel,
        s.offset,
        json_string(s.epoch.as_str()),
        s.recovered,
        id_field(s.id)
    )
}

pub(crate) fn published(channel: &ChannelName, offset: u64, id: Option<&str>) -> String {
    format!(
        "{{\"type\":\"published\",\"channel\":\"{channel}\",\"offset\":{offset}{}}}",
        id_field(id)
    )
}

pub(crate) fn unsubscribed(channel: &ChannelName, id: Option<&str>) -> String {
    format!(
        "{{\"type\":\"unsubscribed\",\"channel\":\"{channel}\"{}}}",
        id_field(id)
    )
}

/// `join` or `leave` of `client` in `channel`, with the member count after it.
pub(crate) fn presence(kind: &str, channel: &ChannelName, client: &str, members: usize) -> String {
    format!(
        "{{\"type\":\"{kind}\",\"channel\":\"{channel}\",\"client\":{},\"members\":{members}}}",
        json_string(client)
    )
}

pub(crate) fn error(e: &ProtocolError, channel: Option<&ChannelName>, id: Option<&str>) -> String {
    let channel = channel.map(|c| format!(",\"channel\":\"{c}\"")).unwrap_or_default();
    format!(
        "{{\"type\":\"error\",\"code\":\"{}\",\"message\":{}{channel}{}}}",
        e.code,
        json_string(&e.message),
        id_field(id)
    )
}

/// One SSE event for a publication: `id: N` and one `data:` line (the data
/// is compact JSON: no line breaks).
pub(crate) fn sse_event(p: &Publication) -> Bytes {
    let mut s = String::with_capacity(p.data.len() + 24);
    s.push_str("id: ");
    s.push_str(&p.offset.to_string());
    s.push_str("\ndata: ");
    s.push_str(std::str::from_utf8(&p.data).unwrap_or("null"));
    s.push_str("\n\n");
    Bytes::from(s)
}

/// The answer to `auth`: `{"type":"authorized","sub":…,"exp":…}`.
pub(crate) fn authorized(subject: &str, expires: u64, id: Option<&str>) -> String {
    format!(
        "{{\"type\":\"authorized\",\"sub\":{},\"exp\":{expires}{}}}",
        json_string(subject),
        id_field(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_removes_white_space_outside_strings_only() {
        assert_eq!(
            compact(" { \"a b\" :\n[1,\t2 ] ,\r\n\"c\":\"x\\\" y\" } "),
            "{\"a b\":[1,2],\"c\":\"x\\\" y\"}"
        );
        assert_eq!(compact("\"\\\\\" "), "\"\\\\\"");
        assert_eq!(compact("12345678901234567890123"), "12345678901234567890123");
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        let p = parse(
            r#"{"type":"subscribe","channel":"c","since":5,"epoch":"e","presence":true,"id":7}"#,
            100,
        );
        assert_eq!(p.id.as_deref(), Some("7"));
        assert!(matches!(
            p.command,
            Ok(Command::Subscribe { since: Some(5), presence: true, ref epoch, .. }) if epoch.as_deref() == Some("e")
        ));
        let p = parse(
            r#"{"type":"publish","channel":"c","data":{ "x" : [1, 2] },"id":"a"}"#,
            100,
        );
        assert_eq!(p.id.as_deref(), Some("\"a\""));
        match p.command {
            Ok(Command::Publish { data, .. }) => assert_eq!(&data[..], b"{\"x\":[1,2]}"),
            other => panic!("{other:?}"),
        }
        for (text, code) in [
            ("nope", "bad_json"),
            ("[1]", "bad_json"),
            ("{\"channel\":\"c\"}", "bad_request"),
            ("{\"type\":\"subscribe\"}", "bad_request"),
            ("{\"type\":\"subscribe\",\"channel\":\"a b\"}", "bad_channel"),
            ("{\"type\":\"subscribe\",\"channel\":\"c\",\"since\":-1}", "bad_json"),
            ("{\"type\":\"publish\",\"channel\":\"c\"}", "bad_request"),
            (
                "{\"type\":\"publish\",\"channel\":\"c\",\"data\":\"0123456789\"}",
                "too_large",
            ),
            ("{\"type\":\"dance\"}", "unknown_type"),
        ] {
            let p = parse(text, 10);
            assert_eq!(p.command.err().map(|e| e.code), Some(code), "{text}");
        }
        // The id comes back even when the command is bad.
        assert_eq!(parse("{\"type\":\"dance\",\"id\":[1]}", 10).id.as_deref(), Some("[1]"));
    }

    #[test]
    fn server_messages_are_json() {
        let c = ChannelName::new("chat:1").unwrap();
        let p = Publication {
            channel: c.clone(),
            offset: 3,
            epoch: Epoch::new("e1"),
            data: Bytes::from_static(b"{\"t\":\"hi\"}"),
        };
        let e = ProtocolError::new("bad_json", "quote \" and\nnewline");
        for text in [
            message(&p),
            subscribed(&Subscribed {
                channel: &c,
                offset: 3,
                epoch: &p.epoch,
                recovered: true,
                presence: Some(("n1-2", 4)),
                id: Some("{\"k\":1}"),
            }),
            published(&c, 3, None),
            unsubscribed(&c, Some("5")),
            presence("join", &c, "n1-2", 5),
            error(&e, Some(&c), Some("\"x\"")),
        ] {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(v["type"].is_string(), "{text}");
        }
        assert_eq!(&sse_event(&p)[..], b"id: 3\ndata: {\"t\":\"hi\"}\n\n");
    }
}
