//! Phase 10, mask: the response is masked before anyone sees it — the caller, the audit log's
//! response record, a waiting requester of a held call.
//!
//! The profiles that apply are the function's `mask:` and every `@mask("…")` of the policies
//! that allowed the call; each rule is skipped for callers in its cleared groups. JSON bodies
//! are parsed once (strictly) and masked by path, key and content; `text/*` bodies by content.
//! A body a profile cannot read — not JSON although it says so, or binary — is never passed
//! through: it is refused (502) or replaced whole, as `masking.on_unparsable` says. The body
//! size is already capped by `limits.max_response_bytes` (a larger response is a 502), so
//! nothing is ever passed unmasked for being large.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use callgate_core::Call;
use callgate_core::config::{MaskingConfig, Unparsable};
use callgate_core::refusal::Refusal;
use callgate_masking::{Profile, Rule, RuleSpec};
use callgate_policy::Decision;
use http::header;

use crate::upstream::UpstreamResponse;

/// Compiled profiles and the keyed-hash key.
pub struct Masking {
    pub profiles: HashMap<String, Arc<Profile>>,
    key: ring::hmac::Key,
    on_unparsable: Unparsable,
}

impl Masking {
    /// Compiles `cfg`; reads (or creates, 0600) the hash key. Errors name the rule.
    pub fn load(cfg: &MaskingConfig, base: &Path) -> Result<Masking, Vec<String>> {
        let mut errors = Vec::new();
        let mut profiles = HashMap::new();
        for (name, p) in &cfg.profiles {
            let mut rules = Vec::new();
            for (i, r) in p.rules.iter().enumerate() {
                let spec = RuleSpec {
                    path: r.path.clone(),
                    keys: r.keys.clone(),
                    detect: r.detect.clone(),
                    strategy: r.strategy.clone(),
                    keep: r.keep,
                    cleared: r.cleared.clone(),
                };
                match Rule::compile(&spec) {
                    Ok(rule) => rules.push(rule),
                    Err(e) => errors.push(format!("masking.profiles.{name}.rules[{i}]: {e}")),
                }
            }
            profiles.insert(
                name.clone(),
                Arc::new(Profile {
                    rules,
                    headers: p.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
                }),
            );
        }
        let key = if cfg.profiles.is_empty() {
            Vec::new()
        } else {
            let path = base.join(&cfg.hash_key_file);
            match std::fs::read(&path) {
                Ok(k) if k.len() >= 32 => k,
                Ok(_) => {
                    errors.push(format!(
                        "{}: the hash key is shorter than 32 bytes",
                        path.display()
                    ));
                    Vec::new()
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut k = [0u8; 32];
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                        .map_err(|_| vec!["cannot generate the masking hash key".to_string()])?;
                    if let Err(e) = crate::audit::write_private(&path, &k) {
                        errors.push(format!("{}: {e}", path.display()));
                    }
                    k.to_vec()
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    Vec::new()
                }
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Masking {
            profiles,
            key: callgate_masking::strategy::hash_key(&key),
            on_unparsable: cfg.on_unparsable,
        })
    }

    /// The profiles for `call` under `decision`.
    fn for_call(&self, call: &Call, decision: &Decision) -> Result<Vec<Arc<Profile>>, Refusal> {
        call.function
            .mask
            .iter()
            .chain(decision.obligations.mask.iter())
            .map(|name| {
                self.profiles
                    .get(name)
                    .cloned()
                    .ok_or_else(|| Refusal::Internal {
                        detail: format!("masking profile {name:?} is not defined"),
                    })
            })
            .collect()
    }

    /// The names of the profiles for `call` under `decision`.
    pub fn names_for(call: &Call, decision: &Decision) -> Vec<String> {
        call.function
            .mask
            .iter()
            .chain(decision.obligations.mask.iter())
            .cloned()
            .collect()
    }

    /// Masks `v` with the named profiles for a viewer in `groups` (unknown names: redacted
    /// whole, never shown raw).
    pub fn mask_value(&self, names: &[String], v: &mut serde_json::Value, groups: &[String]) {
        for n in names {
            match self.profiles.get(n) {
                Some(p) => p.mask_json(v, groups, &self.key),
                None => *v = serde_json::Value::String(callgate_masking::strategy::REDACTED.into()),
            }
        }
    }

    /// The call's arguments as the audit log keeps them: masked by the call's profiles, with
    /// no clearance (auditors see what nobody is cleared for only as masked).
    pub fn audit_arguments(
        &self,
        call: &Call,
        decision: &Decision,
    ) -> serde_json::Map<String, serde_json::Value> {
        let names = Self::names_for(call, decision);
        if names.is_empty() {
            return call.arguments.clone();
        }
        let mut v = serde_json::Value::Object(call.arguments.clone());
        self.mask_value(&names, &mut v, &[]);
        match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// Masks `response` for `call`'s caller.
    pub fn mask(
        &self,
        call: &Call,
        decision: &Decision,
        response: &mut UpstreamResponse,
    ) -> Result<(), Refusal> {
        let profiles = self.for_call(call, decision)?;
        if profiles.is_empty() {
            return Ok(());
        }
        let groups = &call.principal.groups;
        let names: Vec<http::HeaderName> = response
            .headers
            .keys()
            .filter(|n| profiles.iter().any(|p| p.removes_header(n.as_str())))
            .cloned()
            .collect();
        for n in names {
            response.headers.remove(n);
        }
        if response.body.is_empty() {
            return Ok(());
        }
        if let callgate_core::Backend::McpTool { .. }
        | callgate_core::Backend::McpMethod { .. }
        | callgate_core::Backend::McpServerRequest { .. } = call.function.backend
        {
            // An MCP result: mask its structured content and each content block.
            let Ok(mut doc) = callgate_core::json::parse_strict(&response.body) else {
                return Err(Refusal::UpstreamUnreachable {
                    detail: format!(
                        "the result of {} could not be masked, so it is not passed on",
                        call.function.name
                    ),
                });
            };
            // What the agent answered a server's form or roots request is plain JSON (field
            // values, root URIs); everything else carries content blocks.
            let plain = matches!(
                &call.function.backend,
                callgate_core::Backend::McpServerRequest { method, .. }
                    if method != "sampling/createMessage"
            );
            for p in &profiles {
                if plain {
                    p.mask_json(&mut doc, groups, &self.key);
                } else {
                    mask_tool_result(p, &mut doc, groups, &self.key);
                }
            }
            response.body = serde_json::to_vec(&doc).unwrap_or_default().into();
            return Ok(());
        }
        let ctype = response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let is_json = ctype.contains("json");
        let is_text = ctype.starts_with("text/");
        let unreadable = |why: &str| -> Result<(), Refusal> {
            tracing::warn!(request_id = %call.request_id, function = %call.function.name, why, "a response could not be masked");
            match self.on_unparsable {
                Unparsable::Reject => Err(Refusal::UpstreamUnreachable {
                    detail: format!(
                        "the response of {} could not be masked, so it is not passed on",
                        call.function.name
                    ),
                }),
                Unparsable::Redact => Ok(()),
            }
        };
        // A compressed body cannot be read, so it cannot be masked. (Callgate asks upstreams
        // for `identity`; this is one that sent an encoding anyway.)
        let encoded = response
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            unreadable("content-encoded")?;
            redact_whole(response);
            return Ok(());
        }
        // JSON sent as text (`text/plain`, `text/html`) is masked as JSON too, so key and
        // path rules hold whatever the upstream calls it; other text gets the detectors.
        let json_as_text = is_text
            && matches!(
                response.body.iter().find(|b| !b.is_ascii_whitespace()),
                Some(b'{' | b'[')
            );
        if is_json || json_as_text || (!is_text && ctype.is_empty()) {
            // One strict pass over the bytes, writing the masked document as it reads.
            let profiles: Vec<&callgate_masking::Profile> = profiles.iter().map(|p| &**p).collect();
            match callgate_masking::mask_json_bytes(&profiles, &response.body, groups, &self.key) {
                Ok(masked) => {
                    response.body = masked.into();
                    return Ok(());
                }
                // Not JSON after all: text, or a body with no type, masked as text below.
                Err(_) if !is_json => {}
                Err(_) => {
                    unreadable("not JSON")?;
                    redact_whole(response);
                    return Ok(());
                }
            }
        }
        // Key and path rules cannot be applied to text (CSV, HTML, a caller's `Accept` for
        // another representation): text is masked only by a profile of detectors alone.
        if !profiles.iter().all(|p| p.masks_text(groups)) {
            unreadable("text that key and path rules cannot read")?;
            redact_whole(response);
            return Ok(());
        }
        match std::str::from_utf8(&response.body) {
            Ok(text) if is_text || ctype.is_empty() => {
                let mut out = text.to_string();
                for p in &profiles {
                    out = p.mask_plain(&out, groups, &self.key);
                }
                response.body = out.into_bytes().into();
                Ok(())
            }
            _ => {
                unreadable("neither JSON nor text")?;
                redact_whole(response);
                Ok(())
            }
        }
    }
}

/// Masks an MCP result. A `CallToolResult`: `structuredContent` as JSON; each text block, and
/// each embedded resource's text, as JSON when it is JSON, else as plain text (detector rules
/// only: prose has no keys). A `ReadResourceResult`'s `contents` the same way, a
/// `GetPromptResult`'s message blocks, and a `CreateMessageResult`'s content. Every other
/// member, at every level, is masked as JSON.
/// Blocks that cannot be inspected (images, audio, binary resources) are replaced: masking
/// never skips data. An upstream error (`{"error": ...}`) is masked as JSON.
fn mask_tool_result(
    p: &callgate_masking::Profile,
    doc: &mut serde_json::Value,
    groups: &[String],
    key: &ring::hmac::Key,
) {
    use serde_json::{Map, Value};
    // Members other than those named in `handled` are masked together as one object, so key
    // rules see their names too: nothing in a result leaves unmasked for being unexpected
    // (`_meta`, annotations, fields of a newer protocol version, a server's own additions).
    let mask_others = |o: &mut Map<String, Value>, handled: &[&str]| {
        let names: Vec<String> = o
            .keys()
            .filter(|k| !handled.contains(&k.as_str()))
            .cloned()
            .collect();
        if names.is_empty() {
            return;
        }
        let mut others = Value::Object(
            names
                .iter()
                .filter_map(|n| o.remove(n).map(|v| (n.clone(), v)))
                .collect(),
        );
        p.mask_json(&mut others, groups, key);
        if let Value::Object(m) = others {
            o.extend(m);
        }
    };
    // A resource's contents: text as JSON or plain text; binary replaced.
    let mask_resource = |r: &mut Value| {
        let Some(o) = r.as_object_mut() else {
            p.mask_json(r, groups, key);
            return;
        };
        match o.get("text") {
            Some(Value::String(text)) => {
                let masked = mask_text(p, text, groups, key);
                o.insert("text".into(), Value::String(masked));
            }
            Some(_) => {
                o.insert("text".into(), Value::String("[REDACTED]".into()));
            }
            None => {}
        }
        if o.remove("blob").is_some() {
            // Binary contents cannot be inspected: replaced by a text placeholder.
            o.insert("text".into(), Value::String("[REDACTED]".into()));
            o.insert("mimeType".into(), Value::String("text/plain".into()));
        }
        mask_others(o, &["text"]);
    };
    // One content block.
    let mask_block = |block: &mut Value| {
        // What was masked here is left out below; everything else goes through the profile.
        let handled: &[&str] = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                match block.get("text") {
                    Some(Value::String(text)) => {
                        block["text"] = Value::String(mask_text(p, text, groups, key));
                    }
                    _ => block["text"] = Value::String("[REDACTED]".into()),
                }
                &["type", "text"]
            }
            Some("resource") => {
                mask_resource(&mut block["resource"]);
                &["type", "resource"]
            }
            // A link is metadata only (uri, name, description): masked with the rest below.
            Some("resource_link") => &["type"],
            _ => {
                *block = serde_json::json!({"type": "text", "text": "[REDACTED]"});
                return;
            }
        };
        if let Some(o) = block.as_object_mut() {
            mask_others(o, handled);
        }
    };
    let Some(o) = doc.as_object_mut() else {
        p.mask_json(doc, groups, key);
        return;
    };
    let mut handled = vec!["structuredContent", "error"];
    if let Some(sc) = o.get_mut("structuredContent") {
        p.mask_json(sc, groups, key);
    }
    if let Some(e) = o.get_mut("error") {
        p.mask_json(e, groups, key);
    }
    if let Some(Value::Array(contents)) = o.get_mut("contents") {
        contents.iter_mut().for_each(mask_resource);
        handled.push("contents");
    }
    match o.get_mut("content") {
        Some(Value::Array(blocks)) => {
            blocks.iter_mut().for_each(mask_block);
            handled.push("content");
        }
        // A sampling result's single block.
        Some(block @ Value::Object(_)) => {
            mask_block(block);
            handled.push("content");
        }
        _ => {}
    }
    if let Some(Value::Array(messages)) = o.get_mut("messages") {
        for m in messages.iter_mut() {
            match m.get_mut("content") {
                Some(Value::Array(parts)) => parts.iter_mut().for_each(mask_block),
                Some(c @ Value::Object(_)) => mask_block(c),
                Some(other) => p.mask_json(other, groups, key),
                None => {}
            }
            if let Some(m) = m.as_object_mut() {
                mask_others(m, &["content", "role"]);
            } else {
                p.mask_json(m, groups, key);
            }
        }
        handled.push("messages");
    }
    // Everything else, and members whose shape was not the expected one.
    mask_others(o, &handled);
}

/// A text block: as JSON when it is a JSON object or array, else as plain text.
fn mask_text(
    p: &callgate_masking::Profile,
    text: &str,
    groups: &[String],
    key: &ring::hmac::Key,
) -> String {
    match callgate_core::json::parse_strict(text.as_bytes()) {
        Ok(mut v) if v.is_object() || v.is_array() => {
            p.mask_json(&mut v, groups, key);
            v.to_string()
        }
        _ => p.mask_plain(text, groups, key),
    }
}

fn redact_whole(response: &mut UpstreamResponse) {
    response.body = bytes::Bytes::from_static(b"\"[REDACTED]\"");
    response.headers.remove(header::CONTENT_ENCODING);
    response.headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use callgate_masking::{Profile, Rule, RuleSpec};
    use serde_json::json;

    #[test]
    fn every_part_of_a_tool_result_is_masked() {
        let rule = |keys: &[&str], detect: &[&str]| {
            Rule::compile(&RuleSpec::of(None, keys, detect, "redact")).unwrap()
        };
        let p = Profile {
            rules: vec![rule(&["ssn", "password"], &[]), rule(&[], &["email"])],
            headers: vec![],
        };
        let key = callgate_masking::strategy::hash_key(b"0123456789abcdef0123456789abcdef");
        let mut doc = json!({
            "content": [
                {"type": "text", "text": "write to ada@example.com",
                 "_meta": {"ssn": "123-45-6789"}, "resource": {"password": "hunter2"}},
                {"type": "resource_link", "uri": "x://1", "text": "mail ada@example.com"},
                {"type": "resource_link", "uri": "mailto:ada@example.com", "name": "ada",
                 "description": "ada@example.com's file"},
            ],
            "contents": [{"uri": "crm://ada@example.com", "text": "ssn on file", "_meta": {"ssn": "1"}}],
            "_meta": {"owner": {"ssn": "123-45-6789", "mail": "ada@example.com"}},
            "password": "hunter2",
            "isError": false,
        });
        mask_tool_result(&p, &mut doc, &[], &key);
        let text = doc.to_string();
        for raw in ["ada@example.com", "123-45-6789", "hunter2"] {
            assert!(!text.contains(raw), "{raw} left in {text}");
        }
        // Shapes other than the expected ones, JSON inside an embedded resource, and members
        // of prompt messages are masked too.
        let mut odd = json!({
            "content": "write to ada@example.com",
            "messages": [{"role": "user", "_meta": {"ssn": "1"},
                          "content": {"type": "resource", "resource": {
                              "uri": "mailto:ada@example.com", "mimeType": "application/json",
                              "text": "{\"password\": \"hunter2\"}"}}}],
            "contents": [{"uri": "x://1", "text": {"password": "hunter2"}}],
        });
        mask_tool_result(&p, &mut odd, &[], &key);
        let text = odd.to_string();
        for raw in ["ada@example.com", "hunter2", "\"ssn\":\"1\""] {
            assert!(!text.contains(raw), "{raw} left in {text}");
        }
        assert_eq!(
            doc["password"], "[REDACTED]",
            "a top-level key is masked by name"
        );
        assert_eq!(doc["isError"], false);
        assert_eq!(doc["content"][2]["name"], "ada");
    }
}
