//! Decisions: the loaded policy set, sliced per function, answering one call at a time.
//!
//! Deny by default and fail closed: a call is allowed only when at least one permit policy is
//! satisfied, no forbid policy is, and no policy relevant to the call failed to evaluate (Cedar
//! skips erroring policies; Callgate refuses the call instead). A deny is a [`Decision`] value;
//! only arguments that cannot be represented in Cedar are a [`Refusal`].

use callgate_approvals::Requirement;
use callgate_core::rate::RateSpec;
use callgate_core::refusal::Refusal;
use callgate_core::{Call, FunctionDef, Principal, Registry};
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::context;
use crate::schema::{self, NAMESPACE};
use crate::source::{self, PolicyError, PolicyFile, SourcedPolicy};

/// Annotations a policy may carry. Anything else is a load error, so a typo cannot silently
/// drop an obligation.
pub const KNOWN_ANNOTATIONS: &[&str] = &[
    "id",
    "description",
    "reason",
    "rate_limit",
    "approval",
    "mask",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// A policy that determined a decision, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    pub id: String,
    pub file: String,
    pub line: usize,
    /// The policy's `@reason` or `@description`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the permitting policies require of the rest of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Obligations {
    /// The strictest `@rate_limit` among the determining permit policies (per caller × function).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateSpec>,
    /// The merged `@approval(...)` of the determining policies, for the approval phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Requirement>,
    /// `@mask(...)` of the determining policies, for the masking phase.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
}

/// The outcome of authorizing one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// Permit policies that allowed the call, or forbid policies that denied it. Empty for a
    /// deny by default.
    pub determining: Vec<PolicyRef>,
    pub obligations: Obligations,
    /// Evaluation errors (for logs; they make the decision a deny).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// A plain-language reason, for logs and `callgate explain` (never sent to callers).
    pub fn reason(&self) -> String {
        let list = |ps: &[PolicyRef]| {
            ps.iter()
                .map(|p| format!("{} ({}:{})", p.id, p.file, p.line))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (
            self.effect,
            self.determining.is_empty(),
            self.errors.is_empty(),
        ) {
            (Effect::Allow, _, _) => format!("allowed by {}", list(&self.determining)),
            (Effect::Deny, _, false) => {
                format!(
                    "denied because policy evaluation failed: {}",
                    self.errors.join("; ")
                )
            }
            (Effect::Deny, true, true) => "denied by default: no permit policy matches".to_string(),
            (Effect::Deny, false, true) => format!("denied by {}", list(&self.determining)),
        }
    }
}

/// Per-function precomputed pieces of a request.
struct FunctionSlice {
    policies: PolicySet,
    /// Indexes into `PolicyEngine::policies`.
    members: Vec<usize>,
    resource: EntityUid,
    action: EntityUid,
    fixed_entities: Vec<Entity>,
}

/// Loaded, validated policies for one registry.
pub struct PolicyEngine {
    policies: Vec<SourcedPolicy>,
    by_id: HashMap<String, usize>,
    /// Per policy, computed once at load: how decisions name it, and what it obliges.
    /// (`Policy::annotation` parses its key on every call — far too slow for the data path.)
    refs: Vec<PolicyRef>,
    duties: Vec<Obligations>,
    slices: HashMap<String, FunctionSlice>,
    authorizer: Authorizer,
    user_type: EntityTypeName,
    group_type: EntityTypeName,
    /// Entity stores by (function, subject, groups): building one costs microseconds (Cedar
    /// computes the transitive closure), and a caller tends to call the same functions again.
    /// Dropped with the engine on reload.
    entity_cache: Mutex<HashMap<String, Arc<Entities>>>,
    /// `ip("…")` values by address: constructing the extension call parses its name each time.
    ip_cache: Mutex<HashMap<IpAddr, RestrictedExpression>>,
}

/// Bound on each cache; past it the cache starts over.
const CACHE_MAX: usize = 10_000;

fn cached<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Mutex<HashMap<K, V>>,
    key: K,
    make: impl FnOnce() -> Result<V, Refusal>,
) -> Result<V, Refusal> {
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let v = make()?;
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(key, v.clone());
    Ok(v)
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn type_name(t: &str) -> EntityTypeName {
    EntityTypeName::from_str(&format!("{NAMESPACE}::{t}")).expect("valid type name")
}

/// Cedar suggests the nearest action by its own measure (`inventory.gett` → `mcp`); the
/// suggestion here is the nearest declared function, or none.
fn unrecognized_action(message: String, reg: &Registry) -> String {
    const AT: &str = "unrecognized action `Callgate::Action::\"";
    let Some(start) = message.find(AT) else {
        return message;
    };
    let rest = &message[start + AT.len()..];
    let Some(end) = rest.find('"') else {
        return message;
    };
    let name = &rest[..end];
    let head = message[..start + AT.len() + end].to_string() + "\"`";
    let names = reg
        .iter()
        .map(|f| f.name.as_str())
        .chain(schema::ACTION_GROUPS.iter().copied());
    match callgate_core::locate::nearest(name, names) {
        Some(n) => format!(
            "{head}: no function of that name is declared (did you mean `Callgate::Action::\"{n}\"`?)"
        ),
        None => format!("{head}: no function of that name is declared"),
    }
}

impl PolicyEngine {
    /// Parses and validates `files` against the schema generated from `reg`.
    pub fn load(reg: &Registry, files: &[PolicyFile]) -> Result<PolicyEngine, Vec<PolicyError>> {
        let policies = source::parse_files(files)?;
        let schema = Schema::from_json_value(schema::schema_json(reg)).map_err(|e| {
            vec![PolicyError {
                file: "<generated schema>".into(),
                line: 0,
                message: e.to_string(),
            }]
        })?;
        let mut errors = Vec::new();
        let mut pset = PolicySet::new();
        let function_type = type_name("Function");
        let group_uids: Vec<_> = schema::ACTION_GROUPS
            .iter()
            .map(|g| (*g, uid(&type_name("Action"), g)))
            .collect();
        for p in &policies {
            check_annotations(p, &mut errors);
            // `action == Action::"call"` never matches: requests name the function's own action.
            // Left alone, a forbid written that way would silently forbid nothing.
            for (g, group) in &group_uids {
                if p.policy.action_constraint() == ActionConstraint::Eq(group.clone()) {
                    errors.push(PolicyError {
                        file: p.file.clone(),
                        line: p.line,
                        message: format!(
                            "`action == Callgate::Action::\"{g}\"` matches no call — use \
                             `action in Callgate::Action::\"{g}\"` for every function of the group"
                        ),
                    });
                }
            }
            check_scope_functions(p, reg, &function_type, &mut errors);
            if let Err(e) = pset.add(p.policy.clone()) {
                errors.push(PolicyError {
                    file: p.file.clone(),
                    line: p.line,
                    message: e.to_string(),
                });
            }
        }
        let by_id: HashMap<String, usize> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.policy.id().to_string(), i))
            .collect();
        let result = Validator::new(schema).validate(&pset, ValidationMode::Strict);
        for e in result.validation_errors() {
            let (file, line) = match by_id.get(AsRef::<str>::as_ref(e.policy_id())) {
                Some(&i) => {
                    let p = &policies[i];
                    (
                        p.file.clone(),
                        source::diagnostic_offset(e)
                            .map(|o| p.line_at(o))
                            .unwrap_or(p.line),
                    )
                }
                None => ("<unknown>".into(), 0),
            };
            let mut message = unrecognized_action(source::diagnostic_message(e), reg);
            if message.contains("unable to find an applicable action") {
                message.push_str(
                    " — use `action in Callgate::Action::\"call\"` for every function, or \
                     `action == Callgate::Action::\"<function name>\"` for one",
                );
            }
            errors.push(PolicyError {
                file,
                line,
                message,
            });
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            errors.dedup();
            return Err(errors);
        }

        let action_type = type_name("Action");
        let mut slices = HashMap::new();
        for f in reg.iter() {
            let action = uid(&action_type, &f.name);
            let group = &uid(&action_type, schema::action_group(f));
            let resource = uid(&function_type, &f.name);
            let mut set = PolicySet::new();
            let mut members = Vec::new();
            for (i, p) in policies.iter().enumerate() {
                let applies = match p.policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == action,
                    ActionConstraint::In(list) => list.iter().any(|a| *a == action || a == group),
                };
                if applies {
                    set.add(p.policy.clone()).expect("ids are unique");
                    members.push(i);
                }
            }
            let attrs = HashMap::from([
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(f.name.clone()),
                ),
                (
                    "risk".to_string(),
                    RestrictedExpression::new_string(f.risk.clone()),
                ),
            ]);
            let fixed_entities = vec![
                Entity::new(resource.clone(), attrs, HashSet::new()).expect("string attributes"),
                Entity::new_no_attrs(action.clone(), HashSet::from([group.clone()])),
            ];
            slices.insert(
                f.name.clone(),
                FunctionSlice {
                    policies: set,
                    members,
                    resource,
                    action,
                    fixed_entities,
                },
            );
        }
        let refs = policies
            .iter()
            .map(|p| PolicyRef {
                id: p.policy.id().to_string(),
                file: p.file.clone(),
                line: p.line,
                reason: p
                    .policy
                    .annotation("reason")
                    .or_else(|| p.policy.annotation("description"))
                    .map(str::to_string),
            })
            .collect();
        let duties = policies
            .iter()
            .map(|p| Obligations {
                rate_limit: p
                    .policy
                    .annotation("rate_limit")
                    .and_then(|r| r.parse().ok()),
                approval: p
                    .policy
                    .annotation("approval")
                    .and_then(|a| Requirement::parse(a).ok()),
                mask: p
                    .policy
                    .annotation("mask")
                    .map(str::to_string)
                    .into_iter()
                    .collect(),
            })
            .collect();
        Ok(PolicyEngine {
            policies,
            by_id,
            refs,
            duties,
            slices,
            authorizer: Authorizer::new(),
            user_type: type_name("User"),
            group_type: type_name("Group"),
            entity_cache: Mutex::default(),
            ip_cache: Mutex::default(),
        })
    }

    /// Number of loaded policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    fn policy_ref(&self, id: &str) -> Option<PolicyRef> {
        self.by_id.get(id).map(|&i| self.refs[i].clone())
    }

    fn request(&self, call: &Call) -> Result<(Request, Arc<Entities>, &FunctionSlice), Refusal> {
        let slice = self
            .slices
            .get(&call.function.name)
            .ok_or_else(|| Refusal::Internal {
                detail: format!("function {} has no policy slice", call.function.name),
            })?;
        let principal = uid(&self.user_type, &call.principal.subject);
        // Each part is length-prefixed: no subject or group, whatever bytes it holds, can
        // make one caller's key another's.
        let mut key = String::with_capacity(64);
        for part in [call.function.name.as_str(), call.principal.subject.as_str()]
            .into_iter()
            .chain(call.principal.groups.iter().map(String::as_str))
        {
            key.push_str(&part.len().to_string());
            key.push(':');
            key.push_str(part);
        }
        let entities = cached(&self.entity_cache, key, || {
            // Group entities and the `call` action group need not exist in the store: parents
            // may dangle, and membership tests only read the child's ancestors.
            let groups: HashSet<EntityUid> = call
                .principal
                .groups
                .iter()
                .map(|g| uid(&self.group_type, g))
                .collect();
            let mut entities = slice.fixed_entities.clone();
            entities.push(Entity::new_no_attrs(principal.clone(), groups));
            Entities::from_entities(entities, None)
                .map(Arc::new)
                .map_err(|e| Refusal::Internal {
                    detail: format!("entities: {e}"),
                })
        })?;
        let arguments = context::record("", &call.arguments, &call.function.fields)?;
        // An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`: policy sees the
        // IPv4 address, so IPv4 ranges and `isLoopback` hold for it.
        let ip: IpAddr = call
            .meta
            .source
            .map(|ip| ip.to_canonical())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let request = RestrictedExpression::new_record([
            (
                "time".to_string(),
                RestrictedExpression::new_long(call.meta.received_at as i64),
            ),
            (
                "source_ip".to_string(),
                cached(&self.ip_cache, ip, || {
                    Ok(RestrictedExpression::new_ip(ip.to_string()))
                })?,
            ),
            (
                "auth_method".to_string(),
                RestrictedExpression::new_string(call.principal.auth.name().into()),
            ),
            (
                "ingress".to_string(),
                RestrictedExpression::new_string(call.meta.ingress.name().into()),
            ),
        ])
        .map_err(|e| Refusal::Internal {
            detail: e.to_string(),
        })?;
        let ctx = Context::from_pairs([
            ("arguments".to_string(), arguments),
            ("request".to_string(), request),
        ])
        .map_err(|e| Refusal::Internal {
            detail: format!("context: {e}"),
        })?;
        let req = Request::new(
            principal,
            slice.action.clone(),
            slice.resource.clone(),
            ctx,
            None,
        )
        .map_err(|e| Refusal::Internal {
            detail: format!("request: {e}"),
        })?;
        Ok((req, entities, slice))
    }

    /// Authorizes one call.
    pub fn decide(&self, call: &Call) -> Result<Decision, Refusal> {
        let (req, entities, slice) = self.request(call)?;
        let resp = self
            .authorizer
            .is_authorized(&req, &slice.policies, &entities);
        let errors: Vec<String> = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        let determining: Vec<PolicyRef> = resp
            .diagnostics()
            .reason()
            .filter_map(|id| self.policy_ref(id.as_ref()))
            .collect();
        let allowed = resp.decision() == cedar_policy::Decision::Allow && errors.is_empty();
        let mut obligations = Obligations::default();
        if allowed {
            for r in &determining {
                let d = &self.duties[self.by_id[&r.id]];
                if let Some(spec) = d.rate_limit {
                    let stricter = obligations
                        .rate_limit
                        .is_none_or(|cur| spec.per_second() < cur.per_second());
                    if stricter {
                        obligations.rate_limit = Some(spec);
                    }
                }
                if let Some(req) = &d.approval {
                    obligations.approval = Some(match obligations.approval.take() {
                        Some(cur) => cur.merge(req),
                        None => req.clone(),
                    });
                }
                obligations.mask.extend(d.mask.iter().cloned());
            }
        }
        Ok(Decision {
            effect: if allowed { Effect::Allow } else { Effect::Deny },
            determining: if allowed || resp.decision() == cedar_policy::Decision::Deny {
                determining
            } else {
                vec![]
            },
            obligations,
            errors,
        })
    }

    /// Permit policies for the call's function whose scope matches the caller but whose
    /// conditions did not hold — what `callgate explain` shows for a deny by default.
    pub fn near_misses(&self, call: &Call) -> Vec<PolicyRef> {
        let Some(slice) = self.slices.get(&call.function.name) else {
            return vec![];
        };
        slice
            .members
            .iter()
            .map(|&i| &self.policies[i])
            .filter(|p| p.policy.effect() == cedar_policy::Effect::Permit)
            .filter(|p| self.scope_matches(p, &call.principal, &slice.resource))
            .filter_map(|p| self.policy_ref(p.policy.id().as_ref()))
            .collect()
    }

    fn scope_matches(&self, p: &SourcedPolicy, who: &Principal, resource: &EntityUid) -> bool {
        let me = uid(&self.user_type, &who.subject);
        let mine = |e: &EntityUid| {
            *e == me
                || (e.type_name() == &self.group_type
                    && who.groups.iter().any(|g| g == e.id().unescaped()))
        };
        let principal_ok = match p.policy.principal_constraint() {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Eq(e) => e == me,
            PrincipalConstraint::In(e) => mine(&e),
            PrincipalConstraint::Is(t) => t == self.user_type,
            PrincipalConstraint::IsIn(t, e) => t == self.user_type && mine(&e),
        };
        let resource_ok = match p.policy.resource_constraint() {
            ResourceConstraint::Any => true,
            ResourceConstraint::Eq(e) | ResourceConstraint::In(e) => &e == resource,
            ResourceConstraint::Is(t) => &t == resource.type_name(),
            ResourceConstraint::IsIn(t, e) => &t == resource.type_name() && &e == resource,
        };
        principal_ok && resource_ok
    }

    /// Whether `who` could be allowed to call `function` for some arguments: a permit policy's
    /// scope matches and no unconditional forbid does. Used to filter catalogs, so a model
    /// only ever sees tools it may use.
    pub fn could_allow(&self, who: &Principal, function: &FunctionDef) -> bool {
        let Some(slice) = self.slices.get(&function.name) else {
            return false;
        };
        let mut permitted = false;
        for &i in &slice.members {
            let p = &self.policies[i];
            if !self.scope_matches(p, who, &slice.resource) {
                continue;
            }
            match p.policy.effect() {
                cedar_policy::Effect::Permit => permitted = true,
                cedar_policy::Effect::Forbid if !p.policy.has_non_scope_constraint() => {
                    return false;
                }
                cedar_policy::Effect::Forbid => {}
            }
        }
        permitted
    }

    /// Whether a call by `who` to `function` may be held for approval: the function requires
    /// it, or a permit policy whose scope `who` matches carries `@approval`.
    pub fn may_hold(&self, who: &Principal, function: &FunctionDef) -> bool {
        if function.approval.is_some() {
            return true;
        }
        let Some(slice) = self.slices.get(&function.name) else {
            return false;
        };
        slice.members.iter().any(|&i| {
            let p = &self.policies[i];
            p.policy.effect() == cedar_policy::Effect::Permit
                && self.duties[i].approval.is_some()
                && self.scope_matches(p, who, &slice.resource)
        })
    }

    /// Every masking profile named by an `@mask` annotation, with the policy naming it.
    pub fn mask_profiles(&self) -> Vec<(String, String)> {
        self.duties
            .iter()
            .zip(&self.refs)
            .flat_map(|(d, r)| d.mask.iter().map(|m| (m.clone(), r.id.clone())))
            .collect()
    }

    /// Every policy id with its location, for `callgate check`.
    pub fn summary(&self) -> BTreeMap<String, (String, usize)> {
        self.policies
            .iter()
            .map(|p| (p.policy.id().to_string(), (p.file.clone(), p.line)))
            .collect()
    }
}

fn check_annotations(p: &SourcedPolicy, errors: &mut Vec<PolicyError>) {
    for (k, v) in p.policy.annotations() {
        let at = |message: String| PolicyError {
            file: p.file.clone(),
            line: p.line,
            message,
        };
        if !KNOWN_ANNOTATIONS.contains(&k) {
            errors.push(at(format!(
                "unknown annotation @{k} (known: {})",
                KNOWN_ANNOTATIONS
                    .iter()
                    .map(|a| format!("@{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            continue;
        }
        if k == "approval" {
            if p.policy.effect() != cedar_policy::Effect::Permit {
                errors.push(at("@approval only applies to permit policies".into()));
            }
            if let Err(e) = Requirement::parse(v) {
                errors.push(at(format!("@approval: {}", e.message)));
            }
        }
        if k == "rate_limit" {
            if p.policy.effect() != cedar_policy::Effect::Permit {
                errors.push(at("@rate_limit only applies to permit policies".into()));
            }
            if let Err(e) = v.parse::<RateSpec>() {
                errors.push(at(format!("@rate_limit: {e}")));
            }
        }
    }
}

fn check_scope_functions(
    p: &SourcedPolicy,
    reg: &Registry,
    function_type: &EntityTypeName,
    errors: &mut Vec<PolicyError>,
) {
    let named = match p.policy.resource_constraint() {
        ResourceConstraint::Eq(e) | ResourceConstraint::In(e) | ResourceConstraint::IsIn(_, e) => {
            Some(e)
        }
        _ => None,
    };
    if let Some(e) = named
        && e.type_name() == function_type
        && reg.get(e.id().unescaped()).is_none()
    {
        errors.push(PolicyError {
            file: p.file.clone(),
            line: p.line,
            message: format!("policy names unknown function {:?}", e.id().unescaped()),
        });
    }
}

/// A shared handle, cheap to clone into request handlers.
pub type SharedEngine = Arc<PolicyEngine>;
