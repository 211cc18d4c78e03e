//! Policy test cases for `callgate test`: declared caller, function and arguments with the
//! expected outcome, run against the real registry and policies (like `opa test`).

use callgate_core::model::{AuthMethod, CallMeta, Ingress, Principal};
use callgate_core::{Call, Registry, args};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::engine::PolicyEngine;

/// A file of cases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Config file to test against, relative to the cases file (`--config` overrides it).
    #[serde(default)]
    pub config: Option<String>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Allowed, and runs without approval.
    Allow,
    /// Allowed, and held until approved (an `@approval` obligation or the function's default).
    Held,
    Deny,
    /// The arguments are refused before policy (schema or type violation).
    Invalid,
}

impl Expect {
    /// As a cases file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Held => "held",
            Expect::Deny => "deny",
            Expect::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub name: Option<String>,
    /// The caller's subject.
    #[serde(rename = "as")]
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub function: String,
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    pub expect: Expect,
    /// `context.request` as the gateway would build it; each defaults to a typical request.
    #[serde(default, flatten)]
    pub request: CaseRequest,
}

/// The request a case's call arrives with: what policies read in `context.request`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// `time`, Unix seconds (default: now).
    #[serde(default)]
    pub time: Option<u64>,
    /// `source_ip` (default 127.0.0.1).
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    /// `ingress`: `proxy`, `invoke` (default) or `mcp`.
    #[serde(default)]
    pub ingress: Option<Ingress>,
    /// `auth_method`: `oidc` (default) or `api_key`.
    #[serde(default)]
    pub auth: Option<CaseAuth>,
}

/// How a case's caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseAuth {
    Oidc,
    ApiKey,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub expected: Expect,
    pub actual: Expect,
    pub detail: String,
    /// The case names a function the registry does not have.
    pub unknown_function: bool,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        !self.unknown_function && self.expected == self.actual
    }

    /// Why a failed case failed, for the report: a case naming no declared function fails
    /// for that (whatever it expected), not for its outcome.
    pub fn failure(&self) -> String {
        if self.unknown_function {
            format!(
                "{} (fix the case's function: whatever a case expects, it must name a declared one)",
                self.detail
            )
        } else {
            format!(
                "expected {}, got {} — {}",
                self.expected.name(),
                self.actual.name(),
                self.detail
            )
        }
    }
}

/// Builds the call a case describes, as an ingress would.
pub fn case_call(reg: &Registry, case: &Case) -> Result<Call, String> {
    let function = reg
        .get(&case.function)
        .ok_or_else(|| format!("unknown function {:?}", case.function))?
        .clone();
    let r = &case.request;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Call {
        request_id: "test".into(),
        principal: Arc::new(Principal {
            subject: case.subject.clone(),
            groups: case.groups.clone(),
            auth: match r.auth {
                Some(CaseAuth::ApiKey) => AuthMethod::ApiKey {
                    key_id: "callgate-test".into(),
                },
                _ => AuthMethod::Oidc {
                    issuer: "callgate-test".into(),
                },
            },
            token_id: None,
            actor: None,
            expires_at: None,
            session: None,
            audiences: Vec::new(),
        }),
        function,
        arguments: case.arguments.clone(),
        meta: CallMeta {
            ingress: r.ingress.unwrap_or(Ingress::Invoke),
            source: Some(r.source_ip.unwrap_or([127, 0, 0, 1].into())),
            received_at: r.time.unwrap_or(now),
            session: None,
            reason: None,
            break_glass: None,
            granted: Vec::new(),
            approved: None,
            forward_headers: Default::default(),
        },
    })
}

/// Runs every case.
pub fn run(reg: &Registry, engine: &PolicyEngine, cases: &[Case]) -> Vec<CaseResult> {
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let name = case.name.clone().unwrap_or_else(|| {
                format!("case {} ({} → {})", i + 1, case.subject, case.function)
            });
            // A function that does not exist is the suite's mistake (a typo), never an
            // expected outcome: the case fails whatever it expects.
            let known = reg.get(&case.function).is_some();
            let (actual, detail) = match case_call(reg, case) {
                Err(e) => (Expect::Invalid, e),
                Ok(call) => match args::validate(&call.function, &call.arguments)
                    .and_then(|()| engine.decide(&call))
                {
                    Err(refusal) => (Expect::Invalid, refusal.detail()),
                    Ok(d) if d.allowed() => {
                        let needs = callgate_approvals::Requirement::merge_all(
                            call.function
                                .approval
                                .iter()
                                .chain(d.obligations.approval.iter()),
                        );
                        match needs {
                            Some(r) => (
                                Expect::Held,
                                format!("{}; needs approval by {r}", d.reason()),
                            ),
                            None => (Expect::Allow, d.reason()),
                        }
                    }
                    Ok(d) => (Expect::Deny, d.reason()),
                },
            };
            CaseResult {
                name,
                expected: case.expect,
                actual,
                detail,
                unknown_function: !known,
            }
        })
        .collect()
}
