//! Approval notifications: a webhook fires when approval is requested and when a request is
//! resolved.
//!
//! Each configured webhook gets a JSON body (`format: callgate`) or a Slack incoming-webhook
//! message (`format: slack`), with a link to the approval. With a secret configured, the body
//! is signed: `Callgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, so a
//! receiver can check origin and freshness. Delivery runs in the background and retries with
//! exponential backoff (1 s, 2 s, 4 s, ...); a failing webhook never blocks, changes or loses
//! the approval, which lives in the store whatever happens to its notification.

use std::sync::OnceLock;
use std::time::Duration;

use callgate_core::config::{ApprovalsConfig, WebhookFormat};
use callgate_store::approvals::Held;
use callgate_store::log::now_ms;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::http_client::HttpClient;
use crate::runtime::Runtime;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "callgate-signature";

/// One notification.
#[derive(Debug, Clone)]
pub struct Notice {
    pub body: Value,
    pub text: String,
}

/// The review page's absolute URL; none without `approvals.public_url` (a path alone would
/// lead nowhere from a chat message).
fn link(h: &Held, cfg: &ApprovalsConfig) -> Option<String> {
    let base = cfg.public_url.as_deref()?.trim_end_matches('/');
    Some(format!("{base}/v1/approvals/{}", h.id))
}

/// What a state says of a request that reached it.
fn outcome(state: callgate_approvals::State) -> &'static str {
    use callgate_approvals::State::*;
    match state {
        Pending => "is waiting for review",
        Approved => "was approved",
        Executing => "is running",
        Succeeded => "was approved and ran: it succeeded",
        Failed => "was approved and ran: it failed",
        Denied => "was denied",
        Expired => "expired before it was resolved",
        Cancelled => "was cancelled by its requester",
        Revoked => "was revoked",
        Unknown => "was interrupted while running: whether it ran is unknown",
    }
}

impl Notice {
    fn new(event: &str, h: &Held, cfg: &ApprovalsConfig) -> Notice {
        let a = &h.approval;
        let what = h.summary["function"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                h.payload["group"]
                    .as_str()
                    .map(|g| format!("membership of {g}"))
            })
            .unwrap_or_default();
        let who = match &a.requester.actor {
            Some(agent) => format!("{} (via {agent})", a.requester.subject),
            None => a.requester.subject.clone(),
        };
        let url = link(h, cfg);
        let see = match &url {
            Some(u) => u.clone(),
            None => format!("callgate approvals show {}", h.id),
        };
        let text = match event {
            "approval.requested" => format!(
                "{who} asks for {what} ({}): needs {}. Review: {see}",
                h.kind.as_str(),
                a.requirement
            ),
            _ => format!("{what} requested by {who} {}. {see}", outcome(a.state)),
        };
        Notice {
            body: json!({
                "event": event,
                "id": h.id,
                "kind": h.kind.as_str(),
                "state": a.state.as_str(),
                "function": h.summary["function"],
                "requester": a.requester,
                "requirement": a.requirement.to_string(),
                "reason": h.summary["reason"],
                "digest": h.digest,
                "link": url,
                "time": super::rfc3339(now_ms()),
            }),
            text,
        }
    }

    pub fn requested(h: &Held, cfg: &ApprovalsConfig) -> Notice {
        Notice::new("approval.requested", h, cfg)
    }

    pub fn resolved(h: &Held, cfg: &ApprovalsConfig) -> Notice {
        Notice::new("approval.resolved", h, cfg)
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], unix: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(unix.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix},v1={hex}")
}

/// Sends notices to the configured webhooks.
#[derive(Default)]
pub struct Notifier {
    client: OnceLock<Option<HttpClient>>,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// Delivers `notice` to every webhook of `rt`, in the background.
    pub fn send(&self, rt: &Runtime, notice: Notice) {
        let hooks = &rt.config.approvals.webhooks;
        if hooks.is_empty() {
            return;
        }
        let client = self.client.get_or_init(|| {
            crate::http_client::build_client(None, Duration::from_secs(5))
                .map_err(|e| tracing::error!(error = %e, "cannot build the webhook client"))
                .ok()
        });
        let Some(client) = client.clone() else { return };
        for (i, hook) in hooks.iter().enumerate() {
            let body = match hook.format {
                WebhookFormat::Callgate => notice.body.to_string(),
                WebhookFormat::Slack => json!({"text": notice.text}).to_string(),
            };
            let secret = rt.webhook_secrets.get(i).cloned().flatten();
            let (client, url, attempts) =
                (client.clone(), hook.url.clone(), hook.max_attempts.max(1));
            tokio::spawn(async move {
                deliver(&client, &url, body, secret.as_deref(), attempts).await;
            });
        }
    }
}

async fn deliver(
    client: &HttpClient,
    url: &str,
    body: String,
    secret: Option<&[u8]>,
    attempts: u32,
) {
    // A webhook URL's path often is its credential (Slack, Teams): logs name the host only.
    let Ok(uri) = url.parse::<http::Uri>() else {
        tracing::error!("an approvals webhook URL is not valid");
        return;
    };
    let host = uri.host().unwrap_or("?").to_string();
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=attempts {
        let mut req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "callgate-webhook");
        if let Some(s) = secret {
            req = req.header(
                SIGNATURE_HEADER,
                signature(s, now_ms() / 1000, body.as_bytes()),
            );
        }
        let Ok(req) = req.body(Full::new(bytes::Bytes::from(body.clone()))) else {
            return;
        };
        let why = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(r)) if r.status().is_success() => return,
            Ok(Ok(r)) => format!("status {}", r.status().as_u16()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        if attempt == attempts {
            tracing::error!(%host, attempts, error = %why, "the approval webhook failed; giving up (the approval itself is unaffected)");
            return;
        }
        tracing::warn!(%host, attempt, error = %why, "the approval webhook failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callgate_approvals::{Approval, Requester, Requirement};
    use callgate_store::approvals::Kind;

    #[test]
    fn notices_name_who_what_and_where_to_review() {
        let h = Held {
            id: "c1".into(),
            kind: Kind::Call,
            payload: json!({}),
            digest: "d".repeat(64),
            approval: Approval::new(
                Requirement::parse("2 of finance-approvers").unwrap(),
                Requester {
                    subject: "bob".into(),
                    actor: Some("agent".into()),
                },
                0,
            ),
            summary: json!({"function": "billing.reset_account", "reason": "asked"}),
            outcome: None,
            version: 0,
        };
        let cfg = ApprovalsConfig {
            public_url: Some("https://cg.example.com/".into()),
            ..Default::default()
        };
        let n = Notice::requested(&h, &cfg);
        assert_eq!(n.body["event"], "approval.requested");
        assert_eq!(n.body["link"], "https://cg.example.com/v1/approvals/c1");
        assert_eq!(n.body["requirement"], "2 of finance-approvers");
        assert_eq!(n.body["reason"], "asked");
        assert_eq!(
            n.text,
            "bob (via agent) asks for billing.reset_account (call): needs 2 of finance-approvers. \
             Review: https://cg.example.com/v1/approvals/c1"
        );
        let r = Notice::resolved(&h, &cfg);
        assert_eq!(r.body["event"], "approval.resolved");
        assert!(r.text.contains("is waiting for review"), "{}", r.text);
        let mut done = h.clone();
        done.approval.state = callgate_approvals::State::Succeeded;
        let r = Notice::resolved(&done, &ApprovalsConfig::default());
        assert_eq!(
            r.text,
            "billing.reset_account requested by bob (via agent) was approved and ran: it \
             succeeded. callgate approvals show c1"
        );
        assert!(r.body["link"].is_null(), "no relative link: {}", r.body);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // HMAC-SHA256("key", "1700000000.{}"), computed independently with Python's hmac.
        assert_eq!(
            signature(b"key", 1_700_000_000, b"{}"),
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
