//! The checks of a loaded configuration that read secrets: each function's and upstream's
//! credential (environment variables and files, OAuth token clients), the approvals section's
//! webhook secrets. A secret that cannot be read is a load error naming where it was expected,
//! never its value.

use callgate_core::Registry;
use callgate_core::config::Config;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::Vars;
use crate::config_errors::shown_url;
use crate::http_client::{self, HttpClient};

/// A secret named by an environment variable or a file; exactly one.
pub(crate) fn read_secret(
    env: &Option<String>,
    file: &Option<String>,
    at: &str,
    base: &Path,
    vars: &Vars,
    errors: &mut Vec<String>,
) -> Option<Vec<u8>> {
    // Surrounding whitespace (a file's or a mounted variable's trailing newline) is never part
    // of a secret, wherever it comes from; nothing left is an error, never an empty key.
    match (env, file) {
        (Some(var), None) => match vars(var) {
            Some(v) if !v.trim_ascii().is_empty() => Some(v.trim_ascii().as_bytes().to_vec()),
            Some(_) => {
                errors.push(format!("{at}: environment variable {var} is empty"));
                None
            }
            None => {
                errors.push(format!("{at}: environment variable {var} is not set"));
                None
            }
        },
        (None, Some(f)) => match std::fs::read(base.join(f)) {
            Ok(b) if !b.trim_ascii().is_empty() => Some(b.trim_ascii().to_vec()),
            Ok(_) => {
                errors.push(format!("{at}: {f} is empty"));
                None
            }
            Err(e) => {
                errors.push(format!("{at}: {f}: {e}"));
                None
            }
        },
        _ => {
            errors.push(format!(
                "{at}: give exactly one of an environment variable or a file"
            ));
            None
        }
    }
}

/// Checks each function's credential and reads its secrets.
pub(super) fn credential_checks(
    config: &Config,
    registry: &Registry,
    base: &Path,
    vars: &Vars,
    errors: &mut Vec<String>,
) -> (HashMap<String, Vec<u8>>, HashMap<String, HttpClient>) {
    use callgate_core::config::CredentialConfig;
    // A retired key must stay published at least as long as a token it signed lives (60 s
    // at most), or tokens minted just before a rotation stop verifying.
    if config.credentials.overlap_secs < 60 {
        errors.push(format!(
            "credentials.overlap_secs: {} is shorter than a minted token's longest life (60 s)",
            config.credentials.overlap_secs
        ));
    }
    let mut secrets = HashMap::new();
    let mut clients = HashMap::new();
    // MCP servers' credentials are loaded once per server (key `mcp:<server>`, the
    // `upstream` of each of its tools), also for the requests that list its tools.
    let functions = registry
        .iter()
        .filter(|f| f.backend == callgate_core::Backend::Http)
        .map(|f| {
            (
                f.name.clone(),
                format!("function {:?}: credential", f.name),
                f.credential.clone(),
            )
        });
    let servers = config.mcp.servers.iter().map(|(name, srv)| {
        (
            format!("mcp:{name}"),
            format!("mcp server {name:?}: credential"),
            srv.credential.clone(),
        )
    });
    for (key, at, credential) in functions.chain(servers) {
        match &credential {
            None => {}
            Some(CredentialConfig::Minted { audience, ttl_secs }) => {
                if audience.trim().is_empty() {
                    errors.push(format!("{at}: minted.audience is empty"));
                }
                if !(1..=60).contains(ttl_secs) {
                    errors.push(format!("{at}: minted.ttl_secs must be 1 to 60"));
                }
            }
            Some(CredentialConfig::Secret {
                env,
                file,
                header,
                query,
                prefix,
            }) => {
                match (header, query) {
                    (Some(h), None) => {
                        if http::HeaderName::try_from(h.as_str()).is_err() {
                            errors.push(format!("{at}: {h:?} is not a header name"));
                        }
                    }
                    (None, Some(q)) if !q.is_empty() => {}
                    _ => errors.push(format!("{at}: give exactly one of header or query")),
                }
                if let Some(s) = read_secret(env, file, &format!("{at}.secret"), base, vars, errors)
                {
                    let ok =
                        http::HeaderValue::from_bytes(&[prefix.as_bytes(), &s].concat()).is_ok();
                    if header.is_some() && !ok {
                        errors.push(format!("{at}: the secret is not a valid header value"));
                    }
                    secrets.insert(key.clone(), s);
                }
            }
            Some(CredentialConfig::Oauth {
                token_url,
                client_secret_env,
                client_secret_file,
                ca_file,
                ..
            }) => {
                if let Some(ca) = ca_file {
                    match http_client::build_client(Some(&base.join(ca)), Duration::from_secs(5)) {
                        Ok(c) => {
                            clients.insert(key.clone(), c);
                        }
                        Err(e) => errors.push(format!("{at}: oauth.ca_file: {e}")),
                    }
                }
                if !(token_url.starts_with("http://") || token_url.starts_with("https://"))
                    || token_url.parse::<http::Uri>().is_err()
                {
                    errors.push(format!(
                        "{at}: oauth.token_url {} is not an http(s) URL",
                        shown_url(token_url)
                    ));
                }
                if let Some(s) = read_secret(
                    client_secret_env,
                    client_secret_file,
                    &format!("{at}.oauth.client_secret"),
                    base,
                    vars,
                    errors,
                ) {
                    secrets.insert(key.clone(), s);
                }
            }
        }
    }
    (secrets, clients)
}

/// Checks the `approvals:` section and reads the webhooks' secrets.
pub(super) fn approvals_checks(
    config: &Config,
    base: &Path,
    vars: &Vars,
    errors: &mut Vec<String>,
) -> Vec<Option<Vec<u8>>> {
    use callgate_approvals::Requirement;
    use callgate_approvals::requirement::parse_duration;
    let a = &config.approvals;
    let is_url = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://")) && u.parse::<http::Uri>().is_ok()
    };
    if a.max_wait_secs > 3600 {
        errors.push(format!(
            "approvals.max_wait_secs: {} is more than an hour; callers poll GET /v1/calls/{{id}} instead",
            a.max_wait_secs
        ));
    }
    if let Some(u) = &a.public_url
        && !is_url(u)
    {
        errors.push(format!(
            "approvals.public_url: {} is not an http(s) URL",
            shown_url(u)
        ));
    }
    // A delegation names callers and people by subject as Callgate forms it: an API key's
    // `subject`, or an issuer's `subject_prefix` and claim. A name no caller can ever have
    // (`bob` where every token subject is `corp:…`) would silently stop linking an agent
    // to its person — and let the person approve what the agent asked for.
    let issuers = &config.identity.issuers;
    if issuers.iter().all(|i| !i.subject_prefix.is_empty()) {
        let possible = |name: &str| {
            config.identity.api_keys.iter().any(|k| k.subject == name)
                || issuers.iter().any(|i| name.starts_with(&i.subject_prefix))
        };
        for (agent, person) in &a.delegations {
            for (what, name) in [("agent", agent), ("person", person)] {
                if !possible(name) {
                    let prefixes: Vec<&str> =
                        issuers.iter().map(|i| i.subject_prefix.as_str()).collect();
                    errors.push(format!(
                        "approvals.delegations: {what} {name:?} is no caller's subject: not an API key's subject{}",
                        if prefixes.is_empty() {
                            String::new()
                        } else {
                            format!(", and token subjects begin with {}", prefixes.join(" or "))
                        }
                    ));
                }
            }
        }
    }
    for (group, rule) in &a.grants {
        if let Err(e) = Requirement::parse(&rule.approval) {
            errors.push(format!("approvals.grants.{group}.approval: {}", e.message));
        }
        if let Err(e) = parse_duration(&rule.max_duration) {
            errors.push(format!("approvals.grants.{group}.max_duration: {e}"));
        }
    }
    let mut secrets = Vec::new();
    for (i, w) in a.webhooks.iter().enumerate() {
        if !is_url(&w.url) {
            // A webhook URL often is the secret (chat services put the token in the path).
            errors.push(format!(
                "approvals.webhooks[{i}].url is not an http(s) URL (not shown: it may hold a token)"
            ));
        }
        let secret = match (&w.secret_env, &w.secret_file) {
            (None, None) => None,
            (env, file) => read_secret(
                env,
                file,
                &format!("approvals.webhooks[{i}] secret"),
                base,
                vars,
                errors,
            ),
        };
        secrets.push(secret);
    }
    secrets
}
