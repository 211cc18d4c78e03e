//! Audit records and their canonical encoding (version 1).
//!
//! A record is the UTF-8 bytes of the JSON object
//!
//! ```text
//! {"event":<event>,"index":<leaf index>,"v":1}
//! ```
//!
//! serialized with the JSON Canonicalization Scheme (RFC 8785: sorted keys, no whitespace,
//! ECMAScript number forms). The Merkle leaf hash is `SHA-256(0x00 || record bytes)`. Because
//! the canonical form of the event is its own JCS encoding, callers encode events on their own
//! threads and the single writer only wraps them with their index ([`leaf_bytes`]).
//!
//! Events are tagged by `kind`; see [`Event`]. Fields that are absent are omitted, never null.
//! Secrets never enter an event: the caller's token is represented by its `jti`, upstream
//! credentials by an id, and arguments and bodies arrive already masked.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// The record format version written in `v`.
pub const VERSION: u64 = 1;

/// Who called, as recorded. Never the credential itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    pub subject: String,
    pub groups: Vec<String>,
    /// `oidc` or `api_key`.
    pub auth_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The acting agent when the call is delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// The authorization outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `allow`, `deny` or `held` (waiting for approval).
    pub effect: String,
    /// Ids of the determining policies.
    pub policies: Vec<String>,
    pub reason: String,
    /// Obligations attached by the permitting policies (rate limit, approval, mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obligations: Option<Value>,
}

/// Where the call is sent. Written, and durable, before the upstream sees anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardRecord {
    pub upstream: String,
    /// Names the just-in-time credential used; never the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
}

/// A call that reached policy: who, what, the decision and, when allowed now, the forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub time_ms: u64,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub caller: Caller,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub ingress: String,
    pub function: String,
    /// The arguments after masking rules: the same value policy saw and the upstream gets.
    pub arguments: Map<String, Value>,
    pub decision: DecisionRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardRecord>,
}

/// A call forwarded after it was held (for approval); written before the upstream sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardEvent {
    pub time_ms: u64,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub function: String,
    pub forward: ForwardRecord,
    /// The digest of the stored request being executed: the one reviewers approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The approvals the execution rests on, so the forward record alone says who approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<Approver>,
}

/// One counted approval, as a forward record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approver {
    pub reviewer: String,
    pub group: String,
    pub time_ms: u64,
}

/// A step in a held call's (or grant's) approval: it was held, someone reviewed it, or its
/// state changed (approved, executing, denied, expired, cancelled, revoked, unknown...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    pub time_ms: u64,
    /// The held call's request id, or the grant's id.
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `call`, `grant` or `break_glass`.
    pub item: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Who acted: the requester, the reviewer, or `callgate` (expiry, recovery).
    pub actor: String,
    /// The state after this step.
    pub state: String,
    /// What was approved: the stored request's digest (on `approval.requested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The requirement, on `approval.requested`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirement: Option<String>,
    /// The requester's reason, on `approval.requested`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `approve` or `deny`, on `approval.review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The group an approval counted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// False for a review that arrived after the request was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Why a step was refused or what happened (for refused reviews and recoveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What came back from the upstream, or why nothing did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEvent {
    pub time_ms: u64,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub function: String,
    /// The status the caller got.
    pub status: u16,
    pub latency_us: u64,
    /// The response body after masking, when it is JSON and bodies are recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The body after masking, when it is not JSON and bodies are recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Hex SHA-256 of the body the caller got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request refused before or after policy for a reason other than a deny: bad input,
/// failed authentication, rate limit, unavailable upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedEvent {
    pub time_ms: u64,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub ingress: String,
    pub status: u16,
    /// The problem type's short code (`unauthenticated`, `invalid_arguments`, ...).
    pub code: String,
    pub detail: String,
    /// Set on a record that stands for several anonymous refusals from one source address
    /// (past the few recorded one by one each minute): how many. The other fields are the
    /// last one's; `detail` counts them by code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
    /// With `repeated`: when the first of them arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<u64>,
}

/// Callgate started. Announces the checkpoint key in use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartEvent {
    pub time_ms: u64,
    pub version: String,
    pub config_sha256: String,
    pub policy_sha256: String,
    /// The signed-note verifier key that signs this log's checkpoints.
    pub key: String,
}

/// Callgate stopped cleanly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopEvent {
    pub time_ms: u64,
    pub reason: String,
}

/// Callgate started after a run that did not stop cleanly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryEvent {
    pub time_ms: u64,
    /// Records in the log when the crashed run ended.
    pub tree_size: u64,
    /// Calls whose forward record is in the log but whose response is not: the upstream may
    /// or may not have executed them.
    pub unfinished: Vec<String>,
}

/// Configuration or policies were reloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadEvent {
    pub time_ms: u64,
    pub config_sha256: String,
    pub policy_sha256: String,
}

/// The checkpoint key changed. Checkpoints after this record may be signed by `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRotationEvent {
    pub time_ms: u64,
    pub previous_key: String,
    pub key: String,
}

/// Somebody read, or tried to read, the audit log through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReadEvent {
    pub time_ms: u64,
    pub request_id: String,
    /// Absent when the request carried no valid credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The path and query that were read.
    pub resource: String,
    /// Why the read was refused (`unauthenticated`, `forbidden`); absent for a read that was
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Retention removed the bodies of these call records. Written, durably, before the bodies
/// are removed, so a record without its body is accounted for only when a prune record lists
/// its index: a body erased any other way is found by verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneEvent {
    pub time_ms: u64,
    /// Records older than this (Unix ms) were due.
    pub before_ms: u64,
    /// The pruned indexes, as inclusive `[first, last]` ranges in ascending order. Every one
    /// is a `call…` record, checked against its body before the body was removed.
    pub indexes: Vec<[u64; 2]>,
}

/// Whether ascending, disjoint inclusive `ranges` hold `index`.
pub fn ranges_cover(ranges: &[[u64; 2]], index: u64) -> bool {
    let i = ranges.partition_point(|r| r[1] < index);
    ranges.get(i).is_some_and(|r| r[0] <= index)
}

impl PruneEvent {
    /// Whether `index` is one of the pruned records.
    pub fn covers(&self, index: u64) -> bool {
        ranges_cover(&self.indexes, index)
    }

    /// Ascending `indexes` as inclusive ranges.
    pub fn ranges(indexes: &[u64]) -> Vec<[u64; 2]> {
        let mut out: Vec<[u64; 2]> = Vec::new();
        for &i in indexes {
            match out.last_mut() {
                Some(r) if r[1].checked_add(1) == Some(i) => r[1] = i,
                _ => out.push([i, i]),
            }
        }
        out
    }
}

/// Everything the log records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Event {
    #[serde(rename = "call")]
    Call(Box<CallEvent>),
    #[serde(rename = "call.forward")]
    Forward(ForwardEvent),
    #[serde(rename = "call.response")]
    Response(ResponseEvent),
    #[serde(rename = "call.refused")]
    Refused(RefusedEvent),
    #[serde(rename = "approval.requested")]
    ApprovalRequested(ApprovalEvent),
    #[serde(rename = "approval.review")]
    ApprovalReview(ApprovalEvent),
    #[serde(rename = "approval.state")]
    ApprovalState(ApprovalEvent),
    #[serde(rename = "admin.start")]
    Start(StartEvent),
    #[serde(rename = "admin.stop")]
    Stop(StopEvent),
    #[serde(rename = "admin.recovery")]
    Recovery(RecoveryEvent),
    #[serde(rename = "admin.reload")]
    Reload(ReloadEvent),
    #[serde(rename = "admin.key_rotation")]
    KeyRotation(KeyRotationEvent),
    #[serde(rename = "admin.audit_read")]
    AuditRead(AuditReadEvent),
    #[serde(rename = "admin.prune")]
    Prune(PruneEvent),
}

/// The columns a store indexes a record by, so searches need not parse every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    pub kind: &'static str,
    pub time_ms: u64,
    pub request_id: Option<String>,
    pub session: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    /// `allow`, `deny`, `held` for calls; `refused` for refusals.
    pub decision: Option<String>,
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Call(_) => "call",
            Event::Forward(_) => "call.forward",
            Event::Response(_) => "call.response",
            Event::Refused(_) => "call.refused",
            Event::ApprovalRequested(_) => "approval.requested",
            Event::ApprovalReview(_) => "approval.review",
            Event::ApprovalState(_) => "approval.state",
            Event::Start(_) => "admin.start",
            Event::Stop(_) => "admin.stop",
            Event::Recovery(_) => "admin.recovery",
            Event::Reload(_) => "admin.reload",
            Event::KeyRotation(_) => "admin.key_rotation",
            Event::AuditRead(_) => "admin.audit_read",
            Event::Prune(_) => "admin.prune",
        }
    }

    pub fn columns(&self) -> Columns {
        let kind = self.kind();
        match self {
            Event::Call(e) => Columns {
                kind,
                time_ms: e.time_ms,
                request_id: Some(e.request_id.clone()),
                session: e.session.clone(),
                subject: Some(e.caller.subject.clone()),
                function: Some(e.function.clone()),
                decision: Some(e.decision.effect.clone()),
            },
            Event::Forward(e) => Columns {
                kind,
                time_ms: e.time_ms,
                request_id: Some(e.request_id.clone()),
                session: e.session.clone(),
                function: Some(e.function.clone()),
                ..Default::default()
            },
            Event::Response(e) => Columns {
                kind,
                time_ms: e.time_ms,
                request_id: Some(e.request_id.clone()),
                session: e.session.clone(),
                function: Some(e.function.clone()),
                ..Default::default()
            },
            Event::Refused(e) => Columns {
                kind,
                time_ms: e.time_ms,
                request_id: Some(e.request_id.clone()),
                session: e.session.clone(),
                subject: e.subject.clone(),
                function: e.function.clone(),
                decision: Some("refused".into()),
            },
            Event::ApprovalRequested(e) | Event::ApprovalReview(e) | Event::ApprovalState(e) => {
                Columns {
                    kind,
                    time_ms: e.time_ms,
                    request_id: Some(e.request_id.clone()),
                    session: e.session.clone(),
                    subject: Some(e.actor.clone()),
                    function: e.function.clone(),
                    decision: Some(e.state.clone()),
                }
            }
            Event::AuditRead(e) => Columns {
                kind,
                time_ms: e.time_ms,
                request_id: Some(e.request_id.clone()),
                subject: e.subject.clone(),
                decision: e.refused.as_ref().map(|_| "refused".to_string()),
                ..Default::default()
            },
            Event::Start(StartEvent { time_ms, .. })
            | Event::Stop(StopEvent { time_ms, .. })
            | Event::Recovery(RecoveryEvent { time_ms, .. })
            | Event::Reload(ReloadEvent { time_ms, .. })
            | Event::KeyRotation(KeyRotationEvent { time_ms, .. })
            | Event::Prune(PruneEvent { time_ms, .. }) => Columns {
                kind,
                time_ms: *time_ms,
                ..Default::default()
            },
        }
    }

    /// The checkpoint key this event announces, if any.
    pub fn announced_key(&self) -> Option<&str> {
        match self {
            Event::Start(e) => Some(&e.key),
            Event::KeyRotation(e) => Some(&e.key),
            _ => None,
        }
    }

    /// The event's canonical (RFC 8785) encoding.
    pub fn encode(&self) -> Result<EncodedEvent, RecordError> {
        let json =
            crate::canonical::to_vec(self).map_err(|e| RecordError::Encode(e.to_string()))?;
        Ok(EncodedEvent {
            columns: self.columns(),
            json,
        })
    }
}

/// An event in canonical form, with its index columns, ready for the writer.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub columns: Columns,
    pub json: Vec<u8>,
}

/// Why record bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("the event cannot be encoded: {0}")]
    Encode(String),
    #[error("the record is not JSON: {0}")]
    NotJson(String),
    #[error("the record is not in canonical form")]
    NotCanonical,
    #[error("the record has version {0}; this verifier reads version 1")]
    Version(String),
    #[error("the record says index {found} but sits at index {position}")]
    WrongIndex { found: String, position: u64 },
    #[error("the record's event is not understood: {0}")]
    Event(String),
}

/// The record bytes for an encoded event at `index`. Key order `event` < `index` < `v`
/// keeps the result canonical without re-encoding the event.
pub fn leaf_bytes(index: u64, event_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(event_json.len() + 40);
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(event_json);
    out.extend_from_slice(b",\"index\":");
    out.extend_from_slice(index.to_string().as_bytes());
    out.extend_from_slice(b",\"v\":1}");
    out
}

/// A record read back and checked: canonical, version 1, at the index it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub index: u64,
    pub event: Event,
    /// The record as JSON, for display and `prove`.
    pub json: Value,
}

/// Parses and checks the record bytes stored at `position`.
pub fn parse_record(position: u64, bytes: &[u8]) -> Result<Record, RecordError> {
    let json: Value =
        serde_json::from_slice(bytes).map_err(|e| RecordError::NotJson(e.to_string()))?;
    let canonical =
        crate::canonical::value_to_vec(&json).map_err(|e| RecordError::NotJson(e.to_string()))?;
    if canonical != bytes {
        return Err(RecordError::NotCanonical);
    }
    if json.get("v") != Some(&Value::from(VERSION)) {
        return Err(RecordError::Version(
            json.get("v").map(|v| v.to_string()).unwrap_or_default(),
        ));
    }
    if json.get("index").and_then(Value::as_u64) != Some(position) {
        return Err(RecordError::WrongIndex {
            found: json.get("index").map(|v| v.to_string()).unwrap_or_default(),
            position,
        });
    }
    let event = Event::deserialize(json.get("event").unwrap_or(&Value::Null))
        .map_err(|e| RecordError::Event(e.to_string()))?;
    Ok(Record {
        index: position,
        event,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call() -> Event {
        Event::Call(Box::new(CallEvent {
            time_ms: 1_700_000_000_123,
            request_id: "0193-abc".into(),
            session: None,
            caller: Caller {
                subject: "alice".into(),
                groups: vec!["support".into()],
                auth_method: "oidc".into(),
                issuer: Some("https://idp.example".into()),
                key_id: None,
                token_id: Some("jti-1".into()),
                actor: None,
            },
            source: Some("127.0.0.1".into()),
            ingress: "invoke".into(),
            function: "payments.refund".into(),
            arguments: json!({"z": 1.5, "amount": 100, "note": "caf\u{e9}\n"})
                .as_object()
                .unwrap()
                .clone(),
            decision: DecisionRecord {
                effect: "allow".into(),
                policies: vec!["support-refunds".into()],
                reason: "permitted".into(),
                obligations: None,
            },
            forward: Some(ForwardRecord {
                upstream: "payments".into(),
                credential_id: None,
            }),
        }))
    }

    #[test]
    fn records_are_canonical_and_round_trip() {
        let e = call();
        let enc = e.encode().unwrap();
        let bytes = leaf_bytes(41, &enc.json);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("{\"event\":{\"arguments\":{\"amount\":100,\"note\":"));
        assert!(text.ends_with(",\"index\":41,\"v\":1}"));
        let r = parse_record(41, &bytes).unwrap();
        assert_eq!(r.event, e);
        assert_eq!(enc.columns.decision.as_deref(), Some("allow"));
    }

    #[test]
    fn tampered_records_are_named() {
        let bytes = leaf_bytes(3, &call().encode().unwrap().json);
        assert!(matches!(
            parse_record(4, &bytes),
            Err(RecordError::WrongIndex { .. })
        ));
        let spaced = String::from_utf8(bytes.clone()).unwrap().replace(":", ": ");
        assert_eq!(
            parse_record(3, spaced.as_bytes()),
            Err(RecordError::NotCanonical)
        );
        assert!(matches!(
            parse_record(3, b"not json"),
            Err(RecordError::NotJson(_))
        ));
        let v2 = String::from_utf8(bytes)
            .unwrap()
            .replace("\"v\":1", "\"v\":2");
        assert!(matches!(
            parse_record(3, v2.as_bytes()),
            Err(RecordError::Version(_))
        ));
    }
}
