//! `callgate audit export --format ocsf`: audit records as OCSF API Activity (class 6003)
//! events for a SIEM — calls with their decision, refusals, and every approval step (the
//! request, each review, each change of state).
//!
//! Arguments leave the log as the function's masking profile shows them to auditors: the
//! current config's profiles are applied (with the auditors group's clearance) on top of what
//! the record holds; when the config cannot be loaded, or the function is no longer declared,
//! the arguments are left out rather than exported as recorded. Fields OCSF types (a status
//! code, an address) are left out rather than null when the record has no value for them;
//! `status` is the caption of `status_id`.

use callgate_audit::record::{ApprovalEvent, Event};
use callgate_core::registry::Registry;
use callgate_gateway::masking::Masking;
use callgate_gateway::runtime;
use callgate_store::StoredRecord;
use serde_json::{Value, json};
use std::path::Path;

/// The config's masking, to show arguments as auditors see them.
pub struct Masker {
    masking: Masking,
    registry: Registry,
    auditors: String,
}

impl Masker {
    /// Loads the config's functions and profiles; `None` (arguments left out) if it does not
    /// load.
    pub fn load(config: &Path, auditors: &str) -> Option<Masker> {
        let parts = match runtime::load_parts(config, &crate::commands::offline_vars()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("warning: arguments are left out of the export: {e}");
                return None;
            }
        };
        let masking = match Masking::load(&parts.config.masking, runtime::base_dir(config)) {
            Ok(m) => m,
            Err(es) => {
                eprintln!(
                    "warning: arguments are left out of the export: {}",
                    es.join("; ")
                );
                return None;
            }
        };
        Some(Masker {
            masking,
            registry: parts.registry,
            auditors: auditors.to_string(),
        })
    }

    /// `arguments` of a call of `function`, masked for auditors; `None` when that cannot be
    /// known.
    fn arguments(&self, function: &str, arguments: Value) -> Option<Value> {
        let f = self.registry.get(function)?;
        let mut v = arguments;
        let names: Vec<String> = f.mask.iter().cloned().collect();
        self.masking
            .mask_value(&names, &mut v, std::slice::from_ref(&self.auditors));
        Some(v)
    }
}

/// The OCSF event for record `r`, if it is a call, a refusal or an approval step.
pub fn event(r: &StoredRecord, masker: Option<&Masker>) -> Option<Value> {
    let e = crate::audit_cmd::event(r)?;
    let base = |time: u64,
                status_id: u8,
                activity: &str,
                user: Value,
                api: Value,
                unmapped: Value,
                source: Option<String>| {
        let status = match status_id {
            1 => "Success",
            2 => "Failure",
            _ => "Other",
        };
        let mut v = json!({
            "class_uid": 6003,
            "class_name": "API Activity",
            "category_uid": 6,
            "category_name": "Application Activity",
            "activity_id": 99,
            "activity_name": activity,
            "type_uid": 600399,
            "severity_id": 1,
            "time": time,
            "status_id": status_id,
            "status": status,
            "actor": {"user": user},
            "api": api,
            "metadata": {"version": "1.3.0", "uid": r.index.to_string(), "product": {"name": "Callgate", "vendor_name": "Callgate"}},
            "unmapped": unmapped,
        });
        if let Some(ip) = source {
            v["src_endpoint"] = json!({"ip": ip});
        }
        v
    };
    let api = |operation: &str, request_id: &str, code: Option<u16>| {
        let mut api = json!({
            "operation": if operation.is_empty() { "unknown" } else { operation },
            "request": {"uid": request_id},
        });
        if let Some(code) = code {
            api["response"] = json!({"code": code});
        }
        api
    };
    Some(match e {
        Event::Call(c) => {
            let c = *c;
            let status_id = match c.decision.effect.as_str() {
                "allow" => 1,
                "deny" => 2,
                // Held for approval: neither yet.
                _ => 99,
            };
            let mut unmapped = json!({"decision": c.decision.effect, "policies": c.decision.policies, "session": c.session});
            let arguments = Value::Object(c.arguments);
            match masker.and_then(|m| m.arguments(&c.function, arguments)) {
                Some(a) => unmapped["arguments"] = a,
                None => unmapped["arguments_withheld"] = json!(true),
            }
            base(
                c.time_ms,
                status_id,
                "Call",
                user(Some(c.caller.subject), &c.caller.groups),
                api(&c.function, &c.request_id, None),
                unmapped,
                c.source,
            )
        }
        Event::Refused(x) => {
            let mut unmapped = json!({"code": x.code, "detail": x.detail, "session": x.session});
            if let Some(n) = x.repeated {
                unmapped["repeated"] = json!(n);
                unmapped["first_ms"] = json!(x.first_ms);
            }
            base(
                x.time_ms,
                2,
                "Call",
                user(x.subject, &[]),
                api(
                    x.function.as_deref().unwrap_or(""),
                    &x.request_id,
                    Some(x.status),
                ),
                unmapped,
                x.source,
            )
        }
        Event::ApprovalRequested(a) => approval(base, api, a, "Approval requested"),
        Event::ApprovalReview(a) => approval(base, api, a, "Approval review"),
        Event::ApprovalState(a) => approval(base, api, a, "Approval state"),
        _ => return None,
    })
}

fn user(subject: Option<String>, groups: &[String]) -> Value {
    let mut user = json!({"name": subject.unwrap_or_else(|| "anonymous".into())});
    if !groups.is_empty() {
        user["groups"] = groups.iter().map(|g| json!({"name": g})).collect();
    }
    user
}

/// One step of an approval: who acted, on what, and how it stands.
fn approval(
    base: impl Fn(u64, u8, &str, Value, Value, Value, Option<String>) -> Value,
    api: impl Fn(&str, &str, Option<u16>) -> Value,
    a: ApprovalEvent,
    activity: &str,
) -> Value {
    let status_id = match (a.verdict.as_deref(), a.state.as_str()) {
        (Some("approve"), _) => 1,
        (Some(_), _) => 2,
        (None, "approved" | "succeeded" | "acknowledged") => 1,
        (None, "denied" | "failed" | "expired" | "unknown" | "revoked") => 2,
        _ => 99,
    };
    let mut unmapped = json!({"item": a.item, "state": a.state});
    for (k, v) in [
        ("verdict", a.verdict),
        ("group", a.group),
        ("requirement", a.requirement),
        ("digest", a.digest),
        ("reason", a.reason),
        ("comment", a.comment),
        ("detail", a.detail),
        ("session", a.session),
    ] {
        if let Some(v) = v {
            unmapped[k] = json!(v);
        }
    }
    if let Some(c) = a.counted {
        unmapped["counted"] = json!(c);
    }
    base(
        a.time_ms,
        status_id,
        activity,
        user(Some(a.actor), &[]),
        api(
            a.function.as_deref().unwrap_or(&a.item),
            &a.request_id,
            None,
        ),
        unmapped,
        None,
    )
}
