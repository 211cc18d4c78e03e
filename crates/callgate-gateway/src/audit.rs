//! The audit phase of the gateway: turns calls, decisions, refusals and responses into audit
//! events, writes them through the group-commit log, signs checkpoints on a timer, publishes
//! them outside Callgate's control, and prunes old record bodies.
//!
//! Only [`Audit::call`] and [`Audit::read`] wait for durability: the first because a call is
//! never forwarded (or denied) before its record is fsynced, the second because an auditor's
//! read is itself recorded before the data leaves. Responses and refusals are queued and
//! retried by the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callgate_audit::note::Signer;
use callgate_audit::record::{
    ApprovalEvent, AuditReadEvent, CallEvent, Caller, DecisionRecord, Event, ForwardEvent,
    ForwardRecord, RefusedEvent, ReloadEvent, ResponseEvent, StartEvent,
};
use callgate_core::config::{AuditConfig, BodyRecording};
use callgate_core::model::{AuthMethod, Ingress};
use callgate_core::refusal::Refusal;
use callgate_core::{Call, Principal};
use callgate_policy::Decision;
use callgate_store::log::now_ms;
use callgate_store::{AuditLog, LogOptions, SqliteStore, StoredCheckpoint};
use sha2::{Digest, Sha256};

use crate::anonymous::{Sampler, Verdict};
use crate::runtime::Runtime;
use crate::upstream::UpstreamResponse;

/// The audit log as the gateway uses it.
pub type Log = AuditLog<SqliteStore>;

/// The gateway's audit phase.
pub struct Audit {
    log: Log,
    response_body: BodyRecording,
    pub auditors_group: String,
    publish_dir: Option<PathBuf>,
    publish_url: Option<(http::Uri, crate::http_client::HttpClient)>,
    anonymous: Sampler,
}

/// Where a config's audit files live: paths are relative to the config file's directory.
pub struct AuditPaths {
    pub store: PathBuf,
    pub key: PathBuf,
    pub publish_dir: Option<PathBuf>,
}

impl AuditPaths {
    pub fn new(cfg: &AuditConfig, config_path: &Path) -> AuditPaths {
        let base = crate::runtime::base_dir(config_path);
        AuditPaths {
            store: base.join(&cfg.path),
            key: base.join(&cfg.key_file),
            publish_dir: cfg.publish_dir.as_ref().map(|d| base.join(d)),
        }
    }

    /// The last checkpoint published to `publish_dir`, which the store must extend before
    /// the log is opened (see [`LogOptions::anchor`]). None without a directory or before the
    /// first publication.
    pub fn anchor(&self) -> Result<Option<String>, String> {
        let Some(dir) = &self.publish_dir else {
            return Ok(None);
        };
        let path = dir.join("checkpoint");
        match std::fs::read_to_string(&path) {
            Ok(note) => Ok(Some(note)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Reads the checkpoint key, creating it (mode 0600) on first use.
pub fn load_or_create_key(path: &Path, origin: &str) -> Result<Signer, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let s = Signer::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if s.verifier().name() != origin {
                return Err(format!(
                    "{}: the key is named {:?} but the log's origin is {origin:?}",
                    path.display(),
                    s.verifier().name()
                ));
            }
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = Signer::generate(origin).map_err(|e| e.to_string())?;
            write_private(path, s.private_text().as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(s)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The key for the store at `paths`: created only together with a new store. A store whose key
/// file is missing is refused (a new key could not sign for the old records).
pub fn load_key_for(paths: &AuditPaths, origin: &str) -> Result<Signer, String> {
    if paths.store.exists() && !paths.key.exists() {
        return Err(format!(
            "{} holds an audit log but its key file {} is missing; restore the key (a new one cannot vouch for the old records)",
            paths.store.display(),
            paths.key.display()
        ));
    }
    load_or_create_key(&paths.key, origin)
}

/// Writes a secret file readable by its owner only, replacing nothing, whole or not at all:
/// the bytes go to a temporary file that is synced and then linked to `path`, so a crash or a
/// full disk never leaves a partial key where the next start would read it.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.partial", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // A link, not a rename: an existing file at `path` is an error, never replaced.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    if let Some(dir) = dir {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::Unavailable {
        detail: format!("the audit log cannot be written, so the call was not executed ({e})"),
    }
}

/// The caller as recorded: never the credential.
pub fn caller(p: &Principal) -> Caller {
    let (issuer, key_id) = match &p.auth {
        AuthMethod::Oidc { issuer } => (Some(issuer.clone()), None),
        AuthMethod::ApiKey { key_id } => (None, Some(key_id.clone())),
    };
    Caller {
        subject: p.subject.clone(),
        groups: p.groups.clone(),
        auth_method: p.auth.name().to_string(),
        issuer,
        key_id,
        token_id: p.token_id.clone(),
        actor: p.actor.clone(),
    }
}

fn decision_record(d: &Decision, effect: &str) -> DecisionRecord {
    let obligations = serde_json::to_value(&d.obligations)
        .ok()
        .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()));
    DecisionRecord {
        effect: effect.to_string(),
        policies: d.determining.iter().map(|p| p.id.clone()).collect(),
        reason: d.reason(),
        obligations,
    }
}

/// The `call` event for `call` under `decision`, recorded with `arguments` (already masked).
fn call_event(
    call: &Call,
    decision: &Decision,
    effect: &str,
    forward: Option<ForwardRecord>,
    arguments: serde_json::Map<String, serde_json::Value>,
) -> Event {
    Event::Call(Box::new(CallEvent {
        time_ms: now_ms(),
        request_id: call.request_id.clone(),
        session: call.meta.session.clone(),
        caller: caller(&call.principal),
        source: call.meta.source.map(|s| s.to_string()),
        ingress: call.meta.ingress.name().to_string(),
        function: call.function.name.clone(),
        arguments,
        decision: decision_record(decision, effect),
        forward,
    }))
}

/// What the ingress knew about a request that was refused.
pub struct RefusedRequest<'a> {
    pub request_id: &'a str,
    pub ingress: Ingress,
    pub source: Option<std::net::IpAddr>,
    pub session: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
}

impl Audit {
    /// Opens the log for a loaded runtime and starts the checkpoint and retention timers.
    pub async fn open(rt: &Runtime, config_path: &Path) -> Result<Arc<Audit>, String> {
        let cfg = &rt.config.audit;
        let paths = AuditPaths::new(cfg, config_path);
        let signer = load_key_for(&paths, &cfg.origin)?;
        let store = SqliteStore::open(&paths.store, Duration::from_millis(cfg.busy_timeout_ms))
            .await
            .map_err(|e| e.to_string())?;
        let start = StartEvent {
            time_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_sha256: rt.config_hash.clone(),
            policy_sha256: rt.policy_hash.clone(),
            key: signer.verifier().to_string(),
        };
        let log = AuditLog::open(
            store,
            signer,
            LogOptions {
                origin: cfg.origin.clone(),
                anchor: paths.anchor()?,
            },
            start,
        )
        .await
        .map_err(|e| e.to_string())?;
        let publish_url = match &cfg.publish_url {
            Some(u) => {
                let uri: http::Uri = u
                    .parse()
                    .ok()
                    .filter(|u: &http::Uri| matches!(u.scheme_str(), Some("http" | "https")))
                    .ok_or_else(|| format!("audit.publish_url: {u:?} is not an http(s) URL"))?;
                let client = crate::http_client::build_client(None, Duration::from_secs(5))?;
                Some((uri, client))
            }
            None => None,
        };
        let audit = Arc::new(Audit {
            log,
            response_body: cfg.response_body,
            auditors_group: cfg.auditors_group.clone(),
            publish_dir: paths.publish_dir,
            publish_url,
            anonymous: Sampler::new(cfg.anonymous_refusals_per_minute),
        });
        // A first checkpoint right away, so even a short run is covered.
        audit.checkpoint().await.map_err(|e| e.to_string())?;
        let interval = Duration::from_millis(cfg.checkpoint_interval_ms.max(100));
        let weak = Arc::downgrade(&audit);
        let retention = cfg.retention_days;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = None::<std::time::Instant>;
            loop {
                tick.tick().await;
                let Some(audit) = weak.upgrade() else { return };
                audit.flush_anonymous(false);
                match audit.checkpoint().await {
                    Ok(_) => {}
                    // Shutdown closed the log (with a final checkpoint); the timer ends too.
                    Err(callgate_store::StoreError::Closed) => return,
                    Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                }
                if let Some(days) = retention
                    && last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
                {
                    last_prune = Some(std::time::Instant::now());
                    let before = now_ms().saturating_sub(days.saturating_mul(86_400_000));
                    match audit.log.prune(before, 100_000).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(records = n, "pruned audit record bodies past retention")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "pruning audit records failed"),
                    }
                }
            }
        });
        Ok(audit)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn healthy(&self) -> bool {
        self.log.healthy()
    }

    /// Signs a checkpoint now if the log grew, and publishes it.
    pub async fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, callgate_store::StoreError> {
        let cp = self.log.checkpoint().await?;
        if let Some(cp) = &cp {
            self.publish(cp);
        }
        Ok(cp)
    }

    fn publish(&self, cp: &StoredCheckpoint) {
        if let Some((uri, client)) = &self.publish_url {
            // In the background: a slow witness never holds up the log.
            let req = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    cp.note.clone(),
                )));
            let (client, uri, size) = (client.clone(), uri.clone(), cp.size);
            if let Ok(req) = req {
                tokio::spawn(async move {
                    let sent =
                        tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
                    match sent {
                        Ok(Ok(r)) if r.status().is_success() => {}
                        Ok(Ok(r)) => {
                            tracing::error!(%uri, size, status = r.status().as_u16(), "the checkpoint witness refused the checkpoint")
                        }
                        Ok(Err(e)) => {
                            tracing::error!(%uri, size, error = %e, "publishing the checkpoint failed")
                        }
                        Err(_) => {
                            tracing::error!(%uri, size, "publishing the checkpoint timed out")
                        }
                    }
                });
            }
        }
        let Some(dir) = &self.publish_dir else { return };
        // Checkpoints are public by design (signed notes for witnesses and auditors): the one
        // thing Callgate writes readable by others (0644, directories 0755), whatever its
        // umask, so whoever syncs them elsewhere can read them.
        let public = |path: &Path, mode: u32| -> std::io::Result<()> {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            let _ = (path, mode);
            Ok(())
        };
        let write = || -> std::io::Result<()> {
            let each = dir.join("checkpoints");
            std::fs::create_dir_all(&each)?;
            public(dir, 0o755)?;
            public(&each, 0o755)?;
            let one = each.join(cp.size.to_string());
            std::fs::write(&one, &cp.note)?;
            public(&one, 0o644)?;
            // Replace `checkpoint` atomically so a reader never sees half a note.
            let tmp = dir.join(".checkpoint.tmp");
            std::fs::write(&tmp, &cp.note)?;
            public(&tmp, 0o644)?;
            std::fs::rename(&tmp, dir.join("checkpoint"))
        };
        if let Err(e) = write() {
            tracing::error!(dir = %dir.display(), error = %e, "publishing the checkpoint failed");
        }
    }

    /// Records that a reload took effect.
    pub fn reloaded(&self, rt: &Runtime) {
        if let Ok(e) = Event::Reload(ReloadEvent {
            time_ms: now_ms(),
            config_sha256: rt.config_hash.clone(),
            policy_sha256: rt.policy_hash.clone(),
        })
        .encode()
        {
            self.log.record(e);
        }
    }

    /// Records the call and its decision (with `arguments` as masked for the log) and, when
    /// `upstream` is given, that it is being forwarded there. Returns once the record is
    /// durable; an error refuses the call.
    pub async fn call(
        &self,
        call: &Call,
        decision: &Decision,
        effect: &str,
        upstream: Option<&str>,
        credential_id: Option<String>,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Refusal> {
        let forward = upstream.map(|u| ForwardRecord {
            upstream: u.to_string(),
            credential_id,
        });
        let event = call_event(call, decision, effect, forward, arguments)
            .encode()
            .map_err(|e| Refusal::Internal {
                detail: e.to_string(),
            })?;
        self.log.append(vec![event]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Records a call held for approval: its `call` record (decision `held`) and the
    /// `approval.requested` event, durable together before the caller hears of it.
    pub async fn held(
        &self,
        call: &Call,
        decision: &Decision,
        requested: ApprovalEvent,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Refusal> {
        let internal = |e: callgate_audit::record::RecordError| Refusal::Internal {
            detail: e.to_string(),
        };
        let call_event = call_event(call, decision, "held", None, arguments)
            .encode()
            .map_err(internal)?;
        let requested = Event::ApprovalRequested(requested)
            .encode()
            .map_err(internal)?;
        self.log
            .append(vec![call_event, requested])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Records that something was held for approval (a grant request); durable.
    pub async fn approval_requested(&self, ev: ApprovalEvent) -> Result<(), Refusal> {
        let e = Event::ApprovalRequested(ev)
            .encode()
            .map_err(|e| Refusal::Internal {
                detail: e.to_string(),
            })?;
        self.log.append(vec![e]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Records a review (when `ev.verdict` is set) or a state change of a held item. With
    /// `durable`, returns once the record is durable; otherwise queues it.
    pub async fn approval(&self, ev: ApprovalEvent, durable: bool) -> Result<(), Refusal> {
        let event = if ev.verdict.is_some() {
            Event::ApprovalReview(ev)
        } else {
            Event::ApprovalState(ev)
        };
        if !durable {
            self.queue(event);
            return Ok(());
        }
        let e = event.encode().map_err(|e| Refusal::Internal {
            detail: e.to_string(),
        })?;
        self.log.append(vec![e]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Records that an approved call is being forwarded, with the digest it was approved
    /// under. Returns once durable; an error means the call is not executed.
    pub async fn forward(
        &self,
        call: &Call,
        digest: &str,
        approved_by: Vec<callgate_audit::record::Approver>,
        credential_id: Option<String>,
    ) -> Result<(), Refusal> {
        let e = Event::Forward(ForwardEvent {
            time_ms: now_ms(),
            request_id: call.request_id.clone(),
            session: call.meta.session.clone(),
            function: call.function.name.clone(),
            forward: ForwardRecord {
                upstream: call.function.upstream.clone(),
                credential_id,
            },
            digest: Some(digest.to_string()),
            approved_by,
        })
        .encode()
        .map_err(|e| Refusal::Internal {
            detail: e.to_string(),
        })?;
        self.log.append(vec![e]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Records what came back (after masking), without waiting.
    pub fn response(&self, call: &Call, response: &UpstreamResponse, latency: Duration) {
        let (body, body_base64, body_sha256) = match self.response_body {
            BodyRecording::None => (None, None, None),
            mode => {
                let digest = Some(hex(&Sha256::digest(&response.body)));
                if mode == BodyRecording::Digest || response.body.is_empty() {
                    (None, None, digest)
                } else {
                    match callgate_core::json::parse_strict(&response.body) {
                        // A body whose numbers the canonical form could not keep exactly is
                        // kept byte for byte instead.
                        Ok(v) if callgate_core::args::numbers_are_exact(&v) => {
                            (Some(v), None, digest)
                        }
                        _ => (None, Some(STANDARD.encode(&response.body)), digest),
                    }
                }
            }
        };
        self.queue(Event::Response(ResponseEvent {
            time_ms: now_ms(),
            request_id: call.request_id.clone(),
            session: call.meta.session.clone(),
            function: call.function.name.clone(),
            status: response.status.as_u16(),
            latency_us: latency.as_micros() as u64,
            body,
            body_base64,
            body_sha256,
            error: None,
        }));
    }

    /// Records that a forwarded call failed upstream (unreachable, timeout, too large).
    pub fn upstream_failed(&self, call: &Call, refusal: &Refusal, latency: Duration) {
        self.queue(Event::Response(ResponseEvent {
            time_ms: now_ms(),
            request_id: call.request_id.clone(),
            session: call.meta.session.clone(),
            function: call.function.name.clone(),
            status: refusal.status(),
            latency_us: latency.as_micros() as u64,
            body: None,
            body_base64: None,
            body_sha256: None,
            error: Some(refusal.to_string()),
        }));
    }

    /// Records a request refused for anything but a policy deny, without waiting. Refusals
    /// of callers with no verified identity go through the [`Sampler`]: a few per source and
    /// minute one by one, the rest as one counted record.
    pub fn refused(&self, req: RefusedRequest<'_>, refusal: &Refusal) {
        let now = now_ms();
        let anonymous = req.subject.is_none();
        let event = RefusedEvent {
            time_ms: now,
            request_id: req.request_id.to_string(),
            session: req.session,
            subject: req.subject,
            function: req.function,
            source: req.source.map(|s| s.to_string()),
            ingress: req.ingress.name().to_string(),
            status: refusal.status(),
            code: refusal.code().to_string(),
            detail: refusal.to_string(),
            repeated: None,
            first_ms: None,
        };
        if !anonymous {
            return self.queue(Event::Refused(event));
        }
        let block = req.source.map(callgate_core::model::source_block);
        let Verdict { ended, record } = self.anonymous.admit(event.clone(), block, now);
        if let Some(summary) = ended {
            self.queue(Event::Refused(summary));
        }
        if record {
            self.queue(Event::Refused(event));
        }
    }

    /// Records the summaries of anonymous refusals whose minute is over (all at shutdown).
    fn flush_anonymous(&self, all: bool) {
        for summary in self.anonymous.due(now_ms(), all) {
            self.queue(Event::Refused(summary));
        }
    }

    /// Records an auditor's read of the log; returns once durable.
    pub async fn read(
        &self,
        request_id: &str,
        subject: &str,
        resource: &str,
    ) -> Result<(), Refusal> {
        let e = Event::AuditRead(AuditReadEvent {
            time_ms: now_ms(),
            request_id: request_id.to_string(),
            subject: Some(subject.to_string()),
            resource: resource.to_string(),
            refused: None,
        })
        .encode()
        .map_err(|e| Refusal::Internal {
            detail: e.to_string(),
        })?;
        self.log.append(vec![e]).await.map_err(unavailable)?;
        Ok(())
    }

    /// Records a refused attempt to read the log (`why`: the refusal's code), without waiting,
    /// like any other refusal: anonymous callers cannot make the gateway wait on the disk.
    pub fn read_refused(&self, request_id: &str, subject: Option<&str>, resource: &str, why: &str) {
        self.queue(Event::AuditRead(AuditReadEvent {
            time_ms: now_ms(),
            request_id: request_id.to_string(),
            subject: subject.map(str::to_string),
            resource: resource.to_string(),
            refused: Some(why.to_string()),
        }));
    }

    fn queue(&self, event: Event) {
        match event.encode() {
            Ok(e) => self.log.record(e),
            Err(e) => tracing::error!(error = %e, "an audit event could not be encoded"),
        }
    }

    /// Records `stop`, signs and publishes the final checkpoint.
    pub async fn shutdown(&self, reason: &str) {
        self.flush_anonymous(true);
        match self.log.close(reason).await {
            Ok(Some(cp)) => self.publish(&cp),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "the audit log did not close cleanly"),
        }
        self.log.store().close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_written_whole_owner_only_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/1.pk8");
        write_private(&path, b"secret").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_private(&path, b"other").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        // Nothing but the file itself is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["1.pk8"]);
    }
}
