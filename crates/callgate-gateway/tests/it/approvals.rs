//! Approvals with segregation of duties, end to end: the real gateway, a recording upstream,
//! the real approvals store and audit log. Every rule of the issue has a test here or in
//! `callgate-approvals/tests/rules.rs` (the pure state machine).

use crate::common::*;
use callgate_approvals::{Reviewer, Verdict};
use callgate_store::AuditStore;
use callgate_store::approvals::ApprovalStore;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLICY: &str = r#"
@id("billing-reset")
@approval("1 of finance-approvers")
permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"billing.reset_account", resource)
when { context.arguments.account_id like "acct_*" };

@id("refund")
@approval("2 of finance-approvers, 1 of security; reason")
permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"billing.refund", resource);

@id("users-read")
permit (principal in Callgate::Group::"support", action == Callgate::Action::"users.get", resource);

@id("sre-reset")
@approval("1 of finance-approvers")
permit (principal in Callgate::Group::"sre", action == Callgate::Action::"billing.reset_account", resource);

@id("ping")
permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"billing.ping", resource);

@id("wipe")
permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"billing.wipe", resource);
"#;

/// People and their API keys. bob asks; he is also a finance approver (and must still never
/// approve his own call). frank is in two reviewer groups. agent acts for bob.
const PEOPLE: &[(&str, &[&str])] = &[
    ("bob", &["billing-ops", "finance-approvers"]),
    ("carol", &["finance-approvers"]),
    ("dave", &["finance-approvers"]),
    ("frank", &["finance-approvers", "security"]),
    ("grace", &["security"]),
    (
        "admin",
        &["admins", "finance-approvers", "security", "billing-ops"],
    ),
    ("erin", &["auditors"]),
    ("alice", &["support"]),
    ("oncall", &["sre"]),
    ("agent", &["billing-ops"]),
];

struct Setup {
    up: Upstream,
    gw: TestGateway,
    keys: HashMap<&'static str, String>,
    config: String,
}

fn config(up: &str, hashes: &HashMap<&str, String>, extra: &str) -> String {
    let keys: String = PEOPLE
        .iter()
        .map(|(who, groups)| {
            format!(
                "    - {{id: {who}, hash: \"{}\", subject: {who}, groups: [{}]}}\n",
                hashes[who],
                groups.join(", ")
            )
        })
        .collect();
    format!(
        r#"
identity:
  api_keys:
{keys}
upstreams:
  up: {{url: "{up}"}}
policies: [policies]
approvals:
  delegations: {{agent: bob}}
  grants:
    support: {{approval: "1 of finance-approvers", max_duration: 2h}}
    finance-approvers: {{approval: "1 of security", max_duration: 2h}}
    billing-ops: {{approval: "1 of security", max_duration: 2h}}
{extra}
functions:
  - name: billing.reset_account
    upstream: up
    route: POST /billing/reset
    risk: high
    break_glass: [sre]
    arguments: {{type: object, properties: {{account_id: {{type: string}}}}, required: [account_id], additionalProperties: false}}
  - name: billing.refund
    upstream: up
    route: POST /billing/refund
    arguments: {{type: object, properties: {{amount: {{type: integer}}}}, required: [amount], additionalProperties: false}}
  - name: billing.wipe
    upstream: up
    route: POST /billing/wipe
    approval: "security; ttl=1s"
  - name: billing.ping
    upstream: up
    route: POST /billing/ping
    approval: finance-approvers
    idempotent: true
  - name: users.get
    upstream: up
    route: GET /users/{{id}}
    arguments: {{type: object, properties: {{id: {{type: string}}}}, required: [id], additionalProperties: false}}
"#
    )
}

async fn setup_with(extra: &str) -> Setup {
    let up = Upstream::start().await;
    let mut keys = HashMap::new();
    let mut hashes = HashMap::new();
    for (who, _) in PEOPLE {
        let (k, h) = api_key();
        keys.insert(*who, k);
        hashes.insert(*who, h);
    }
    let config = config(&up.url(), &hashes, extra);
    let gw = TestGateway::start(&config, &[("p.cedar", POLICY)]).await;
    Setup {
        up,
        gw,
        keys,
        config,
    }
}

async fn setup() -> Setup {
    setup_with("").await
}

impl Setup {
    fn key(&self, who: &str) -> (&'static str, &str) {
        ("x-api-key", self.keys[who].as_str())
    }

    async fn reset(&self, who: &str, acct: &str, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![self.key(who)];
        h.extend_from_slice(extra);
        post_json(
            &self.gw.url("/billing/reset"),
            &h,
            &format!(r#"{{"account_id":"{acct}"}}"#),
        )
        .await
    }

    async fn review(&self, who: &str, id: &str, verb: &str, body: &str) -> Resp {
        post_json(
            &self.gw.url(&format!("/v1/approvals/{id}/{verb}")),
            &[self.key(who)],
            body,
        )
        .await
    }

    /// `who` withdraws call `id` (`POST /v1/calls/{id}/cancel`).
    async fn cancel(&self, who: &str, id: &str) -> Resp {
        post_json(
            &self.gw.url(&format!("/v1/calls/{id}/cancel")),
            &[self.key(who)],
            "",
        )
        .await
    }

    async fn status(&self, who: &str, id: &str, wait: Option<u64>) -> Resp {
        let w = wait.map(|w| format!("wait={w}"));
        let mut h = vec![self.key(who)];
        if let Some(w) = &w {
            h.push(("prefer", w.as_str()));
        }
        get(&self.gw.url(&format!("/v1/calls/{id}")), &h).await
    }

    /// Waits (through the API) until call `id` is final; returns its status document.
    async fn settled(&self, id: &str) -> Value {
        let r = self.status("erin", id, Some(10)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    fn resets_seen(&self) -> Vec<Value> {
        self.up
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path_and_query == "/billing/reset")
            .map(|s| serde_json::from_slice(&s.body).unwrap())
            .collect()
    }
}

fn held_id(r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/calls/{id}").as_str())
    );
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "the held call is named by its request id"
    );
    id
}

#[tokio::test]
async fn the_demo_flow_segregation_of_duties_and_exactly_once() {
    let s = setup().await;
    let r = s.reset("bob", "acct_1", &[]).await;
    let id = held_id(&r);
    let held = r.json();
    assert_eq!(held["state"], "pending");
    assert_eq!(held["function"], "billing.reset_account");
    assert_eq!(held["approvers"]["finance-approvers"]["needed"], 1);
    assert_eq!(held["digest"].as_str().unwrap().len(), 64);
    assert!(
        s.resets_seen().is_empty(),
        "nothing is forwarded while held"
    );

    // bob is a finance approver, and still cannot approve his own call.
    let p = s.review("bob", &id, "approve", "").await.problem(403);
    assert!(p["detail"].as_str().unwrap().contains("own call"), "{p}");
    // bob's agent cannot either.
    s.review("agent", &id, "approve", "").await.problem(403);
    // erin (an auditor) is no reviewer.
    s.review("erin", &id, "approve", "").await.problem(403);
    // alice may not even see it.
    s.review("alice", &id, "approve", "").await.problem(404);
    s.status("alice", &id, None).await.problem(404);
    assert!(s.resets_seen().is_empty());

    // carol's list has it; bob's does not.
    let list = |who: &'static str| {
        let (url, key) = (s.gw.url("/v1/approvals"), s.keys[who].clone());
        async move { get(&url, &[("x-api-key", &key)]).await.json() }
    };
    let carols = list("carol").await;
    let item = &carols["approvals"][0];
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["requester"]["subject"], "bob");
    assert_eq!(item["arguments"]["account_id"], "acct_1");
    assert_eq!(item["risk"], "high");
    assert_eq!(item["policies"][0], "billing-reset");
    assert!(item["expires_at"].is_string() && item["age_secs"].is_u64());
    assert_eq!(list("bob").await["approvals"].as_array().unwrap().len(), 0);
    assert_eq!(list("erin").await["approvals"].as_array().unwrap().len(), 0);

    // A digest other than the stored request's is refused: approval binds to the payload.
    s.review(
        "carol",
        &id,
        "approve",
        &format!(r#"{{"digest":"{}"}}"#, "0".repeat(64)),
    )
    .await
    .problem(409);
    let r = s
        .review(
            "carol",
            &id,
            "approve",
            &format!(
                r#"{{"comment":"ok","digest":"{}"}}"#,
                held["digest"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["review"]["counted"], true);
    let done = s.settled(&id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(done["response"]["body"]["body"]["account_id"], "acct_1");
    // A second approval changes nothing.
    let r = s.review("dave", &id, "approve", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["review"]["counted"], false);
    assert_eq!(r.json()["state"], "succeeded");
    s.review("carol", &id, "approve", "").await.problem(409);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.resets_seen(),
        vec![serde_json::json!({"account_id": "acct_1"})],
        "executed exactly once"
    );
    // The requester sees the result; so do auditors.
    let mine = s.status("bob", &id, None).await.json();
    assert_eq!(mine["response"]["body"]["body"]["account_id"], "acct_1");
    assert_eq!(mine["reviews"].as_array().unwrap().len(), 2);

    // The audit log tells the whole story.
    let story = get(
        &s.gw.url(&format!("/v1/audit/calls/{id}")),
        &[s.key("erin")],
    )
    .await
    .json();
    let kinds: Vec<&str> = story["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"]["kind"].as_str().unwrap())
        .collect();
    for k in [
        "call",
        "approval.requested",
        "approval.review",
        "call.forward",
        "call.response",
        "approval.state",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let refused_reviews = story["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"]["kind"] == "approval.review" && r["event"]["counted"] == false)
        .count();
    assert!(
        refused_reviews >= 3,
        "refused and late reviews are recorded"
    );
    let forward = story["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"]["kind"] == "call.forward")
        .unwrap();
    assert_eq!(forward["event"]["digest"], held["digest"]);
    // People see the target by upstream name and path, never the upstream's address.
    assert_eq!(held["target"]["path"], "/billing/reset");
    assert!(!r.body.windows(9).any(|w| w == b"127.0.0.1"));

    let m = String::from_utf8(get(&s.gw.url("/metrics"), &[]).await.body.to_vec()).unwrap();
    for want in [
        r#"callgate_approval_transitions_total{kind="call",state="pending"} 1"#,
        r#"callgate_approval_transitions_total{kind="call",state="succeeded"} 1"#,
        r#"decision="held",status="202""#,
    ] {
        assert!(m.contains(want), "{want} missing from metrics:\n{m}");
    }
}

#[tokio::test]
async fn prefer_wait_answers_with_the_real_response() {
    let s = Arc::new(setup().await);
    let s2 = s.clone();
    let waiting =
        tokio::spawn(async move { s2.reset("bob", "acct_7", &[("prefer", "wait=15")]).await });
    // Find it in carol's list and approve it while bob waits.
    let id = loop {
        let v = get(&s.gw.url("/v1/approvals"), &[s.key("carol")])
            .await
            .json();
        if let Some(id) = v["approvals"][0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s.review("carol", &id, "approve", "").await.status, 200);
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body"]["account_id"], "acct_7");
    // Without an answer in time: 202.
    let r = s.reset("bob", "acct_8", &[("prefer", "wait=1")]).await;
    held_id(&r);
    // A denial ends it: the waiting caller gets 403.
    let s3 = s.clone();
    let waiting =
        tokio::spawn(async move { s3.reset("bob", "acct_9", &[("prefer", "wait=15")]).await });
    let id = loop {
        let v = get(&s.gw.url("/v1/approvals"), &[s.key("dave")])
            .await
            .json();
        if let Some(id) = v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["arguments"]["account_id"] == "acct_9")
        {
            break id["id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        s.review("dave", &id, "deny", r#"{"comment":"not today"}"#)
            .await
            .status,
        200
    );
    waiting.await.unwrap().problem(403);
    assert_eq!(s.resets_seen().len(), 1);
}

#[tokio::test]
async fn a_modified_resend_is_a_new_held_call() {
    let s = setup().await;
    let first = held_id(&s.reset("bob", "acct_1", &[]).await);
    let second = held_id(&s.reset("bob", "acct_2", &[]).await);
    assert_ne!(first, second);
    let a = s.status("bob", &first, None).await.json();
    let b = s.status("bob", &second, None).await.json();
    assert_ne!(a["digest"], b["digest"]);
    // Approving the first executes acct_1 — never acct_2.
    s.review("carol", &first, "approve", "").await;
    assert_eq!(s.settled(&first).await["state"], "succeeded");
    assert_eq!(
        s.resets_seen(),
        vec![serde_json::json!({"account_id": "acct_1"})]
    );
    assert_eq!(
        s.status("bob", &second, None).await.json()["state"],
        "pending"
    );
}

#[tokio::test]
async fn racing_approvals_execute_once() {
    let s = Arc::new(setup().await);
    for round in 0..5 {
        let id = held_id(&s.reset("bob", &format!("acct_{round}"), &[]).await);
        let mut tasks = Vec::new();
        for who in ["carol", "dave", "frank", "admin"] {
            let (s, id) = (s.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                s.review(who, &id, "approve", "").await.json()
            }));
        }
        let mut counted = 0;
        for t in tasks {
            counted += (t.await.unwrap()["review"]["counted"] == true) as u32;
        }
        assert_eq!(counted, 1);
        assert_eq!(s.settled(&id).await["state"], "succeeded");
    }
    // An approval racing a cancellation. The requester may withdraw a call that is pending or
    // approved but not yet executing, so both may be accepted (the approval lands first, the
    // cancellation before the execution claims the call); what can never happen is a call
    // that is both cancelled and executed, or neither.
    let id = held_id(&s.reset("bob", "acct_race", &[]).await);
    let cancel_url = s.gw.url(&format!("/v1/calls/{id}/cancel"));
    let bob = [s.key("bob")];
    let (a, b) = tokio::join!(
        s.review("carol", &id, "approve", ""),
        post_json(&cancel_url, &bob, "")
    );
    let state = s.settled(&id).await["state"].clone();
    let approved = a.status == 200 && a.json()["review"]["counted"] == true;
    let cancelled = b.status == 200;
    assert!(
        approved || cancelled,
        "one of approve ({}) and cancel ({}) is accepted",
        a.status,
        b.status
    );
    if !approved {
        // The approval came too late: recorded, not counted.
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["review"]["counted"], false);
    }
    if !cancelled {
        assert_eq!(b.status, 409, "the cancellation came too late");
    }
    assert_eq!(state, if cancelled { "cancelled" } else { "succeeded" });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.resets_seen().len(),
        5 + !cancelled as usize,
        "executed exactly when not cancelled"
    );
}

#[tokio::test]
async fn n_of_m_counts_people_not_groups_and_needs_a_reason() {
    let s = setup().await;
    let refund = |extra: Vec<(&'static str, String)>, body: &'static str| {
        let mut h: Vec<(&str, String)> = vec![("x-api-key", s.keys["bob"].clone())];
        h.extend(extra);
        let url = s.gw.url("/billing/refund");
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_json(&url, &h, body).await
        }
    };
    let p = refund(vec![], r#"{"amount":5}"#).await.problem(400);
    assert!(p["detail"].as_str().unwrap().contains("reason"));
    refund(
        vec![("callgate-reason", "x".repeat(1001))],
        r#"{"amount":5}"#,
    )
    .await
    .problem(400);
    refund(vec![("callgate-reason", "   ".into())], r#"{"amount":5}"#)
        .await
        .problem(400);
    let id = held_id(
        &refund(
            vec![("callgate-reason", "customer overcharged".into())],
            r#"{"amount":5}"#,
        )
        .await,
    );
    assert_eq!(
        s.status("bob", &id, None).await.json()["reason"],
        "customer overcharged"
    );
    // frank is in both groups and counts once; with carol that is two finance approvals only
    // if frank counts for finance, and security still needs someone.
    s.review("frank", &id, "approve", r#"{"group":"finance-approvers"}"#)
        .await;
    s.review("carol", &id, "approve", "").await;
    assert_eq!(s.status("bob", &id, None).await.json()["state"], "pending");
    s.review("frank", &id, "approve", r#"{"group":"security"}"#)
        .await
        .problem(409);
    s.review("grace", &id, "approve", "").await;
    assert_eq!(s.settled(&id).await["state"], "succeeded");
    // The invoke API takes the reason in its body.
    let r = post_json(
        &s.gw.url("/v1/functions/billing.refund/invoke"),
        &[s.key("bob")],
        r#"{"arguments":{"amount":3},"reason":"duplicate charge"}"#,
    )
    .await;
    let id = held_id(&r);
    assert_eq!(r.json()["reason"], "duplicate charge");
    // A denial by any eligible reviewer ends it.
    s.review("grace", &id, "deny", "").await;
    assert_eq!(s.settled(&id).await["state"], "denied");
    s.review("carol", &id, "approve", "").await;
    assert_eq!(s.status("bob", &id, None).await.json()["state"], "denied");
}

#[tokio::test]
async fn expiry_cancellation_and_revocation() {
    let s = setup().await;
    // billing.wipe's default requirement expires after one second.
    let r = post_json(&s.gw.url("/billing/wipe"), &[s.key("bob")], "{}").await;
    let id = held_id(&r);
    let done = s.settled(&id).await;
    assert_eq!(done["state"], "expired");
    let late = s.review("grace", &id, "approve", "").await.json();
    assert_eq!(late["review"]["counted"], false);
    assert_eq!(late["state"], "expired");

    // Only the requester cancels; others learn nothing.
    let id = held_id(&s.reset("bob", "acct_c", &[]).await);
    s.cancel("carol", &id).await.problem(404);
    let r = s.cancel("bob", &id).await;
    assert_eq!(r.json()["state"], "cancelled");
    s.review("carol", &id, "approve", "").await;
    assert_eq!(s.settled(&id).await["state"], "cancelled");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.resets_seen().is_empty());
    // Revoking needs an approved, not yet executed call: here it already ran.
    let id = held_id(&s.reset("bob", "acct_r", &[]).await);
    s.review("carol", &id, "approve", "").await;
    s.settled(&id).await;
    s.review("dave", &id, "revoke", "").await.problem(409);
}

#[tokio::test]
async fn a_delegated_caller_counts_as_the_person() {
    let s = setup().await;
    // `agent` acts for bob (approvals.delegations): bob cannot approve what his agent asked.
    let id = held_id(&s.reset("agent", "acct_1", &[]).await);
    let v = s.status("agent", &id, None).await.json();
    assert_eq!(v["requester"]["subject"], "bob");
    assert_eq!(v["requester"]["actor"], "agent");
    s.review("bob", &id, "approve", "").await.problem(403);
    // bob sees and may cancel his agent's call.
    assert_eq!(s.status("bob", &id, None).await.status, 200);
    let r = s.cancel("bob", &id).await;
    assert_eq!(r.json()["state"], "cancelled");
}

#[tokio::test]
async fn held_calls_survive_restarts_and_run_once() {
    let mut s = setup().await;
    let pending = held_id(&s.reset("bob", "acct_p", &[]).await);
    let approved = held_id(&s.reset("bob", "acct_a", &[]).await);
    let executing = held_id(&s.reset("bob", "acct_x", &[]).await);
    let ping = held_id(&post_json(&s.gw.url("/billing/ping"), &[s.key("bob")], "{}").await);
    s.gw.shutdown();
    s.gw.join.take().unwrap().await.unwrap();
    let dir = std::mem::replace(&mut s.gw.dir, tempfile::tempdir().unwrap());

    // While Callgate is down: one call gets approved, two are left as if a crash interrupted
    // their execution (the real store, the real state machine).
    let store = ApprovalStore::open(&dir.path().join("callgate-data/approvals.db"))
        .await
        .unwrap();
    let carol = Reviewer {
        subject: "carol".into(),
        groups: vec!["finance-approvers".into()],
        delegated: false,
    };
    let now = callgate_store::log::now_ms();
    for id in [&approved, &executing, &ping] {
        store
            .update(id, |h| {
                h.approval.review(&carol, Verdict::Approve, None, None, now)
            })
            .await
            .unwrap()
            .unwrap();
    }
    for id in [&executing, &ping] {
        store
            .update(id, |h| h.approval.begin_execution(now))
            .await
            .unwrap()
            .unwrap();
    }
    store.close().await;

    let restart = |dir: tempfile::TempDir| {
        let config = s.config.clone();
        async move { TestGateway::start_in(dir, &config, &[("p.cedar", POLICY)]).await }
    };
    let mut gw = restart(dir).await;
    s.gw = gw;
    assert_eq!(s.settled(&approved).await["state"], "succeeded");
    let x = s.status("bob", &executing, None).await.json();
    assert_eq!(
        x["state"], "unknown",
        "an interrupted execution is never repeated"
    );
    // ...unless the function is idempotent: then it runs again, once.
    assert_eq!(s.settled(&ping).await["state"], "succeeded");
    // Reviewers are shown the unknown call.
    let list = get(&s.gw.url("/v1/approvals"), &[s.key("carol")])
        .await
        .json();
    assert!(
        list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == executing.as_str() && a["state"] == "unknown"),
        "{list}"
    );
    assert_eq!(
        s.status("bob", &pending, None).await.json()["state"],
        "pending"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.resets_seen(),
        vec![serde_json::json!({"account_id": "acct_a"})]
    );

    // Approve the pending one after the restart; restart again: nothing runs twice.
    s.review("carol", &pending, "approve", "").await;
    assert_eq!(s.settled(&pending).await["state"], "succeeded");
    s.gw.shutdown();
    s.gw.join.take().unwrap().await.unwrap();
    let dir = std::mem::replace(&mut s.gw.dir, tempfile::tempdir().unwrap());
    gw = restart(dir).await;
    s.gw = gw;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.resets_seen().len(), 2);
    let pings =
        s.up.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.path_and_query == "/billing/ping")
            .count();
    assert_eq!(
        pings, 1,
        "the idempotent call ran again once, not at every start"
    );
}

#[tokio::test]
async fn grants_are_seen_by_policy_only_while_active_and_never_approve() {
    let s = setup().await;
    // bob cannot read users until he is granted support.
    let read = |who: &'static str| {
        let (url, key) = (s.gw.url("/users/u_1"), s.keys[who].clone());
        async move { get(&url, &[("x-api-key", &key)]).await }
    };
    read("bob").await.problem(403);
    let catalog = || {
        let (url, key) = (s.gw.url("/v1/functions"), s.keys["bob"].clone());
        async move {
            let v = get(&url, &[("x-api-key", &key)]).await.json();
            v["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(!catalog().await.contains(&"users.get".to_string()));
    let ask = |body: &'static str| {
        let (url, key) = (s.gw.url("/v1/grants"), s.keys["bob"].clone());
        async move { post_json(&url, &[("x-api-key", &key)], body).await }
    };
    ask(r#"{"group":"admins","duration":"1h","reason":"x"}"#)
        .await
        .problem(400);
    ask(r#"{"group":"support","duration":"3h","reason":"x"}"#)
        .await
        .problem(400);
    ask(r#"{"group":"support","duration":"1h"}"#)
        .await
        .problem(400);
    let r = ask(r#"{"group":"support","duration":"1h","reason":"ticket 42"}"#).await;
    let id = held_id(&r);
    // bob is a finance approver but cannot approve his own grant.
    s.review("bob", &id, "approve", "").await.problem(403);
    s.review("carol", &id, "approve", "").await;
    let r = read("bob").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The catalog offers what the grant allows, as policy decides calls.
    assert!(catalog().await.contains(&"users.get".to_string()));
    let mine = get(&s.gw.url("/v1/grants"), &[s.key("bob")]).await.json();
    assert_eq!(mine["grants"][0]["active"], true);
    // A reviewer revokes it: the very next request is denied.
    let r = post_json(
        &s.gw.url(&format!("/v1/grants/{id}/revoke")),
        &[s.key("dave")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    read("bob").await.problem(403);

    // A grant limited to some functions, and one that lapses by itself.
    let r =
        ask(r#"{"group":"support","functions":["billing.refund"],"duration":"1h","reason":"x"}"#)
            .await;
    let id = held_id(&r);
    s.review("carol", &id, "approve", "").await;
    read("bob").await.problem(403);
    let r = ask(r#"{"group":"support","duration":"2s","reason":"quick look"}"#).await;
    let id = held_id(&r);
    s.review("carol", &id, "approve", "").await;
    assert_eq!(read("bob").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    read("bob").await.problem(403);
    let mine = get(&s.gw.url("/v1/grants"), &[s.key("bob")]).await.json();
    let lapsed = mine["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap();
    assert_eq!(lapsed["active"], false);
    assert_eq!(lapsed["state"], "approved");

    // A grant never lets anyone approve: alice granted finance-approvers still cannot review.
    let r = post_json(
        &s.gw.url("/v1/grants"),
        &[s.key("alice")],
        r#"{"group":"finance-approvers","duration":"1h","reason":"cover for carol"}"#,
    )
    .await;
    let gid = held_id(&r);
    s.review("grace", &gid, "approve", "").await;
    let call = held_id(&s.reset("bob", "acct_g", &[]).await);
    s.review("alice", &call, "approve", "").await.problem(404);
    assert_eq!(
        s.status("bob", &call, None).await.json()["state"],
        "pending"
    );
}

#[tokio::test]
async fn break_glass_proceeds_flagged_and_leaves_an_item_to_acknowledge() {
    let s = setup().await;
    // Only listed groups may break glass.
    s.reset("bob", "acct_1", &[("callgate-break-glass", "prod down")])
        .await
        .problem(403);
    // Without the header, oncall's call is held like anyone's.
    held_id(&s.reset("oncall", "acct_1", &[]).await);
    // With it, the call runs now, flagged.
    let r = s
        .reset(
            "oncall",
            "acct_2",
            &[("callgate-break-glass", "prod down, INC-7")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(
        s.resets_seen(),
        vec![serde_json::json!({"account_id": "acct_2"})]
    );
    // Reviewers find an item to acknowledge.
    let list = get(&s.gw.url("/v1/approvals"), &[s.key("carol")])
        .await
        .json();
    let item = list["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .expect("the break-glass call awaits acknowledgement")
        .clone();
    assert_eq!(item["kind"], "break_glass");
    assert_eq!(item["reason"], "prod down, INC-7");
    // The person who broke glass cannot withdraw the item from the reviewers' queue.
    s.cancel("oncall", &id).await.problem(409);
    let r = s
        .review("carol", &id, "approve", r#"{"comment":"justified"}"#)
        .await;
    assert_eq!(r.json()["state"], "approved");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.resets_seen().len(), 1, "acknowledging runs nothing");
    // The audit log flags it.
    let story = get(
        &s.gw.url(&format!("/v1/audit/calls/{id}")),
        &[s.key("erin")],
    )
    .await
    .json();
    let flagged =
        story["records"].as_array().unwrap().iter().any(|r| {
            r["event"]["kind"] == "approval.requested" && r["event"]["item"] == "break_glass"
        });
    assert!(flagged, "{story}");
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_never_block() {
    // A receiver that fails the first delivery, then records.
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let fails = Arc::new(Mutex::new(1));
    let (g, f) = (got.clone(), fails.clone());
    let slack: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sl = slack.clone();
    let app = axum::Router::new()
        .route(
            "/slack",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sl = sl.clone();
                async move {
                    sl.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    http::StatusCode::OK
                }
            }),
        )
        .route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
                let (g, f) = (g.clone(), f.clone());
                async move {
                    {
                        let mut n = f.lock().unwrap();
                        if *n > 0 {
                            *n -= 1;
                            return http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    let sig = headers
                        .get("callgate-signature")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string();
                    g.lock().unwrap().push((
                        sig + "|" + std::str::from_utf8(&body).unwrap(),
                        serde_json::from_slice(&body).unwrap(),
                    ));
                    http::StatusCode::OK
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    let slack_hook = format!("http://{}/slack", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), "s3cret\n").unwrap();
    let up = Upstream::start().await;
    let mut keys = HashMap::new();
    let mut hashes = HashMap::new();
    for (who, _) in PEOPLE {
        let (k, h) = api_key();
        keys.insert(*who, k);
        hashes.insert(*who, h);
    }
    let extra = format!(
        "  public_url: https://callgate.example.com\n  webhooks:\n    - {{url: \"{hook}\", secret_file: hook.secret}}\n    - {{url: \"http://127.0.0.1:1/down\", format: slack, max_attempts: 2}}\n    - {{url: \"{slack_hook}\", format: slack}}\n"
    );
    let config = config(&up.url(), &hashes, &extra);
    let gw = TestGateway::start_in(dir, &config, &[("p.cedar", POLICY)]).await;
    let s = Setup {
        up,
        gw,
        keys,
        config,
    };
    let id = held_id(&s.reset("bob", "acct_1", &[]).await);
    s.review("carol", &id, "approve", "").await;
    assert_eq!(
        s.settled(&id).await["state"],
        "succeeded",
        "a failing webhook blocks nothing"
    );
    // The first delivery failed and was retried after a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while got.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The Slack-format hook got incoming-webhook messages: one `text` field, with the link.
    let slack = slack.lock().unwrap().clone();
    assert!(slack.len() >= 2, "{slack:?}");
    for m in &slack {
        let text = m["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("https://callgate.example.com/v1/approvals/{id}")),
            "{text}"
        );
        assert_eq!(m.as_object().unwrap().len(), 1, "{m}");
    }
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .contains("bob asks for billing.reset_account")
    );
    let got = got.lock().unwrap().clone();
    let events: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"approval.requested"), "{events:?}");
    assert!(events.contains(&"approval.resolved"), "{events:?}");
    for (sig_and_body, v) in &got {
        assert_eq!(
            v["link"],
            format!("https://callgate.example.com/v1/approvals/{id}")
        );
        let (sig, body) = sig_and_body.split_once('|').unwrap();
        let t: u64 = sig
            .strip_prefix("t=")
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            sig,
            callgate_gateway::approvals::webhook::signature(b"s3cret", t, body.as_bytes())
        );
    }
}

#[tokio::test]
async fn a_stored_request_edited_after_it_was_held_is_never_executed() {
    let s = setup().await;
    let id = held_id(&s.reset("bob", "acct_1", &[]).await);
    // Someone with write access to the database swaps the arguments.
    let db = s.gw.path("callgate-data/approvals.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let n =
        sqlx::query("UPDATE held SET payload = replace(payload, 'acct_1', 'acct_9') WHERE id = ?")
            .bind(&id)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
    assert_eq!(n, 1);
    pool.close().await;
    s.review("carol", &id, "approve", "").await;
    let done = s.settled(&id).await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["response"]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("digest"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.resets_seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn execution_rechecks_policy_grants_and_the_requirement() {
    let s = setup().await;
    // alice may reset only through a grant of billing-ops. Her reset is held; she gives the
    // grant back before it is approved: the stored call does not run on a grant that is gone.
    let r = post_json(
        &s.gw.url("/v1/grants"),
        &[s.key("alice")],
        r#"{"group":"billing-ops","duration":"1h","reason":"one reset"}"#,
    )
    .await;
    let gid = held_id(&r);
    s.review("grace", &gid, "approve", "").await;
    let id = held_id(&s.reset("alice", "acct_5", &[]).await);
    let r = post_json(
        &s.gw.url(&format!("/v1/grants/{gid}/revoke")),
        &[s.key("alice")],
        "",
    )
    .await;
    assert_eq!(r.json()["state"], "cancelled");
    s.review("carol", &id, "approve", "").await;
    let done = s.settled(&id).await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["response"]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("policy no longer allows"),
        "{done}"
    );

    // The requirement grows while a call waits: the approvals it has no longer suffice.
    let id = held_id(&s.reset("bob", "acct_6", &[]).await);
    s.gw.edit("policies/p.cedar", &POLICY.replace(
        "@approval(\"1 of finance-approvers\")\npermit (principal in Callgate::Group::\"billing-ops\"",
        "@approval(\"2 of finance-approvers\")\npermit (principal in Callgate::Group::\"billing-ops\"",
    ));
    s.review("carol", &id, "approve", "").await;
    let done = s.settled(&id).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["response"]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("2 of finance-approvers"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.resets_seen().is_empty(), "nothing reached the upstream");
}

/// An approved call whose `call.forward` record cannot be written is not lost: nothing is
/// sent, it stays approved, and it runs once the audit log is writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_call_waits_for_the_audit_log_and_then_runs() {
    let s = setup_with("audit: {busy_timeout_ms: 200}").await;
    let id = held_id(&s.reset("bob", "acct_7", &[]).await);
    // Lock the audit log, then approve: the review stands even though its own record cannot
    // be written (503), and the execution cannot record its forward.
    let mut other = lock_database(&s.gw.path("callgate-data/audit.db")).await;
    let r = s.review("carol", &id, "approve", "").await;
    assert!(r.status == 503 || r.status == 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = s.status("bob", &id, None).await.json();
    assert_eq!(st["state"], "approved", "{st}");
    // An auditor's read is recorded before it is answered: refused while nothing can be.
    s.status("erin", &id, None).await.problem(503);
    assert!(
        s.resets_seen().is_empty(),
        "nothing sent without its record"
    );
    // Writable again: the sweeper runs it, once.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    drop(other);
    let done = s.settled(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(s.resets_seen().len(), 1);
    // The auditor's read of bob's call is in the log; bob's own reads are not audit reads.
    let reads = get(
        &s.gw
            .url("/v1/audit/records?kind=admin.audit_read&limit=100"),
        &[s.key("erin")],
    )
    .await
    .json();
    let reads = reads["records"].as_array().unwrap();
    assert!(
        reads.iter().any(|r| r["event"]["subject"] == "erin"
            && r["event"]["resource"] == format!("/v1/calls/{id}")
            && r["event"].get("refused").is_none()),
        "{reads:#?}"
    );
    assert!(reads.iter().all(|r| r["event"]["subject"] != "bob"));
}

#[tokio::test]
async fn shutdown_waits_for_an_approved_call_being_executed() {
    let up = Upstream::start().await;
    let mut keys = HashMap::new();
    let mut hashes = HashMap::new();
    for (who, _) in PEOPLE {
        let (k, h) = api_key();
        keys.insert(*who, k);
        hashes.insert(*who, h);
    }
    // The upstream answers `/slow/...` after 3 s; the grace period is 5 s.
    let cfg = config(&up.url(), &hashes, "").replace(
        "functions:\n",
        "functions:\n  - {name: billing.slow, upstream: up, route: POST /slow/reset, approval: finance-approvers}\n",
    );
    let mut gw = TestGateway::start(
        &cfg,
        &[
            ("p.cedar", POLICY),
            (
                "q.cedar",
                r#"permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"billing.slow", resource);"#,
            ),
        ],
    )
    .await;
    let r = post_json(&gw.url("/slow/reset"), &[("x-api-key", &keys["bob"])], "{}").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = post_json(
        &gw.url(&format!("/v1/approvals/{id}/approve")),
        &[("x-api-key", &keys["carol"])],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The call is on its way upstream, with no connection of its own to drain.
    for _ in 0..100 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.count(), 1);
    gw.shutdown();
    gw.stopped().await;
    // Its answer was recorded before the log was closed: response record, then stop.
    let store = callgate_store::SqliteStore::open_read_only(&gw.path("callgate-data/audit.db"))
        .await
        .unwrap();
    let records = callgate_store::ops::call_records(&store, &id)
        .await
        .unwrap();
    let response = records
        .iter()
        .find(|r| r.kind == "call.response")
        .unwrap_or_else(|| panic!("no response record: {records:?}"));
    let stop = store
        .last_of_kind("admin.stop")
        .await
        .unwrap()
        .expect("a stop record");
    assert!(
        response.index < stop,
        "{} after the stop at {stop}",
        response.index
    );
}

/// A held proxied call keeps only allowlisted headers, and when it runs they pass the
/// function's allowlist as it is then: a name dropped from `forward_headers` meanwhile
/// is not sent.
#[tokio::test]
async fn an_approved_call_forwards_only_headers_its_function_allows_when_it_runs() {
    let s = setup().await;
    let with_tenant = s.config.replace(
        "    risk: high\n    break_glass: [sre]\n",
        "    risk: high\n    break_glass: [sre]\n    forward_headers: [X-Tenant]\n",
    );
    assert_ne!(with_tenant, s.config);
    s.gw.edit("callgate.yaml", &with_tenant);
    let r = s
        .reset(
            "bob",
            "acct_1",
            &[
                ("x-tenant", "t1"),
                ("x-http-method-override", "DELETE"),
                ("x-original-url", "/billing/wipe"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        )
        .await;
    let id = held_id(&r);
    s.gw.edit("callgate.yaml", &s.config);
    let r = s.review("carol", &id, "approve", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.settled(&id).await["state"], "succeeded");
    let seen = s.up.last();
    assert_eq!(seen.path_and_query, "/billing/reset");
    assert!(seen.headers.get("traceparent").is_some());
    for h in ["x-tenant", "x-http-method-override", "x-original-url"] {
        assert!(seen.headers.get(h).is_none(), "{h} was forwarded");
    }
}
