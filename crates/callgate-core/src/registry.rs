//! The function registry: declared functions compiled for the data path.
//!
//! Built once per config (re)load. Resolving a request — by name for the invoke API, by
//! method and normalized path for the transparent proxy — is a lookup here.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ArgSource, Config};
use crate::route::{Overlap, Route};

/// The JSON type an argument has, as far as policy and string coercion care.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgType {
    String,
    Integer,
    Number,
    Boolean,
    Array(Box<ArgType>),
    Object(BTreeMap<String, (ArgType, bool)>),
    /// No `type` in the schema: passed through, not visible to policy.
    Any,
}

impl ArgType {
    /// Reads the (subset of) JSON Schema that determines a value's type.
    pub fn from_schema(schema: &Value) -> ArgType {
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => return ArgType::Any,
        };
        match ty {
            "string" => ArgType::String,
            "integer" => ArgType::Integer,
            "number" => ArgType::Number,
            "boolean" => ArgType::Boolean,
            "array" => ArgType::Array(Box::new(
                schema
                    .get("items")
                    .map(ArgType::from_schema)
                    .unwrap_or(ArgType::Any),
            )),
            "object" => ArgType::Object(object_fields(schema)),
            _ => ArgType::Any,
        }
    }
}

/// Properties of an object schema: name → (type, required).
pub fn object_fields(schema: &Value) -> BTreeMap<String, (ArgType, bool)> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (ArgType::from_schema(v), required.contains(&k.as_str())),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What executes a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An HTTP endpoint: the function's route on its upstream.
    Http,
    /// A tool of an upstream MCP server (`mcp.servers.<server>`), by the server's own name.
    McpTool { server: String, tool: String },
    /// An MCP request other than `tools/call` on an upstream server ([`MCP_METHODS`]):
    /// reading a resource, getting a prompt. Named `<prefix>:<method>`, so policies allow
    /// them per server (`Callgate::Action::"crm:resources/read"`); never in the HTTP catalog.
    McpMethod { server: String, method: String },
    /// A request upstream MCP server `server` makes of the agent's MCP client while one of
    /// the agent's calls runs ([`MCP_SERVER_REQUESTS`]): sampling, elicitation, roots. Named
    /// `<prefix>:<method>`; decided for the agent's principal and relayed to the agent's
    /// client, never to a server.
    McpServerRequest { server: String, method: String },
}

impl Backend {
    /// Whether callers name this function themselves (an HTTP function, an MCP tool), as
    /// opposed to an MCP request Callgate relays (resources, prompts, a server's requests),
    /// which never appears in the catalog, the invoke API or `tools/list`.
    pub fn is_callable(&self) -> bool {
        matches!(self, Backend::Http | Backend::McpTool { .. })
    }
}

/// The MCP requests, besides `tools/call`, that Callgate relays to an upstream server when
/// policy allows them, with the arguments policy sees.
pub const MCP_METHODS: &[&str] = &["resources/read", "prompts/get"];

/// The requests an upstream MCP server may make of the agent's client during a call, which
/// Callgate relays when policy allows them, with the request's params as the arguments.
pub const MCP_SERVER_REQUESTS: &[&str] =
    &["sampling/createMessage", "elicitation/create", "roots/list"];

/// The registry name of MCP request `method` on the server with tool prefix `prefix`
/// (`crm:resources/read`). The colon and slash keep it apart from every function name.
pub fn mcp_method_function_name(prefix: &str, method: &str) -> String {
    format!("{prefix}:{method}")
}

/// The argument schema of an MCP method's normalized call. A server's request keeps every
/// param it sent (the protocol adds fields); the typed ones are what policy can test.
fn mcp_method_schema(method: &str) -> Value {
    match method {
        "sampling/createMessage" => serde_json::json!({
            "type": "object",
            "properties": {
                "messages": {"type": "array", "items": {"type": "object"}},
                "maxTokens": {"type": "integer", "minimum": 1},
                "systemPrompt": {"type": "string"},
                "includeContext": {"type": "string"}
            },
            "required": ["messages", "maxTokens"]
        }),
        "elicitation/create" => serde_json::json!({
            "type": "object",
            "properties": {
                "mode": {"type": "string", "enum": ["form", "url"]},
                "message": {"type": "string"},
                "url": {"type": "string"},
                "elicitationId": {"type": "string"},
                "requestedSchema": {"type": "object"}
            },
            "required": ["message"]
        }),
        "roots/list" => serde_json::json!({"type": "object"}),
        "resources/read" => serde_json::json!({
            "type": "object",
            "properties": {"uri": {"type": "string", "description": "the resource's URI"}},
            "required": ["uri"],
            "additionalProperties": false
        }),
        _ => serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "the prompt's name on its server"},
                "arguments": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "required": ["name"],
            "additionalProperties": false
        }),
    }
}

/// An upstream MCP tool definition as pinned (the approved version): the server's tool name,
/// description and input schema. The description is shown to agents, never to policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "inputSchema")]
    pub input_schema: Value,
}

/// The registry name of upstream tool `tool` under `prefix`: lowercase, and every character a
/// function name cannot hold becomes `_` (`createIssue` → `github.createissue`,
/// `get-file` → `github.get_file`).
pub fn tool_function_name(prefix: &str, tool: &str) -> String {
    let mut name: String = tool
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Each dotted part must start with a letter.
    name = name
        .split('.')
        .map(|part| match part.chars().next() {
            Some(c) if c.is_ascii_lowercase() => part.to_string(),
            _ => format!("t{part}"),
        })
        .collect::<Vec<_>>()
        .join(".");
    format!("{prefix}.{name}")
}

/// A function served by upstream MCP server `server`, with the server's defaults: its risk,
/// credential, masking profile and timeout; no approval of its own; not idempotent.
fn mcp_function(
    server: &str,
    srv: &crate::config::McpServerConfig,
    name: String,
    schema: Value,
    validator: jsonschema::Validator,
    default_timeout: Duration,
    backend: Backend,
) -> FunctionDef {
    FunctionDef {
        name,
        description: String::new(),
        upstream: format!("mcp:{server}"),
        upstream_url: srv
            .url
            .clone()
            .unwrap_or_else(|| format!("stdio:{}", srv.command.join(" "))),
        route: Route::parse("POST /").expect("static route"),
        fields: object_fields(&schema),
        schema: Some(schema),
        validator: Some(validator),
        bind: BTreeMap::new(),
        risk: srv.risk.clone(),
        timeout: srv
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(default_timeout),
        approval: None,
        idempotent: false,
        break_glass: Vec::new(),
        credential: srv.credential.clone(),
        mask: srv.mask.clone(),
        forward_headers: Vec::new(),
        backend,
    }
}

/// The risk labels a function may carry (policy sees them as `resource.risk`).
pub const RISKS: &[&str] = &["low", "medium", "high", "critical"];

/// One declared function, ready for the data path.
pub struct FunctionDef {
    pub name: String,
    pub description: String,
    pub upstream: String,
    pub upstream_url: String,
    pub route: Route,
    /// The arguments' JSON Schema as declared (served in the catalog).
    pub schema: Option<Value>,
    pub(crate) validator: Option<jsonschema::Validator>,
    /// Declared arguments: name → (type, required).
    pub fields: BTreeMap<String, (ArgType, bool)>,
    pub bind: BTreeMap<String, ArgSource>,
    pub risk: String,
    pub timeout: Duration,
    /// The function's default approval requirement (merged with any `@approval` obligation).
    pub approval: Option<callgate_approvals::Requirement>,
    /// Executing the same call twice is harmless: an approved call interrupted by a crash is
    /// executed again instead of being marked `unknown`.
    pub idempotent: bool,
    /// Groups that may call without approval in an emergency (break-glass).
    pub break_glass: Vec<String>,
    /// The just-in-time credential for the upstream (the function's, else the upstream's).
    pub credential: Option<crate::config::CredentialConfig>,
    /// The masking profile for responses.
    pub mask: Option<String>,
    /// Request headers passed upstream besides the default ones (lower-case; checked by
    /// [`crate::headers::check_forwardable`]).
    pub forward_headers: Vec<String>,
    /// What executes it. For an MCP tool, `route` is unused and the proxy never matches it.
    pub backend: Backend,
}

impl fmt::Debug for FunctionDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionDef")
            .field("name", &self.name)
            .field("route", &self.route)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl FunctionDef {
    /// Where argument `name` travels upstream.
    pub fn source_of(&self, name: &str) -> ArgSource {
        if self.route.params().any(|p| p == name) {
            return ArgSource::Path;
        }
        if let Some(s) = self.bind.get(name) {
            return *s;
        }
        if self.method_has_no_body() {
            ArgSource::Query
        } else {
            ArgSource::Body
        }
    }

    /// GET, HEAD, DELETE and OPTIONS carry their arguments in the query by default.
    pub fn method_has_no_body(&self) -> bool {
        use http::Method;
        matches!(
            self.route.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        )
    }

    /// The declared type of a top-level argument.
    pub fn arg_type(&self, name: &str) -> &ArgType {
        self.fields
            .get(name)
            .map(|(t, _)| t)
            .unwrap_or(&ArgType::Any)
    }
}

/// All declared functions.
#[derive(Debug, Default)]
pub struct Registry {
    functions: Vec<Arc<FunctionDef>>,
    by_name: HashMap<String, Arc<FunctionDef>>,
    /// OpenAI-safe tool names (see [`openai_name`]) → function.
    by_alias: HashMap<String, Arc<FunctionDef>>,
}

/// The function name as an OpenAI tool name (`[a-zA-Z0-9_-]`): dots become `__`.
pub fn openai_name(name: &str) -> String {
    name.replace('.', "__")
}

/// A function name is dotted lowercase identifiers: `billing.reset_account`.
pub fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

impl Registry {
    /// Compiles the functions of `cfg`; every problem found is reported, not just the first.
    pub fn build(cfg: &Config) -> Result<Registry, Vec<String>> {
        let mut errors = Vec::new();
        let mut reg = Registry::default();
        let default_timeout = Duration::from_millis(cfg.limits.upstream_timeout_ms);
        for f in &cfg.functions {
            let at = format!("function {:?}", f.name);
            if !valid_function_name(&f.name) {
                errors.push(format!(
                    "{at}: names are dotted lowercase identifiers such as billing.reset_account"
                ));
                continue;
            }
            // The Cedar action groups every function (`call`) and every MCP resource or prompt
            // (`mcp`) belongs to: a function of that name would join or loop the hierarchy.
            if f.name == "call" || f.name == "mcp" {
                errors.push(format!(
                    "{at}: {:?} is reserved (the Cedar action group of {})",
                    f.name,
                    if f.name == "call" {
                        "every function"
                    } else {
                        "MCP resources and prompts"
                    }
                ));
                continue;
            }
            if reg.by_name.contains_key(&f.name) {
                errors.push(format!("{at}: declared twice"));
                continue;
            }
            let route = match Route::parse(&f.route) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let Some(up) = cfg.upstreams.get(&f.upstream) else {
                errors.push(format!(
                    "{at}: unknown upstream {:?}{} — declare it under upstreams:",
                    f.upstream,
                    crate::locate::did_you_mean(
                        &f.upstream,
                        cfg.upstreams.keys().map(String::as_str)
                    )
                ));
                continue;
            };
            if !RISKS.contains(&f.risk.as_str()) {
                errors.push(format!(
                    "{at}: risk {:?} is not one of {}{}",
                    f.risk,
                    RISKS.join(", "),
                    crate::locate::did_you_mean(&f.risk, RISKS.iter().copied())
                ));
            }
            let validator = match &f.arguments {
                None => None,
                Some(schema) => {
                    if schema.get("type").and_then(Value::as_str) != Some("object") {
                        errors.push(format!(
                            "{at}: the arguments schema must have \"type\": \"object\""
                        ));
                        continue;
                    }
                    match jsonschema::validator_for(schema) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            errors.push(format!("{at}: invalid arguments schema: {e}"));
                            continue;
                        }
                    }
                }
            };
            let approval = match f
                .approval
                .as_deref()
                .map(callgate_approvals::Requirement::parse)
            {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => {
                    errors.push(format!("{at}: approval: {}", e.message));
                    continue;
                }
            };
            let fields = f.arguments.as_ref().map(object_fields).unwrap_or_default();
            for p in route.params() {
                if f.bind.get(p).is_some_and(|s| *s != ArgSource::Path) {
                    errors.push(format!(
                        "{at}: {p} is a path parameter and cannot be bound elsewhere"
                    ));
                }
                match fields.get(p) {
                    Some((ArgType::Object(_) | ArgType::Array(_), _)) => {
                        errors.push(format!("{at}: path parameter {p} must be a scalar"))
                    }
                    Some((_, false)) => errors.push(format!(
                        "{at}: path parameter {p} must be required in the schema"
                    )),
                    None if f.arguments.is_some() => errors.push(format!(
                        "{at}: path parameter {p} is not declared in the arguments schema \
                         (add it to properties and required, or every call is refused)"
                    )),
                    _ => {}
                }
            }
            for (name, src) in &f.bind {
                if *src == ArgSource::Path && !route.params().any(|p| p == name) {
                    errors.push(format!(
                        "{at}: {name} is bound to the path but the route has no {{{name}}}"
                    ));
                }
            }
            let mut forward_headers = Vec::new();
            for h in &f.forward_headers {
                match crate::headers::check_forwardable(h) {
                    Ok(name) => forward_headers.push(name),
                    Err(why) => errors.push(format!("{at}: forward_headers: {why}")),
                }
            }
            let credential = f.credential.clone().or_else(|| up.credential.clone());
            if let Some(q) = credential_query(credential.as_ref())
                && fields.contains_key(q)
            {
                errors.push(format!(
                    "{at}: argument {q} has the name of the query parameter the upstream \
                     credential is sent in"
                ));
            }
            let def = Arc::new(FunctionDef {
                name: f.name.clone(),
                description: f.description.clone(),
                upstream: f.upstream.clone(),
                upstream_url: up.url.trim_end_matches('/').to_string(),
                route,
                schema: f.arguments.clone(),
                validator,
                fields,
                bind: f.bind.clone(),
                risk: f.risk.clone(),
                timeout: f
                    .timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(default_timeout),
                approval,
                idempotent: f.idempotent,
                break_glass: f.break_glass.clone(),
                credential,
                mask: f.mask.clone(),
                forward_headers,
                backend: Backend::Http,
            });
            if let Some(other) = reg.by_alias.insert(openai_name(&f.name), def.clone()) {
                errors.push(format!(
                    "{at}: its tool name {:?} is also that of {:?}",
                    openai_name(&f.name),
                    other.name
                ));
            }
            reg.by_name.insert(f.name.clone(), def.clone());
            reg.functions.push(def);
        }
        // Two routes that match the same requests would make the proxy's choice arbitrary:
        // identical shapes, or shapes that cross (`/{org}/settings` and `/admin/{page}` both
        // match `/admin/settings`, and neither is the more specific). Nested ones are fine:
        // `/users/me` is tried before `/users/{id}`.
        for (i, a) in reg.functions.iter().enumerate() {
            if a.backend != Backend::Http {
                continue;
            }
            for b in &reg.functions[i + 1..] {
                if b.backend != Backend::Http || a.route.method != b.route.method {
                    continue;
                }
                match a.route.overlap(&b.route) {
                    Overlap::Same => errors.push(format!(
                        "functions {:?} and {:?} both declare {} {}",
                        a.name,
                        b.name,
                        a.route.method,
                        a.route.template()
                    )),
                    Overlap::Crossing(example) => errors.push(format!(
                        "functions {:?} ({} {}) and {:?} ({} {}) both match {example}, and \
                         neither route is more specific than the other; make one of them \
                         literal where the other has a parameter",
                        a.name,
                        a.route.method,
                        a.route.template(),
                        b.name,
                        b.route.method,
                        b.route.template()
                    )),
                    Overlap::None | Overlap::Nested => {}
                }
            }
        }
        // Most specific routes first, so `/users/me` wins over `/users/{id}`.
        reg.functions
            .sort_by_key(|f| std::cmp::Reverse(f.route.specificity()));
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(errors)
        }
    }

    /// Adds the pinned tools of upstream MCP servers as functions. A tool that cannot be
    /// registered (a name taken by another function, an invalid schema) is left out and
    /// reported; it never fails the configuration, since the upstream chose its tools.
    pub fn add_mcp_tools(&mut self, cfg: &Config, pinned: &[(String, ToolDef)]) -> Vec<String> {
        let mut problems = Vec::new();
        let default_timeout = Duration::from_millis(cfg.limits.upstream_timeout_ms);
        for (server, srv) in &cfg.mcp.servers {
            let prefix = srv.tool_prefix(server);
            // Resources and prompts (relayed to the server), then what the server may ask of
            // the agent (relayed to the agent's client).
            let relayed = MCP_METHODS
                .iter()
                .map(|m| (*m, false))
                .chain(MCP_SERVER_REQUESTS.iter().map(|m| (*m, true)));
            for (method, to_agent) in relayed {
                let name = mcp_method_function_name(prefix, method);
                if self.by_name.contains_key(&name) {
                    problems.push(format!("mcp server {server:?}: {name:?} is already taken"));
                    continue;
                }
                let schema = mcp_method_schema(method);
                let validator =
                    jsonschema::validator_for(&schema).expect("static schemas are valid");
                let (backend, description) = if to_agent {
                    let backend = Backend::McpServerRequest {
                        server: server.clone(),
                        method: method.to_string(),
                    };
                    (
                        backend,
                        format!("MCP {method} asked of the agent by server {server}"),
                    )
                } else {
                    let backend = Backend::McpMethod {
                        server: server.clone(),
                        method: method.to_string(),
                    };
                    (backend, format!("MCP {method} on server {server}"))
                };
                let base = FunctionDef {
                    description,
                    ..mcp_function(
                        server,
                        srv,
                        name.clone(),
                        schema,
                        validator,
                        default_timeout,
                        backend,
                    )
                };
                let def = Arc::new(if to_agent {
                    FunctionDef {
                        upstream: "mcp-client".into(),
                        upstream_url: "mcp-client:".into(),
                        // Answered by the agent's own client: no upstream credential, and no
                        // approval (the server waits; a held request could never be answered).
                        credential: None,
                        ..base
                    }
                } else {
                    // Reads. No approval of their own (a server's `approval` is about its
                    // tools): held only when a policy's @approval says so.
                    FunctionDef {
                        idempotent: true,
                        ..base
                    }
                });
                self.by_name.insert(name, def.clone());
                self.functions.push(def);
            }
        }
        // Two upstream tools whose names map to one function name (`delete_repo`,
        // `Delete-repo`) serve neither: otherwise whichever came first would take the name, its
        // policies and its approvals, and a new, unreviewed tool could displace a known one.
        let mut named: HashMap<String, Vec<&str>> = HashMap::new();
        for (server, tool) in pinned {
            if let Some(srv) = cfg.mcp.servers.get(server) {
                named
                    .entry(tool_function_name(srv.tool_prefix(server), &tool.name))
                    .or_default()
                    .push(&tool.name);
            }
        }
        for (server, tool) in pinned {
            let Some(srv) = cfg.mcp.servers.get(server) else {
                continue;
            };
            let prefix = srv.tool_prefix(server);
            let name = tool_function_name(prefix, &tool.name);
            let at = format!("mcp server {server:?} tool {:?}", tool.name);
            if let Some(all) = named.get(&name).filter(|all| all.len() > 1) {
                problems.push(format!(
                    "{at}: the tools {all:?} all map to the function name {name:?}; none of \
                     them is served until the server renames them apart"
                ));
                continue;
            }
            if !valid_function_name(&name) {
                problems.push(format!("{at}: {name:?} is not a valid function name"));
                continue;
            }
            if self.by_name.contains_key(&name) {
                problems.push(format!("{at}: {name:?} is already taken"));
                continue;
            }
            let per_tool = srv.tools.get(&tool.name).cloned().unwrap_or_default();
            let schema = if tool.input_schema.is_object() {
                tool.input_schema.clone()
            } else {
                serde_json::json!({"type": "object"})
            };
            let validator = match jsonschema::validator_for(&schema) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{at}: invalid input schema: {e}"));
                    continue;
                }
            };
            let approval = match per_tool
                .approval
                .as_deref()
                .or(srv.approval.as_deref())
                .map(callgate_approvals::Requirement::parse)
            {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => {
                    problems.push(format!("{at}: approval: {}", e.message));
                    continue;
                }
            };
            let def = Arc::new(FunctionDef {
                description: tool.description.clone(),
                risk: per_tool.risk.unwrap_or_else(|| srv.risk.clone()),
                approval,
                idempotent: per_tool.idempotent,
                mask: per_tool.mask.or_else(|| srv.mask.clone()),
                ..mcp_function(
                    server,
                    srv,
                    name.clone(),
                    schema,
                    validator,
                    default_timeout,
                    Backend::McpTool {
                        server: server.clone(),
                        tool: tool.name.clone(),
                    },
                )
            });
            if self.by_alias.contains_key(&openai_name(&name)) {
                problems.push(format!("{at}: its tool name is taken"));
                continue;
            }
            self.by_alias.insert(openai_name(&name), def.clone());
            self.by_name.insert(name, def.clone());
            self.functions.push(def);
        }
        problems
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FunctionDef>> {
        self.by_name.get(name)
    }

    /// A function by its dotted name or its OpenAI tool name.
    pub fn get_or_alias(&self, name: &str) -> Option<&Arc<FunctionDef>> {
        self.by_name.get(name).or_else(|| self.by_alias.get(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<FunctionDef>> {
        self.functions.iter()
    }

    pub fn len(&self) -> usize {
        self.functions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Finds the function a proxied request addresses.
    pub fn resolve(&self, method: &http::Method, segs: &[String]) -> Resolved<'_> {
        let mut other_method = false;
        for f in self.functions.iter().filter(|f| f.backend == Backend::Http) {
            if let Some(params) = f.route.match_segments(segs) {
                if f.route.method == method {
                    return Resolved::Found(f, params);
                }
                other_method = true;
            }
        }
        if other_method {
            Resolved::WrongMethod
        } else {
            Resolved::NotFound
        }
    }
}

/// The query parameter a static-secret credential is sent in, if it is.
pub fn credential_query(c: Option<&crate::config::CredentialConfig>) -> Option<&str> {
    match c {
        Some(crate::config::CredentialConfig::Secret { query: Some(q), .. }) => Some(q),
        _ => None,
    }
}

/// The outcome of resolving a proxied request.
pub enum Resolved<'a> {
    Found(&'a Arc<FunctionDef>, Vec<(String, String)>),
    WrongMethod,
    NotFound,
}
