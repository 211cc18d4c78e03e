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

// Random orderings of reviews, cancellations, expiries, executions and real restarts (the store
// closed and reopened) against the SQLite store: whatever happens, a call is executed at most
// once, only with the stored payload under its digest, only with enough distinct approvers,
// and never on the requester's word.
mod orderings {
    use super::*;
    use callgate_approvals::{Requester, Requirement};
    use proptest::prelude::*;

    const PEOPLE: &[(&str, &[&str])] = &[
        ("bob", &["finance-approvers", "security"]),
        ("carol", &["finance-approvers"]),
        ("dave", &["finance-approvers"]),
        ("frank", &["finance-approvers", "security"]),
        ("grace", &["security"]),
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Review(usize, bool),
        Cancel(usize),
        Advance(u64),
        Execute,
        Finish,
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..PEOPLE.len(), any::<bool>()).prop_map(|(w, a)| Op::Review(w, a)),
            1 => (0..PEOPLE.len()).prop_map(Op::Cancel),
            1 => (0u64..40_000).prop_map(Op::Advance),
            3 => Just(Op::Execute),
            1 => Just(Op::Finish),
            2 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn at_most_once_with_the_approved_payload(ops in proptest::collection::vec(op(), 1..30)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("a.db");
                let mut store = ApprovalStore::open(&path).await.unwrap();
                let mut h = held("c", "2 of finance-approvers, 1 of security; ttl=1m; approved_ttl=30s");
                h.approval = Approval::new(
                    Requirement::parse("2 of finance-approvers, 1 of security; ttl=1m; approved_ttl=30s").unwrap(),
                    Requester { subject: "bob".into(), actor: None },
                    0,
                );
                let original = h.payload.clone();
                store.insert(&h).await.unwrap();
                let (mut now, mut executions) = (0u64, 0u32);
                for op in ops {
                    match op {
                        Op::Review(w, approve) => {
                            let (who, groups) = PEOPLE[w];
                            let r = Reviewer { subject: who.into(), groups: groups.iter().map(|g| g.to_string()).collect(), delegated: false };
                            let v = if approve { Verdict::Approve } else { Verdict::Deny };
                            let _ = store.update("c", |h| h.approval.review(&r, v, None, None, now)).await.unwrap();
                        }
                        Op::Cancel(w) => {
                            let _ = store.update("c", |h| h.approval.cancel(PEOPLE[w].0, now)).await.unwrap();
                        }
                        Op::Advance(ms) => now += ms,
                        Op::Execute => {
                            if let Ok((_, claimed)) = store.update("c", |h| h.approval.begin_execution(now)).await.unwrap() {
                                executions += 1;
                                prop_assert_eq!(&claimed.payload, &original);
                                prop_assert!(digest::matches(&claimed.payload, &claimed.digest));
                                prop_assert!(claimed.approval.satisfied());
                                let counted: Vec<_> = claimed.approval.reviews.iter().filter(|r| r.counted).collect();
                                prop_assert!(counted.iter().all(|r| r.reviewer != "bob" && r.verdict == Verdict::Approve));
                                let mut names: Vec<_> = counted.iter().map(|r| &r.reviewer).collect();
                                names.sort();
                                names.dedup();
                                prop_assert!(names.len() >= 3, "three different people approved");
                            }
                        }
                        Op::Finish => {
                            let _ = store.update("c", |h| h.approval.finish(true)).await.unwrap();
                        }
                        Op::Restart => {
                            store.close().await;
                            store = ApprovalStore::open(&path).await.unwrap();
                            // What `resume` does at start for a call caught executing.
                            let _ = store
                                .update("c", |h| if h.approval.recover(false, now) { Ok(()) } else { Err(()) })
                                .await
                                .unwrap();
                        }
                    }
                }
                prop_assert!(executions <= 1, "executed {} times", executions);
                store.close().await;
                Ok(())
            })?;
        }
    }
}
