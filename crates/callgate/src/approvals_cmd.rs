//! `callgate approvals|calls|grants`: reviewers and requesters talking to a running gateway.
//!
//! The credential comes from `--token-file`, `CALLGATE_TOKEN` or `--token` (visible to other
//! users in the process list; prefer the others): a Callgate API key (`cgk_...`) is
//! sent as `X-API-Key`, anything else as a bearer token. Output is a short human summary, or
//! the gateway's JSON with `--json`. A refusal prints the problem's detail and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use callgate_gateway::http_client;
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// Where the gateway is and who is asking.
#[derive(Args, Clone)]
pub struct Remote {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "CALLGATE_GATEWAY",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    gateway: String,
    /// Bearer token or API key (default: $CALLGATE_TOKEN). Other users can read a command
    /// line: prefer CALLGATE_TOKEN or --token-file.
    #[arg(long, env = "CALLGATE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the bearer token or API key (surrounding whitespace ignored); it wins
    /// over the others.
    #[arg(long, global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Print the gateway's JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Pending calls and grants you may review.
    List,
    /// One held call or grant.
    Show {
        /// The call's id (its x-request-id; the Location of the 202).
        id: String,
    },
    /// Approve: binds to the digest of the request shown to you.
    Approve {
        /// The held call's or grant's id.
        id: String,
        #[arg(long)]
        comment: Option<String>,
        /// Which of your reviewer groups the approval counts for.
        #[arg(long)]
        group: Option<String>,
    },
    /// Deny: any eligible reviewer's denial ends the request.
    Deny {
        /// The held call's or grant's id.
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Withdraw an approval before the call runs, or end an active grant.
    Revoke {
        /// The held call's or grant's id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum CallsCommand {
    /// Your held calls, newest first.
    List {
        /// Only calls in these states (comma-separated: pending, approved, executing,
        /// succeeded, failed, denied, expired, cancelled, revoked, unknown).
        #[arg(long)]
        state: Option<String>,
        /// At most this many (every page is read until then).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Your held call's state and, once executed, the upstream's response.
    Show {
        /// The call's id (its x-request-id; the Location of the 202).
        id: String,
    },
    /// Wait for your held call to finish; exit 0 only if it succeeded.
    Wait {
        /// The call's id (its x-request-id; the Location of the 202).
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Withdraw your call before it runs.
    Cancel {
        /// The call's id (its x-request-id; the Location of the 202).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// Ask for temporary membership of a group.
    Request {
        /// The group to join, as `approvals.grants` names it.
        group: String,
        /// How long (`30m`, `2h`), up to the group's maximum.
        #[arg(long)]
        duration: String,
        #[arg(long)]
        reason: String,
        /// Limit the grant to these functions (repeatable; default: all).
        #[arg(long = "function")]
        functions: Vec<String>,
    },
    /// Your grants.
    List,
    /// End a grant (yours, or one you may review).
    Revoke {
        /// The held call's or grant's id.
        id: String,
    },
}

struct Client {
    base: String,
    auth: (&'static str, String),
    http: http_client::HttpClient,
}

impl Client {
    fn new(r: &Remote) -> anyhow::Result<Client> {
        let token = match &r.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token from {}", path.display()))?
                .trim()
                .to_string(),
            None => r.token.clone().unwrap_or_default(),
        };
        if token.is_empty() {
            bail!("no credential: pass --token-file, set CALLGATE_TOKEN, or pass --token");
        }
        let auth = if token.starts_with("cgk_") {
            ("x-api-key", token)
        } else {
            ("authorization", format!("Bearer {token}"))
        };
        Ok(Client {
            base: r.gateway.trim_end_matches('/').to_string(),
            auth,
            http: http_client::build_client(None, Duration::from_secs(5))
                .map_err(anyhow::Error::msg)?,
        })
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
        wait: Option<u64>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(self.auth.0, &self.auth.1);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(w) = wait {
            req = req.header("prefer", format!("wait={w}"));
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
        let limit = Duration::from_secs(wait.unwrap_or(0) + 30);
        let resp = tokio::time::timeout(limit, self.http.request(req))
            .await
            .map_err(|_| anyhow!("{url}: timed out"))?
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{} {}",
                status.as_u16(),
                v.get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or(""))
            );
        }
        Ok(v)
    }
}

fn requester(v: &Value) -> String {
    let who = v["requester"]["subject"].as_str().unwrap_or("?");
    match v["requester"]["actor"].as_str() {
        Some(a) => format!("{who} (via {a})"),
        None => who.to_string(),
    }
}

fn progress(v: &Value) -> String {
    v["approvers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(g, c)| format!("{g} {}/{}", c["approved"], c["needed"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The reviewer's summary of one item.
fn summary(v: &Value) -> String {
    let mut out = String::new();
    let what = match v["kind"].as_str() {
        Some("grant") => format!(
            "grant of {} for {}s",
            v["grant"]["group"].as_str().unwrap_or("?"),
            v["grant"]["duration_secs"]
        ),
        Some("break_glass") => format!(
            "{} (BREAK-GLASS, already executed; acknowledge)",
            v["function"].as_str().unwrap_or("?")
        ),
        _ => v["function"].as_str().unwrap_or("?").to_string(),
    };
    out.push_str(&format!("{}  {what}\n", v["id"].as_str().unwrap_or("?")));
    let mut line = |k: &str, val: String| out.push_str(&format!("  {k:<11}{val}\n"));
    line("state", v["state"].as_str().unwrap_or("?").to_string());
    line("requester", requester(v));
    if !v["arguments"].is_null() {
        line("arguments", v["arguments"].to_string());
    }
    if let Some(t) = v["target"]["path"].as_str() {
        line(
            "target",
            format!(
                "{} {t} on {}",
                v["target"]["method"].as_str().unwrap_or(""),
                v["target"]["upstream"].as_str().unwrap_or("?")
            ),
        );
    }
    if let Some(r) = v["risk"].as_str() {
        line("risk", r.to_string());
    }
    if let Some(r) = v["reason"].as_str() {
        line("reason", r.to_string());
    }
    if let Some(p) = v["policies"].as_array().filter(|p| !p.is_empty()) {
        line(
            "policy",
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    line(
        "needs",
        format!(
            "{} ({})",
            v["requirement"].as_str().unwrap_or(""),
            progress(v)
        ),
    );
    line(
        "age",
        format!(
            "{}s{}",
            v["age_secs"],
            v["expires_at"]
                .as_str()
                .map(|e| format!(", expires {e}"))
                .unwrap_or_default()
        ),
    );
    line("digest", v["digest"].as_str().unwrap_or("").to_string());
    for r in v["reviews"].as_array().into_iter().flatten() {
        line(
            "review",
            format!(
                "{} {}{}{}{}",
                r["reviewer"].as_str().unwrap_or("?"),
                r["verdict"].as_str().unwrap_or("?"),
                r["group"]
                    .as_str()
                    .map(|g| format!(" for {g}"))
                    .unwrap_or_default(),
                if r["counted"] == false {
                    " (not counted)"
                } else {
                    ""
                },
                r["comment"]
                    .as_str()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(resp) = v.get("response") {
        if let Some(e) = resp.get("error") {
            line("error", e["detail"].as_str().unwrap_or("").to_string());
        } else {
            line("status", resp["status"].to_string());
            if let Some(b) = resp.get("body") {
                line("response", b.to_string());
            }
        }
    }
    out
}

fn print(r: &Remote, v: &Value, human: impl FnOnce(&Value) -> String) {
    if r.json {
        outln!("{v}");
    } else {
        out!("{}", human(v));
    }
}

pub async fn approvals(r: &Remote, cmd: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    use http::Method;
    let c = Client::new(r)?;
    match cmd {
        ApprovalsCommand::List => {
            let v = c.call(Method::GET, "/v1/approvals", None, None).await?;
            print(r, &v, |v| {
                let items = v["approvals"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    return "nothing to review\n".into();
                }
                items.iter().map(summary).collect::<Vec<_>>().join("\n")
            });
        }
        ApprovalsCommand::Show { id } => {
            let v = c
                .call(Method::GET, &format!("/v1/approvals/{id}"), None, None)
                .await?;
            print(r, &v, summary);
        }
        ApprovalsCommand::Approve { id, comment, group } => {
            // Bind the approval to exactly what is shown here.
            let shown = c
                .call(Method::GET, &format!("/v1/approvals/{id}"), None, None)
                .await?;
            if !r.json {
                out!("{}", summary(&shown));
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{id}/approve"),
                    Some(json!({"comment": comment, "group": group, "digest": shown["digest"]})),
                    None,
                )
                .await?;
            print(r, &v, |v| verdict_line(v, "approved"));
        }
        ApprovalsCommand::Deny { id, comment } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{id}/deny"),
                    Some(json!({"comment": comment})),
                    None,
                )
                .await?;
            print(r, &v, |v| verdict_line(v, "denied"));
        }
        ApprovalsCommand::Revoke { id } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{id}/revoke"),
                    None,
                    None,
                )
                .await?;
            print(r, &v, |v| {
                format!(
                    "{}: {}\n",
                    v["id"].as_str().unwrap_or(""),
                    v["state"].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verdict_line(v: &Value, what: &str) -> String {
    let counted = v["review"]["counted"] == true;
    format!(
        "{what} {}{}; the request is now {}\n",
        v["id"].as_str().unwrap_or(""),
        if counted {
            ""
        } else {
            " (it was already resolved: recorded, not counted)"
        },
        v["state"].as_str().unwrap_or("?")
    )
}

pub async fn calls(r: &Remote, cmd: CallsCommand) -> anyhow::Result<ExitCode> {
    use http::Method;
    let c = Client::new(r)?;
    match cmd {
        CallsCommand::List { state, limit } => {
            let mut calls: Vec<Value> = Vec::new();
            let mut before: Option<String> = None;
            while (calls.len() as u32) < limit {
                let page = (limit - calls.len() as u32).min(500);
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", &page.to_string());
                if let Some(s) = &state {
                    q.append_pair("state", s);
                }
                if let Some(b) = &before {
                    q.append_pair("before", b);
                }
                let v = c
                    .call(
                        Method::GET,
                        &format!("/v1/calls?{}", q.finish()),
                        None,
                        None,
                    )
                    .await?;
                calls.extend(v["calls"].as_array().cloned().unwrap_or_default());
                match v["next"].as_str() {
                    Some(n) => before = Some(n.to_string()),
                    None => break,
                }
            }
            print(r, &json!({ "calls": calls }), |v| {
                let items = v["calls"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    return "no held calls\n".into();
                }
                items.iter().map(summary).collect::<Vec<_>>().join("\n")
            });
        }
        CallsCommand::Show { id } => {
            let v = c
                .call(Method::GET, &format!("/v1/calls/{id}"), None, None)
                .await?;
            print(r, &v, summary);
        }
        CallsCommand::Wait { id, timeout } => {
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
            let v = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let v = c
                    .call(
                        Method::GET,
                        &format!("/v1/calls/{id}"),
                        None,
                        Some(left.as_secs().clamp(1, 60)),
                    )
                    .await?;
                let state = v["state"].as_str().unwrap_or("");
                let open = matches!(state, "pending" | "approved" | "executing");
                if !open || left.is_zero() {
                    break v;
                }
            };
            print(r, &v, summary);
            let state = v["state"].as_str().unwrap_or("");
            if state != "succeeded" {
                if matches!(state, "pending" | "approved" | "executing") {
                    eprintln!("call {id} is still {state} after {timeout}s");
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        CallsCommand::Cancel { id } => {
            let v = c
                .call(Method::POST, &format!("/v1/calls/{id}/cancel"), None, None)
                .await?;
            print(r, &v, |v| {
                format!(
                    "{}: {}\n",
                    v["id"].as_str().unwrap_or(""),
                    v["state"].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn grants(r: &Remote, cmd: GrantsCommand) -> anyhow::Result<ExitCode> {
    use http::Method;
    let c = Client::new(r)?;
    let line = |v: &Value| {
        format!(
            "{}  {} for {}s  {}{}\n",
            v["id"].as_str().unwrap_or(""),
            v["grant"]["group"].as_str().unwrap_or("?"),
            v["grant"]["duration_secs"],
            v["state"].as_str().unwrap_or("?"),
            match (v["active"].as_bool(), v["active_until"].as_str()) {
                (Some(true), Some(u)) => format!(", active until {u}"),
                _ => String::new(),
            }
        )
    };
    match cmd {
        GrantsCommand::Request {
            group,
            duration,
            reason,
            functions,
        } => {
            let v = c
                .call(
                    Method::POST,
                    "/v1/grants",
                    Some(json!({"group": group, "duration": duration, "reason": reason, "functions": functions})),
                    None,
                )
                .await?;
            print(r, &v, |v| {
                format!(
                    "{}needs {} ({})\n",
                    line(v),
                    v["requirement"].as_str().unwrap_or(""),
                    progress(v)
                )
            });
        }
        GrantsCommand::List => {
            let v = c.call(Method::GET, "/v1/grants", None, None).await?;
            print(r, &v, |v| {
                let items = v["grants"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    return "no grants\n".into();
                }
                items.iter().map(line).collect()
            });
        }
        GrantsCommand::Revoke { id } => {
            let v = c
                .call(Method::POST, &format!("/v1/grants/{id}/revoke"), None, None)
                .await?;
            print(r, &v, line);
        }
    }
    Ok(ExitCode::SUCCESS)
}
