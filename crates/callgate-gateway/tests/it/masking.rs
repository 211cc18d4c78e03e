//! Response masking, end to end: profiles chosen by the function and by policy, clearance,
//! headers, the audit record of the response, and failing closed on bodies a profile cannot
//! read.

use crate::common::*;
use axum::Router;
use axum::routing::get as route_get;
use http::header;
use serde_json::json;

async fn pii_upstream() -> String {
    let app = Router::new()
        .route(
            "/profile",
            route_get(|| async {
                (
                    [(header::SET_COOKIE, "session=abc123")],
                    axum::Json(json!({
                        "email": "ada@example.com",
                        "ssn": "123-45-6789",
                        "card": "4111111111111111",
                        "password": "hunter2",
                        "note": "reach ada@example.com, key AKIAIOSFODNN7EXAMPLE",
                    })),
                )
            }),
        )
        .route(
            "/broken",
            route_get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"ssn\": \"123-45-6789\"",
                )
            }),
        )
        .route(
            "/charge",
            axum::routing::post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
                axum::Json(json!({"charged": v["card"], "got_the_real_card": v["card"] == "4111 1111 1111 1111"}))
            }),
        )
        .route(
            "/text",
            route_get(|| async { "ssn 123-45-6789 for ada@example.com" }),
        )
        .route(
            "/csv",
            route_get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/csv")],
                    "name,password,ssn\nada,hunter2,123-45-6789\n",
                )
            }),
        )
        .route(
            "/json-as-text",
            route_get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    r#" {"password": "hunter2", "ssn": "123-45-6789", "n": 1}"#,
                )
            }),
        )
        .route(
            "/gzip",
            route_get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CONTENT_ENCODING, "gzip"),
                    ],
                    // Not real gzip: what matters is that Callgate cannot read it.
                    vec![0x1f_u8, 0x8b, 8, 0, b'1', b'2', b'3', b'-', b'4', b'5'],
                )
            }),
        )
        .route(
            "/encodings",
            route_get(|headers: http::HeaderMap| async move {
                let got = headers
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                axum::Json(json!({ "accept_encoding": got }))
            }),
        )
        .route(
            "/binary",
            route_get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    vec![0u8, 159, 146, 150, b'1', b'2', b'3', b'-', b'4', b'5'],
                )
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

const POLICY: &str = r#"
@id("support")
permit (principal in Callgate::Group::"support", action in Callgate::Action::"call", resource);

@id("charge")
@approval("approvers")
permit (principal in Callgate::Group::"support", action == Callgate::Action::"card.charge", resource);

@id("billing")
@mask("strict")
permit (principal in Callgate::Group::"billing", action in Callgate::Action::"call", resource);
"#;

async fn setup(on_unparsable: &str) -> (TestGateway, String, String, String) {
    let (gw, keys) = setup_with(on_unparsable).await;
    (gw, keys[0].clone(), keys[1].clone(), keys[2].clone())
}

/// Keys: alice (support), bob (billing, cleared for mail), erin (auditors), carol (approvers),
/// dave (approvers, cleared for cards), frank (support, cleared for cards).
async fn setup_with(on_unparsable: &str) -> (TestGateway, Vec<String>) {
    let up = pii_upstream().await;
    let (alice, ah) = api_key();
    let (bob, bh) = api_key();
    let (erin, eh) = api_key();
    let (carol, ch) = api_key();
    let (dave, dh) = api_key();
    let (frank, fh) = api_key();
    let config = format!(
        r#"
identity:
  api_keys:
    - {{id: alice, hash: "{ah}", subject: alice, groups: [support, oncall]}}
    - {{id: bob, hash: "{bh}", subject: bob, groups: [billing, mail-cleared]}}
    - {{id: erin, hash: "{eh}", subject: erin, groups: [auditors]}}
    - {{id: carol, hash: "{ch}", subject: carol, groups: [approvers]}}
    - {{id: dave, hash: "{dh}", subject: dave, groups: [approvers, card-cleared]}}
    - {{id: frank, hash: "{fh}", subject: frank, groups: [support, card-cleared]}}
upstreams:
  up: {{url: "{up}"}}
policies: [policies]
masking:
  on_unparsable: {on_unparsable}
  profiles:
    pii:
      rules:
        - {{keys: [password], strategy: drop}}
        - {{path: "$.ssn", strategy: partial, keep: 4}}
        - {{detect: [card], strategy: partial, cleared: [card-cleared]}}
        - {{detect: [email], strategy: hash, cleared: [mail-cleared]}}
        - {{detect: [aws_key, us_ssn], strategy: redact}}
    strict:
      rules:
        - {{path: "$.card", strategy: redact}}
    content:
      rules:
        - {{detect: [email], strategy: hash}}
        - {{detect: [aws_key, us_ssn], strategy: redact}}
functions:
  - {{name: profile.get, upstream: up, route: GET /profile, mask: pii}}
  - {{name: broken.get, upstream: up, route: GET /broken, mask: pii}}
  - {{name: text.get, upstream: up, route: GET /text, mask: content}}
  - {{name: csv.get, upstream: up, route: GET /csv, mask: pii}}
  - {{name: binary.get, upstream: up, route: GET /binary, mask: pii}}
  - {{name: jsontext.get, upstream: up, route: GET /json-as-text, mask: pii}}
  - {{name: gzip.get, upstream: up, route: GET /gzip, mask: pii}}
  - {{name: encodings.get, upstream: up, route: GET /encodings, mask: pii}}
  - name: card.charge
    upstream: up
    route: POST /charge
    mask: pii
    break_glass: [oncall]
    arguments: {{type: object, properties: {{card: {{type: string}}}}, required: [card]}}
"#
    );
    let gw = TestGateway::start(&config, &[("p.cedar", POLICY)]).await;
    (gw, vec![alice, bob, erin, carol, dave, frank])
}

#[tokio::test]
async fn responses_are_masked_by_profile_clearance_and_policy() {
    let (gw, alice, bob, erin) = setup("reject").await;
    let r = get(&gw.url("/profile"), &[("x-api-key", &alice)]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("set-cookie").is_none(),
        "secret-bearing headers are governed too"
    );
    let v = r.json();
    assert!(v.get("password").is_none());
    assert_eq!(v["ssn"], "***-**-6789");
    assert_eq!(v["card"], "************1111");
    let hashed = v["email"].as_str().unwrap();
    assert!(hashed.starts_with("hmac:"), "{hashed}");
    assert_eq!(
        v["note"],
        format!("reach {hashed}, key [REDACTED]"),
        "the same value hashes the same everywhere"
    );
    // bob is cleared for email, and policy adds the strict profile for billing.
    let v = get(&gw.url("/profile"), &[("x-api-key", &bob)])
        .await
        .json();
    assert_eq!(v["email"], "ada@example.com");
    assert_eq!(v["card"], "[REDACTED]");
    // The audit log keeps what the caller got, never the raw values.
    let id = r.header("x-request-id").unwrap();
    let story = get(
        &gw.url(&format!("/v1/audit/calls/{id}")),
        &[("x-api-key", &erin)],
    )
    .await;
    let text = String::from_utf8_lossy(&story.body);
    assert!(text.contains("***-**-6789"), "{text}");
    for raw in [
        "123-45-6789",
        "hunter2",
        "4111111111111111",
        "AKIAIOSFODNN7EXAMPLE",
        "abc123",
    ] {
        assert!(!text.contains(raw), "{raw} reached the audit log");
    }
    // Plain text is masked by content, by a profile of detectors.
    let r = get(&gw.url("/text"), &[("x-api-key", &alice)]).await;
    let t = String::from_utf8_lossy(&r.body).to_string();
    assert!(t.starts_with("ssn [REDACTED] for hmac:"), "{t}");
    // JSON the upstream labels as text is masked as JSON: key and path rules still hold.
    let r = get(&gw.url("/json-as-text"), &[("x-api-key", &alice)]).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, json!({"ssn": "***-**-6789", "n": 1}), "{}", r.text());
    // Callgate asks the upstream for an uncompressed body whatever the caller accepts, so it
    // can read (and mask, and record) it.
    let r = get(
        &gw.url("/encodings"),
        &[("x-api-key", &alice), ("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(r.json()["accept_encoding"], "identity");
}

#[tokio::test]
async fn unreadable_bodies_fail_closed() {
    let (gw, alice, _, _) = setup("reject").await;
    // ... text under a profile with key and path rules (which text cannot honour) too.
    for path in ["/broken", "/binary", "/gzip", "/csv"] {
        let r = get(&gw.url(path), &[("x-api-key", &alice)]).await;
        let p = r.problem(502);
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("could not be masked"),
            "{p}"
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("123-45"));
    }
    let (gw, alice, _, _) = setup("redact").await;
    for path in ["/broken", "/binary", "/gzip", "/csv"] {
        let r = get(&gw.url(path), &[("x-api-key", &alice)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"\"[REDACTED]\"");
        // The placeholder is not compressed, whatever the upstream's body was.
        assert!(r.header("content-encoding").is_none(), "{path}");
    }
}

#[tokio::test]
async fn arguments_are_masked_in_the_audit_log_and_for_approvers_by_their_clearance() {
    let (gw, k) = setup_with("reject").await;
    let (alice, erin, carol, dave) = (&k[0], &k[2], &k[3], &k[4]);
    let r = post_json(
        &gw.url("/charge"),
        &[("x-api-key", alice)],
        r#"{"card":"4111 1111 1111 1111"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // carol reviews masked arguments; dave is cleared for cards.
    let show = |key: &String| {
        let (url, key) = (gw.url(&format!("/v1/approvals/{id}")), key.clone());
        async move { get(&url, &[("x-api-key", &key)]).await.json() }
    };
    assert_eq!(
        show(carol).await["arguments"]["card"],
        "**** **** **** 1111"
    );
    assert_eq!(show(dave).await["arguments"]["card"], "4111 1111 1111 1111");
    let list = get(&gw.url("/v1/approvals"), &[("x-api-key", carol)])
        .await
        .json();
    assert_eq!(
        list["approvals"][0]["arguments"]["card"],
        "**** **** **** 1111"
    );
    // The audit log's call record keeps the masked arguments.
    let story = get(
        &gw.url(&format!("/v1/audit/calls/{id}")),
        &[("x-api-key", erin)],
    )
    .await;
    let text = String::from_utf8_lossy(&story.body).to_string();
    assert!(text.contains("**** **** **** 1111"), "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    // Approved, the upstream gets the real arguments: the stored request is what runs.
    post_json(
        &gw.url(&format!("/v1/approvals/{id}/approve")),
        &[("x-api-key", carol)],
        "",
    )
    .await;
    let done = get(
        &gw.url(&format!("/v1/calls/{id}")),
        &[("x-api-key", alice), ("prefer", "wait=10")],
    )
    .await
    .json();
    assert_eq!(done["state"], "succeeded");
    // ... and alice, not cleared, gets the response masked.
    assert_eq!(done["response"]["body"]["charged"], "**** **** **** 1111");
    assert_eq!(done["response"]["body"]["got_the_real_card"], true);
    // frank is cleared for cards: his response is stored unmasked for him, and an auditor
    // without that clearance sees it masked under her own.
    let frank = &k[5];
    let r = post_json(
        &gw.url("/charge"),
        &[("x-api-key", frank)],
        r#"{"card":"4111 1111 1111 1111"}"#,
    )
    .await;
    let fid = r.json()["id"].as_str().unwrap().to_string();
    post_json(
        &gw.url(&format!("/v1/approvals/{fid}/approve")),
        &[("x-api-key", carol)],
        "",
    )
    .await;
    let status = |key: &String| {
        let (url, key) = (gw.url(&format!("/v1/calls/{fid}")), key.clone());
        async move {
            get(&url, &[("x-api-key", &key), ("prefer", "wait=10")])
                .await
                .json()
        }
    };
    let mine = status(frank).await;
    assert_eq!(mine["state"], "succeeded", "{mine}");
    assert_eq!(mine["response"]["body"]["charged"], "4111 1111 1111 1111");
    let theirs = status(erin).await;
    assert_eq!(
        theirs["response"]["body"]["charged"], "**** **** **** 1111",
        "{theirs}"
    );
    assert!(
        !theirs.to_string().contains("4111 1111 1111 1111"),
        "{theirs}"
    );
    // A break-glass call runs at once; its review item shows reviewers the arguments through
    // the same profiles.
    let r = send(
        http::Method::POST,
        &gw.url("/charge"),
        &[
            ("x-api-key", alice),
            ("content-type", "application/json"),
            ("callgate-break-glass", "INC-1: card processor down"),
        ],
        Some(br#"{"card":"4111 1111 1111 1111"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").unwrap().to_string();
    let item = |key: &String| {
        let (url, key) = (gw.url(&format!("/v1/approvals/{id}")), key.clone());
        async move { get(&url, &[("x-api-key", &key)]).await.json() }
    };
    let seen = item(carol).await;
    assert_eq!(seen["kind"], "break_glass", "{seen}");
    assert_eq!(seen["arguments"]["card"], "**** **** **** 1111", "{seen}");
    assert_eq!(item(dave).await["arguments"]["card"], "4111 1111 1111 1111");
}
