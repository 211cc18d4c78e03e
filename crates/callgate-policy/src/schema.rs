//! The Cedar schema, generated from the function registry on every (re)load.

use callgate_core::Registry;
use callgate_core::registry::ArgType;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const NAMESPACE: &str = "Callgate";
/// The action group every function's action belongs to.
pub const CALL_ACTION: &str = "call";
/// The action group of the MCP requests other than `tools/call` (`crm:resources/read`, ...).
/// Apart from `call`, so a policy granting every function grants no resource or prompt.
pub const MCP_ACTION: &str = "mcp";
/// The action group of what upstream MCP servers ask of the agent during a call
/// (`crm:sampling/createMessage`, `crm:elicitation/create`, `crm:roots/list`): the agent's
/// model, user and files. Apart from both others, so granting resources grants none of it.
pub const SERVER_REQUEST_ACTION: &str = "mcp-server-request";

/// Every action group, each a parent of the actions of one kind of function.
pub const ACTION_GROUPS: [&str; 3] = [CALL_ACTION, MCP_ACTION, SERVER_REQUEST_ACTION];

/// The action group `f`'s action belongs to.
pub fn action_group(f: &callgate_core::FunctionDef) -> &'static str {
    match f.backend {
        callgate_core::Backend::McpMethod { .. } => MCP_ACTION,
        callgate_core::Backend::McpServerRequest { .. } => SERVER_REQUEST_ACTION,
        _ => CALL_ACTION,
    }
}

/// The Cedar type of an argument, or `None` when policy cannot see it (untyped values, or
/// arrays of untyped values).
pub fn cedar_type(ty: &ArgType) -> Option<Value> {
    Some(match ty {
        ArgType::String => json!({"type": "String"}),
        ArgType::Integer => json!({"type": "Long"}),
        ArgType::Number => json!({"type": "Extension", "name": "decimal"}),
        ArgType::Boolean => json!({"type": "Boolean"}),
        ArgType::Array(item) => json!({"type": "Set", "element": cedar_type(item)?}),
        ArgType::Object(fields) => record_type(fields),
        ArgType::Any => return None,
    })
}

/// A Cedar record type for an object's declared fields.
pub fn record_type(fields: &BTreeMap<String, (ArgType, bool)>) -> Value {
    let mut attrs = Map::new();
    for (name, (ty, required)) in fields {
        if let Some(mut t) = cedar_type(ty) {
            if !required {
                t["required"] = Value::Bool(false);
            }
            attrs.insert(name.clone(), t);
        }
    }
    json!({"type": "Record", "attributes": attrs})
}

/// The Cedar JSON schema for a registry.
pub fn schema_json(reg: &Registry) -> Value {
    let mut actions = Map::new();
    for group in ACTION_GROUPS {
        actions.insert(group.into(), json!({}));
    }
    for f in reg.iter() {
        actions.insert(
            f.name.clone(),
            json!({
                "memberOf": [{"id": action_group(f)}],
                "appliesTo": {
                    "principalTypes": ["User"],
                    "resourceTypes": ["Function"],
                    "context": {
                        "type": "Record",
                        "attributes": {
                            "arguments": record_type(&f.fields),
                            "request": {
                                "type": "Record",
                                "attributes": {
                                    "time": {"type": "Long"},
                                    "source_ip": {"type": "Extension", "name": "ipaddr"},
                                    "auth_method": {"type": "String"},
                                    "ingress": {"type": "String"}
                                }
                            }
                        }
                    }
                }
            }),
        );
    }
    json!({
        NAMESPACE: {
            "entityTypes": {
                "User": {"memberOfTypes": ["Group"]},
                "Group": {},
                "Function": {"shape": {"type": "Record", "attributes": {
                    "name": {"type": "String"},
                    "risk": {"type": "String"}
                }}}
            },
            "actions": actions
        }
    })
}
