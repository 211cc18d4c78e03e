//! The audit log through the real gateway and the real SQLite store: what a call leaves
//! behind, that secrets do not, that a call whose record cannot be written is refused and never
//! forwarded, and that `prove` output verifies with an independent RFC 6962 verifier.

use crate::common::*;
use crate::gateway::{POLICY, config};
use callgate_store::{AuditStore, Filter, ops};
use serde_json::Value;

async fn records(gw: &TestGateway, request_id: &str) -> Vec<Value> {
    let store = gw.gateway.shared.audit.log().store();
    ops::call_records(store, request_id)
        .await
        .unwrap()
        .iter()
        .map(ops::record_json)
        .collect()
}

/// A gateway with the shared test config plus `extra` config lines; returns the upstream, the
/// gateway and the key of a caller in the ops group (allowed everything).
async fn start(extra: &str) -> (Upstream, TestGateway, String) {
    let up = Upstream::start().await;
    let (ops_key, ops_hash) = api_key();
    let (_, viewer_hash) = api_key();
    let cfg = config(&up.url(), &ops_hash, &viewer_hash) + extra;
    let gw = TestGateway::start(&cfg, &[("p.cedar", POLICY)]).await;
    (up, gw, ops_key)
}

/// A gateway with the shared test config, edited by `edit`, and an API key for ada in the
/// auditors group; returns the upstream, the gateway, the ops caller's key and ada's key.
async fn start_with_auditor(
    edit: impl FnOnce(String) -> String,
) -> (Upstream, TestGateway, String, String) {
    let up = Upstream::start().await;
    let (ops_key, ops_hash) = api_key();
    let (_, viewer_hash) = api_key();
    let (auditor_key, auditor_hash) = api_key();
    let cfg = edit(config(&up.url(), &ops_hash, &viewer_hash)).replace(
        "    - {id: viewer,",
        &format!("    - {{id: audit, hash: \"{auditor_hash}\", subject: ada, groups: [auditors]}}\n    - {{id: viewer,"),
    );
    let gw = TestGateway::start(&cfg, &[("p.cedar", POLICY)]).await;
    (up, gw, ops_key, auditor_key)
}

/// Waits for queued (not awaited) records such as responses to reach the store.
async fn settle(gw: &TestGateway) {
    gw.gateway.shared.audit.checkpoint().await.unwrap();
}

#[tokio::test]
async fn an_allowed_call_is_recorded_with_decision_forward_and_response() {
    let (up, gw, ops_key) = start("").await;
    let r = get(
        &gw.url("/items/a1"),
        &[("x-api-key", &ops_key), ("callgate-session", "s-7")],
    )
    .await;
    assert_eq!(r.status, 200);
    // The session header is Callgate's own: the upstream never sees it.
    assert!(up.last().headers.get("callgate-session").is_none());
    let id = r.header("x-request-id").unwrap().to_string();
    settle(&gw).await;
    let recs = records(&gw, &id).await;
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let call = &recs[0]["event"];
    assert_eq!(call["kind"], "call");
    assert_eq!(call["caller"]["subject"], "olivia");
    assert_eq!(call["caller"]["key_id"], "ops");
    assert_eq!(call["session"], "s-7");
    assert_eq!(call["arguments"]["id"], "a1");
    assert_eq!(call["decision"]["effect"], "allow");
    assert_eq!(call["decision"]["policies"][0], "ops-all");
    assert_eq!(call["forward"]["upstream"], "up");
    let resp = &recs[1]["event"];
    assert_eq!(resp["kind"], "call.response");
    assert_eq!(resp["status"], 200);
    assert_eq!(resp["body"]["path"], "/items/a1");
    assert!(resp["body_sha256"].as_str().unwrap().len() == 64);
}

#[tokio::test]
async fn denials_and_refusals_are_recorded_and_secrets_are_not() {
    let up = Upstream::start().await;
    let (ops_key, ops_hash) = api_key();
    let (viewer_key, viewer_hash) = api_key();
    let gw = TestGateway::start(
        &config(&up.url(), &ops_hash, &viewer_hash),
        &[("p.cedar", POLICY)],
    )
    .await;
    let denied = get(&gw.url("/items/secret"), &[("x-api-key", &viewer_key)]).await;
    assert_eq!(denied.status, 403);
    let bad = get(&gw.url("/items/a1"), &[("x-api-key", "cgk_not-a-real-key")]).await;
    assert_eq!(bad.status, 401);
    let ok = get(&gw.url("/items/a2"), &[("x-api-key", &ops_key)]).await;
    assert_eq!(ok.status, 200);
    settle(&gw).await;
    let d = records(&gw, denied.header("x-request-id").unwrap()).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["event"]["decision"]["effect"], "deny");
    assert!(d[0]["event"].get("forward").is_none());
    let b = records(&gw, bad.header("x-request-id").unwrap()).await;
    assert_eq!(b[0]["event"]["kind"], "call.refused");
    assert_eq!(b[0]["event"]["status"], 401);
    assert_eq!(up.count(), 1, "only the allowed call was forwarded");
    // No caller credential appears anywhere in the log.
    let store = gw.gateway.shared.audit.log().store();
    let all = store.rows(0, 10_000).await.unwrap();
    for r in &all {
        let body = String::from_utf8_lossy(r.body.as_deref().unwrap_or_default()).into_owned();
        for secret in [ops_key.as_str(), viewer_key.as_str(), "cgk_not-a-real-key"] {
            assert!(
                !body.contains(secret),
                "record {} holds a credential",
                r.index
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_store_refuses_calls_and_forwards_nothing() {
    let (up, gw, ops_key) = start("audit: {busy_timeout_ms: 200}\n").await;
    let mut other = lock_database(&gw.path("callgate-data/audit.db")).await;
    let r = get(&gw.url("/items/a1"), &[("x-api-key", &ops_key)]).await;
    let p = r.problem(503);
    assert!(p["detail"].as_str().unwrap().contains("audit log"), "{p}");
    let r = post_json(
        &gw.url("/v1/functions/items.get/invoke"),
        &[("x-api-key", &ops_key)],
        r#"{"arguments":{"id":"a1"}}"#,
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        up.count(),
        0,
        "nothing reached the upstream without its record"
    );
    let ready = get(&gw.url("/readyz"), &[]).await;
    assert_eq!(ready.status, 503);
    let metrics = String::from_utf8_lossy(&get(&gw.url("/metrics"), &[]).await.body).into_owned();
    assert!(metrics.contains("callgate_audit_writable 0"), "{metrics}");
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("callgate_audit_failed_commits_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(failed >= 2, "{metrics}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let r = get(&gw.url("/items/a1"), &[("x-api-key", &ops_key)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    settle(&gw).await;
    let store = gw.gateway.shared.audit.log().store();
    let report = ops::verify(store, "callgate.local/audit", vec![], None)
        .await
        .unwrap()
        .unwrap();
    assert!(report.tree_size >= 4);
    // The refusals themselves were kept and written once the store came back.
    let refused = store
        .search(&Filter {
            decision: Some("refused".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(refused.len(), 2);
}

#[tokio::test]
async fn prove_output_verifies_with_an_independent_rfc6962_verifier() {
    let (_up, gw, ops_key) = start("").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = get(&gw.url(&format!("/items/a{i}")), &[("x-api-key", &ops_key)]).await;
        ids.push(r.header("x-request-id").unwrap().to_string());
    }
    settle(&gw).await;
    let store = gw.gateway.shared.audit.log().store();
    for id in [&ids[0], &ids[3], &ids[6]] {
        let proof = ops::prove(store, id).await.unwrap();
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("tests/audit/rfc6962_verify.py"))
            .arg(proof.to_string())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The same proof with a changed record does not verify.
        let mut forged = proof.clone();
        forged["record"]["event"]["caller"]["subject"] = "mallory".into();
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("tests/audit/rfc6962_verify.py"))
            .arg(forged.to_string())
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

#[tokio::test]
async fn audit_pages_of_large_records_end_early_and_lose_nothing() {
    let (_up, gw, ops_key, auditor_key) =
        start_with_auditor(|cfg| cfg.replace("max_body_bytes: 2048", "max_body_bytes: 2000000"))
            .await;
    // Six calls of ~1.5 MB each: their `call` records alone are ~9 MB, over one page's bytes.
    let blob = "x".repeat(1_500_000);
    for i in 0..6 {
        let r = post_json(
            &gw.url("/echo"),
            &[("x-api-key", &ops_key)],
            &format!(r#"{{"n": {i}, "blob": "{blob}"}}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    settle(&gw).await;
    let auditor = [("x-api-key", auditor_key.as_str())];
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut after = String::new();
    loop {
        let page = get(
            &gw.url(&format!("/v1/audit/records?kind=call&limit=1000{after}")),
            &auditor,
        )
        .await;
        assert_eq!(page.status, 200);
        assert!(
            page.body.len() < 12_000_000,
            "a page of {} bytes",
            page.body.len()
        );
        let page = page.json();
        for r in page["records"].as_array().unwrap() {
            assert_eq!(
                r["event"]["arguments"]["blob"].as_str().unwrap().len(),
                1_500_000
            );
            seen.push(r["event"]["arguments"]["n"].as_u64().unwrap());
        }
        pages += 1;
        match page["next"].as_u64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert!(pages >= 2, "the records did not fit one page");
    assert_eq!(seen, [0, 1, 2, 3, 4, 5], "every record once, in order");
}

#[tokio::test]
async fn the_audit_api_is_for_auditors_only_and_records_every_read() {
    let (_up, gw, ops_key, auditor_key) = start_with_auditor(|cfg| cfg).await;
    let r = get(
        &gw.url("/items/a1"),
        &[("x-api-key", &ops_key), ("callgate-session", "sess-1")],
    )
    .await;
    let call_id = r.header("x-request-id").unwrap().to_string();
    let path = format!("/v1/audit/calls/{call_id}");
    // No credential, and a caller outside the auditors group.
    assert_eq!(get(&gw.url(&path), &[]).await.status, 401);
    assert_eq!(
        get(&gw.url(&path), &[("x-api-key", &ops_key)]).await.status,
        403
    );
    let auditor = [("x-api-key", auditor_key.as_str())];
    let story = get(&gw.url(&path), &auditor).await;
    assert_eq!(story.status, 200);
    assert_eq!(
        story.json()["records"][0]["event"]["caller"]["subject"],
        "olivia"
    );
    let proof = get(&gw.url(&format!("{path}/proof")), &auditor).await;
    assert_eq!(proof.status, 200, "{:?}", proof.body);
    assert_eq!(
        proof.json()["record"]["event"]["request_id"],
        call_id.as_str()
    );
    let session = get(&gw.url("/v1/audit/sessions/sess-1"), &auditor).await;
    assert_eq!(session.json()["records"].as_array().unwrap().len(), 2);
    assert!(session.json()["next"].is_null());
    // A page at a time: a full page names where the next one starts.
    let first = get(&gw.url("/v1/audit/sessions/sess-1?limit=1"), &auditor)
        .await
        .json();
    assert_eq!(first["records"].as_array().unwrap().len(), 1);
    let next = first["next"].as_u64().expect("a full page names the next");
    let second = get(
        &gw.url(&format!("/v1/audit/sessions/sess-1?limit=1&after={next}")),
        &auditor,
    )
    .await
    .json();
    assert_eq!(second["records"].as_array().unwrap().len(), 1);
    assert_ne!(second["records"][0]["index"], first["records"][0]["index"]);
    let found = get(
        &gw.url("/v1/audit/records?caller=olivia&decision=allow"),
        &auditor,
    )
    .await;
    assert_eq!(found.json()["records"].as_array().unwrap().len(), 1);
    let bad = get(&gw.url("/v1/audit/records?colour=red"), &auditor).await;
    bad.problem(400);
    let missing = get(&gw.url("/v1/audit/calls/nope"), &auditor).await;
    missing.problem(404);
    let verify = get(&gw.url("/v1/audit/verify"), &auditor).await;
    assert_eq!(verify.json()["ok"], true, "{:?}", verify.body);
    let key = get(&gw.url("/v1/audit/key"), &auditor).await;
    assert!(String::from_utf8_lossy(&key.body).starts_with("callgate.local/audit+"));
    // Every read and every refused attempt is in the log: first the unauthenticated one, then
    // olivia's, then ada's eleven reads.
    let reads = get(
        &gw.url("/v1/audit/records?kind=admin.audit_read&limit=100"),
        &auditor,
    )
    .await;
    let reads = reads.json()["records"].as_array().unwrap().clone();
    assert_eq!(reads.len(), 13, "{reads:#?}");
    assert_eq!(reads[0]["event"]["refused"], "unauthenticated");
    assert!(reads[0]["event"].get("subject").is_none());
    assert_eq!(reads[1]["event"]["refused"], "forbidden");
    assert_eq!(reads[1]["event"]["subject"], "olivia");
    assert!(
        reads[2..]
            .iter()
            .all(|r| r["event"]["subject"] == "ada" && r["event"].get("refused").is_none())
    );
    assert!(
        reads[2]["event"]["resource"]
            .as_str()
            .unwrap()
            .contains(&call_id)
    );
}

#[tokio::test]
async fn checkpoints_are_published_to_a_directory_and_a_witness() {
    let witness = Upstream::start().await;
    let (_up, gw, ops_key) = start(&format!(
        "audit: {{publish_dir: published, publish_url: \"{}/witness/checkpoints\"}}\n",
        witness.url()
    ))
    .await;
    get(&gw.url("/items/a1"), &[("x-api-key", &ops_key)]).await;
    let cp = gw.gateway.shared.audit.checkpoint().await.unwrap().unwrap();
    let published = std::fs::read_to_string(gw.path("published/checkpoint")).unwrap();
    assert_eq!(published, cp.note);
    assert_eq!(
        std::fs::read_to_string(gw.path(&format!("published/checkpoints/{}", cp.size))).unwrap(),
        cp.note
    );
    // The witness got it too (in the background).
    for _ in 0..100 {
        if witness
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.body == cp.note.as_bytes())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = witness.seen.lock().unwrap().clone();
    let last = seen
        .iter()
        .find(|s| s.body == cp.note.as_bytes())
        .expect("the witness received the checkpoint");
    assert_eq!(last.method, "POST");
    assert_eq!(last.path_and_query, "/witness/checkpoints");
    let verifier = gw.gateway.shared.audit.log().verifier();
    assert!(ops::open_checkpoint(&cp.note, &verifier).is_ok());
}

#[tokio::test]
async fn a_reload_is_recorded_with_the_new_policy_hash_and_only_a_good_one() {
    let (_up, gw, ops_key) = start("").await;
    let before = gw.gateway.shared.reloader.peek().policy_hash.clone();
    let tighter = POLICY.replace("@id(\"viewers-public-items\")", "@id(\"viewers-items\")");
    gw.edit("policies/p.cedar", &tighter);
    get(&gw.url("/items/a1"), &[("x-api-key", &ops_key)]).await;
    // A broken edit is not a reload.
    gw.edit("policies/p.cedar", "permit (principal, action, resource");
    get(&gw.url("/items/a2"), &[("x-api-key", &ops_key)]).await;
    settle(&gw).await;
    let after = gw.gateway.shared.reloader.peek().policy_hash.clone();
    assert_ne!(before, after);
    let store = gw.gateway.shared.audit.log().store();
    let reloads = store
        .search(&Filter {
            kind: Some("admin.reload".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reloads.len(), 1);
    let event = &ops::record_json(&reloads[0])["event"];
    assert_eq!(event["policy_sha256"], after.as_str());
    let start = store
        .search(&Filter {
            kind: Some("admin.start".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ops::record_json(&start[0])["event"]["policy_sha256"],
        before.as_str()
    );
}

#[tokio::test]
async fn checkpoints_are_signed_on_a_timer_while_the_log_grows() {
    let (_up, gw, ops_key) = start("audit: {checkpoint_interval_ms: 100}\n").await;
    let r = get(&gw.url("/items/a1"), &[("x-api-key", &ops_key)]).await;
    let store = gw.gateway.shared.audit.log().store();
    let id = r.header("x-request-id").unwrap().to_string();
    let index = ops::call_records(store, &id).await.unwrap()[0].index;
    // No one asks for a checkpoint: the timer signs one that covers the call.
    let mut covered = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let cps = store.checkpoints().await.unwrap();
        if cps.last().is_some_and(|c| c.size > index) {
            covered = true;
            break;
        }
    }
    assert!(covered, "no checkpoint covered record {index}");
}

#[tokio::test]
async fn anonymous_refusals_are_recorded_a_few_per_address_then_counted() {
    let (up, mut gw, _) = start("").await;
    let requests = 300;
    for i in 0..requests {
        let h = [("x-api-key", "cgk_not_a_key")];
        let r = get(
            &gw.url(&format!("/items/a{i}")),
            if i % 2 == 0 { &h[..] } else { &[] },
        )
        .await;
        r.problem(401);
    }
    assert_eq!(up.count(), 0);
    settle(&gw).await;
    let refused = |gw: &TestGateway| {
        let path = gw.path("callgate-data/audit.db");
        async move {
            let store = callgate_store::SqliteStore::open_read_only(&path)
                .await
                .unwrap();
            store
                .search(&Filter {
                    kind: Some("call.refused".into()),
                    limit: 10_000,
                    ..Filter::default()
                })
                .await
                .unwrap()
                .iter()
                .map(ops::record_json)
                .collect::<Vec<Value>>()
        }
    };
    let one_by_one = refused(&gw).await;
    assert_eq!(
        one_by_one.len(),
        10,
        "the first ten of the minute, one by one"
    );
    // At shutdown the minute's count is recorded: one record standing for the other 290.
    gw.shutdown();
    gw.stopped().await;
    let recs = refused(&gw).await;
    assert_eq!(recs.len(), 11);
    let summary = &recs[10]["event"];
    assert_eq!(summary["repeated"], requests - 10, "{summary}");
    assert!(summary["first_ms"].as_u64().is_some());
    assert_eq!(summary["source"], "127.0.0.1");
    assert!(
        summary["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("unauthenticated {}", requests - 10)),
        "{summary}"
    );
}
