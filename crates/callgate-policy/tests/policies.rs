//! Policy loading and decisions against the demo configuration: table-driven cases, and the
//! load errors a policy author must see with file and line.

use callgate_core::Registry;
use callgate_core::config::Config;
use callgate_policy::cases::{self, CaseFile};
use callgate_policy::{PolicyEngine, PolicyFile};
use std::path::Path;

fn demo_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/demo"))
}

fn demo_registry() -> Registry {
    let text = std::fs::read_to_string(demo_dir().join("callgate.yaml")).unwrap();
    let cfg = Config::parse(&text, &|_| Some("http://127.0.0.1:9".into())).unwrap();
    Registry::build(&cfg).unwrap()
}

fn demo_policy() -> String {
    std::fs::read_to_string(demo_dir().join("policies/demo.cedar")).unwrap()
}

fn load(extra: &str) -> Result<PolicyEngine, Vec<callgate_policy::PolicyError>> {
    PolicyEngine::load(
        &demo_registry(),
        &[
            PolicyFile {
                name: "demo.cedar".into(),
                text: demo_policy(),
            },
            PolicyFile {
                name: "extra.cedar".into(),
                text: extra.into(),
            },
        ],
    )
}

#[test]
fn demo_cases_all_pass() {
    let reg = demo_registry();
    let engine = load("").unwrap();
    let file: CaseFile =
        yaml_serde::from_str(&std::fs::read_to_string(demo_dir().join("cases.yaml")).unwrap())
            .unwrap();
    assert!(file.cases.len() >= 20);
    for r in cases::run(&reg, &engine, &file.cases) {
        assert!(
            r.passed(),
            "{}: expected {:?}, got {:?} ({})",
            r.name,
            r.expected,
            r.actual,
            r.detail
        );
    }
}

#[test]
fn decisions_name_their_policies_and_obligations() {
    let reg = demo_registry();
    let engine = load("").unwrap();
    let case = |subject: &str, group: &str, function: &str, args: serde_json::Value| cases::Case {
        name: None,
        subject: subject.into(),
        groups: vec![group.into()],
        function: function.into(),
        arguments: args.as_object().unwrap().clone(),
        expect: cases::Expect::Allow,
        request: Default::default(),
    };
    let call = cases::case_call(
        &reg,
        &case(
            "ci-bot",
            "ci",
            "quota.adjust",
            serde_json::json!({"account_id": "acct_1", "delta": 1}),
        ),
    )
    .unwrap();
    let d = engine.decide(&call).unwrap();
    assert!(d.allowed());
    assert_eq!(d.determining[0].id, "quota-adjust-ci");
    assert_eq!(d.determining[0].file, "demo.cedar");
    assert_eq!(d.obligations.rate_limit.unwrap().to_string(), "10/minute");
    let call = cases::case_call(
        &reg,
        &case(
            "alice",
            "support",
            "billing.reset_account",
            serde_json::json!({"account_id": "acct_1"}),
        ),
    )
    .unwrap();
    let d = engine.decide(&call).unwrap();
    assert!(!d.allowed());
    assert!(d.determining.is_empty());
    assert!(d.reason().contains("denied by default"));
    assert!(
        d.obligations.approval.is_none(),
        "a deny carries no obligations"
    );
}

#[test]
fn approval_obligations_merge_to_the_strictest() {
    let reg = demo_registry();
    let engine = load(
        "@id(\"reset-security\")\n@approval(\"2 of security; ttl=10m; reason\")\npermit(principal in Callgate::Group::\"billing-ops\", action == Callgate::Action::\"billing.reset_account\", resource);",
    )
    .unwrap();
    let c = cases::Case {
        name: None,
        subject: "bob".into(),
        groups: vec!["billing-ops".into()],
        function: "billing.reset_account".into(),
        arguments: serde_json::json!({"account_id": "acct_1"})
            .as_object()
            .unwrap()
            .clone(),
        expect: cases::Expect::Held,
        request: Default::default(),
    };
    let d = engine.decide(&cases::case_call(&reg, &c).unwrap()).unwrap();
    assert!(d.allowed());
    let req = d.obligations.approval.unwrap();
    // The demo policy's "1 of finance-approvers" and this one's, AND-ed.
    assert_eq!(
        req.to_string(),
        "1 of finance-approvers, 2 of security; ttl=10m; reason"
    );
}

#[test]
fn forbid_wins_and_is_named() {
    let reg = demo_registry();
    let engine = load(
        "@id(\"no-acct-0\")\nforbid(principal, action == Callgate::Action::\"billing.reset_account\", resource) when { context.arguments.account_id == \"acct_0\" };",
    )
    .unwrap();
    let c = cases::Case {
        name: None,
        subject: "bob".into(),
        groups: vec!["billing-ops".into()],
        function: "billing.reset_account".into(),
        arguments: serde_json::json!({"account_id": "acct_0"})
            .as_object()
            .unwrap()
            .clone(),
        expect: cases::Expect::Deny,
        request: Default::default(),
    };
    let d = engine.decide(&cases::case_call(&reg, &c).unwrap()).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.determining[0].id, "no-acct-0");
}

#[test]
fn catalog_scope_matching() {
    let reg = demo_registry();
    let engine = load("").unwrap();
    let who = |s: &str, g: &str| callgate_core::Principal {
        subject: s.into(),
        groups: vec![g.into()],
        auth: callgate_core::AuthMethod::ApiKey { key_id: "k".into() },
        token_id: None,
        actor: None,
        expires_at: None,
        session: None,
        audiences: Vec::new(),
    };
    let visible = |p: &callgate_core::Principal| {
        reg.iter()
            .filter(|f| engine.could_allow(p, f))
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    let alice = visible(&who("alice", "support"));
    assert!(alice.contains(&"files.read".to_string()));
    assert!(!alice.contains(&"billing.reset_account".to_string()));
    assert!(!alice.contains(&"quota.adjust".to_string()));
    let ci = visible(&who("ci-bot", "ci"));
    assert!(ci.contains(&"quota.adjust".to_string()));
    assert!(!ci.contains(&"files.read".to_string()));
}

/// Each broken policy must be a load error naming extra.cedar and the right line.
#[test]
fn load_errors_have_file_and_line() {
    let table: &[(&str, usize, &str)] = &[
        // unknown function as action
        (
            "\n\npermit(principal, action == Callgate::Action::\"billing.nope\", resource);",
            3,
            "billing.nope",
        ),
        // unknown function as resource
        (
            "permit(principal, action, resource == Callgate::Function::\"nope.fn\");",
            1,
            "nope.fn",
        ),
        // unknown argument
        (
            "permit(principal, action == Callgate::Action::\"users.get\", resource)\n when { context.arguments.nope == \"x\" };",
            2,
            "nope",
        ),
        // wrong type: delta is a Long
        (
            "\npermit(principal, action == Callgate::Action::\"quota.adjust\", resource)\nwhen {\n context.arguments.delta like \"1*\" };",
            4,
            "",
        ),
        // syntax error
        (
            "permit(principal, action, resource) when { context.arguments. };",
            1,
            "",
        ),
        // unknown annotation and a bad rate
        (
            "@rate_limt(\"1/minute\")\npermit(principal, action, resource);",
            1,
            "rate_limt",
        ),
        (
            "@rate_limit(\"lots\")\npermit(principal, action, resource);",
            1,
            "rate_limit",
        ),
        // approval obligations: bad syntax, and on a forbid
        (
            "@approval(\"2 finance\")\npermit(principal, action, resource);",
            1,
            "@approval",
        ),
        (
            "@approval(\"finance; ttl=1y\")\npermit(principal, action, resource);",
            1,
            "duration",
        ),
        (
            "@approval(\"finance\")\nforbid(principal, action, resource) when { false };",
            1,
            "only applies to permit",
        ),
        // action == call matches no function
        (
            "permit(principal, action == Callgate::Action::\"call\", resource);",
            1,
            "action in",
        ),
        (
            "forbid(principal, action == Callgate::Action::\"mcp-server-request\", resource);",
            1,
            "action in Callgate::Action::\"mcp-server-request\"",
        ),
        // duplicate id
        (
            "@id(\"users-read-support\")\npermit(principal, action, resource);",
            1,
            "already used",
        ),
    ];
    for (text, line, needle) in table {
        let errs = match load(text) {
            Ok(_) => panic!("{text:?} should not load"),
            Err(e) => e,
        };
        let e = errs
            .iter()
            .find(|e| e.file == "extra.cedar")
            .unwrap_or_else(|| panic!("{text}: {errs:?}"));
        assert_eq!(e.line, *line, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

#[test]
fn cases_set_the_request_context_and_unknown_functions_fail() {
    let reg = demo_registry();
    let engine = load(
        r#"@id("after-2033") forbid (principal, action, resource) when { context.request.time > 2000000000 };
@id("no-files-over-mcp") forbid (principal, action == Callgate::Action::"files.read", resource) when { context.request.ingress == "mcp" };
@id("keys-only-inside") forbid (principal, action, resource) when { context.request.auth_method == "api_key" && !context.request.source_ip.isInRange(ip("10.0.0.0/8")) };"#,
    )
    .unwrap();
    let file: CaseFile = yaml_serde::from_str(
        r#"
cases:
  - {as: alice, groups: [support], function: users.get, arguments: {id: u_1}, expect: allow}
  - {as: alice, groups: [support], function: users.get, arguments: {id: u_1}, time: 2000000001, expect: deny}
  - {as: alice, groups: [support], function: files.read, arguments: {path: /srv/reports/q3.csv}, ingress: mcp, expect: deny}
  - {as: alice, groups: [support], function: users.get, arguments: {id: u_1}, auth: api_key, expect: deny}
  - {as: alice, groups: [support], function: users.get, arguments: {id: u_1}, auth: api_key, source_ip: 10.1.2.3, expect: allow}
  - {as: alice, groups: [support], function: users.get, arguments: {id: u_1}, auth: api_key, source_ip: "::ffff:10.1.2.3", expect: allow}
  - {as: alice, groups: [support], function: users.get, arguments: {id: u_1}, auth: api_key, source_ip: "::ffff:192.0.2.7", expect: deny}
  - {as: alice, groups: [support], function: users.gte, expect: invalid}
"#,
    )
    .unwrap();
    let r = cases::run(&reg, &engine, &file.cases);
    // (An IPv4 client of a dual-stack listener, `::ffff:a.b.c.d`, is in its IPv4 ranges.)
    for c in &r[..7] {
        assert!(c.passed(), "{c:?}");
    }
    assert!(
        !r[7].passed(),
        "an unknown function fails the case whatever it expects"
    );
    // A misspelt field is an error, not a silently typical request.
    assert!(
        yaml_serde::from_str::<CaseFile>(
            "cases: [{as: a, function: users.get, expect: allow, tme: 1}]"
        )
        .is_err()
    );
}
