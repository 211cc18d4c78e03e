//! Callgate's authorization, on Cedar.
//!
//! This crate owns the mapping from the call model to Cedar: the schema generated from the
//! function registry ([`schema`]), how JSON arguments become Cedar values ([`context`]), loading
//! and validating `.cedar` files with file:line diagnostics ([`source`]), and the decision
//! itself with the policies that determined it and the obligations their annotations carry
//! ([`engine`]). Policy test cases for `callgate test` live in [`cases`]. No IO: callers hand in
//! file texts.
//!
//! The Cedar model:
//! - principal: `Callgate::User::"<subject>"`, member of `Callgate::Group::"<group>"` for each
//!   of the caller's groups;
//! - action: one action per function, named after it (`Callgate::Action::"users.get"`), all
//!   members of the action group `Callgate::Action::"call"`. Per-function actions let the
//!   validator type-check `context.arguments` against each function's argument schema;
//! - resource: `Callgate::Function::"<name>"` with attributes `name` and `risk`;
//! - context: `arguments` (typed from the function's JSON Schema) and `request`
//!   (`time`, `source_ip`, `auth_method`, `ingress`).
#![forbid(unsafe_code)]

pub mod cases;
pub mod context;
pub mod engine;
pub mod schema;
pub mod source;

pub use engine::{Decision, Effect, Obligations, PolicyEngine, PolicyRef};
pub use source::{PolicyError, PolicyFile};
