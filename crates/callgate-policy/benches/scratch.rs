use cedar_policy::*;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;
fn main() {
    let t = |name: &str, f: &mut dyn FnMut()| {
        for _ in 0..1000 {
            f();
        }
        let n = 20000;
        let s = Instant::now();
        for _ in 0..n {
            f();
        }
        println!("{name}: {:?}", s.elapsed() / n);
    };
    let user = EntityUid::from_str(r#"Callgate::User::"sam""#).unwrap();
    let g1 = EntityUid::from_str(r#"Callgate::Group::"team7""#).unwrap();
    let func = EntityUid::from_str(r#"Callgate::Function::"f""#).unwrap();
    let act = EntityUid::from_str(r#"Callgate::Action::"f""#).unwrap();
    let call = EntityUid::from_str(r#"Callgate::Action::"call""#).unwrap();
    t("entity_no_attrs", &mut || {
        let _ = Entity::new_no_attrs(user.clone(), HashSet::from([g1.clone()]));
    });
    let fe = Entity::new(
        func.clone(),
        HashMap::from([(
            "risk".to_string(),
            RestrictedExpression::new_string("low".into()),
        )]),
        HashSet::new(),
    )
    .unwrap();
    t("entity_clone", &mut || {
        let _ = fe.clone();
    });
    let ents = vec![
        fe.clone(),
        Entity::new_no_attrs(act.clone(), HashSet::from([call.clone()])),
        Entity::new_no_attrs(call.clone(), HashSet::new()),
        Entity::new_no_attrs(g1.clone(), HashSet::new()),
        Entity::new_no_attrs(user.clone(), HashSet::from([g1.clone()])),
    ];
    t("entities_from", &mut || {
        let _ = Entities::from_entities(ents.clone(), None).unwrap();
    });
    t("restricted_ip", &mut || {
        let _ = RestrictedExpression::new_ip("127.0.0.1");
    });
    t("context_ip", &mut || {
        let _ =
            Context::from_pairs([("ip".to_string(), RestrictedExpression::new_ip("127.0.0.1"))])
                .unwrap();
    });
    t("context_strs", &mut || {
        let _ = Context::from_pairs([
            (
                "a".to_string(),
                RestrictedExpression::new_string("x".into()),
            ),
            ("b".to_string(), RestrictedExpression::new_long(5)),
        ])
        .unwrap();
    });
    t("context_record", &mut || {
        let r = RestrictedExpression::new_record([(
            "a".to_string(),
            RestrictedExpression::new_string("x".into()),
        )])
        .unwrap();
        let _ = Context::from_pairs([("arguments".to_string(), r)]).unwrap();
    });
    let ctx = Context::from_pairs([(
        "a".to_string(),
        RestrictedExpression::new_string("x".into()),
    )])
    .unwrap();
    t("request_new", &mut || {
        let _ = Request::new(user.clone(), act.clone(), func.clone(), ctx.clone(), None).unwrap();
    });

    let ps = PolicySet::from_str(r#"permit (principal in Callgate::Group::"team7", action == Callgate::Action::"f", resource) when { context.arguments.account_id like "acct_*" && context.arguments.amount <= 1000 };
permit (principal in Callgate::Group::"ops3", action == Callgate::Action::"f", resource) when { context.arguments.amount < 100 };
permit (principal == Callgate::User::"owner", action == Callgate::Action::"f", resource);
forbid (principal, action == Callgate::Action::"f", resource) when { context.arguments.account_id == "acct_frozen" };
forbid (principal in Callgate::Group::"suspended", action == Callgate::Action::"f", resource) when { context has arguments && context.arguments has tags && context.arguments.tags.contains("blocked") };"#).unwrap();
    let args = RestrictedExpression::new_record([
        (
            "account_id".to_string(),
            RestrictedExpression::new_string("acct_42".into()),
        ),
        ("amount".to_string(), RestrictedExpression::new_long(250)),
        (
            "tags".to_string(),
            RestrictedExpression::new_set([RestrictedExpression::new_string("a".into())]),
        ),
    ])
    .unwrap();
    let ctx = Context::from_pairs([("arguments".to_string(), args)]).unwrap();
    let req = Request::new(user.clone(), act.clone(), func.clone(), ctx, None).unwrap();
    let es = Entities::from_entities(ents.clone(), None).unwrap();
    let az = Authorizer::new();
    t("is_authorized_5", &mut || {
        let r = az.is_authorized(&req, &ps, &es);
        assert!(r.decision() == Decision::Allow);
    });
    t("entities_clone", &mut || {
        let _ = es.clone();
    });

    // Dangling parents: the group entity and the `call` action are not in the store.
    let lean = vec![
        fe.clone(),
        Entity::new_no_attrs(act.clone(), HashSet::from([call.clone()])),
        Entity::new_no_attrs(user.clone(), HashSet::from([g1.clone()])),
    ];
    let es2 = Entities::from_entities(lean.clone(), None).unwrap();
    let ps2 = PolicySet::from_str(r#"permit (principal in Callgate::Group::"team7", action in Callgate::Action::"call", resource);"#).unwrap();
    let req2 = Request::new(
        user.clone(),
        act.clone(),
        func.clone(),
        Context::empty(),
        None,
    )
    .unwrap();
    println!(
        "dangling parents allow: {:?}",
        az.is_authorized(&req2, &ps2, &es2).decision()
    );
    t("entities_from_lean", &mut || {
        let _ = Entities::from_entities(lean.clone(), None).unwrap();
    });
    let ipx = RestrictedExpression::new_ip("127.0.0.1");
    t("context_cached_ip", &mut || {
        let _ = Context::from_pairs([("ip".to_string(), ipx.clone())]).unwrap();
    });
}
