//! The KV client protocol: JSON lines over TCP (one request object per line, one response
//! object per line, in order), documented in docs/CLIENT.md.
//!
//! Owns: the request and response shapes and the bounded line reader. Never: allocates more
//! than the line limit for one request, whatever a client sends.

use super::state::Session;
use super::value::Value;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, ErrorKind};
use std::net::SocketAddr;

/// The part of the longest request line that is not for values: 64 KiB.
pub const LINE_BYTES_BASE: usize = 64 * 1024;

/// Longest request line a node accepts, newline included, in bytes: 64 KiB plus twice its
/// `batch_bytes_max` (room for a command of the largest size in base64, whose form is 4/3 of
/// the bytes).
pub fn line_bytes_max(batch_bytes_max: u32) -> usize {
    LINE_BYTES_BASE + 2 * batch_bytes_max as usize
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value: a string, or `{"base64": ...}` for any bytes.
        value: Value,
    },
    /// Reads `key`: through the log, or by a linearizable read without a log write (see
    /// [`GetMode`]).
    Get {
        /// The key.
        key: String,
        /// How the read is served; absent means [`GetMode::Lease`] (lines of earlier clients
        /// carry no mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<GetMode>,
        /// With mode `stale`: the staleness bound in milliseconds (absent: 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_stale_ms: Option<u64>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` if it holds `expected` (`null`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value it must hold, or null for "absent".
        #[serde(default)]
        expected: Option<Value>,
        /// The value to store.
        new: Value,
    },
    /// This node's id, group count and leader hints.
    Id,
    /// This node's counters (the runtime's `NodeStats`).
    Stats,
    /// Per group: applied_next, rolling digest of the applied sequence, checkpoint.
    Digest,
    /// Changes `group`'s membership (docs/PROTOCOL.md#membership-change); only the group's
    /// leader takes it (`not_leader` otherwise).
    Membership {
        /// The group.
        group: u32,
        /// The new voters (node ids).
        voters: Vec<u32>,
        /// The new follower nodes (non-voting).
        #[serde(default)]
        followers: Vec<u32>,
    },
}

/// How a `get` is served (the request's `"mode"`: `"log"`, `"index"` or `"lease"`; absent is
/// `lease`). All three are linearizable and answer the same value; they differ in cost.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(try_from = "String", into = "String")]
pub enum GetMode {
    /// Proposed to the key's group like a write: a durable write on every replica.
    Log,
    /// Read index: the leader confirms its leadership with one round trip to a quorum, then
    /// answers from its applied state; no log write.
    Index,
    /// The master answers from its applied state with no message while it holds its lease
    /// (without a valid lease the engine falls back to `index`); no log write.
    #[default]
    Lease,
    /// Any node, follower nodes included, answers from its applied state with no message if it
    /// heard its leader, with everything said chosen applied, within `max_stale_ms`
    /// (docs/PROTOCOL.md#stale-reads): not linearizable; `too_stale` otherwise.
    Stale,
}

impl GetMode {
    /// The mode's name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            GetMode::Log => "log",
            GetMode::Index => "index",
            GetMode::Lease => "lease",
            GetMode::Stale => "stale",
        }
    }
}

impl std::fmt::Display for GetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GetMode {
    type Err = String;

    fn from_str(text: &str) -> Result<GetMode, String> {
        match text {
            "log" => Ok(GetMode::Log),
            "index" => Ok(GetMode::Index),
            "lease" => Ok(GetMode::Lease),
            "stale" => Ok(GetMode::Stale),
            other => Err(format!(
                "unknown get mode {other:?} (use \"log\", \"index\", \"lease\" or \"stale\"; absent means \"lease\")"
            )),
        }
    }
}

impl TryFrom<String> for GetMode {
    type Error = String;

    fn try_from(text: String) -> Result<GetMode, String> {
        text.parse()
    }
}

impl From<GetMode> for String {
    fn from(mode: GetMode) -> String {
        mode.as_str().to_string()
    }
}

/// One request line: the request and, for put/get/delete/cas, the optional session fields
/// (`"client"`, `"seq"`) that make a retry of the same request apply at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// The request (its `op` and fields).
    #[serde(flatten)]
    pub request: Request,
    /// The client's session id (nonzero), with `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<u64>,
    /// The request's sequence number in the session (1 or more), with `client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl RequestLine {
    /// A request line with the session's fields (none when `session` is `None`).
    pub fn new(request: Request, session: Option<Session>) -> RequestLine {
        RequestLine {
            request,
            client: session.map(|s| s.client),
            seq: session.map(|s| s.seq),
        }
    }

    /// The session the line names, if any; an error when only one of `client` and `seq` is
    /// given, when either is 0, or when the request is not put/get/delete/cas.
    pub fn session(&self) -> Result<Option<Session>, String> {
        let session = Session::from_fields(self.client, self.seq)?;
        if session.is_some() && !self.request.is_key_op() {
            return Err("client and seq go only with put, get, delete and cas".into());
        }
        Ok(session)
    }
}

impl Request {
    /// True for put, get, delete and cas (the requests about one key, which may carry a
    /// session; a get served by `lease` or `index` records nothing in the session table).
    pub fn is_key_op(&self) -> bool {
        matches!(
            self,
            Request::Put { .. }
                | Request::Get { .. }
                | Request::Delete { .. }
                | Request::Cas { .. }
        )
    }
}

/// Error codes of a response with `"ok": false`.
pub mod code {
    /// This node does not lead the key's group; `leader` names the node that does, if known.
    /// The command was not proposed.
    pub const NOT_LEADER: &str = "not_leader";
    /// A queue is full; the command was not proposed.
    pub const OVERLOADED: &str = "overloaded";
    /// The outcome cannot be known: the command may or may not take effect.
    pub const UNKNOWN: &str = "unknown";
    /// The request line is not a valid request; nothing was proposed.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The key and values are larger than the node's command limit; nothing was proposed.
    pub const TOO_LARGE: &str = "too_large";
    /// The node has stopped; nothing was proposed.
    pub const STOPPED: &str = "stopped";
    /// The request's session already applied a request with a higher seq: this copy did not
    /// execute, and whether an earlier copy of it did cannot be told any more.
    pub const STALE: &str = "stale";
    /// A membership change was refused: another one of the group is not in effect yet, or it
    /// names an unknown node, no voter, or a node twice. Nothing changed.
    pub const MEMBERSHIP: &str = "membership";
    /// A `get` in mode `stale` this node cannot serve within its bound (it has not heard its
    /// leader, with everything said chosen applied, within it). Nothing changed.
    pub const TOO_STALE: &str = "too_stale";
}

/// One response line, as a client reads it (fields absent in a response are `None`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// True when the request was executed.
    pub ok: bool,
    /// The error code when `ok` is false (see [`code`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `not_leader`: the leader's node id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u32>,
    /// With `not_leader`: the leader's client address, when this node's config names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_addr: Option<SocketAddr>,
    /// A human-readable reason for an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// put/delete: the previous value; get: the value read; cas: the value before the cas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// cas: whether the swap happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
    /// put/get/delete/cas: the key's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// put/get/delete/cas: the instance that chose the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u64>,
    /// id: this node's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u32>,
    /// id: the number of groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u32>,
    /// id: per group, the node this one believes leads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaders: Option<Vec<Option<u32>>>,
    /// id: the other nodes' client addresses, as this node's config names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addrs: Option<Vec<NodeAddr>>,
    /// id: the most bytes of key and values one command may hold on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_bytes_max: Option<u64>,
    /// id: the longest request line this node accepts, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_bytes_max: Option<u64>,
    /// stats: the node's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
    /// digest: one entry per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<Vec<GroupDigest>>,
    /// id: per group, its newest membership as this node knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memberships: Option<Vec<Option<GroupMembers>>>,
    /// membership: the first instance the change governs (its instance + 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governs_from: Option<u64>,
}

/// One group's membership in an `id` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    /// The voters.
    pub voters: Vec<u32>,
    /// The follower nodes (non-voting).
    pub followers: Vec<u32>,
    /// The first instance it governs.
    pub from: u64,
}

/// A node's id and client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddr {
    /// The node's id.
    pub id: u32,
    /// Its KV client protocol address.
    pub addr: SocketAddr,
}

/// One group's line of a `digest` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDigest {
    /// The group.
    pub group: u32,
    /// The first instance this replica has not applied yet.
    pub applied_next: u64,
    /// The rolling CRC-32 chain over every applied (instance, commands).
    pub digest: u32,
    /// The instance of the last durable snapshot.
    pub checkpoint: Option<u64>,
    /// Keys held by this replica's state for the group.
    pub keys: usize,
    /// Client sessions held by this replica's state for the group.
    #[serde(default)]
    pub sessions: usize,
}

impl Response {
    /// An error response.
    pub fn error(code: &str, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(code.to_string()),
            message: Some(message.into()),
            ..Response::default()
        }
    }
}

/// What [`read_line_bounded`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line is in the buffer (without its newline).
    Line,
    /// The peer closed the connection (a partial line, if any, is dropped).
    Eof,
    /// The line is longer than the limit; the connection should be answered and closed.
    TooLong,
}

/// Reads up to the next newline into `line`, never holding more than `max_bytes`. Resumable:
/// when the reader times out (`WouldBlock`/`TimedOut`), the error is returned and the bytes
/// read so far stay in `line`; call again with the same buffer.
pub fn read_line_bounded<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max_bytes: usize,
) -> std::io::Result<LineRead> {
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let (take, found) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        let keep = if found { take - 1 } else { take };
        if line.len() + keep >= max_bytes {
            return Ok(LineRead::TooLong);
        }
        line.extend_from_slice(&available[..keep]);
        reader.consume(take);
        if found {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(LineRead::Line);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Proves the request encoding matches docs/CLIENT.md, and that the line reader splits
    //! lines, resumes, and refuses an over-long line without holding it.
    use super::*;
    use std::io::BufReader;

    #[test]
    fn requests_parse_as_documented() {
        let cases = [
            (
                r#"{"op":"put","key":"k","value":"v"}"#,
                Request::Put {
                    key: "k".into(),
                    value: "v".into(),
                },
            ),
            (
                r#"{"op":"get","key":"k"}"#,
                Request::Get {
                    key: "k".into(),
                    mode: None,
                    max_stale_ms: None,
                },
            ),
            (
                r#"{"op":"delete","key":"k"}"#,
                Request::Delete { key: "k".into() },
            ),
            (
                r#"{"op":"cas","key":"k","expected":null,"new":"n"}"#,
                Request::Cas {
                    key: "k".into(),
                    expected: None,
                    new: "n".into(),
                },
            ),
            (
                r#"{"op":"cas","key":"k","expected":"e","new":"n"}"#,
                Request::Cas {
                    key: "k".into(),
                    expected: Some("e".into()),
                    new: "n".into(),
                },
            ),
            (
                r#"{"op":"put","key":"k","value":{"base64":"AP8="}}"#,
                Request::Put {
                    key: "k".into(),
                    value: Value::from(vec![0u8, 0xff]),
                },
            ),
            (
                r#"{"op":"cas","key":"k","expected":{"base64":"AP8="},"new":"n"}"#,
                Request::Cas {
                    key: "k".into(),
                    expected: Some(Value::from(vec![0u8, 0xff])),
                    new: "n".into(),
                },
            ),
            (r#"{"op":"id"}"#, Request::Id),
            (r#"{"op":"stats"}"#, Request::Stats),
            (r#"{"op":"digest"}"#, Request::Digest),
            (
                r#"{"op":"membership","group":2,"voters":[2,3,4],"followers":[1]}"#,
                Request::Membership {
                    group: 2,
                    voters: vec![2, 3, 4],
                    followers: vec![1],
                },
            ),
        ];
        for (text, request) in cases {
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), request);
        }
        for bad in [
            r#"{"op":"put","key":"k"}"#,
            r#"{"op":"nope"}"#,
            r#"{"op":"get","key":"k","extra":1}"#,
            r#"{"op":"put","key":"k","value":{"base64":"not base64"}}"#,
            r#"{"op":"put","key":"k","value":{"hex":"00"}}"#,
            r#"{"op":"put","key":"k","value":7}"#,
            r#"[1,2]"#,
            "",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn get_modes_parse_as_documented() {
        // Absent (or null): no mode (served as lease), and written back without one.
        for text in [
            r#"{"op":"get","key":"k"}"#,
            r#"{"op":"get","key":"k","mode":null}"#,
        ] {
            let line: RequestLine = serde_json::from_str(text).unwrap();
            assert_eq!(
                line.request,
                Request::Get {
                    key: "k".into(),
                    mode: None,
                    max_stale_ms: None,
                }
            );
            assert_eq!(
                serde_json::to_string(&line).unwrap(),
                r#"{"op":"get","key":"k"}"#
            );
        }
        assert_eq!(GetMode::default(), GetMode::Lease);
        for (name, mode) in [
            ("log", GetMode::Log),
            ("index", GetMode::Index),
            ("lease", GetMode::Lease),
        ] {
            let text = format!(r#"{{"op":"get","key":"k","mode":"{name}"}}"#);
            let line: RequestLine = serde_json::from_str(&text).unwrap();
            assert_eq!(
                line.request,
                Request::Get {
                    key: "k".into(),
                    mode: Some(mode),
                    max_stale_ms: None,
                },
                "{text}"
            );
            assert_eq!(serde_json::to_string(&line).unwrap(), text);
            assert_eq!(name.parse::<GetMode>(), Ok(mode));
            assert_eq!(mode.to_string(), name);
            // With a session, in any field order.
            let text = format!(r#"{{"client":5,"seq":2,"mode":"{name}","key":"k","op":"get"}}"#);
            let line: RequestLine = serde_json::from_str(&text).unwrap();
            assert_eq!(line.session(), Ok(Some(Session { client: 5, seq: 2 })));
        }
        // Unknown modes are refused, naming the mode and the valid ones.
        for bad in [
            r#"{"op":"get","key":"k","mode":"fast"}"#,
            r#"{"op":"get","key":"k","mode":"Lease"}"#,
            r#"{"op":"get","key":"k","mode":""}"#,
        ] {
            let error = serde_json::from_str::<RequestLine>(bad)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("unknown get mode")
                    && error.contains(r#""log", "index", "lease" or "stale""#),
                "{bad}: {error}"
            );
        }
        for bad in [
            r#"{"op":"get","key":"k","mode":1}"#,
            r#"{"op":"put","key":"k","value":"v","mode":"log"}"#,
            r#"{"op":"cas","key":"k","expected":null,"new":"n","mode":"lease"}"#,
        ] {
            assert!(serde_json::from_str::<RequestLine>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_fields_parse_as_documented() {
        let line: RequestLine = serde_json::from_str(
            r#"{"op":"cas","key":"k","expected":null,"new":"n","client":18446744073709551615,"seq":3}"#,
        )
        .unwrap();
        assert_eq!(
            line.request,
            Request::Cas {
                key: "k".into(),
                expected: None,
                new: "n".into(),
            }
        );
        assert_eq!(
            line.session(),
            Ok(Some(Session {
                client: u64::MAX,
                seq: 3
            }))
        );
        let round = serde_json::to_string(&line).unwrap();
        assert_eq!(serde_json::from_str::<RequestLine>(&round).unwrap(), line);
        // Without them: no session (old clients, hand-written lines).
        let line: RequestLine = serde_json::from_str(r#"{"op":"get","key":"k"}"#).unwrap();
        assert_eq!(line.session(), Ok(None));
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"op":"get","key":"k"}"#
        );
        // Unknown fields are still refused next to the session fields.
        for bad in [
            r#"{"op":"get","key":"k","client":1,"seq":1,"extra":1}"#,
            r#"{"op":"get","key":"k","client":-1,"seq":1}"#,
            r#"{"op":"get","key":"k","client":"1","seq":1}"#,
        ] {
            assert!(serde_json::from_str::<RequestLine>(bad).is_err(), "{bad}");
        }
        for bad in [
            r#"{"op":"put","key":"k","value":"v","client":0,"seq":1}"#,
            r#"{"op":"put","key":"k","value":"v","client":1,"seq":0}"#,
            r#"{"op":"put","key":"k","value":"v","client":1}"#,
            r#"{"op":"put","key":"k","value":"v","seq":1}"#,
            r#"{"op":"id","client":1,"seq":1}"#,
        ] {
            let line: RequestLine = serde_json::from_str(bad).unwrap();
            assert!(line.session().is_err(), "{bad}");
        }
    }

    #[test]
    fn line_reader_splits_and_bounds() {
        let input = b"one\r\ntwo\nthree-is-long\nfour".to_vec();
        // A 4-byte buffer forces lines to span several fills.
        let mut reader = BufReader::with_capacity(4, &input[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"one");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"two");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::TooLong
        );
        assert!(line.len() < 10);
        let mut reader = BufReader::new(&b"four"[..]);
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 10).unwrap(),
            LineRead::Eof
        );
    }

    #[test]
    fn responses_omit_nothing_a_client_needs() {
        let text = r#"{"ok":false,"error":"not_leader","leader":2,"leader_addr":"127.0.0.1:7102"}"#;
        let response: Response = serde_json::from_str(text).unwrap();
        assert!(!response.ok);
        assert_eq!(response.error.as_deref(), Some("not_leader"));
        assert_eq!(response.leader, Some(2));
        assert_eq!(
            response.leader_addr,
            Some("127.0.0.1:7102".parse().unwrap())
        );
        let text = r#"{"ok":true,"node_id":1,"groups":1,"leaders":[2],"client_addrs":[{"id":2,"addr":"127.0.0.1:7102"}],"command_bytes_max":262080,"line_bytes_max":589824}"#;
        let response: Response = serde_json::from_str(text).unwrap();
        assert_eq!(
            response.client_addrs,
            Some(vec![NodeAddr {
                id: 2,
                addr: "127.0.0.1:7102".parse().unwrap()
            }])
        );
        assert_eq!(response.command_bytes_max, Some(262_080));
        assert_eq!(line_bytes_max(256 * 1024), 589_824);
    }
}
