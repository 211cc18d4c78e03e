//! Configuration errors as `callgate check` and a failed reload report them: each prefixed
//! with `file:line` where the config's text shows what it is about (`callgate_core::locate`),
//! the `listen` address's form, and configured URLs as an error may show them.

use std::path::Path;

/// Prefixes each configuration error with `file:line` where the text shows what it is about
/// (an error whose place cannot be found keeps the file alone).
pub(crate) fn located(config_path: &Path, text: &str, errors: Vec<String>) -> Vec<String> {
    use callgate_core::locate::{Place, line_of};
    let quoted = |s: &str| -> Option<(String, String)> {
        let rest = s.strip_prefix('"')?;
        let end = rest.find('"')?;
        Some((rest[..end].to_string(), rest[end + 1..].to_string()))
    };
    errors
        .into_iter()
        .map(|e| {
            let line = if let Some((name, rest)) = e.strip_prefix("function ").and_then(quoted) {
                let rest = rest.trim_start_matches(':').trim_start();
                let field = [
                    ("unknown upstream", "upstream"),
                    ("risk", "risk"),
                    ("approval", "approval"),
                    ("forward_headers", "forward_headers"),
                    ("mask", "mask"),
                    ("credential", "credential"),
                    ("break_glass", "break_glass"),
                    ("path parameter", "route"),
                    ("invalid arguments schema", "arguments"),
                    ("the arguments schema", "arguments"),
                    ("argument", "arguments"),
                ]
                .iter()
                .find(|(p, _)| rest.starts_with(p))
                .map(|(_, f)| *f)
                .or_else(|| rest.contains("bound").then_some("bind"));
                line_of(text, Place::Function(&name, field))
            } else if let Some(rest) = e.strip_prefix("upstreams.") {
                let name = rest.split(['.', ':']).next().unwrap_or("");
                line_of(text, Place::Keyed("upstreams", name, Some("url")))
            } else if let Some((id, _)) = e.strip_prefix("api key ").and_then(quoted) {
                line_of(text, Place::Item("id", &id, Some("hash")))
            } else if let Some((name, _)) = e
                .strip_prefix("rate_limits.per_function: ")
                .and_then(quoted)
            {
                line_of(text, Place::Under("rate_limits", &name))
            } else if let Some(rest) = e.strip_prefix("policies: ").and_then(quoted) {
                line_of(text, Place::Under("policies", &rest.0))
            } else if e.starts_with("listen:") {
                line_of(text, Place::Under("listen", "listen"))
            } else {
                None
            };
            let file = config_path.display();
            match line {
                Some(l) => format!("{file}:{l}: {e}"),
                None => format!("{file}: {e}"),
            }
        })
        .collect()
}

/// Whether `listen` reads as `host:port` (a name or an address, and a port number).
pub(crate) fn check_listen(listen: &str) -> Result<(), String> {
    let ok = listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "listen: {listen:?} is not host:port (such as 127.0.0.1:8080 or [::]:8080)"
        ))
    }
}

/// A configured URL as an error message may show it: no query, fragment or user info (where
/// `${VAR}` references put secrets), so `check` never prints a credential.
pub(crate) fn shown_url(u: &str) -> String {
    let cut = u.split(['?', '#']).next().unwrap_or("");
    let shown = match cut.split_once("://") {
        Some((scheme, rest)) => {
            format!(
                "{scheme}://{}",
                rest.rsplit_once('@').map_or(rest, |(_, h)| h)
            )
        }
        None => cut.to_string(),
    };
    if shown.len() < u.len() {
        format!("{shown:?} (query and credentials not shown)")
    } else {
        format!("{shown:?}")
    }
}
