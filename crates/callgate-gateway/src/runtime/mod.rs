//! The runtime: one loaded, validated configuration (registry, policies, identity, upstream
//! clients), swapped atomically on hot reload.
//!
//! Every request takes the current runtime once and uses it throughout, so a call is never
//! judged half by an old policy and half by a new one. Before handing it out, the watched files
//! (config, policy files, policy directories) are checked for changes — a `stat` each — so an
//! edit applies to the very next request. A broken edit is logged loudly and the last good
//! runtime stays in force.

use crate::config_errors::{check_listen, located, shown_url};
use arc_swap::ArcSwap;
use callgate_core::Registry;
use callgate_core::config::Config;
use callgate_policy::{PolicyEngine, PolicyFile};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::http_client::{self, HttpClient};
use crate::identity::Authenticator;
use crate::watch::Watch;

mod secrets;
pub(crate) use secrets::read_secret;
use secrets::{approvals_checks, credential_checks};

/// How `${VAR}` references in config are resolved.
pub type Vars = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Environment variables, with `overrides` taking precedence.
pub fn env_vars(overrides: HashMap<String, String>) -> Vars {
    Arc::new(move |name: &str| {
        overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })
}

pub struct Runtime {
    pub config: Config,
    pub registry: Registry,
    pub engine: PolicyEngine,
    pub auth: Arc<Authenticator>,
    pub upstreams: HashMap<String, HttpClient>,
    /// SHA-256 over the policy files' names and texts (recorded in the audit log).
    pub policy_hash: String,
    /// SHA-256 of the configuration file's text.
    pub config_hash: String,
    /// Each approval webhook's signing secret (from its environment variable or file).
    pub webhook_secrets: Vec<Option<Vec<u8>>>,
    /// Upstream secrets by function (injected secrets, OAuth client secrets), read at load.
    pub credential_secrets: HashMap<String, Vec<u8>>,
    /// Clients for OAuth token endpoints with their own CA bundle, keyed like
    /// `credential_secrets`; the others use the credential phase's client (system roots).
    pub token_clients: HashMap<String, HttpClient>,
    /// Compiled masking profiles.
    pub masking: crate::masking::Masking,
}

/// Everything that can be wrong with a configuration, each message with its location.
#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<String>);

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for LoadErrors {}

/// The files a runtime was loaded from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    pub config: PathBuf,
    pub watched: Vec<PathBuf>,
}

/// A file's identity for change detection.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The watched files' contents, hashed: what tells apart two same-length edits made within
/// one tick of the file system's clock, which leave the stamps alike.
fn digest(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(u64::MAX.to_le_bytes()),
        }
    }
    h.finalize().into()
}

/// What a config file and its policies compile to, before any network client is built.
pub struct Parts {
    pub config: Config,
    pub registry: Registry,
    pub engine: PolicyEngine,
    pub policy_hash: String,
    pub config_hash: String,
    pub sources: Sources,
}

/// Reads the config file and everything it references, without building network clients.
pub fn load_parts(config_path: &Path, vars: &Vars) -> Result<Parts, LoadErrors> {
    let one = |m: String| LoadErrors(vec![m]);
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| one(format!("{}: {e}", config_path.display())))?;
    // A file rewritten in place reads empty between its truncation and the write: never a
    // configuration (or a policy file, below) to apply.
    if text.trim().is_empty() {
        return Err(one(format!("{}: the file is empty", config_path.display())));
    }
    let cfg = Config::parse(&text, &|n| vars(n)).map_err(|e| match e.line {
        Some(l) => one(format!("{}:{l}: {}", config_path.display(), e.message)),
        None => LoadErrors(located(config_path, &text, vec![e.message])),
    })?;
    let mut registry =
        Registry::build(&cfg).map_err(|es| LoadErrors(located(config_path, &text, es)))?;
    check_listen(&cfg.listen).map_err(|e| LoadErrors(located(config_path, &text, vec![e])))?;
    let base = base_dir(config_path);
    let mut sources = Sources {
        config: config_path.to_path_buf(),
        watched: vec![config_path.to_path_buf()],
    };
    // Upstream MCP tools, as pinned: their approved definitions only.
    if !cfg.mcp.servers.is_empty() {
        let pins_path = base.join(&cfg.mcp.pins);
        let pins = crate::mcp::pins::read(&pins_path).map_err(one)?;
        for problem in registry.add_mcp_tools(&cfg, &pins.approved()) {
            tracing::warn!("{problem}");
        }
        sources.watched.push(pins_path);
    }
    let mut files = Vec::new();
    for entry in &cfg.policies {
        let path = base.join(entry);
        sources.watched.push(path.clone());
        let mut paths = Vec::new();
        if !path.exists() {
            let near: Vec<String> = std::fs::read_dir(base)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let hint = callgate_core::locate::did_you_mean(entry, near.iter().map(String::as_str));
            return Err(LoadErrors(located(
                config_path,
                &text,
                vec![format!(
                    "policies: {entry:?} does not exist in {}{hint}",
                    base.display()
                )],
            )));
        }
        if path.is_dir() {
            let rd =
                std::fs::read_dir(&path).map_err(|e| one(format!("{}: {e}", path.display())))?;
            for f in rd.flatten() {
                if f.path().extension().is_some_and(|x| x == "cedar") {
                    paths.push(f.path());
                }
            }
            paths.sort();
        } else {
            paths.push(path.clone());
        }
        for p in paths {
            let text =
                std::fs::read_to_string(&p).map_err(|e| one(format!("{}: {e}", p.display())))?;
            if text.trim().is_empty() {
                return Err(one(format!(
                    "{}: the policy file is empty (delete it to drop its policies)",
                    p.display()
                )));
            }
            if p != path {
                sources.watched.push(p.clone());
            }
            let name = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            files.push(PolicyFile { name, text });
        }
    }
    if files.is_empty() {
        return Err(one(format!(
            "{}: no policy files (`policies:`); every call would be denied",
            config_path.display()
        )));
    }
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    let policy_hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let engine = PolicyEngine::load(&registry, &files)
        .map_err(|es| LoadErrors(es.into_iter().map(|e| e.to_string()).collect()))?;
    let config_hash = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Parts {
        config: cfg,
        registry,
        engine,
        policy_hash,
        config_hash,
        sources,
    })
}

/// The directory a config file's relative paths are resolved against: its own, or the
/// current one for a bare file name (whose parent is the empty path, which a child process
/// cannot be started in).
pub fn base_dir(config_path: &Path) -> &Path {
    config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Loads a full runtime. `previous` lets identity (and its JWKS cache) carry over when the
/// identity configuration did not change.
pub fn load(
    config_path: &Path,
    vars: &Vars,
    previous: Option<&Runtime>,
) -> Result<(Runtime, Sources), LoadErrors> {
    let Parts {
        config,
        registry,
        engine,
        policy_hash,
        config_hash,
        sources,
    } = load_parts(config_path, vars)?;
    let same_identity = previous.is_some_and(|p| {
        serde_json::to_value(&p.config.identity).ok() == serde_json::to_value(&config.identity).ok()
    });
    let base = base_dir(config_path);
    let auth = match previous {
        Some(p) if same_identity => p.auth.clone(),
        _ => {
            // An issuer's `ca_file` is relative to the config file, like every other path.
            let mut identity = config.identity.clone();
            for i in &mut identity.issuers {
                if let Some(ca) = &mut i.ca_file {
                    *ca = base.join(&*ca).to_string_lossy().into_owned();
                }
            }
            Arc::new(Authenticator::new(&identity).map_err(|e| {
                let text = std::fs::read_to_string(config_path).unwrap_or_default();
                LoadErrors(located(config_path, &text, vec![e]))
            })?)
        }
    };
    let mut upstreams = HashMap::new();
    let mut errors = Vec::new();
    for (name, up) in &config.upstreams {
        if !(up.url.starts_with("http://") || up.url.starts_with("https://"))
            || up.url.parse::<http::Uri>().is_err()
        {
            errors.push(format!(
                "upstreams.{name}.url: {} is not an http(s) URL",
                shown_url(&up.url)
            ));
            continue;
        }
        let ca = up.ca_file.as_ref().map(|c| base.join(c));
        match http_client::build_pooled(
            ca.as_deref(),
            Duration::from_millis(up.connect_timeout_ms),
            Duration::from_millis(up.pool_idle_timeout_ms.max(1)),
        ) {
            Ok(c) => {
                upstreams.insert(name.clone(), c);
            }
            Err(e) => errors.push(format!("upstreams.{name}: {e}")),
        }
    }
    let webhook_secrets = approvals_checks(&config, base, vars, &mut errors);
    let (credential_secrets, token_clients) =
        credential_checks(&config, &registry, base, vars, &mut errors);
    for f in registry.iter() {
        if let Some(m) = &f.mask
            && !config.masking.profiles.contains_key(m)
        {
            errors.push(format!(
                "function {:?}: mask: no masking profile {m:?}{}",
                f.name,
                callgate_core::locate::did_you_mean(
                    m,
                    config.masking.profiles.keys().map(String::as_str)
                )
            ));
        }
    }
    // A limit on a function that does not exist limits nothing: a typo would leave the real
    // function unlimited. MCP tools are listed only once the gateway runs, so a name under a
    // server's prefix is taken on trust.
    for name in config.rate_limits.per_function.keys() {
        let mcp_tool = config.mcp.servers.iter().any(|(server, s)| {
            name.strip_prefix(s.tool_prefix(server))
                .is_some_and(|rest| rest.starts_with('.'))
        });
        if registry.get(name).is_none() && !mcp_tool {
            errors.push(format!(
                "rate_limits.per_function: {name:?} is not a declared function{}",
                callgate_core::locate::did_you_mean(name, registry.iter().map(|f| f.name.as_str()))
            ));
        }
    }
    let mut policy_errors = Vec::new();
    let places = engine.summary();
    for (m, policy) in engine.mask_profiles() {
        if !config.masking.profiles.contains_key(&m) {
            let at = places
                .get(&policy)
                .map(|(file, line)| format!("{}:{line}: ", base.join(file).display()))
                .unwrap_or_default();
            policy_errors.push(format!(
                "{at}policy {policy}: @mask: no masking profile {m:?}{}",
                callgate_core::locate::did_you_mean(
                    &m,
                    config.masking.profiles.keys().map(String::as_str)
                )
            ));
        }
    }
    let masking = match crate::masking::Masking::load(&config.masking, base) {
        Ok(m) => Some(m),
        Err(es) => {
            errors.extend(es);
            None
        }
    };
    if !errors.is_empty() || !policy_errors.is_empty() {
        let text = std::fs::read_to_string(config_path).unwrap_or_default();
        let mut all = located(config_path, &text, errors);
        all.extend(policy_errors);
        return Err(LoadErrors(all));
    }
    let Some(masking) = masking else {
        return Err(LoadErrors(vec![format!(
            "{}: masking",
            config_path.display()
        )]));
    };
    Ok((
        Runtime {
            config,
            registry,
            engine,
            auth,
            upstreams,
            policy_hash,
            config_hash,
            webhook_secrets,
            credential_secrets,
            token_clients,
            masking,
        },
        sources,
    ))
}

/// The settings read only at start that differ between `old` and `new`: the listener, TLS,
/// the audit log, minted-credential keys, logging, the approvals store and the MCP servers.
pub fn start_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differ<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("listen");
    }
    if differ(&old.tls, &new.tls) {
        out.push("tls");
    }
    if differ(&old.audit, &new.audit) {
        out.push("audit");
    }
    if differ(&old.credentials, &new.credentials) {
        out.push("credentials");
    }
    if differ(&old.logging, &new.logging) {
        out.push("logging");
    }
    if old.approvals.path != new.approvals.path {
        out.push("approvals.path");
    }
    // Which servers there are and how they are reached; their tools' settings reload live.
    let reach = |c: &Config| {
        c.mcp
            .servers
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.url.clone(),
                    s.command.clone(),
                    s.env.clone(),
                    s.ca_file.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if reach(old) != reach(new) {
        out.push("mcp.servers");
    }
    out
}

/// What runs after a reload took effect.
type ReloadHook = Box<dyn Fn(&Runtime) + Send + Sync>;

/// Holds the current runtime and reloads it when its files change.
pub struct Reloader {
    current: ArcSwap<Runtime>,
    vars: Vars,
    state: Mutex<WatchState>,
    /// Set while a changed configuration is being loaded: requests arriving meanwhile wait
    /// for its outcome instead of being decided by the version it replaces.
    reloading: std::sync::atomic::AtomicBool,
    /// Called with each newly applied runtime (the audit log records reloads).
    on_reload: std::sync::OnceLock<ReloadHook>,
}

/// Clears [`Reloader::reloading`] however a reload ends.
struct Reloading<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Reloading<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

struct WatchState {
    sources: Sources,
    stamps: Vec<Stamp>,
    /// The files' [`digest`] when `stamps` were last taken for a reload (or at start).
    contents: [u8; 32],
    /// When `stamps` were taken: only a file modified shortly before can have been edited again
    /// within the same clock tick, so only then are contents compared.
    taken_at: SystemTime,
    /// Reports file events, so that `stamps` are compared only after one; `None` compares them
    /// on every check.
    watch: Option<Watch>,
    /// Whether inotify worked at start. If a later watch cannot be set up (a directory gone
    /// for a moment), checks compare stamps and set one up again, at most once a second.
    watching: bool,
    retry_at: Instant,
}

impl WatchState {
    /// Sets up a watch of the current files; without one, checks compare metadata and try
    /// again a second later.
    fn rewatch(&mut self) {
        self.watch = Watch::new(&self.sources.watched);
        if self.watch.is_none() {
            self.retry_at = Instant::now() + Duration::from_secs(1);
        }
    }
}

/// What a reload check found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Reloaded,
    Rejected,
}

impl Reloader {
    pub fn new(runtime: Runtime, sources: Sources, vars: Vars) -> Reloader {
        // The watch is set up before the stamps are taken: an edit in between shows in both.
        let watch = Watch::new(&sources.watched);
        let stamps = sources.watched.iter().map(|p| stamp(p)).collect();
        let contents = digest(&sources.watched);
        Reloader {
            current: ArcSwap::from_pointee(runtime),
            vars,
            state: Mutex::new(WatchState {
                sources,
                stamps,
                contents,
                taken_at: SystemTime::now(),
                watching: watch.is_some(),
                watch,
                retry_at: Instant::now(),
            }),
            reloading: std::sync::atomic::AtomicBool::new(false),
            on_reload: std::sync::OnceLock::new(),
        }
    }

    /// Sets what runs after every successful reload (once; later calls are ignored).
    pub fn on_reload(&self, f: impl Fn(&Runtime) + Send + Sync + 'static) {
        let _ = self.on_reload.set(Box::new(f));
    }

    /// The runtime to use for one request, after applying any file change.
    pub fn current(&self) -> Arc<Runtime> {
        self.check();
        self.current.load_full()
    }

    /// Whether changes are found through inotify at the moment (otherwise by comparing file
    /// metadata on every request).
    pub fn watching(&self) -> bool {
        self.state
            .lock()
            .map(|st| st.watch.is_some())
            .unwrap_or(false)
    }

    /// The runtime without looking for changes.
    pub fn peek(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Reloads if a watched file changed. One caller checks; concurrent callers carry on with
    /// the current runtime, unless a change is being loaded: then they wait for it, so a
    /// tightened policy decides every request that arrives after the edit was seen.
    pub fn check(&self) -> ReloadOutcome {
        let Ok(mut st) = self.state.try_lock() else {
            if self.reloading.load(std::sync::atomic::Ordering::Acquire) {
                drop(self.state.lock());
            }
            return ReloadOutcome::Unchanged;
        };
        match &st.watch {
            Some(w) if w.quiet() => return ReloadOutcome::Unchanged,
            // Something was reported; it may be a neighbour in a watched directory.
            Some(_) => {}
            None if st.watching && Instant::now() >= st.retry_at => st.rewatch(),
            None => {}
        }
        let mut now: Vec<Stamp> = st.sources.watched.iter().map(|p| stamp(p)).collect();
        // Alike stamps after a reported event: the contents decide (a same-length edit within
        // one clock tick of the last reload). Without a watch, stamps alone (every request).
        let mut contents = None;
        if now == st.stamps {
            // Files last modified well before their stamps were taken cannot hide a second
            // edit behind alike stamps: the event was a neighbour's (a log in the same
            // directory, say), and nothing is read.
            let recent = st.stamps.iter().flatten().any(|(m, _, _)| {
                st.taken_at
                    .duration_since(*m)
                    .map_or(true, |d| d < Duration::from_secs(2))
            });
            if st.watch.is_none() || !recent {
                return ReloadOutcome::Unchanged;
            }
            let c = digest(&st.sources.watched);
            if c == st.contents {
                return ReloadOutcome::Unchanged;
            }
            contents = Some(c);
        }
        self.reloading
            .store(true, std::sync::atomic::Ordering::Release);
        let _reloading = Reloading(&self.reloading);
        if st.watch.is_some() {
            // A watched file changed: watch afresh (a replaced inode, a swapped symlink), then
            // look again, so an edit made from here on is reported by the next check.
            st.rewatch();
            now = st.sources.watched.iter().map(|p| stamp(p)).collect();
        }
        // Taken before the files are read, like `now`.
        let contents = contents.unwrap_or_else(|| digest(&st.sources.watched));
        let taken_at = SystemTime::now();
        // `now` was taken before the files are read: an edit made while they are read leaves
        // it behind, and the next check reloads again.
        let config_path = st.sources.config.clone();
        let old = self.current.load_full();
        match load(&config_path, &self.vars, Some(&old)) {
            // A file changed while it was read (a write in progress): not applied; the next
            // check reads it again, whole.
            Ok((_, sources))
                if sources.watched == st.sources.watched
                    && sources.watched.iter().map(|p| stamp(p)).collect::<Vec<_>>() != now =>
            {
                ReloadOutcome::Unchanged
            }
            Ok((rt, sources)) => {
                tracing::info!(
                    config = %config_path.display(),
                    functions = rt.registry.len(),
                    policies = rt.engine.len(),
                    policy_hash = %rt.policy_hash,
                    "configuration reloaded"
                );
                for section in start_only_changes(&old.config, &rt.config) {
                    tracing::warn!(config = %config_path.display(), section, "this setting changed but is read only at start: it takes effect after a restart");
                }
                st.taken_at = taken_at;
                if sources.watched == st.sources.watched {
                    st.stamps = now;
                    st.contents = contents;
                } else {
                    // Files came or went: stamp the new set; the next check watches it, before
                    // it compares stamps.
                    st.watch = None;
                    st.stamps = sources.watched.iter().map(|p| stamp(p)).collect();
                    st.contents = digest(&sources.watched);
                }
                st.sources = sources;
                if let Some(f) = self.on_reload.get() {
                    f(&rt);
                }
                self.current.store(Arc::new(rt));
                ReloadOutcome::Reloaded
            }
            Err(e) => {
                // Remember the broken version so it is reported once, not on every request.
                st.stamps = now;
                st.contents = contents;
                st.taken_at = taken_at;
                for line in &e.0 {
                    tracing::error!(config = %config_path.display(), "configuration rejected, the previous version stays in force: {line}");
                }
                ReloadOutcome::Rejected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one function and a permit-all policy (`p/a.cedar`) in `dir`; its path.
    fn one_function_config(dir: &Path) -> PathBuf {
        std::fs::create_dir(dir.join("p")).unwrap();
        std::fs::write(
            dir.join("p/a.cedar"),
            "permit (principal, action, resource);",
        )
        .unwrap();
        let cfg = dir.join("callgate.yaml");
        std::fs::write(
            &cfg,
            "upstreams: {u: {url: \"http://127.0.0.1:9\"}}\npolicies: [p]\nfunctions: [{name: a.b, upstream: u, route: GET /a}]\n",
        )
        .unwrap();
        cfg
    }

    /// Two same-length edits within one tick of the file system's clock leave the stamps
    /// alike (mtime, length, inode); the watched event and the contents still tell.
    #[test]
    fn a_same_length_edit_within_one_clock_tick_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = one_function_config(dir.path());
        let policy = dir.path().join("p/a.cedar");
        let vars = env_vars(HashMap::new());
        let (rt, sources) = load(&cfg, &vars, None).unwrap();
        let reloader = Reloader::new(rt, sources, vars);
        assert!(reloader.watching(), "inotify watches the files");
        let before = reloader.peek().policy_hash.clone();
        let mtime = std::fs::metadata(&policy).unwrap().modified().unwrap();
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&policy)
                .unwrap();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.write_all(b"forbid").unwrap();
            f.set_modified(mtime).unwrap();
        }
        assert_eq!(reloader.check(), ReloadOutcome::Reloaded);
        assert_ne!(reloader.peek().policy_hash, before);
        assert_eq!(reloader.check(), ReloadOutcome::Unchanged);
    }

    /// A request arriving while a changed configuration is loaded waits for it, rather than
    /// being decided by the version being replaced.
    #[test]
    fn requests_during_a_reload_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = one_function_config(dir.path());
        let vars = env_vars(HashMap::new());
        let (rt, sources) = load(&cfg, &vars, None).unwrap();
        let reloader = Arc::new(Reloader::new(rt, sources, vars.clone()));
        let first = reloader.current();
        // A reload in progress (another request holds the check and has seen a change).
        let st = reloader.state.lock().unwrap();
        reloader
            .reloading
            .store(true, std::sync::atomic::Ordering::Release);
        let (tx, rx) = std::sync::mpsc::channel();
        let r = reloader.clone();
        let waiter = std::thread::spawn(move || tx.send(r.current()).unwrap());
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a request went ahead during the reload"
        );
        let (newer, _) = load(&cfg, &vars, None).unwrap();
        reloader.current.store(Arc::new(newer));
        reloader
            .reloading
            .store(false, std::sync::atomic::Ordering::Release);
        drop(st);
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
        assert!(!Arc::ptr_eq(&got, &first), "it got the reloaded runtime");
        // Without a reload in progress, a check in another request holds nobody up.
        let st = reloader.state.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = reloader.clone();
        std::thread::spawn(move || tx.send(r.current()).unwrap());
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        drop(st);
    }

    /// A reload that changes a start-only setting is named, so the operator is told it waits
    /// for a restart; settings that reload live are not.
    #[test]
    fn start_only_changes_are_named() {
        let parse = |extra: &str| {
            Config::parse(
                &format!("upstreams: {{u: {{url: \"http://127.0.0.1:9\"}}}}\n{extra}"),
                &|_| None,
            )
            .unwrap()
        };
        let base = parse("mcp: {servers: {s: {url: \"http://127.0.0.1:9/mcp\"}}}\n");
        assert!(start_only_changes(&base, &base).is_empty());
        let live = parse(
            "mcp: {servers: {s: {url: \"http://127.0.0.1:9/mcp\", tools: {t: {approval: ops}}}}}\nrate_limits: {per_caller: 5/second}\n",
        );
        assert!(start_only_changes(&base, &live).is_empty());
        let restart = parse(
            "listen: 127.0.0.1:9999\ncredentials: {key_dir: other}\naudit: {retention_days: 30}\nmcp: {servers: {s: {url: \"http://127.0.0.1:8/mcp\"}}}\n",
        );
        assert_eq!(
            start_only_changes(&base, &restart),
            ["listen", "audit", "credentials", "mcp.servers"]
        );
    }
}
