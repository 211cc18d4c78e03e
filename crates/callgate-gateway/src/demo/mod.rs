//! `callgate demo`: a complete showcase with no setup — the gateway with the example config
//! and policies (written into the data dir, hot-reloaded when edited), the built-in "bank-ops"
//! upstream, and a development identity provider.

pub mod bank_ops;
pub mod idp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;

use crate::Gateway;
use crate::identity::apikey;
use crate::runtime;

pub const CONFIG: &str = include_str!("../../../../examples/demo/callgate.yaml");
pub const POLICY: &str = include_str!("../../../../examples/demo/policies/demo.cedar");
pub const CASES: &str = include_str!("../../../../examples/demo/cases.yaml");

/// A running demo.
pub struct Demo {
    pub gateway: Gateway,
    pub listener: TcpListener,
    pub addr: SocketAddr,
    pub upstream_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    /// bank-ops, stopped (its address freed) when the demo stops.
    bank_ops: tokio::task::JoinHandle<()>,
}

fn write_if_missing(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if !path.exists() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)?;
    }
    Ok(())
}

/// Where the demo remembers the addresses it wrote into its config.
const ADDRESSES: &str = "demo-addresses.json";

/// The values the demo config's `${CALLGATE_DEMO_*}` references stand for, as written into the
/// data dir's copy: plain values, so `callgate check` reads it as it is and an approval keeps
/// its target across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Addresses {
    issuer: String,
    upstream: String,
}

/// Binds bank-ops where it was last time (remembered in the data dir), else anywhere.
async fn bind_upstream(data_dir: &Path) -> anyhow::Result<(TcpListener, Option<Addresses>)> {
    let before: Option<Addresses> = std::fs::read(data_dir.join(ADDRESSES))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(addr) = before
        .as_ref()
        .and_then(|b| b.upstream.strip_prefix("http://"))
        .and_then(|a| a.parse::<SocketAddr>().ok())
    {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok((l, before)),
            Err(e) => tracing::warn!(
                %addr, error = %e,
                "bank-ops cannot have its address of last time; approvals held for it will be refused"
            ),
        }
    }
    Ok((TcpListener::bind("127.0.0.1:0").await?, before))
}

/// Writes the data dir's config (once, with plain values) and, when an address changed since
/// it was written (another `--listen`, bank-ops' port taken), puts the new one in its place.
fn write_config(
    config_path: &Path,
    data_dir: &Path,
    now: &Addresses,
    before: Option<Addresses>,
    ci_hash: &str,
) -> anyhow::Result<()> {
    if !config_path.exists() {
        let text = CONFIG
            .replace("${CALLGATE_DEMO_ISSUER}", &now.issuer)
            .replace("${CALLGATE_DEMO_UPSTREAM}", &now.upstream)
            .replace("${CALLGATE_DEMO_CI_KEY_HASH}", ci_hash);
        std::fs::write(config_path, text)?;
    } else if let Some(before) = before.filter(|b| b != now) {
        let text = std::fs::read_to_string(config_path)?;
        let edited = text
            .replace(
                &format!(": {}\n", before.issuer),
                &format!(": {}\n", now.issuer),
            )
            .replace(
                &format!(": {}\n", before.upstream),
                &format!(": {}\n", now.upstream),
            );
        if edited != text {
            std::fs::write(config_path, edited)?;
        }
    }
    std::fs::write(data_dir.join(ADDRESSES), serde_json::to_vec_pretty(now)?)?;
    Ok(())
}

/// Prepares the data dir, binds the listener and the demo upstream, and loads the config.
pub async fn start(listen: &str, data_dir: &Path) -> anyhow::Result<Demo> {
    std::fs::create_dir_all(data_dir)?;
    let config_path = data_dir.join("callgate.yaml");
    write_if_missing(&data_dir.join("policies/demo.cedar"), POLICY.as_bytes())?;
    write_if_missing(&data_dir.join("cases.yaml"), CASES.as_bytes())?;
    let key_path = data_dir.join("idp-ed25519.pk8");
    if !key_path.exists() {
        write_private(&key_path, &idp::DemoIdp::generate_key())?;
    }
    let ci_path = data_dir.join("ci-bot.key");
    if !ci_path.exists() {
        write_private(&ci_path, apikey::generate_key().as_bytes())?;
    }
    let pkcs8 = std::fs::read(&key_path)?;
    let ci_key = std::fs::read_to_string(&ci_path)?.trim().to_string();

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let (upstream, before) = bind_upstream(data_dir).await?;
    let upstream_addr = upstream.local_addr()?;
    // bank-ops accepts only tokens Callgate mints for it (audience "bank-ops").
    let verifier = std::sync::Arc::new(bank_ops::TokenVerifier::new(
        format!("http://{addr}/.well-known/jwks.json"),
        "callgate".into(),
        "bank-ops".into(),
    ));
    let bank_ops = tokio::spawn(async move {
        let _ = axum::serve(upstream, bank_ops::router(Some(verifier))).await;
    });

    let issuer = format!("http://{addr}/demo/idp");
    let ci_hash = apikey::hash_key(&ci_key);
    let now = Addresses {
        issuer: issuer.clone(),
        upstream: format!("http://{upstream_addr}"),
    };
    write_config(&config_path, data_dir, &now, before, &ci_hash)?;
    // A data dir written by an earlier version still holds the references.
    let vars = runtime::env_vars(HashMap::from([
        ("CALLGATE_DEMO_ISSUER".to_string(), issuer.clone()),
        (
            "CALLGATE_DEMO_UPSTREAM".to_string(),
            format!("http://{upstream_addr}"),
        ),
        ("CALLGATE_DEMO_CI_KEY_HASH".to_string(), ci_hash),
    ]));
    let (rt, sources) =
        runtime::load(&config_path, &vars, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let idp = idp::DemoIdp::new(issuer, &pkcs8, ci_key).map_err(anyhow::Error::msg)?;
    let gateway = Gateway::open(rt, sources, vars, &config_path, Some(idp))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(Demo {
        gateway,
        listener,
        addr,
        upstream_addr,
        data_dir: data_dir.to_path_buf(),
        config_path,
        bank_ops,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

impl Demo {
    /// What the demo prints on start: what runs where, and commands to try.
    pub fn banner(&self) -> String {
        let g = format!("http://{}", self.addr);
        let dir = self.data_dir.display();
        format!(
            r#"Callgate demo
  gateway        {g}
  bank-ops       http://{up}  (the upstream; clients never call it directly)
  identity       {g}/demo/idp  (development IdP: discovery + JWKS)
  config         {cfg}  (edit it or {dir}/policies/demo.cedar: applied on the next request)

Try it (in another shell):
  curl -i {g}/users/u_1                                   # no credential -> 401
  ALICE=$(callgate demo token alice --gateway {g})
  BOB=$(callgate demo token bob --gateway {g})
  CI=$(callgate demo token ci-bot --gateway {g})
  curl -s {g}/users/u_1 -H "Authorization: Bearer $ALICE"  # 200
  curl -s {g}/billing/reset -H "Authorization: Bearer $ALICE" -H 'content-type: application/json' -d '{{"account_id":"acct_1"}}'   # 403
  curl -si {g}/billing/reset -H "Authorization: Bearer $BOB" -H 'content-type: application/json' -d '{{"account_id":"acct_1"}}'    # 202: held for a finance approver
  CAROL=$(callgate demo token carol --gateway {g})
  CALLGATE_TOKEN=$CAROL callgate approvals list --gateway {g}                                 # carol reviews
  CALLGATE_TOKEN=$CAROL callgate approvals approve <id> --gateway {g}                         # runs once
  curl -s {g}/quota/adjust -H "X-API-Key: $CI" -H 'content-type: application/json' -d '{{"account_id":"acct_1","delta":50}}'      # 200
  curl -s '{g}/files?path=/srv/reports/../../etc/passwd' -H "Authorization: Bearer $ALICE"   # 403, never forwarded
  curl -s {g}/v1/functions -H "Authorization: Bearer $ALICE"                                  # alice's catalog

(Without callgate on your PATH use `cargo run --release -- demo token alice`.)
Press Ctrl-C to stop.
"#,
            up = self.upstream_addr,
            cfg = self.config_path.display(),
        )
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        crate::server::serve(
            self.gateway,
            self.listener,
            None,
            shutdown,
            Duration::from_secs(5),
        )
        .await;
        self.bank_ops.abort();
        let _ = self.bank_ops.await;
    }
}
