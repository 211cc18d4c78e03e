//! The subcommands.

use anyhow::{Context, anyhow, bail};
use callgate_gateway::identity::apikey;
use callgate_gateway::runtime;
use callgate_gateway::{Gateway, http_client, server};
use callgate_policy::cases::{self, CaseFile};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: a log written to a file or a pipe holds no escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

pub async fn serve(config: &Path, listen: Option<String>) -> anyhow::Result<ExitCode> {
    let vars = runtime::env_vars(HashMap::new());
    // Upstream MCP servers' tools are listed and pinned first, so policies can name them.
    let mcp_problems =
        callgate_gateway::mcp::upstream::discover(config, &vars, Duration::from_secs(10))
            .await
            .unwrap_or_default();
    let (rt, sources) = runtime::load(config, &vars, None).map_err(|e| anyhow!("{e}"))?;
    init_logging(&rt.config.logging.format, &rt.config.logging.level);
    for p in mcp_problems {
        tracing::warn!("{p}");
    }
    let listen = listen.unwrap_or_else(|| rt.config.listen.clone());
    let grace = Duration::from_millis(rt.config.limits.shutdown_grace_ms);
    let base = runtime::base_dir(config);
    let tls = match &rt.config.tls {
        Some(t) => Some(
            callgate_gateway::tls::server_config(&base.join(&t.cert_file), &base.join(&t.key_file))
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(functions = rt.registry.len(), policies = rt.engine.len(), policy_hash = %rt.policy_hash, "configuration loaded");
    // Bound before the audit log is opened: a start that cannot listen leaves no trace in the
    // log (no start record, and no "unclean stop" for the next start to find).
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let gateway = Gateway::open(rt, sources, vars, config, None)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tracing::info!(
        "callgate listening on {scheme}://{}",
        listener.local_addr()?
    );
    server::serve(gateway, listener, tls, server::shutdown_signal(), grace).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn demo(listen: &str, data_dir: &Path) -> anyhow::Result<ExitCode> {
    init_logging("text", "info");
    let demo = callgate_gateway::demo::start(listen, data_dir).await?;
    outln!("{}", demo.banner());
    demo.serve(server::shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn demo_upstream(listen: &str) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("bank-ops listening on http://{}", listener.local_addr()?);
    axum::serve(listener, callgate_gateway::demo::bank_ops::router(None))
        .with_graceful_shutdown(server::shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn demo_token(
    user: &str,
    actor: Option<&str>,
    gateway: &str,
) -> anyhow::Result<ExitCode> {
    let client =
        http_client::build_client(None, Duration::from_secs(3)).map_err(anyhow::Error::msg)?;
    let url = format!("{}/demo/idp/token", gateway.trim_end_matches('/'));
    let req = http::Request::post(&url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::json!({"user": user, "act": actor}).to_string(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| anyhow!("{url}: timed out"))?
        .with_context(|| {
            format!("cannot reach the demo at {gateway} (is `callgate demo` running?)")
        })?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match v.get("access_token").and_then(|t| t.as_str()) {
        Some(t) if status.is_success() => {
            outln!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "{url}: {status}: {}",
            v.get("error_description")
                .and_then(|d| d.as_str())
                .unwrap_or("no token")
        ),
    }
}

/// `explain`, `test` and `tools` work offline: they need no live upstream or issuer, so unset
/// `${VAR}` references get a placeholder instead of failing the load.
pub(crate) fn offline_vars() -> runtime::Vars {
    std::sync::Arc::new(|n: &str| {
        Some(std::env::var(n).unwrap_or_else(|_| "http://127.0.0.1:9".into()))
    })
}

pub async fn check(config: &Path) -> anyhow::Result<ExitCode> {
    let vars = runtime::env_vars(HashMap::new());
    // As `serve` does: upstream MCP servers' tools are listed (and pinned on first sight), so
    // policies that name them can be checked on a machine the gateway never ran on.
    let mcp_problems =
        callgate_gateway::mcp::upstream::discover(config, &vars, Duration::from_secs(10))
            .await
            .unwrap_or_default();
    for p in &mcp_problems {
        eprintln!("warning: {p}");
    }
    match runtime::load(config, &vars, None) {
        Ok((rt, _)) => {
            outln!(
                "{}: OK — {} functions, {} policies (policy hash {})",
                config.display(),
                rt.registry.len(),
                rt.engine.len(),
                &rt.policy_hash[..16]
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for line in &e.0 {
                eprintln!("{line}");
            }
            eprintln!("{}: {} error(s)", config.display(), e.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn explain(
    config: &Path,
    subject: String,
    groups: Vec<String>,
    function: &str,
    arguments: &str,
    request: cases::CaseRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let runtime::Parts {
        registry, engine, ..
    } = runtime::load_parts(config, &offline_vars()).map_err(|e| anyhow!("{e}"))?;
    let args = callgate_core::json::parse_object(arguments.as_bytes())
        .map_err(|e| anyhow!("the arguments are not a JSON object: {e}"))?;
    let case = cases::Case {
        name: None,
        subject,
        groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
        function: function.to_string(),
        arguments: args,
        expect: cases::Expect::Allow,
        request,
    };
    let call = cases::case_call(&registry, &case).map_err(anyhow::Error::msg)?;
    if let Err(r) = callgate_core::args::validate(&call.function, &call.arguments) {
        outln!(
            "decision: invalid (the call would be refused with {} before policy)\nreason:   {}",
            r.status(),
            r.detail()
        );
        return Ok(ExitCode::from(2));
    }
    let decision = match engine.decide(&call) {
        Ok(d) => d,
        // Arguments policy cannot represent (a number beyond Cedar's range, say): refused
        // before any policy decides, as the gateway would.
        Err(r) => {
            outln!(
                "decision: invalid (the call would be refused with {} before policy)\nreason:   {}",
                r.status(),
                r.detail()
            );
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        outln!(
            "decision: {}",
            if decision.allowed() { "allow" } else { "deny" }
        );
        outln!("reason:   {}", decision.reason());
        for p in &decision.determining {
            if let Some(r) = &p.reason {
                outln!("          {} — {r}", p.id);
            }
        }
        if let Some(r) = decision.obligations.rate_limit {
            outln!("rate limit: {r} per caller");
        }
        if decision.allowed()
            && let Some(req) = callgate_approvals::Requirement::merge_all(
                call.function
                    .approval
                    .iter()
                    .chain(decision.obligations.approval.iter()),
            )
        {
            outln!(
                "approval: held until approved by {req} (never by {})",
                call.principal.subject
            );
        }
        if !decision.allowed() && decision.determining.is_empty() {
            let near = engine.near_misses(&call);
            if near.is_empty() {
                outln!("no permit policy for {function} applies to this caller");
            } else {
                outln!("permit policies for this caller whose conditions did not hold:");
                for p in near {
                    outln!(
                        "  {} ({}:{}){}",
                        p.id,
                        p.file,
                        p.line,
                        p.reason.map(|r| format!(" — {r}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(if decision.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn test(cases_path: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(cases_path).with_context(|| format!("{}", cases_path.display()))?;
    let file: CaseFile =
        yaml_serde::from_str(&text).map_err(|e| anyhow!("{}: {e}", cases_path.display()))?;
    let config = match (config, &file.config) {
        (Some(c), _) => c.to_path_buf(),
        (None, Some(c)) => runtime::base_dir(cases_path).join(c),
        (None, None) => bail!(
            "{}: no `config:` in the file and no --config",
            cases_path.display()
        ),
    };
    let runtime::Parts {
        registry, engine, ..
    } = runtime::load_parts(&config, &offline_vars()).map_err(|e| anyhow!("{e}"))?;
    let results = cases::run(&registry, &engine, &file.cases);
    let mut failed = 0;
    for r in &results {
        if r.passed() {
            outln!("PASS {}", r.name);
        } else {
            failed += 1;
            outln!("FAIL {}: {}", r.name, r.failure());
        }
    }
    outln!("{} passed, {} failed", results.len() - failed, failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn schema() -> anyhow::Result<ExitCode> {
    outln!(
        "{}",
        serde_json::to_string_pretty(&callgate_core::config::Config::json_schema())?
    );
    Ok(ExitCode::SUCCESS)
}

pub fn keygen() -> anyhow::Result<ExitCode> {
    let key = apikey::generate_key();
    outln!("key:  {key}\nhash: {}", apikey::hash_key(&key));
    Ok(ExitCode::SUCCESS)
}
