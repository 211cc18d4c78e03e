//! The governed call path end to end: every bad-input rule, forwarding, reload, limits.

use crate::common::*;
use http::Method;
use serde_json::Value;
use std::time::Duration;

pub struct Setup {
    pub up: Upstream,
    pub gw: TestGateway,
    pub ops: String,
    pub viewer: String,
}

pub const POLICY: &str = r#"
@id("ops-all")
permit (principal in Callgate::Group::"ops", action in Callgate::Action::"call", resource);

@id("viewers-public-items")
permit (principal in Callgate::Group::"viewers", action == Callgate::Action::"items.get", resource)
when { context.arguments.id like "pub_*" };
"#;

pub fn config(up: &str, ops_hash: &str, viewer_hash: &str) -> String {
    format!(
        r#"
identity:
  api_keys:
    - {{id: ops, hash: "{ops_hash}", subject: olivia, groups: [ops]}}
    - {{id: viewer, hash: "{viewer_hash}", subject: victor, groups: [viewers]}}
upstreams:
  up: {{url: "{up}"}}
  dead: {{url: "http://127.0.0.1:1"}}
limits: {{max_body_bytes: 2048, upstream_timeout_ms: 2000}}
policies: [policies]
rate_limits:
  per_function: {{items.create: 3/minute}}
functions:
  - name: items.get
    upstream: up
    route: GET /items/{{id}}
    arguments: {{type: object, properties: {{id: {{type: string}}}}, required: [id], additionalProperties: false}}
    forward_headers: [X-Trace]
  - name: items.create
    upstream: up
    route: POST /items
    arguments:
      type: object
      properties:
        name: {{type: string}}
        qty: {{type: integer, minimum: 1, maximum: 10}}
      required: [name, qty]
      additionalProperties: false
  - name: items.search
    upstream: up
    route: GET /search
    arguments:
      type: object
      properties:
        q: {{type: string}}
        tags: {{type: array, items: {{type: string}}}}
        limit: {{type: integer}}
  - name: raw.echo
    upstream: up
    route: POST /echo
  - name: dead.call
    upstream: dead
    route: GET /dead
  - name: slow.call
    upstream: up
    route: GET /slow/{{id}}
    timeout_ms: 300
  - name: slow.ok
    upstream: up
    route: GET /slow/ok/{{id}}
    timeout_ms: 5000
"#
    )
}

pub async fn setup() -> Setup {
    let up = Upstream::start().await;
    let (ops, ops_hash) = api_key();
    let (viewer, viewer_hash) = api_key();
    let gw = TestGateway::start(
        &config(&up.url(), &ops_hash, &viewer_hash),
        &[("main.cedar", POLICY)],
    )
    .await;
    Setup {
        up,
        gw,
        ops,
        viewer,
    }
}

impl Setup {
    pub fn ops(&self) -> [(&str, &str); 1] {
        [("x-api-key", self.ops.as_str())]
    }
    pub fn viewer(&self) -> [(&str, &str); 1] {
        [("x-api-key", self.viewer.as_str())]
    }
}

#[tokio::test]
async fn allowed_calls_are_forwarded_with_the_parsed_arguments() {
    let s = setup().await;
    let r = post_json(
        &s.gw.url("/items"),
        &s.ops(),
        r#"{ "qty" : 2,
        "name":"widget" }"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = s.up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/items");
    // Re-serialized from the parsed value: the caller's key order, no whitespace.
    assert_eq!(&seen.body[..], br#"{"qty":2,"name":"widget"}"#);
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(r.json()["body"]["qty"], 2);
}

#[tokio::test]
async fn the_callers_credentials_never_reach_the_upstream() {
    let s = setup().await;
    let r = get(
        &s.gw.url("/items/pub_1"),
        &[
            ("authorization", &format!("Bearer {}", s.viewer)),
            ("cookie", "session=secret"),
            ("x-trace", "keep-me"),
            ("connection", "x-hop"),
            ("x-hop", "drop-me"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.up.last();
    for h in ["authorization", "cookie", "x-api-key", "x-hop"] {
        assert!(seen.headers.get(h).is_none(), "{h} was forwarded");
    }
    assert_eq!(seen.headers.get("x-trace").unwrap(), "keep-me");
    assert_eq!(
        seen.headers.get("x-request-id").unwrap().to_str().unwrap(),
        r.header("x-request-id").unwrap()
    );
    let r = get(&s.gw.url("/items/pub_1"), &s.viewer()).await;
    assert_eq!(r.status, 200);
    assert!(s.up.last().headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn only_allowlisted_request_headers_reach_the_upstream() {
    let s = setup().await;
    let r = get(
        &s.gw.url("/items/pub_1"),
        &[
            ("x-api-key", &s.ops),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/admin/drop"),
            ("x-rewrite-url", "/admin/drop"),
            ("x-original-method", "DELETE"),
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-host", "evil.example"),
            ("x-other", "unlisted"),
            ("accept-language", "de"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("if-none-match", "\"v1\""),
            ("x-trace", "named-by-the-function"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.up.last();
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-original-method",
        "x-real-ip",
        "x-forwarded-host",
        "x-other",
    ] {
        assert!(seen.headers.get(h).is_none(), "{h} was forwarded");
    }
    for (h, v) in [
        ("accept-language", "de"),
        ("if-none-match", "\"v1\""),
        ("x-trace", "named-by-the-function"),
    ] {
        assert_eq!(seen.headers.get(h).unwrap(), v, "{h}");
    }
    assert!(seen.headers.get("traceparent").is_some());
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    // Another function names no extra header: x-trace stays at Callgate.
    let r = post_json(
        &s.gw.url("/items"),
        &[("x-api-key", &s.ops), ("x-trace", "t")],
        r#"{"name":"a","qty":1}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(s.up.last().headers.get("x-trace").is_none());
}

#[tokio::test]
async fn no_or_bad_credentials_are_401_and_not_forwarded() {
    let s = setup().await;
    let both = format!("Bearer {}", s.ops);
    let cases: Vec<(Vec<(&str, &str)>, bool)> = vec![
        (vec![], false),
        (vec![("x-api-key", "cgk_not-a-key")], true),
        (vec![("authorization", "Bearer cgk_not-a-key")], true),
        (vec![("authorization", "Bearer not.a.jwt")], true),
        (vec![("authorization", "Basic dXNlcjpwdw==")], true),
        (vec![("authorization", "Bearer ")], true),
        (
            vec![
                ("authorization", both.as_str()),
                ("x-api-key", s.ops.as_str()),
            ],
            true,
        ),
    ];
    for (headers, has_error) in cases {
        let r = get(&s.gw.url("/items/pub_1"), &headers).await;
        r.problem(401);
        let challenge = r
            .header("www-authenticate")
            .expect("401 carries WWW-Authenticate");
        assert!(challenge.starts_with("Bearer realm=\"callgate\""));
        assert_eq!(
            challenge.contains("invalid_token"),
            has_error,
            "{headers:?}: {challenge}"
        );
    }
    // An unknown path from an anonymous caller is 401 too: nothing is revealed.
    get(&s.gw.url("/nope"), &[]).await.problem(401);
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn policy_denials_are_403_without_internals() {
    let s = setup().await;
    let r = get(&s.gw.url("/items/priv_1"), &s.viewer()).await;
    let p = r.problem(403);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        !detail.contains("pub_") && !detail.contains("viewers-public-items"),
        "{detail}"
    );
    let r = post_json(&s.gw.url("/items"), &s.viewer(), r#"{"name":"x","qty":1}"#).await;
    r.problem(403);
    assert_eq!(s.up.count(), 0);
    assert_eq!(
        get(&s.gw.url("/items/pub_1"), &s.viewer()).await.status,
        200
    );
}

#[tokio::test]
async fn unknown_functions_are_404_and_wrong_methods_405() {
    let s = setup().await;
    get(&s.gw.url("/nope"), &s.ops()).await.problem(404);
    get(&s.gw.url("/items/a/b"), &s.ops()).await.problem(404);
    send(Method::DELETE, &s.gw.url("/items/pub_1"), &s.ops(), None)
        .await
        .problem(405);
    post_json(
        &s.gw.url("/v1/functions/nope.nope/invoke"),
        &s.ops(),
        r#"{"arguments":{}}"#,
    )
    .await
    .problem(404);
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn schema_violations_are_422_with_pointers() {
    let s = setup().await;
    let table = [
        (r#"{"name":"x","qty":0}"#, "/qty"),
        (r#"{"name":"x","qty":11}"#, "/qty"),
        (r#"{"name":"x","qty":"1"}"#, "/qty"),
        (r#"{"name":"x","qty":1,"extra":true}"#, "/extra"),
        (r#"{"qty":1}"#, "/name"),
        (r#"{"name":5,"qty":1}"#, "/name"),
    ];
    for (body, pointer) in table {
        let r = post_json(&s.gw.url("/items"), &s.ops(), body).await;
        let p = r.problem(422);
        assert_eq!(p["errors"][0]["pointer"], pointer, "{body}: {p}");
        assert!(p["detail"].as_str().unwrap().contains(pointer));
    }
    // Query strings are typed by the schema too.
    get(&s.gw.url("/search?limit=ten"), &s.ops())
        .await
        .problem(422);
    assert_eq!(s.up.count(), 0);
    let r = get(&s.gw.url("/search?q=a%20b&tags=x&tags=y&limit=5"), &s.ops()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.up.last().path_and_query,
        "/search?q=a+b&limit=5&tags=x&tags=y"
    );
}

#[tokio::test]
async fn the_apis_own_rejections_are_problem_json_too() {
    let s = setup().await;
    // Path parameters that are not UTF-8, on the invoke API and the approvals API.
    for path in [
        "/v1/functions/%FF/invoke",
        "/v1/calls/%FF",
        "/v1/approvals/%FF",
    ] {
        let r = send(Method::POST, &s.gw.url(path), &s.ops(), Some(b"{}")).await;
        let r = if r.status == 405 {
            get(&s.gw.url(path), &s.ops()).await
        } else {
            r
        };
        let p = r.problem(400);
        assert!(p["request_id"].is_string(), "{path}: {p}");
    }
    // A review body over the configured limit (2048 bytes here), not axum's 2 MB.
    let big = format!("{{\"reason\":\"{}\"}}", "x".repeat(4096));
    let r = send(
        Method::POST,
        &s.gw
            .url("/v1/approvals/00000000-0000-0000-0000-000000000000/approve"),
        &[
            ("x-api-key", s.ops.as_str()),
            ("content-type", "application/json"),
        ],
        Some(big.as_bytes()),
    )
    .await;
    let p = r.problem(413);
    assert!(p["detail"].as_str().unwrap().contains("2048"), "{p}");
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn malformed_json_is_400_and_not_forwarded() {
    let s = setup().await;
    let bodies: [&[u8]; 6] = [
        br#"{"name":"x","qty":1,"qty":2}"#,
        b"{\"name\":\"\xff\",\"qty\":1}",
        br#"{"name":"\ud800","qty":1}"#,
        br#"{"name":"x","qty":1} trailing"#,
        br#"{"name":"x","qty":1"#,
        br#"["name"]"#,
    ];
    for body in bodies {
        let r = send(
            Method::POST,
            &s.gw.url("/items"),
            &[s.ops()[0], ("content-type", "application/json")],
            Some(body),
        )
        .await;
        r.problem(400);
    }
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut h = vec![s.ops()[0]];
        if let Some(ct) = ct {
            h.push(("content-type", ct));
        }
        send(
            Method::POST,
            &s.gw.url("/items"),
            &h,
            Some(br#"{"name":"x","qty":1}"#),
        )
        .await
        .problem(400);
    }
    // An argument given in both query and body is ambiguous.
    post_json(
        &s.gw.url("/items?qty=1"),
        &s.ops(),
        r#"{"name":"x","qty":1}"#,
    )
    .await
    .problem(400);
    // The invoke API is strict in the same way.
    post_json(
        &s.gw.url("/v1/functions/items.create/invoke"),
        &s.ops(),
        r#"{"arguments":{"name":"x","name":"y","qty":1}}"#,
    )
    .await
    .problem(400);
    post_json(
        &s.gw.url("/v1/functions/items.create/invoke"),
        &s.ops(),
        r#"{"arguments":{"name":"x","qty":1},"extra":1}"#,
    )
    .await
    .problem(400);
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let s = setup().await;
    let big = format!(r#"{{"name":"{}","qty":1}}"#, "x".repeat(4096));
    post_json(&s.gw.url("/items"), &s.ops(), &big)
        .await
        .problem(413);
    // Without Content-Length (chunked) the limit holds as well.
    let head = format!(
        "POST /items HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        s.ops
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes());
    let (resp, _) = raw(s.gw.addr, &req).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let s = setup().await;
    get(&s.gw.url("/dead"), &s.ops()).await.problem(502);
    get(&s.gw.url("/slow/1"), &s.ops()).await.problem(504);
}

#[tokio::test]
async fn paths_are_normalized_once_and_ambiguity_refused() {
    let s = setup().await;
    for (path, upstream_path) in [
        ("//items/./pub_1", "/items/pub_1"),
        ("/x/../items/pub_1", "/items/pub_1"),
        ("/items;v=1/pub_1;jsessionid=2", "/items/pub_1"),
        ("/items/pub%5F1", "/items/pub_1"),
        ("/items/pub_a%20b", "/items/pub_a%20b"),
    ] {
        let r = get(&s.gw.url(path), &s.viewer()).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(s.up.last().path_and_query, upstream_path, "{path}");
    }
    let before = s.up.count();
    for path in [
        "/items/a%2Fb",
        "/items/a%5Cb",
        "/items/%2e%2e",
        "/items/%2E",
        "/items/a%00",
        "/items/%ff",
        // Query strings are as strict as paths: no replacement characters.
        "/search?q=%ff",
        "/search?q=ok&%C3=1",
    ] {
        get(&s.gw.url(path), &s.ops()).await.problem(400);
    }
    // A backslash can't be sent through the client library; send it raw.
    let (resp, _) = raw(
        s.gw.addr,
        format!(
            "GET /items\\pub_1 HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
            s.ops
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(s.up.count(), before);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let s = setup().await;
    let body = r#"{"name":"x","qty":1}"#;
    let cases = [
        format!(
            "POST /items HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            s.ops,
            body.len(),
            body.len()
        ),
        format!(
            "POST /items HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncontent-length: {}\r\n\r\n{body}",
            s.ops,
            body.len(),
            body.len()
        ),
        format!(
            "POST /items HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}, {}\r\n\r\n{body}",
            s.ops,
            body.len(),
            body.len()
        ),
        format!(
            "POST /items HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: +{}\r\n\r\n{body}",
            s.ops,
            body.len()
        ),
    ];
    for req in cases {
        let (resp, closed) = raw(s.gw.addr, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{req}\n---\n{resp}");
        assert!(closed, "the connection is closed after a framing error");
    }
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let s = setup().await;
    let mut ids = std::collections::HashSet::new();
    for r in [
        get(&s.gw.url("/items/pub_1"), &s.viewer()).await,
        get(&s.gw.url("/items/priv_1"), &s.viewer()).await,
        get(&s.gw.url("/items/pub_1"), &[]).await,
        get(&s.gw.url("/nope"), &s.ops()).await,
        get(&s.gw.url("/healthz"), &[]).await,
        get(&s.gw.url("/v1/functions"), &s.ops()).await,
        get(&s.gw.url("/v1/nothing"), &s.ops()).await,
    ] {
        let id = r.header("x-request-id").expect("x-request-id").to_string();
        assert!(ids.insert(id), "ids are unique");
    }
}

#[tokio::test]
async fn invoke_api_builds_the_upstream_request_from_the_route() {
    let s = setup().await;
    let r = post_json(
        &s.gw.url("/v1/functions/items.get/invoke"),
        &s.viewer(),
        r#"{"arguments":{"id":"pub_ 7?8#"}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.up.last().path_and_query, "/items/pub_%207%3F8%23");
    // A slash or backslash in a path parameter is refused, not encoded: an upstream that
    // decodes %2F before routing would serve another path than the one policy allowed.
    let before = s.up.count();
    for id in ["pub_../../admin", "pub_a\\b"] {
        let r = post_json(
            &s.gw.url("/v1/functions/items.get/invoke"),
            &s.ops(),
            &serde_json::json!({"arguments": {"id": id}}).to_string(),
        )
        .await;
        let p = r.problem(422);
        assert_eq!(p["errors"][0]["pointer"], "/id", "{p}");
    }
    assert_eq!(s.up.count(), before, "nothing forwarded");
    let r = post_json(
        &s.gw.url("/v1/functions/items__create/invoke"),
        &s.ops(),
        r#"{"arguments":{"qty":3,"name":"n"}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(&s.up.last().body[..], br#"{"qty":3,"name":"n"}"#);
    // The upstream's status comes back as is.
    let r = post_json(
        &s.gw.url("/v1/functions/items.get/invoke"),
        &s.viewer(),
        r#"{"arguments":{"id":"priv"}}"#,
    )
    .await;
    r.problem(403);
    let p = post_json(
        &s.gw.url("/v1/functions/items.get/invoke"),
        &s.viewer(),
        r#"{"arguments":{}}"#,
    )
    .await
    .problem(422);
    assert_eq!(p["errors"][0]["pointer"], "/id");
}

#[tokio::test]
async fn catalog_lists_only_what_the_caller_may_call() {
    let s = setup().await;
    let names = |v: &Value| -> Vec<String> {
        v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    let viewer = get(&s.gw.url("/v1/functions"), &s.viewer()).await.json();
    assert_eq!(names(&viewer), vec!["items.get"]);
    assert_eq!(viewer["functions"][0]["arguments"]["required"][0], "id");
    let ops = get(&s.gw.url("/v1/functions"), &s.ops()).await.json();
    assert_eq!(names(&ops).len(), 7);
    let openai = get(&s.gw.url("/v1/functions?format=openai"), &s.viewer())
        .await
        .json();
    assert_eq!(openai[0]["type"], "function");
    assert_eq!(openai[0]["function"]["name"], "items__get");
    assert_eq!(openai[0]["function"]["parameters"]["type"], "object");
    get(&s.gw.url("/v1/functions?format=xml"), &s.viewer())
        .await
        .problem(400);
    get(&s.gw.url("/v1/functions"), &[]).await.problem(401);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let s = setup().await;
    for _ in 0..3 {
        assert_eq!(
            post_json(&s.gw.url("/items"), &s.ops(), r#"{"name":"x","qty":1}"#)
                .await
                .status,
            200
        );
    }
    let r = post_json(&s.gw.url("/items"), &s.ops(), r#"{"name":"x","qty":1}"#).await;
    r.problem(429);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&secs), "{secs}");
    assert_eq!(s.up.count(), 3);
    // Another function is not affected.
    assert_eq!(get(&s.gw.url("/items/pub_1"), &s.ops()).await.status, 200);
}

#[tokio::test]
async fn a_call_the_callers_limit_refuses_spends_nothing_of_the_functions() {
    let up = Upstream::start().await;
    let (ops, ops_hash) = api_key();
    let (_, viewer_hash) = api_key();
    let config = config(&up.url(), &ops_hash, &viewer_hash)
        .replace("rate_limits:\n", "rate_limits:\n  per_caller: 2/second\n");
    let gw = TestGateway::start(&config, &[("main.cedar", POLICY)]).await;
    let url = gw.url("/items");
    let key = [("x-api-key", ops.as_str())];
    let create = || post_json(&url, &key, r#"{"name":"x","qty":1}"#);
    // items.create allows 3 a minute; the caller 2 a second.
    assert_eq!(create().await.status, 200);
    assert_eq!(create().await.status, 200);
    let r = create().await;
    let p = r.problem(429);
    assert!(p["detail"].as_str().unwrap().contains("per caller"), "{p}");
    // Once the caller's limit lets a call through again, the function still has its third.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = create().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn hot_reload_tightens_at_once_and_survives_broken_edits() {
    let s = setup().await;
    let watching = || s.gw.gateway.shared.reloader.watching();
    assert!(watching(), "changes are found through inotify");
    let ok = || async {
        get(&s.gw.url("/items/pub_1"), &s.viewer())
            .await
            .status
            .as_u16()
    };
    assert_eq!(ok().await, 200);
    // Tighten: the viewers' permit is removed; the very next request is denied.
    s.gw.edit(
        "policies/main.cedar",
        &POLICY.replace(
            "permit (principal in Callgate::Group::\"viewers\"",
            "forbid (principal in Callgate::Group::\"viewers\"",
        ),
    );
    assert_eq!(ok().await, 403);
    // A broken edit is rejected; the last good policy (the forbid) stays in force.
    s.gw.edit("policies/main.cedar", "permit (principal, action, resource"); // syntax error
    assert_eq!(ok().await, 403);
    s.gw.edit(
        "policies/main.cedar",
        "permit (principal, action == Callgate::Action::\"no.such\", resource);",
    );
    assert_eq!(ok().await, 403);
    // Fixed again: applies at once.
    s.gw.edit("policies/main.cedar", POLICY);
    assert_eq!(ok().await, 200);
    // Written in place (same file, no rename), as `>` in a shell does: also at once.
    let forbid = POLICY.replace(
        "permit (principal in Callgate::Group::\"viewers\"",
        "forbid (principal in Callgate::Group::\"viewers\"",
    );
    std::fs::write(s.gw.path("policies/main.cedar"), &forbid).unwrap();
    assert_eq!(ok().await, 403);
    std::fs::write(s.gw.path("policies/main.cedar"), POLICY).unwrap();
    assert_eq!(ok().await, 200);
    // Between an in-place write's truncation and its data the file reads empty: that is never
    // applied. Here a file holding a forbid is caught empty; the forbid stays in force.
    std::fs::write(
        s.gw.path("policies/deny.cedar"),
        "forbid (principal == Callgate::User::\"victor\", action, resource);",
    )
    .unwrap();
    assert_eq!(ok().await, 403);
    std::fs::write(s.gw.path("policies/deny.cedar"), "").unwrap();
    assert_eq!(ok().await, 403);
    let config_text = std::fs::read_to_string(s.gw.path("callgate.yaml")).unwrap();
    std::fs::write(s.gw.path("callgate.yaml"), "").unwrap();
    assert_eq!(ok().await, 403);
    std::fs::remove_file(s.gw.path("policies/deny.cedar")).unwrap();
    std::fs::write(s.gw.path("callgate.yaml"), &config_text).unwrap();
    assert_eq!(ok().await, 200);
    // A new policy file in the directory is picked up too.
    std::fs::write(
        s.gw.path("policies/zz.cedar"),
        "forbid (principal == Callgate::User::\"victor\", action, resource);",
    )
    .unwrap();
    assert_eq!(ok().await, 403);
    // Config edits apply the same way; a broken config keeps the old one.
    let cfg = std::fs::read_to_string(s.gw.path("callgate.yaml")).unwrap();
    s.gw.edit("callgate.yaml", &format!("{cfg}\nnot_a_field: 1\n"));
    assert_eq!(ok().await, 403);
    std::fs::remove_file(s.gw.path("policies/zz.cedar")).unwrap();
    s.gw.edit("callgate.yaml", &cfg);
    assert_eq!(ok().await, 200);
    // Files came and went; the next check watches the new set (not falling back for good to
    // comparing metadata on every request), and edits still apply at once.
    assert_eq!(ok().await, 200);
    assert!(
        watching(),
        "still watching after files were added and removed"
    );
    std::fs::write(s.gw.path("policies/main.cedar"), &forbid).unwrap();
    assert_eq!(ok().await, 403);
}

#[tokio::test]
async fn operations_endpoints() {
    let s = setup().await;
    assert_eq!(get(&s.gw.url("/healthz"), &[]).await.json()["status"], "ok");
    let ready = get(&s.gw.url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["functions"], 7);
    let _ = get(&s.gw.url("/items/pub_1"), &s.viewer()).await;
    let _ = get(&s.gw.url("/items/priv_1"), &s.viewer()).await;
    let m = get(&s.gw.url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(
            r#"callgate_calls_total{function="items.get",decision="allow",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"callgate_calls_total{function="items.get",decision="deny",status="403"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("callgate_call_duration_seconds_bucket"));
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_calls() {
    let mut s = setup().await;
    let url = s.gw.url("/slow/ok/1");
    let key = s.ops.clone();
    let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.gw.shutdown();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight call completes");
    tokio::time::timeout(Duration::from_secs(10), s.gw.join.take().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(s.gw.addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// An upstream answering with a plain-text error, and with headers that belong to Callgate's
/// connection to it: cookies, a challenge, its own request id, `Connection`-listed headers.
async fn chatty_upstream() -> String {
    use axum::Router;
    use axum::routing::get as route_get;
    let app = Router::new()
        .route(
            "/oops/{id}",
            route_get(|| async {
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    [(http::header::CONTENT_TYPE, "text/plain")],
                    "the ledger is closed for the night",
                )
            }),
        )
        .route(
            "/cookie/{id}",
            route_get(|| async {
                (
                    [
                        ("set-cookie", "session=upstream-session-for-callgate"),
                        ("www-authenticate", "Basic realm=\"ledger\""),
                        ("x-request-id", "the-upstream-own-id"),
                        ("connection", "x-hop"),
                        ("x-hop", "for-callgate-only"),
                        ("x-kept", "yes"),
                    ],
                    axum::Json(serde_json::json!({"ok": true})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn upstream_answers_come_back_as_they_are_without_what_belongs_to_callgate() {
    let url = chatty_upstream().await;
    let (key, hash) = api_key();
    let config = format!(
        r#"
identity:
  api_keys: [{{id: ops, hash: "{hash}", subject: olivia, groups: [ops]}}]
upstreams:
  up: {{url: "{url}"}}
policies: [policies]
functions:
  - {{name: ledger.oops, upstream: up, route: "GET /oops/{{id}}"}}
  - {{name: ledger.cookie, upstream: up, route: "GET /cookie/{{id}}"}}
  - {{name: ledger.post, upstream: up, route: "POST /post"}}
"#
    );
    let gw = TestGateway::start(
        &config,
        &[(
            "main.cedar",
            r#"permit (principal in Callgate::Group::"ops", action, resource);"#,
        )],
    )
    .await;
    let h = [("x-api-key", key.as_str())];
    // The invoke API returns the upstream's status and body as they are, even a plain-text
    // error: it is the function's answer, not one of Callgate's own.
    let r = post_json(
        &gw.url("/v1/functions/ledger.oops/invoke"),
        &h,
        r#"{"arguments":{"id":"1"}}"#,
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.text(), "the ledger is closed for the night");
    // Headers for Callgate's connection and credential do not reach the caller, with or
    // without a masking profile: a cookie the upstream set for Callgate's credential would
    // be a standing credential for the backend.
    for r in [
        get(&gw.url("/cookie/1"), &h).await,
        post_json(
            &gw.url("/v1/functions/ledger.cookie/invoke"),
            &h,
            r#"{"arguments":{"id":"1"}}"#,
        )
        .await,
    ] {
        assert_eq!(r.status, 200);
        for gone in ["set-cookie", "www-authenticate", "x-hop"] {
            assert!(r.header(gone).is_none(), "{gone} reached the caller");
        }
        assert_eq!(r.header("x-kept"), Some("yes"));
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, "the-upstream-own-id", "the call keeps Callgate's id");
        assert_eq!(id.len(), 36, "{id}");
    }
    // A coded request body is refused, not guessed at.
    let r = send(
        Method::POST,
        &gw.url("/post"),
        &[
            ("x-api-key", key.as_str()),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        Some(br#"{"a":1}"#),
    )
    .await;
    let p = r.problem(400);
    assert!(
        p["detail"].as_str().unwrap().contains("Content-Encoding"),
        "{p}"
    );
}
