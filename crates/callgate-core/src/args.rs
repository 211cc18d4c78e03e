//! Arguments: from a request into the call model, checked against the schema, and back out
//! into the upstream request.
//!
//! Both directions live here so they stay inverse to each other: whatever the transparent proxy
//! or the invoke API accepted as arguments is exactly what is written into the upstream
//! request's path, query and body — nothing of the original request's bytes is forwarded.

use serde_json::{Map, Number, Value};

use crate::config::ArgSource;
use crate::json;
use crate::refusal::{FieldError, Refusal};
use crate::registry::{ArgType, FunctionDef};

/// Escapes a JSON pointer reference token (RFC 6901).
pub fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Turns a string from a path or query into the argument's declared type.
fn coerce(name: &str, raw: &str, ty: &ArgType) -> Result<Value, FieldError> {
    let bad = |what: &str| FieldError {
        pointer: format!("/{}", pointer_token(name)),
        detail: format!("expected {what}, found {raw:?}"),
    };
    Ok(match ty {
        ArgType::Integer => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad("an integer"))?,
        ArgType::Number => raw
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| bad("a number"))?,
        ArgType::Boolean => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("true or false")),
        },
        _ => Value::String(raw.to_owned()),
    })
}

/// Whether a `Content-Type` names JSON (`application/json` or `application/*+json`).
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The pieces of an HTTP request that can carry arguments.
pub struct HttpArgs<'a> {
    pub path_params: Vec<(String, String)>,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

fn insert_once(args: &mut Map<String, Value>, name: String, v: Value) -> Result<(), Refusal> {
    if args.contains_key(&name) {
        return Err(Refusal::bad_request(format!(
            "argument {name:?} is given more than once (path, query or body)"
        )));
    }
    args.insert(name, v);
    Ok(())
}

/// Extracts the arguments of a proxied request: path parameters, query parameters and a JSON
/// object body, each given at most once.
/// The name/value pairs of a query string, decoded as `application/x-www-form-urlencoded`
/// (`+` is a space), strictly: a name or value that is not UTF-8 once decoded is refused
/// rather than read with replacement characters, as paths are.
fn query_pairs(q: &str) -> Result<Vec<(String, String)>, Refusal> {
    let decode = |part: &str| {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                Refusal::bad_request("a query parameter is not valid UTF-8 once percent-decoded")
            })
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

pub fn from_http(func: &FunctionDef, req: HttpArgs<'_>) -> Result<Map<String, Value>, Refusal> {
    let mut args = Map::new();
    let mut errors = Vec::new();
    for (name, raw) in req.path_params {
        match coerce(&name, &raw, func.arg_type(&name)) {
            Ok(v) => insert_once(&mut args, name, v)?,
            Err(e) => errors.push(e),
        }
    }
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        let mut arrays: Map<String, Value> = Map::new();
        for (k, v) in query_pairs(q)? {
            match func.arg_type(&k) {
                ArgType::Array(item) => match coerce(&k, &v, item) {
                    Ok(v) => arrays
                        .entry(k)
                        .or_insert_with(|| Value::Array(vec![]))
                        .as_array_mut()
                        .expect("inserted as array")
                        .push(v),
                    Err(e) => errors.push(e),
                },
                ty => match coerce(&k, &v, ty) {
                    Ok(v) => insert_once(&mut args, k, v)?,
                    Err(e) => errors.push(e),
                },
            }
        }
        for (k, v) in arrays {
            insert_once(&mut args, k, v)?;
        }
    }
    let json_declared = req.content_type.is_some_and(is_json_media_type);
    if !req.body.is_empty() || json_declared {
        match req.content_type {
            Some(ct) if is_json_media_type(ct) => {}
            Some(ct) => {
                return Err(Refusal::bad_request(format!(
                    "function {} takes a JSON body, not {ct:?}",
                    func.name
                )));
            }
            None => {
                return Err(Refusal::bad_request(format!(
                    "function {} takes a JSON body: set Content-Type: application/json",
                    func.name
                )));
            }
        }
        let body = json::parse_object(req.body)
            .map_err(|e| Refusal::bad_request(format!("the body is not acceptable JSON: {e}")))?;
        for (k, v) in body {
            insert_once(&mut args, k, v)?;
        }
    }
    if !errors.is_empty() {
        return Err(Refusal::InvalidArguments { errors });
    }
    Ok(args)
}

/// Extracts the arguments of an invoke API body: `{"arguments": {...}}`.
pub fn from_invoke_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, Refusal> {
    Ok(from_invoke_request(content_type, body)?.0)
}

/// The invoke body `{"arguments": {...}, "reason": "..."}`: the arguments and the caller's
/// reason for the call, if given (shown to approvers).
pub fn from_invoke_request(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(Map<String, Value>, Option<String>), Refusal> {
    match content_type {
        Some(ct) if is_json_media_type(ct) => {}
        _ => {
            return Err(Refusal::bad_request(
                "the invoke API takes Content-Type: application/json",
            ));
        }
    }
    let mut obj = json::parse_object(body)
        .map_err(|e| Refusal::bad_request(format!("the body is not acceptable JSON: {e}")))?;
    if let Some(k) = obj.keys().find(|k| *k != "arguments" && *k != "reason") {
        return Err(Refusal::bad_request(format!(
            "unknown field {k:?} in the invoke body (expected {{\"arguments\": {{...}}, \"reason\": \"...\"}})"
        )));
    }
    let reason = match obj.remove("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(Refusal::bad_request("\"reason\" must be a string")),
    };
    match obj.remove("arguments") {
        None => Ok((Map::new(), reason)),
        Some(Value::Object(m)) => Ok((m, reason)),
        Some(other) => Err(Refusal::invalid_argument(
            "",
            format!(
                "\"arguments\" must be an object, found {}",
                json::kind_of(&other)
            ),
        )),
    }
}

/// Checks a caller's reason: 1 to 1,000 characters, no control characters.
pub fn check_reason(reason: &str) -> Result<(), Refusal> {
    let n = reason.chars().count();
    if n == 0 || n > 1000 || reason.chars().any(char::is_control) || reason.trim().is_empty() {
        return Err(Refusal::bad_request(
            "the reason must be 1 to 1000 characters of text without control characters",
        ));
    }
    Ok(())
}

/// Checks the arguments against the function's schema; every violation is reported with the
/// JSON pointer of the offending field.
/// The largest integer every JSON implementation (and the audit log's canonical form, RFC 8785)
/// represents exactly: 2^53 - 1.
pub const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// Whether every integer in `v` is within ±(2^53 - 1), so policy, the audit record and the
/// upstream all see exactly the same number.
pub fn numbers_are_exact(v: &Value) -> bool {
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u <= MAX_EXACT_INTEGER,
            (None, Some(i)) => i.unsigned_abs() <= MAX_EXACT_INTEGER,
            _ => true,
        },
        Value::Array(a) => a.iter().all(numbers_are_exact),
        Value::Object(o) => o.values().all(numbers_are_exact),
        _ => true,
    }
}

fn exact_numbers(v: &Value, pointer: &str) -> Result<(), Refusal> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| exact_numbers(x, &format!("{pointer}/{i}"))),
        Value::Object(o) => o
            .iter()
            .try_for_each(|(k, x)| exact_numbers(x, &format!("{pointer}/{}", pointer_token(k)))),
        v if !numbers_are_exact(v) => Err(Refusal::invalid_argument(
            pointer,
            "integers beyond ±9007199254740991 (2^53 - 1) cannot be represented exactly everywhere; send it as a string",
        )),
        _ => Ok(()),
    }
}

pub fn validate(func: &FunctionDef, args: &Map<String, Value>) -> Result<(), Refusal> {
    for (k, v) in args {
        exact_numbers(v, &format!("/{}", pointer_token(k)))?;
    }
    // The upstream must never see a caller's value next to (or instead of) the credential
    // Callgate sends in that query parameter; frameworks disagree on which one they read.
    if let Some(q) = crate::registry::credential_query(func.credential.as_ref())
        && args.contains_key(q)
    {
        return Err(Refusal::invalid_argument(
            format!("/{}", pointer_token(q)),
            "reserved: the upstream credential is sent in this query parameter",
        ));
    }
    let Some(validator) = &func.validator else {
        return Ok(());
    };
    let instance = Value::Object(args.clone());
    let mut errors: Vec<FieldError> = validator
        .iter_errors(&instance)
        .map(|e| {
            use jsonschema::error::ValidationErrorKind as K;
            let base = e.instance_path().as_str().to_string();
            let pointer = match e.kind() {
                K::AdditionalProperties { unexpected } if !unexpected.is_empty() => {
                    format!("{base}/{}", pointer_token(&unexpected[0]))
                }
                K::Required { property } => {
                    format!(
                        "{base}/{}",
                        pointer_token(property.as_str().unwrap_or_default())
                    )
                }
                _ => base,
            };
            FieldError {
                pointer,
                detail: e.to_string(),
            }
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    errors.dedup();
    Err(Refusal::InvalidArguments { errors })
}

/// The upstream request a call becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamShape {
    pub method: http::Method,
    /// Path and query, relative to the upstream base URL.
    pub path_and_query: String,
    /// A JSON body serialized from the arguments, when the function takes one.
    pub body: Option<Vec<u8>>,
}

fn scalar_text(name: &str, v: &Value) -> Result<String, Refusal> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(Refusal::invalid_argument(
            format!("/{}", pointer_token(name)),
            format!("{} cannot be sent in a URL", json::kind_of(v)),
        )),
    }
}

/// Builds the upstream request from the call's arguments.
pub fn upstream_shape(
    func: &FunctionDef,
    args: &Map<String, Value>,
) -> Result<UpstreamShape, Refusal> {
    let path = func
        .route
        .render(|name| args.get(name).and_then(|v| scalar_text(name, v).ok()))
        .map_err(|(name, e)| Refusal::invalid_argument(format!("/{}", pointer_token(&name)), e))?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut has_query = false;
    let mut body = Map::new();
    for (name, v) in args {
        match func.source_of(name) {
            ArgSource::Path => {}
            ArgSource::Query => {
                has_query = true;
                match v {
                    Value::Array(items) => {
                        for item in items {
                            query.append_pair(name, &scalar_text(name, item)?);
                        }
                    }
                    Value::Null => {}
                    _ => {
                        query.append_pair(name, &scalar_text(name, v)?);
                    }
                }
            }
            ArgSource::Body => {
                body.insert(name.clone(), v.clone());
            }
        }
    }
    let mut path_and_query = path;
    if has_query {
        let q = query.finish();
        if !q.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(&q);
        }
    }
    let body = if !body.is_empty() || !func.method_has_no_body() {
        Some(serde_json::to_vec(&Value::Object(body)).expect("JSON values serialize"))
    } else {
        None
    };
    Ok(UpstreamShape {
        method: func.route.method.clone(),
        path_and_query,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::{Registry, Resolved};
    use serde_json::json;

    fn registry() -> Registry {
        let cfg = Config::parse(
            r#"
upstreams: {u: {url: "http://127.0.0.1:9"}}
functions:
  - name: users.get
    upstream: u
    route: GET /users/{id}
    arguments:
      type: object
      properties:
        id: {type: string}
        verbose: {type: boolean}
        tags: {type: array, items: {type: string}}
      required: [id]
      additionalProperties: false
  - name: quota.adjust
    upstream: u
    route: POST /quota/adjust
    arguments:
      type: object
      properties:
        account_id: {type: string, pattern: "^acct_"}
        delta: {type: integer}
      required: [account_id, delta]
      additionalProperties: false
"#,
            &|_| None,
        )
        .unwrap();
        Registry::build(&cfg).unwrap()
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused_wherever_they_are() {
        let reg = registry();
        let f = reg.get("quota.adjust").unwrap();
        let ok = json!({"account_id": "acct_1", "delta": 9007199254740991i64});
        validate(f, ok.as_object().unwrap()).unwrap();
        let neg = json!({"account_id": "acct_1", "delta": -9007199254740991i64});
        validate(f, neg.as_object().unwrap()).unwrap();
        for (bad, pointer) in [
            (
                json!({"account_id": "acct_1", "delta": 9007199254740993u64}),
                "/delta",
            ),
            (
                json!({"account_id": "acct_1", "delta": -9007199254740993i64}),
                "/delta",
            ),
        ] {
            match validate(f, bad.as_object().unwrap()) {
                Err(Refusal::InvalidArguments { errors }) => assert_eq!(errors[0].pointer, pointer),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let users = reg.get("users.get").unwrap();
        let nested = json!({"id": "u", "tags": [1, 18446744073709551615u64]});
        match validate(users, nested.as_object().unwrap()) {
            Err(Refusal::InvalidArguments { errors }) => assert_eq!(errors[0].pointer, "/tags/1"),
            other => panic!("{other:?}"),
        }
        assert!(numbers_are_exact(
            &json!({"x": [1.5, -3, {"y": 9007199254740991u64}]})
        ));
    }

    #[test]
    fn proxy_arguments_round_trip_to_the_upstream() {
        let reg = registry();
        let f = reg.get("users.get").unwrap();
        let args = from_http(
            f,
            HttpArgs {
                path_params: vec![("id".into(), "u 1".into())],
                query: Some("verbose=true&tags=a&tags=b"),
                content_type: None,
                body: b"",
            },
        )
        .unwrap();
        assert_eq!(
            Value::Object(args.clone()),
            json!({"id": "u 1", "verbose": true, "tags": ["a", "b"]})
        );
        validate(f, &args).unwrap();
        let shape = upstream_shape(f, &args).unwrap();
        assert_eq!(
            shape.path_and_query,
            "/users/u%201?verbose=true&tags=a&tags=b"
        );
        assert_eq!(shape.body, None);
    }

    #[test]
    fn bad_inputs_are_refused_with_the_right_kind() {
        let reg = registry();
        let f = reg.get("quota.adjust").unwrap();
        let http = |q: Option<&'static str>, ct: Option<&'static str>, body: &'static [u8]| {
            from_http(
                f,
                HttpArgs {
                    path_params: vec![],
                    query: q,
                    content_type: ct,
                    body,
                },
            )
        };
        // duplicate key, wrong content type, missing content type, non-object, trailing garbage
        for (ct, body) in [
            (Some("application/json"), &br#"{"delta":1,"delta":2}"#[..]),
            (Some("text/plain"), br#"{"delta":1}"#),
            (None, br#"{"delta":1}"#),
            (Some("application/json"), b"[1]"),
            (Some("application/json"), br#"{"delta":1}x"#),
        ] {
            assert_eq!(http(None, ct, body).unwrap_err().status(), 400, "{body:?}");
        }
        // an argument in both query and body is ambiguous
        assert_eq!(
            http(Some("delta=1"), Some("application/json"), br#"{"delta":1}"#)
                .unwrap_err()
                .status(),
            400
        );
        let args = http(
            None,
            Some("application/json"),
            br#"{"account_id":"x","delta":"1","extra":1}"#,
        )
        .unwrap();
        let Refusal::InvalidArguments { errors } = validate(f, &args).unwrap_err() else {
            panic!()
        };
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["/account_id", "/delta", "/extra"]);
        let args = http(
            None,
            Some("application/json"),
            br#"{"account_id":"acct_1"}"#,
        )
        .unwrap();
        let Refusal::InvalidArguments { errors } = validate(f, &args).unwrap_err() else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/delta");
    }

    #[test]
    fn path_parameter_types_are_coerced_or_refused() {
        let reg = registry();
        let f = reg.get("users.get").unwrap();
        let err = from_http(
            f,
            HttpArgs {
                path_params: vec![],
                query: Some("verbose=yes"),
                content_type: None,
                body: b"",
            },
        )
        .unwrap_err();
        assert_eq!(err.status(), 422);
        let err = from_http(
            f,
            HttpArgs {
                path_params: vec![],
                query: Some("verbose=true&verbose=false"),
                content_type: None,
                body: b"",
            },
        )
        .unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn tool_name_aliases_are_unique() {
        let cfg = Config::parse(
            "upstreams: {u: {url: \"http://127.0.0.1:9\"}}\nfunctions:\n  - {name: a.b, upstream: u, route: GET /x}\n  - {name: a__b, upstream: u, route: GET /y}\n",
            &|_| None,
        )
        .unwrap();
        let errs = Registry::build(&cfg).unwrap_err();
        assert!(errs[0].contains("tool name"), "{errs:?}");
        assert_eq!(
            registry().get_or_alias("users__get").unwrap().name,
            "users.get"
        );
    }

    #[test]
    fn routes_that_cross_are_refused_and_nested_ones_resolve_to_the_narrower() {
        let build = |routes: &[&str]| {
            let mut text =
                String::from("upstreams: {u: {url: \"http://127.0.0.1:9\"}}\nfunctions:\n");
            for (i, r) in routes.iter().enumerate() {
                text.push_str(&format!(
                    "  - {{name: f.n{i}, upstream: u, route: \"{r}\"}}\n"
                ));
            }
            Registry::build(&Config::parse(&text, &|_| None).unwrap())
        };
        // Crossing: `/admin/settings` matches both and neither is narrower.
        let errs = build(&["GET /{org}/settings", "GET /admin/{page}"]).unwrap_err();
        assert!(
            errs[0].contains("/admin/settings")
                && errs[0].contains("neither route is more specific"),
            "{errs:?}"
        );
        let errs = build(&["GET /a/{x}/c", "GET /{y}/b/c", "GET /a/b/{z}"]).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        // Identical shapes.
        let errs = build(&["GET /users/{id}", "GET /users/{name}"]).unwrap_err();
        assert!(errs[0].contains("both declare"), "{errs:?}");
        // Crossing routes on different methods, or of different lengths, never meet.
        build(&[
            "GET /{org}/settings",
            "POST /admin/{page}",
            "GET /admin/{page}/x",
        ])
        .unwrap();
        // Nested, declared in either order: the narrower route wins.
        for routes in [
            ["GET /users/{id}", "GET /users/me", "GET /{kind}/{id}"],
            ["GET /{kind}/{id}", "GET /users/me", "GET /users/{id}"],
        ] {
            let reg = build(&routes).unwrap();
            let name = |path: &[&str]| {
                let segs: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                match reg.resolve(&http::Method::GET, &segs) {
                    Resolved::Found(f, _) => f.route.template().to_string(),
                    _ => panic!("{path:?} not found"),
                }
            };
            assert_eq!(name(&["users", "me"]), "/users/me");
            assert_eq!(name(&["users", "7"]), "/users/{id}");
            assert_eq!(name(&["teams", "7"]), "/{kind}/{id}");
        }
    }

    #[test]
    fn an_argument_named_like_the_credential_query_parameter_is_refused() {
        let text = |props: &str| {
            format!(
                "upstreams: {{u: {{url: \"http://127.0.0.1:9\"}}}}\nfunctions:\n  - {{name: s.q, upstream: u, route: GET /s, arguments: {{type: object, properties: {{{props}}}}}, credential: {{type: secret, env: K, query: api_key}}}}\n"
            )
        };
        // Declared in the schema: a configuration error.
        let cfg = Config::parse(&text("api_key: {type: string}"), &|_| None).unwrap();
        let errs = Registry::build(&cfg).unwrap_err();
        assert!(
            errs[0].contains("api_key") && errs[0].contains("query parameter"),
            "{errs:?}"
        );
        // Sent anyway as an extra argument: 422 at that field.
        let cfg = Config::parse(&text("q: {type: string}"), &|_| None).unwrap();
        let reg = Registry::build(&cfg).unwrap();
        let f = reg.get_or_alias("s.q").unwrap();
        let args = json!({"q": "x", "api_key": "MINE"});
        let err = validate(f, args.as_object().unwrap()).unwrap_err();
        assert_eq!(err.status(), 422);
        let Refusal::InvalidArguments { errors } = err else {
            unreachable!()
        };
        assert_eq!(errors[0].pointer, "/api_key");
        validate(f, json!({"q": "x"}).as_object().unwrap()).unwrap();
    }

    #[test]
    fn upstream_tools_whose_names_collide_are_not_served() {
        let cfg = Config::parse(
            "mcp:\n  enabled: true\n  servers:\n    github: {url: \"http://127.0.0.1:9/mcp\", tools: {delete_repo: {approval: \"1 of approvers\"}}}\n",
            &|_| None,
        )
        .unwrap();
        let tool = |name: &str| crate::registry::ToolDef {
            name: name.into(),
            description: String::new(),
            input_schema: json!({"type": "object"}),
        };
        let mut reg = Registry::build(&cfg).unwrap();
        let pinned = [
            ("github".to_string(), tool("Delete-repo")),
            ("github".to_string(), tool("delete_repo")),
            ("github".to_string(), tool("list_repos")),
        ];
        let problems = reg.add_mcp_tools(&cfg, &pinned);
        assert!(reg.get_or_alias("github.delete_repo").is_none());
        assert!(reg.get_or_alias("github.list_repos").is_some());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("github.delete_repo"), "{problems:?}");
        // Alone, the reviewed tool is served with its approval.
        let mut reg = Registry::build(&cfg).unwrap();
        assert!(reg.add_mcp_tools(&cfg, &pinned[1..]).is_empty());
        assert!(
            reg.get_or_alias("github.delete_repo")
                .unwrap()
                .approval
                .is_some()
        );
    }

    #[test]
    fn query_strings_decode_strictly() {
        let pairs = |q: &str| query_pairs(q).map_err(|e| e.status());
        assert_eq!(
            pairs("a+b=c%20d&&e&f=%E2%82%AC=x&").unwrap(),
            [
                ("a b".to_string(), "c d".to_string()),
                ("e".to_string(), String::new()),
                ("f".to_string(), "€=x".to_string()),
            ]
        );
        for bad in ["q=%FF", "%C3=1", "q=%ED%A0%80", "q=ok&r=%E2%82"] {
            assert_eq!(pairs(bad), Err(400), "{bad}");
        }
    }

    #[test]
    fn invoke_body_shape() {
        assert_eq!(
            from_invoke_body(Some("application/json"), br#"{"arguments":{"a":1}}"#).unwrap()["a"],
            1
        );
        assert!(from_invoke_body(Some("application/json"), br#"{"args":{}}"#).is_err());
        assert_eq!(
            from_invoke_body(Some("application/json"), br#"{"arguments":[]}"#)
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            from_invoke_body(Some("text/plain"), b"{}")
                .unwrap_err()
                .status(),
            400
        );
        let shape = upstream_shape(
            registry().get("quota.adjust").unwrap(),
            &from_invoke_body(
                Some("application/json"),
                br#"{"arguments":{"delta":5,"account_id":"acct_1"}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(shape.path_and_query, "/quota/adjust");
        assert_eq!(shape.body.unwrap(), br#"{"delta":5,"account_id":"acct_1"}"#);
    }
}
