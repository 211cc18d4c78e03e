//! Segregation-of-duties rules: table-driven sequences of reviews with the expected state after
//! each step, and property tests over random orderings of reviews, cancellations, expiries,
//! executions and restarts.

use callgate_approvals::state::TransitionError;
use callgate_approvals::{Approval, Requester, Requirement, ReviewError, Reviewer, State, Verdict};
use proptest::prelude::*;

/// The people in the tables and their groups.
fn person(name: &str) -> Reviewer {
    let groups: &[&str] = match name {
        "bob" => &["billing-ops", "finance-approvers"], // the requester is a reviewer too
        "carol" => &["finance-approvers"],
        "dave" => &["finance-approvers"],
        "frank" => &["finance-approvers", "security"], // in two reviewer groups
        "grace" => &["security"],
        "admin" => &["admins", "finance-approvers", "security"],
        "erin" => &["auditors"],
        "agent" => &["finance-approvers"], // bob's agent
        _ => &[],
    };
    Reviewer {
        subject: name.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        delegated: false,
    }
}

fn bob_request(req: &str) -> Approval {
    Approval::new(
        Requirement::parse(req).unwrap(),
        Requester {
            subject: "bob".into(),
            actor: Some("agent".into()),
        },
        0,
    )
}

/// One step: who, what, which group (if chosen), and the expected result.
struct Step {
    who: &'static str,
    verdict: Verdict,
    group: Option<&'static str>,
    expect: Result<State, ReviewError>,
}

fn approve(who: &'static str, expect: Result<State, ReviewError>) -> Step {
    Step {
        who,
        verdict: Verdict::Approve,
        group: None,
        expect,
    }
}

fn approve_for(who: &'static str, g: &'static str, expect: Result<State, ReviewError>) -> Step {
    Step {
        who,
        verdict: Verdict::Approve,
        group: Some(g),
        expect,
    }
}

fn deny(who: &'static str, expect: Result<State, ReviewError>) -> Step {
    Step {
        who,
        verdict: Verdict::Deny,
        group: None,
        expect,
    }
}

use State::*;

#[test]
fn review_sequences() {
    let table: Vec<(&str, &str, Vec<Step>)> = vec![
        (
            "one approval from a different person approves",
            "finance-approvers",
            vec![approve("carol", Ok(Approved))],
        ),
        (
            "the requester cannot approve, nor can their agent",
            "finance-approvers",
            vec![
                approve("bob", Err(ReviewError::SelfReview)),
                approve("agent", Err(ReviewError::SelfReview)),
                deny("bob", Err(ReviewError::SelfReview)),
                approve("carol", Ok(Approved)),
            ],
        ),
        (
            "no administrator exception",
            "security",
            vec![approve("admin", Ok(Approved))],
        ),
        (
            "someone outside the reviewer groups cannot review",
            "finance-approvers",
            vec![
                approve("erin", Err(ReviewError::NotEligible)),
                deny("erin", Err(ReviewError::NotEligible)),
                approve("grace", Err(ReviewError::NotEligible)),
                approve("carol", Ok(Approved)),
            ],
        ),
        (
            "two approvals need two people",
            "2 of finance-approvers",
            vec![
                approve("carol", Ok(Pending)),
                approve("carol", Err(ReviewError::AlreadyReviewed)),
                approve("dave", Ok(Approved)),
            ],
        ),
        (
            "one person in two groups counts once",
            "1 of finance-approvers, 1 of security",
            vec![
                approve("frank", Ok(Pending)),
                approve("frank", Err(ReviewError::AlreadyReviewed)),
                approve("grace", Ok(Approved)),
            ],
        ),
        (
            "a person in two groups fills the group that still needs someone",
            "1 of finance-approvers, 1 of security",
            vec![
                approve("carol", Ok(Pending)),
                approve("frank", Ok(Approved)),
            ],
        ),
        (
            "a chosen group is honoured",
            "1 of finance-approvers, 1 of security",
            vec![
                approve_for("frank", "finance-approvers", Ok(Pending)),
                approve("carol", Ok(Pending)),
                approve("grace", Ok(Approved)),
            ],
        ),
        (
            "a group one is not in cannot be chosen",
            "1 of finance-approvers, 1 of security",
            vec![
                approve_for(
                    "carol",
                    "security",
                    Err(ReviewError::GroupNotEligible("security".into())),
                ),
                approve_for(
                    "carol",
                    "admins",
                    Err(ReviewError::GroupNotEligible("admins".into())),
                ),
                approve_for("carol", "finance-approvers", Ok(Pending)),
            ],
        ),
        (
            "deny wins",
            "2 of finance-approvers",
            vec![approve("carol", Ok(Pending)), deny("dave", Ok(Denied))],
        ),
        (
            "reviews after resolution change nothing",
            "finance-approvers",
            vec![
                approve("carol", Ok(Approved)),
                deny("dave", Ok(Approved)),
                approve("frank", Ok(Approved)),
            ],
        ),
        (
            "reviews after a denial change nothing",
            "finance-approvers",
            vec![deny("carol", Ok(Denied)), approve("dave", Ok(Denied))],
        ),
    ];
    for (name, req, steps) in table {
        let mut a = bob_request(req);
        for (i, s) in steps.iter().enumerate() {
            let before = a.clone();
            let got = a
                .review(&person(s.who), s.verdict, s.group, None, 10)
                .map(|_| a.state);
            assert_eq!(got, s.expect, "{name}: step {i} ({})", s.who);
            if got.is_err() {
                assert_eq!(a, before, "{name}: a refused review changed the request");
            }
        }
    }
}

#[test]
fn late_reviews_are_recorded_but_not_counted() {
    let mut a = bob_request("finance-approvers");
    a.review(&person("carol"), Verdict::Approve, None, None, 1)
        .unwrap();
    let late = a
        .review(
            &person("dave"),
            Verdict::Deny,
            None,
            Some("too late".into()),
            2,
        )
        .unwrap();
    assert!(!late.counted);
    assert_eq!(a.reviews.len(), 2);
    assert_eq!(a.state, Approved);
}

#[test]
fn a_delegated_credential_cannot_review() {
    let mut a = bob_request("finance-approvers");
    let mut carols_agent = person("carol");
    carols_agent.delegated = true;
    assert_eq!(
        a.review(&carols_agent, Verdict::Approve, None, None, 1),
        Err(ReviewError::Delegated)
    );
}

#[test]
fn expiry() {
    let mut a = bob_request("finance-approvers; ttl=1m; approved_ttl=30s");
    assert_eq!(a.expires_ms(), Some(60_000));
    // A review at the deadline is too late: recorded, not counted.
    let r = a
        .review(&person("carol"), Verdict::Approve, None, None, 60_000)
        .unwrap();
    assert!(!r.counted);
    assert_eq!(a.state, Expired);

    let mut a = bob_request("finance-approvers; ttl=1m; approved_ttl=30s");
    a.review(&person("carol"), Verdict::Approve, None, None, 59_999)
        .unwrap();
    assert_eq!(a.state, Approved);
    assert_eq!(a.expires_ms(), Some(89_999));
    assert_eq!(
        a.begin_execution(89_999),
        Err(TransitionError::WrongState(Expired))
    );
}

#[test]
fn transitions_outside_reviews() {
    // Only the requester (or their agent) cancels.
    let mut a = bob_request("finance-approvers");
    assert_eq!(a.cancel("carol", 1), Err(TransitionError::NotRequester));
    a.cancel("agent", 1).unwrap();
    assert_eq!(a.state, Cancelled);
    assert!(a.begin_execution(2).is_err());

    // An approved call can be cancelled or revoked until it executes, not after.
    let mut a = bob_request("finance-approvers");
    a.review(&person("carol"), Verdict::Approve, None, None, 1)
        .unwrap();
    assert_eq!(
        a.revoke(&person("bob"), 2),
        Err(TransitionError::Review(ReviewError::SelfReview))
    );
    let mut b = a.clone();
    b.revoke(&person("dave"), 2).unwrap();
    assert_eq!(b.state, Revoked);
    a.begin_execution(2).unwrap();
    assert_eq!(
        a.cancel("bob", 3),
        Err(TransitionError::WrongState(Executing))
    );
    assert_eq!(
        a.begin_execution(3),
        Err(TransitionError::WrongState(Executing))
    );
    let mut crashed = a.clone();
    // Given back before anything was sent (the audit log was down): approved again, once.
    let mut released = a.clone();
    released.release().unwrap();
    assert_eq!(released.state, Approved);
    assert_eq!(
        released.release(),
        Err(TransitionError::WrongState(Approved))
    );
    released.begin_execution(3).unwrap();
    assert_eq!(released.state, Executing);
    a.finish(true).unwrap();
    assert!(
        a.clone().release().is_err(),
        "a finished call is never given back"
    );
    assert_eq!(a.state, Succeeded);
    assert!(a.finish(false).is_err());

    // A crash during execution: unknown, or approved again when idempotent.
    let mut idem = crashed.clone();
    assert!(crashed.recover(false, 4));
    assert_eq!(crashed.state, Unknown);
    // Re-approved at recovery, so a restart long after the approval still runs it.
    assert!(idem.recover(true, 10_000_000));
    assert_eq!(idem.state, Approved);
    idem.begin_execution(10_000_001).unwrap();
}

#[test]
fn grants_and_break_glass_items_do_not_run_out_once_approved() {
    use callgate_approvals::Expiry;
    // A grant: pending expires, but an approved grant stays revocable however late.
    let mut g = bob_request("finance-approvers; ttl=1m");
    g.expiry = Expiry::PendingOnly;
    g.review(&person("carol"), Verdict::Approve, None, None, 1)
        .unwrap();
    assert_eq!(g.expires_ms(), None);
    g.revoke(&person("dave"), 100 * 86_400_000).unwrap();
    assert_eq!(g.state, Revoked);
    let mut g = bob_request("finance-approvers; ttl=1m");
    g.expiry = Expiry::PendingOnly;
    g.review(&person("carol"), Verdict::Approve, None, None, 1)
        .unwrap();
    g.cancel("bob", 100 * 86_400_000).unwrap();
    assert_eq!(g.state, Cancelled);
    let mut g = bob_request("finance-approvers; ttl=1m");
    g.expiry = Expiry::PendingOnly;
    assert!(g.expire(60_000));
    // A break-glass item waits for its acknowledgement.
    let mut b = bob_request("finance-approvers; ttl=1m");
    b.expiry = Expiry::Never;
    assert!(!b.expire(100 * 86_400_000));
    let r = b
        .review(
            &person("carol"),
            Verdict::Approve,
            None,
            None,
            100 * 86_400_000,
        )
        .unwrap();
    assert!(r.counted);
    assert_eq!(b.state, Approved);
}

#[test]
fn states_round_trip_through_text() {
    for s in State::ALL {
        assert_eq!(s.as_str().parse::<State>().unwrap(), s);
    }
    assert!("approve".parse::<State>().is_err());
}

// ---- properties ----------------------------------------------------------------------------

const PEOPLE: &[&str] = &[
    "bob", "agent", "carol", "dave", "frank", "grace", "admin", "erin",
];
const GROUPS: &[&str] = &["finance-approvers", "security", "admins"];

#[derive(Debug, Clone)]
enum Op {
    Review {
        who: usize,
        approve: bool,
        group: Option<usize>,
        delegated: bool,
    },
    Cancel(usize),
    Revoke(usize),
    Advance(u64),
    Execute,
    Finish(bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PEOPLE.len(), any::<bool>(), proptest::option::of(0..GROUPS.len()), proptest::bool::weighted(0.1))
            .prop_map(|(who, approve, group, delegated)| Op::Review { who, approve, group, delegated }),
        1 => (0..PEOPLE.len()).prop_map(Op::Cancel),
        1 => (0..PEOPLE.len()).prop_map(Op::Revoke),
        1 => (0u64..40_000).prop_map(Op::Advance),
        2 => Just(Op::Execute),
        1 => any::<bool>().prop_map(Op::Finish),
        1 => Just(Op::Restart),
    ]
}

fn requirement() -> impl Strategy<Value = Requirement> {
    proptest::sample::subsequence(GROUPS.to_vec(), 1..=GROUPS.len()).prop_flat_map(|groups| {
        proptest::collection::vec(1u32..=3, groups.len()).prop_map(move |ns| {
            let text: Vec<String> = groups
                .iter()
                .zip(ns)
                .map(|(g, n)| format!("{n} of {g}"))
                .collect();
            Requirement::parse(&format!("{}; ttl=1m; approved_ttl=30s", text.join(", "))).unwrap()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_executed_without_distinct_eligible_approvers(
        req in requirement(),
        idempotent in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let mut a = Approval::new(req.clone(), Requester { subject: "bob".into(), actor: Some("agent".into()) }, 0);
        let mut now = 0u64;
        let mut executions = 0;
        let mut unknown_after_crash = false;
        for op in ops {
            let before = a.clone();
            let ok = match op {
                Op::Review { who, approve, group, delegated } => {
                    let mut r = person(PEOPLE[who]);
                    r.delegated = delegated;
                    let verdict = if approve { Verdict::Approve } else { Verdict::Deny };
                    a.review(&r, verdict, group.map(|g| GROUPS[g]), None, now).is_ok()
                }
                Op::Cancel(who) => a.cancel(PEOPLE[who], now).is_ok(),
                Op::Revoke(who) => a.revoke(&person(PEOPLE[who]), now).is_ok(),
                Op::Advance(ms) => { now += ms; true }
                Op::Execute => {
                    let ok = a.begin_execution(now).is_ok();
                    if ok {
                        executions += 1;
                        // At the moment of execution the approval must hold on its own terms.
                        let counted: Vec<_> = a.reviews.iter().filter(|r| r.counted).collect();
                        prop_assert!(counted.iter().all(|r| r.verdict == Verdict::Approve), "executed despite a counted denial");
                        for (g, n) in &req.groups {
                            let approvers: std::collections::BTreeSet<_> = counted.iter()
                                .filter(|r| r.group.as_deref() == Some(g))
                                .map(|r| r.reviewer.as_str())
                                .collect();
                            prop_assert!(approvers.len() as u32 >= *n, "group {} has {} approvers, needs {}", g, approvers.len(), n);
                            for who in &approvers {
                                prop_assert!(person(who).groups.iter().any(|m| m == g), "{} counted for {} without membership", who, g);
                            }
                        }
                    }
                    ok
                }
                Op::Finish(s) => a.finish(s).is_ok(),
                Op::Restart => {
                    let was_executing = a.state == State::Executing;
                    a.recover(idempotent, now);
                    if was_executing && !idempotent { unknown_after_crash = true; }
                    true
                }
            };
            if !ok {
                // A refused step changes nothing but (possibly) expiry.
                let mut expected = before.clone();
                expected.expire(now);
                prop_assert!(a == before || a == expected, "a refused step changed the request");
            }
            // The requester's reviews are never recorded, let alone counted.
            prop_assert!(a.reviews.iter().all(|r| r.reviewer != "bob" && r.reviewer != "agent"));
            // One review per person.
            let mut names: Vec<_> = a.reviews.iter().map(|r| &r.reviewer).collect();
            names.sort();
            let n = names.len();
            names.dedup();
            prop_assert_eq!(n, names.len());
            // Final states stay final.
            if before.state.is_final() {
                prop_assert_eq!(a.state, before.state);
            }
            if unknown_after_crash {
                prop_assert!(a.state == State::Unknown);
            }
        }
        // Only an idempotent function is ever executed again (after a crash).
        prop_assert!(executions <= 1 || idempotent);
    }

    #[test]
    fn without_restarts_a_call_executes_at_most_once(
        req in requirement(),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let mut a = Approval::new(req, Requester { subject: "bob".into(), actor: None }, 0);
        let mut now = 0;
        let mut executions = 0;
        for op in ops {
            match op {
                Op::Review { who, approve, group, .. } => {
                    let v = if approve { Verdict::Approve } else { Verdict::Deny };
                    let _ = a.review(&person(PEOPLE[who]), v, group.map(|g| GROUPS[g]), None, now);
                }
                Op::Cancel(w) => { let _ = a.cancel(PEOPLE[w], now); }
                Op::Revoke(w) => { let _ = a.revoke(&person(PEOPLE[w]), now); }
                Op::Advance(ms) => now += ms,
                Op::Execute => if a.begin_execution(now).is_ok() { executions += 1 },
                Op::Finish(s) => { let _ = a.finish(s); }
                Op::Restart => { a.recover(false, now); }
            }
        }
        prop_assert!(executions <= 1);
    }

    #[test]
    fn requirement_text_round_trips(req in requirement()) {
        prop_assert_eq!(Requirement::parse(&req.to_string()).unwrap(), req);
    }
}
