//! The approvals store against a real SQLite file: durability across reopen, compare-and-swap
//! under racing reviewers and executors.

use callgate_approvals::{Approval, Requester, Requirement, Reviewer, State, Verdict, digest};
use callgate_store::approvals::{ApprovalStore, Held, Kind};
use serde_json::json;

fn held(id: &str, req: &str) -> Held {
    let payload =
        json!({"function": "billing.reset_account", "arguments": {"account_id": "acct_1"}});
    Held {
        id: id.into(),
        kind: Kind::Call,
        digest: digest::digest(&payload).unwrap(),
        payload,
        approval: Approval::new(
            Requirement::parse(req).unwrap(),
            Requester {
                subject: "bob".into(),
                actor: None,
            },
            1_000,
        ),
        summary: json!({"function": "billing.reset_account"}),
        outcome: None,
        version: 0,
    }
}

fn reviewer(name: &str) -> Reviewer {
    Reviewer {
        subject: name.into(),
        groups: vec!["finance-approvers".into()],
        delegated: false,
    }
}

#[tokio::test]
async fn held_calls_survive_reopen_and_cannot_be_inserted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvals.db");
    let store = ApprovalStore::open(&path).await.unwrap();
    let h = held("c1", "finance-approvers");
    store.insert(&h).await.unwrap();
    assert!(store.insert(&h).await.is_err(), "an id is held once");
    store.close().await;

    let store = ApprovalStore::open(&path).await.unwrap();
    let got = store.get("c1").await.unwrap().unwrap();
    assert_eq!(got, h);
    assert!(store.get("nope").await.unwrap().is_none());
    let pending = store
        .in_states(Some(Kind::Call), &[State::Pending], 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        store.due(1_000 + 3_600_000).await.unwrap(),
        vec!["c1".to_string()]
    );
    assert!(store.due(1_000 + 3_599_999).await.unwrap().is_empty());
}

#[tokio::test]
async fn racing_reviews_and_executors_have_exactly_one_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = ApprovalStore::open(&dir.path().join("a.db")).await.unwrap();
    for round in 0..20 {
        let id = format!("c{round}");
        store.insert(&held(&id, "finance-approvers")).await.unwrap();
        // Eight reviewers at once, half approving and half denying: one of them decides, the
        // rest are recorded as late (not counted) — or refused, never lost.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (store, id) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let verdict = if i % 2 == 0 {
                    Verdict::Approve
                } else {
                    Verdict::Deny
                };
                store
                    .update(&id, |h| {
                        h.approval
                            .review(&reviewer(&format!("r{i}")), verdict, None, None, 2_000)
                    })
                    .await
                    .unwrap()
                    .unwrap()
            }));
        }
        let mut counted = 0;
        for t in tasks {
            let (rec, _) = t.await.unwrap();
            counted += rec.counted as u32;
        }
        assert_eq!(counted, 1, "exactly one review decides");
        let h = store.get(&id).await.unwrap().unwrap();
        assert_eq!(h.approval.reviews.len(), 8, "every review is recorded");
        assert!(matches!(h.approval.state, State::Approved | State::Denied));

        // Four executors race to claim the call: at most one wins.
        let mut claims = Vec::new();
        for _ in 0..4 {
            let (store, id) = (store.clone(), id.clone());
            claims.push(tokio::spawn(async move {
                store
                    .update(&id, |h| h.approval.begin_execution(3_000))
                    .await
                    .unwrap()
                    .is_ok()
            }));
        }
        let mut wins = 0;
        for c in claims {
            wins += c.await.unwrap() as u32;
        }
        let expected = (h.approval.state == State::Approved) as u32;
        assert_eq!(wins, expected, "round {round}");
    }
}

#[tokio::test]
async fn an_update_cannot_change_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let store = ApprovalStore::open(&dir.path().join("a.db")).await.unwrap();
    let h = held("c1", "finance-approvers");
    store.insert(&h).await.unwrap();
    store
        .update("c1", |h| {
            h.payload =
                json!({"function": "billing.reset_account", "arguments": {"account_id": "*"}});
            Ok::<_, ()>(())
        })
        .await
        .unwrap()
        .unwrap();
    let got = store.get("c1").await.unwrap().unwrap();
    assert_eq!(got.payload, h.payload);
    assert!(digest::matches(&got.payload, &got.digest));
}
