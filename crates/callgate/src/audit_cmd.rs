//! `callgate audit ...`: the auditor's commands. They find the store through the same config
//! file `serve` takes and read it without the gateway's help (reads never block the running
//! gateway; SQLite in WAL mode lets both work at once).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use callgate_audit::note::{Signer, Verifier};
use callgate_audit::record::{Event, StartEvent, parse_record};
use callgate_core::config::AuditConfig;
use callgate_core::time::rfc3339;
use callgate_gateway::audit::{AuditPaths, load_key_for, write_private};
use callgate_store::log::now_ms;
use callgate_store::{AuditLog, AuditStore, Filter, LogOptions, SqliteStore, StoredRecord, ops};
use clap::Subcommand;
use serde_json::Value;

/// Writes a line to stdout, returning the error (a closed pipe ends the command quietly
/// instead of panicking).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the tree and check every record, checkpoint signature and consistency.
    /// Exits non-zero naming the first bad index.
    Verify {
        /// A checkpoint kept elsewhere (published copy) that the log must still contain.
        #[arg(long)]
        from_checkpoint: Option<PathBuf>,
        /// A verifier key to trust (`name+hash+key`); repeat for several. Default: the first
        /// key the log announced. Keys the log rotated to are trusted through the rotation.
        #[arg(long)]
        key: Vec<String>,
    },
    /// Print an RFC 6962 inclusion proof of a call's record against the latest checkpoint.
    Prove {
        /// The call's request id (its x-request-id).
        request_id: String,
    },
    /// The whole story of one call: who, what, decision, forward, response.
    Show {
        /// The call's request id (its x-request-id).
        request_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the log's public key in signed-note verifier form.
    Key,
    /// Find records by caller, function, decision, kind and time.
    Search {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the latest records; with -f keep following new ones.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Export records for a SIEM: JSON lines of the records, or OCSF API Activity events.
    Export {
        /// jsonl (the records as stored) or ocsf (OCSF API Activity events).
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "ocsf"])]
        format: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// The timeline of one session: requests, decisions, responses and timing, in order.
    Replay {
        /// The session (the Callgate-Session header, or the token's session claim).
        session: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace the checkpoint key (the gateway must be stopped). The rotation is recorded
    /// in the log and the checkpoint covering it is signed by both keys.
    RotateKey,
}

#[derive(clap::Args, Default)]
pub struct FilterArgs {
    /// Caller subject.
    #[arg(long)]
    caller: Option<String>,
    #[arg(long)]
    function: Option<String>,
    /// allow, deny, held or refused.
    #[arg(long)]
    decision: Option<String>,
    /// Record kind (call, call.response, call.refused, admin.start, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Start of the time range: unix milliseconds, or an age such as 30m, 12h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// End of the time range (same forms).
    #[arg(long)]
    until: Option<String>,
    /// At most this many records (search: 1000 unless given; export: all unless given).
    #[arg(long)]
    limit: Option<u32>,
}

/// Records `audit search` shows unless `--limit` says otherwise.
const SEARCH_LIMIT: u32 = 1000;

fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || anyhow!("{s:?} is neither unix milliseconds nor an age like 30m, 12h, 7d");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => bail!("{s:?}: an age ends in s, m, h or d"),
    };
    Ok(now_ms().saturating_sub(n.saturating_mul(per).saturating_mul(1000)))
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            subject: self.caller.clone(),
            function: self.function.clone(),
            decision: self.decision.clone(),
            kind: self.kind.clone(),
            since_ms: self.since.as_deref().map(parse_time).transpose()?,
            until_ms: self.until.as_deref().map(parse_time).transpose()?,
            limit: self.limit.unwrap_or(SEARCH_LIMIT),
            ..Default::default()
        })
    }
}

/// The `audit` section of a config file, ignoring everything else (so the demo's config,
/// which needs variables the demo sets, reads too).
fn audit_config(config: &Path) -> anyhow::Result<AuditConfig> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        audit: AuditConfig,
    }
    let text = std::fs::read_to_string(config).with_context(|| format!("{}", config.display()))?;
    let only: Only =
        yaml_serde::from_str(&text).map_err(|e| anyhow!("{}: {e}", config.display()))?;
    Ok(only.audit)
}

pub async fn run(config: &Path, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let cfg = audit_config(config)?;
    let paths = AuditPaths::new(&cfg, config);
    match cmd {
        AuditCommand::Key => {
            let text = std::fs::read_to_string(&paths.key).with_context(|| {
                format!(
                    "{} (the key is created on the first start)",
                    paths.key.display()
                )
            })?;
            let signer =
                Signer::parse(&text).map_err(|e| anyhow!("{}: {e}", paths.key.display()))?;
            outln!("{}", signer.verifier());
            return Ok(ExitCode::SUCCESS);
        }
        AuditCommand::RotateKey => return rotate(&cfg, &paths).await,
        _ => {}
    }
    let store = SqliteStore::open_read_only(&paths.store)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    match cmd {
        AuditCommand::Verify {
            from_checkpoint,
            key,
        } => {
            let key = key
                .iter()
                .map(|k| Verifier::parse(k).map_err(|e| anyhow!("--key {k}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let external = from_checkpoint
                .map(|p| std::fs::read_to_string(&p).with_context(|| format!("{}", p.display())))
                .transpose()?;
            match ops::verify(&store, &cfg.origin, key, external).await? {
                Ok(r) => {
                    outln!(
                        "ok: {} records, {} checkpoints verified (signed up to {}), {} bodies pruned",
                        r.tree_size,
                        r.checkpoints,
                        r.checkpointed_size,
                        r.pruned
                    );
                    for k in &r.keys {
                        outln!("key: {k}");
                    }
                    if r.trusted_first_key {
                        outln!(
                            "note: no --key given; trusted the first key the log announced. Compare it with the published key."
                        );
                    }
                    if r.checkpointed_size < r.tree_size {
                        outln!(
                            "note: records {}..{} are not yet covered by a signed checkpoint",
                            r.checkpointed_size,
                            r.tree_size - 1
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(f) => {
                    eprintln!("verification failed: {f}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Prove { request_id } => {
            let proof = ops::prove(&store, &request_id).await?;
            outln!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show { request_id, json } => {
            let records = ops::call_records(&store, &request_id).await?;
            if records.is_empty() {
                bail!("no record has request id {request_id:?}");
            }
            if json {
                let all: Vec<Value> = records.iter().map(ops::record_json).collect();
                outln!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                outln!("{}", story(&records).trim_end());
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Search { filter, json } => {
            let f = filter.filter()?;
            let records = store.search(&f).await?;
            print_lines(&records, json)?;
            if records.len() as u64 == u64::from(f.limit) {
                eprintln!(
                    "(the first {} matches; narrow with --since/--until, or raise --limit)",
                    f.limit
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            lines,
            follow,
            json,
        } => {
            let size = store.size().await?;
            let mut next = size.saturating_sub(lines as u64);
            loop {
                // Page by page up to the end of the log as it is now.
                loop {
                    let records = store.rows(next, 10_000).await?;
                    let Some(last) = records.last() else { break };
                    next = last.index + 1;
                    print_lines(&records, json)?;
                    if records.len() < 10_000 {
                        break;
                    }
                }
                if !follow {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        AuditCommand::Export { format, filter } => {
            if !matches!(format.as_str(), "jsonl" | "ocsf") {
                bail!("unknown format {format:?} (jsonl, ocsf)");
            }
            // OCSF events carry arguments as the function's masking profile shows them to
            // auditors (read from the config; left out if it does not load).
            let masker = if format == "ocsf" {
                crate::ocsf::Masker::load(config, &cfg.auditors_group)
            } else {
                None
            };
            // Every matching record, a page at a time, up to --limit lines when given.
            let mut left = filter.limit.map_or(u64::MAX, u64::from);
            let mut f = filter.filter()?;
            while left > 0 {
                f.limit = 1000;
                let records = store.search(&f).await?;
                for r in &records {
                    let line = match format.as_str() {
                        "jsonl" => ops::record_json(r),
                        _ => match crate::ocsf::event(r, masker.as_ref()) {
                            Some(v) => v,
                            None => continue,
                        },
                    };
                    outln!("{}", serde_json::to_string(&line)?);
                    left -= 1;
                    if left == 0 {
                        break;
                    }
                }
                match records.last() {
                    Some(last) if records.len() as u32 == f.limit => {
                        f.after_index = Some(last.index)
                    }
                    _ => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Replay { session, json } => {
            let records = store
                .search(&Filter {
                    session: Some(session.clone()),
                    limit: 100_000,
                    ..Default::default()
                })
                .await?;
            if records.is_empty() {
                bail!("no record belongs to session {session:?}");
            }
            if json {
                let all: Vec<Value> = records.iter().map(ops::record_json).collect();
                outln!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let t0 = records[0].time_ms;
                outln!("session {session}: {} records", records.len());
                for r in &records {
                    outln!("  +{:>8} ms  {}", r.time_ms.saturating_sub(t0), summary(r));
                    // The response as the caller got it (after masking), shortened.
                    if let Some(Event::Response(x)) = event(r) {
                        let body = x
                            .body
                            .map(|b| b.to_string())
                            .or(x.body_base64.map(|b| format!("(base64) {b}")));
                        if let Some(b) = body {
                            let short: String = b.chars().take(160).collect();
                            let more = if short.len() < b.len() { " ..." } else { "" };
                            outln!("               body {short}{more}");
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Key | AuditCommand::RotateKey => unreachable!("handled above"),
    }
}

/// `audit rotate-key`: only while the gateway is stopped (the store's writer lock says so).
async fn rotate(cfg: &AuditConfig, paths: &AuditPaths) -> anyhow::Result<ExitCode> {
    let old = load_key_for(paths, &cfg.origin).map_err(|e| anyhow!("{e}"))?;
    let store = SqliteStore::open(&paths.store, Duration::from_millis(cfg.busy_timeout_ms))
        .await
        .map_err(|e| anyhow!("{e} (stop the gateway before rotating its key)"))?;
    let start = StartEvent {
        time_ms: now_ms(),
        version: format!("{} (rotate-key)", env!("CARGO_PKG_VERSION")),
        config_sha256: String::new(),
        policy_sha256: String::new(),
        key: old.verifier().to_string(),
    };
    let log = AuditLog::open(
        store.clone(),
        old,
        LogOptions {
            origin: cfg.origin.clone(),
            anchor: paths.anchor().map_err(|e| anyhow!("{e}"))?,
        },
        start,
    )
    .await?;
    let new = Signer::generate(&cfg.origin).map_err(|e| anyhow!("{e}"))?;
    let new_text = new.private_text();
    let verifier = new.verifier().to_string();
    // The new key is on disk before the log names it, so a crash never leaves the log
    // announcing a key nobody holds.
    let staged = paths.key.with_extension("key.new");
    let _ = std::fs::remove_file(&staged);
    write_private(&staged, new_text.as_bytes())?;
    let cp = log.rotate(new).await?;
    // The log now names the new key: it replaces the old one on disk at once, before anything
    // else can fail (the log refuses to be signed again with a key it has retired).
    let retired = paths
        .key
        .with_extension(format!("key.retired-{}", now_ms()));
    std::fs::rename(&paths.key, &retired)?;
    std::fs::rename(&staged, &paths.key)?;
    log.close("key rotation").await?;
    store.close().await;
    outln!(
        "rotated: checkpoint at size {} is signed by both keys",
        cp.size
    );
    outln!("new key: {verifier}");
    outln!(
        "the old private key is kept at {}; destroy it once it is no longer needed",
        retired.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_lines(records: &[StoredRecord], json: bool) -> std::io::Result<()> {
    for r in records {
        if json {
            outln!("{}", ops::record_json(r));
        } else {
            outln!("{:>8}  {}  {}", r.index, rfc3339(r.time_ms), summary(r));
        }
    }
    Ok(())
}

pub(crate) fn event(r: &StoredRecord) -> Option<Event> {
    parse_record(r.index, r.body.as_deref()?)
        .ok()
        .map(|x| x.event)
}

/// One line about a record.
fn summary(r: &StoredRecord) -> String {
    let Some(e) = event(r) else {
        return format!(
            "{} (body pruned or unreadable) {}",
            r.kind,
            r.request_id.as_deref().unwrap_or("")
        );
    };
    match e {
        Event::Call(c) => format!(
            "call {} {} by {} -> {}{} {}",
            c.request_id,
            c.function,
            c.caller.subject,
            c.decision.effect,
            if c.decision.policies.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.decision.policies.join(", "))
            },
            serde_json::to_string(&c.arguments).unwrap_or_default()
        ),
        Event::Prune(p) => format!(
            "prune: bodies of {} call records older than {} removed",
            // Ranges from the database, which is not trusted: a reversed one counts nothing.
            p.indexes
                .iter()
                .map(|r| r[1].checked_sub(r[0]).map_or(0, |n| n.saturating_add(1)))
                .fold(0u64, u64::saturating_add),
            callgate_core::time::rfc3339(p.before_ms)
        ),
        Event::Forward(f) => format!(
            "forward {} {} -> {}",
            f.request_id, f.function, f.forward.upstream
        ),
        Event::Response(x) => format!(
            "response {} {} {} in {:.1} ms{}",
            x.request_id,
            x.function,
            x.status,
            x.latency_us as f64 / 1000.0,
            x.error.map(|e| format!(" ({e})")).unwrap_or_default()
        ),
        Event::Refused(x) => format!(
            "refused {} {} {} {}: {}",
            x.request_id,
            x.function.as_deref().unwrap_or("-"),
            x.subject.as_deref().unwrap_or("-"),
            x.status,
            x.detail
        ),
        Event::ApprovalRequested(a) => format!(
            "held {} {} by {} for approval ({}) digest {}",
            a.request_id,
            a.function.as_deref().unwrap_or(&a.item),
            a.actor,
            a.requirement.as_deref().unwrap_or("-"),
            a.digest.as_deref().unwrap_or("-")
        ),
        Event::ApprovalReview(a) => format!(
            "review {} by {}: {}{}{} -> {}{}",
            a.request_id,
            a.actor,
            a.verdict.as_deref().unwrap_or("-"),
            a.group
                .as_ref()
                .map(|g| format!(" for {g}"))
                .unwrap_or_default(),
            match (&a.detail, a.counted) {
                (Some(_), _) => "",
                (None, Some(false)) => " (not counted)",
                _ => "",
            },
            a.state,
            a.detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        Event::ApprovalState(a) => format!(
            "approval {} -> {} by {}{}",
            a.request_id,
            a.state,
            a.actor,
            a.detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        Event::Start(s) => format!(
            "start {} (policy {})",
            s.version,
            &s.policy_sha256.get(..16).unwrap_or("")
        ),
        Event::Stop(s) => format!("stop ({})", s.reason),
        Event::Recovery(x) => format!(
            "recovery after an unclean stop at size {}; unfinished calls: {}",
            x.tree_size,
            if x.unfinished.is_empty() {
                "none".to_string()
            } else {
                x.unfinished.join(", ")
            }
        ),
        Event::Reload(x) => format!(
            "reload (policy {})",
            x.policy_sha256.get(..16).unwrap_or("")
        ),
        Event::KeyRotation(k) => format!("key rotation -> {}", k.key),
        Event::AuditRead(a) => match &a.refused {
            None => format!(
                "audit read by {}: {}",
                a.subject.as_deref().unwrap_or("-"),
                a.resource
            ),
            Some(why) => format!(
                "audit read REFUSED ({why}) for {}: {}",
                a.subject.as_deref().unwrap_or("an unauthenticated caller"),
                a.resource
            ),
        },
    }
}

/// The story of one call, for people.
fn story(records: &[StoredRecord]) -> String {
    let mut out = String::new();
    let mut push = |k: &str, v: String| out.push_str(&format!("  {k:<10}{v}\n"));
    for r in records {
        let at = rfc3339(r.time_ms);
        match event(r) {
            Some(Event::Call(c)) => {
                push(
                    "call",
                    format!("{} at {at} (record {})", c.request_id, r.index),
                );
                if let Some(s) = &c.session {
                    push("session", s.clone());
                }
                let via = match (&c.caller.issuer, &c.caller.key_id) {
                    (Some(i), _) => format!("oidc {i}"),
                    (_, Some(k)) => format!("api key {k}"),
                    _ => c.caller.auth_method.clone(),
                };
                push(
                    "caller",
                    format!(
                        "{} [{}] via {via}{}{}",
                        c.caller.subject,
                        c.caller.groups.join(", "),
                        c.caller
                            .token_id
                            .as_ref()
                            .map(|t| format!(", token {t}"))
                            .unwrap_or_default(),
                        c.caller
                            .actor
                            .as_ref()
                            .map(|a| format!(", acting agent {a}"))
                            .unwrap_or_default()
                    ),
                );
                push(
                    "function",
                    format!(
                        "{} ({} from {})",
                        c.function,
                        c.ingress,
                        c.source.as_deref().unwrap_or("-")
                    ),
                );
                push(
                    "arguments",
                    serde_json::to_string(&c.arguments).unwrap_or_default(),
                );
                push(
                    "decision",
                    format!(
                        "{} by [{}]: {}",
                        c.decision.effect,
                        c.decision.policies.join(", "),
                        c.decision.reason
                    ),
                );
                if let Some(o) = &c.decision.obligations {
                    push("obligations", o.to_string());
                }
                if let Some(f) = &c.forward {
                    push(
                        "forward",
                        format!(
                            "to {} with credential {}",
                            f.upstream,
                            f.credential_id
                                .as_deref()
                                .unwrap_or("(none: caller credentials stripped)")
                        ),
                    );
                }
            }
            Some(Event::Forward(f)) => push(
                "forward",
                format!(
                    "to {} at {at}{}",
                    f.forward.upstream,
                    f.digest
                        .map(|d| format!(" (approved payload {d})"))
                        .unwrap_or_default()
                ),
            ),
            Some(Event::ApprovalRequested(a)) => {
                push(
                    "held",
                    format!(
                        "at {at} for {}; payload digest {}",
                        a.requirement.as_deref().unwrap_or("-"),
                        a.digest.as_deref().unwrap_or("-")
                    ),
                );
                if let Some(r) = a.reason {
                    push("reason", r);
                }
            }
            Some(Event::ApprovalReview(a)) => push(
                "review",
                format!(
                    "{} {} at {at}{}{}{}",
                    a.actor,
                    a.verdict.as_deref().unwrap_or("-"),
                    a.group.map(|g| format!(" for {g}")).unwrap_or_default(),
                    match (&a.detail, a.counted) {
                        (Some(d), _) => format!(" — {}", loud_prefix(d)),
                        (None, Some(false)) => " (after resolution: not counted)".to_string(),
                        _ => String::new(),
                    },
                    a.comment.map(|c| format!(": {c:?}")).unwrap_or_default()
                ),
            ),
            Some(Event::ApprovalState(a)) => push(
                "state",
                format!(
                    "{} at {at} by {}{}",
                    a.state,
                    a.actor,
                    a.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                ),
            ),
            Some(Event::Response(x)) => {
                push(
                    "response",
                    format!(
                        "{} after {:.1} ms at {at}",
                        x.status,
                        x.latency_us as f64 / 1000.0
                    ),
                );
                if let Some(e) = x.error {
                    push("error", e);
                }
                if let Some(b) = x.body {
                    push("body", b.to_string());
                } else if let Some(b) = x.body_base64 {
                    push("body", format!("(base64) {b}"));
                }
                if let Some(d) = x.body_sha256 {
                    push("sha256", d);
                }
            }
            Some(Event::Refused(x)) => {
                push(
                    "refused",
                    format!("{} {} at {at}: {}", x.status, x.code, x.detail),
                );
                if let Some(s) = x.subject {
                    push("caller", s);
                }
            }
            Some(other) => push(r.kind.as_str(), format!("{:?}", other.kind())),
            None if r.body.is_none() => push(r.kind.as_str(), "(body pruned by retention)".into()),
            // A body that is there but does not read as a record: not pruned — altered.
            None => push(
                r.kind.as_str(),
                "(the body does not read as this record: altered? run `callgate audit verify`)"
                    .into(),
            ),
        }
    }
    out
}

/// `refused: …` → `REFUSED: …`, so refused attempts stand out in a story.
fn loud_prefix(d: &str) -> String {
    match d.split_once(':') {
        Some((head, rest)) => format!("{}:{rest}", head.to_uppercase()),
        None => d.to_string(),
    }
}
