//! Policy decision latency: one call decided against 1,000 functions and 5,000 policies,
//! with a one-function, one-policy engine measured in the same run as the baseline.

use callgate_core::Registry;
use callgate_core::config::Config;
use callgate_policy::cases::{self, Case, Expect};
use callgate_policy::{PolicyEngine, PolicyFile};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn config(functions: usize) -> String {
    let mut s = String::from("upstreams: {up: {url: \"http://127.0.0.1:9\"}}\nfunctions:\n");
    for i in 0..functions {
        s.push_str(&format!(
            "  - name: svc{i}.act\n    upstream: up\n    route: POST /svc{i}/act\n    risk: {risk}\n    arguments:\n      type: object\n      properties:\n        account_id: {{type: string}}\n        amount: {{type: integer}}\n        tags: {{type: array, items: {{type: string}}}}\n      required: [account_id, amount]\n",
            risk = if i % 10 == 0 { "high" } else { "low" }
        ));
    }
    s
}

/// Five policies per function: group permits with argument conditions, and forbids.
fn policies(functions: usize) -> String {
    let mut s = String::new();
    for i in 0..functions {
        s.push_str(&format!(
            r#"permit (principal in Callgate::Group::"team{g}", action == Callgate::Action::"svc{i}.act", resource) when {{ context.arguments.account_id like "acct_*" && context.arguments.amount <= 1000 }};
permit (principal in Callgate::Group::"ops{g}", action == Callgate::Action::"svc{i}.act", resource) when {{ context.arguments.amount < 100 }};
permit (principal == Callgate::User::"owner{i}", action == Callgate::Action::"svc{i}.act", resource);
forbid (principal, action == Callgate::Action::"svc{i}.act", resource) when {{ context.arguments.account_id == "acct_frozen_{i}" }};
forbid (principal in Callgate::Group::"suspended", action == Callgate::Action::"svc{i}.act", resource) when {{ context has arguments && context.arguments has tags && context.arguments.tags.contains("blocked") }};
"#,
            g = i % 50
        ));
    }
    s
}

fn engine(functions: usize) -> (Registry, PolicyEngine) {
    let cfg = Config::parse(&config(functions), &|_| None).unwrap();
    let reg = Registry::build(&cfg).unwrap();
    let eng = PolicyEngine::load(
        &reg,
        &[PolicyFile {
            name: "bench.cedar".into(),
            text: policies(functions),
        }],
    )
    .unwrap();
    (reg, eng)
}

fn bench(c: &mut Criterion) {
    let case = Case {
        name: None,
        subject: "sam".into(),
        groups: vec!["team7".into(), "readers".into(), "ops3".into()],
        function: "svc507.act".into(),
        arguments: serde_json::json!({"account_id": "acct_42", "amount": 250, "tags": ["a", "b"]})
            .as_object()
            .unwrap()
            .clone(),
        expect: Expect::Allow,
        request: Default::default(),
    };
    let (reg, eng) = engine(1000);
    assert_eq!(eng.len(), 5000);
    let call = cases::case_call(&reg, &case).unwrap();
    assert!(eng.decide(&call).unwrap().allowed());
    let mut small_case = case.clone();
    small_case.function = "svc0.act".into();
    small_case.groups = vec!["team0".into(), "readers".into(), "ops3".into()];
    let (reg1, eng1) = engine(1);
    let call1 = cases::case_call(&reg1, &small_case).unwrap();
    assert!(eng1.decide(&call1).unwrap().allowed());

    let mut g = c.benchmark_group("policy_decision");
    g.bench_function("baseline_1_function_5_policies", |b| {
        b.iter(|| eng1.decide(black_box(&call1)).unwrap())
    });
    g.bench_function("1000_functions_5000_policies", |b| {
        b.iter(|| eng.decide(black_box(&call)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
