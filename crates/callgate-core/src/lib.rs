//! Callgate's pure core: everything about a call that can be decided without IO.
//!
//! This crate owns the normalized call model every ingress produces ([`model`]), the
//! configuration types and their JSON Schema ([`config`]), the compiled function registry with
//! route matching ([`registry`], [`route`]), strict JSON parsing ([`json`]), argument extraction,
//! validation and upstream request shaping ([`args`]), the typed refusals every phase can
//! produce ([`refusal`]), and timestamps ([`time`]). Nothing here opens a socket or a file; the gateway crate does the IO.
#![forbid(unsafe_code)]

pub mod args;
pub mod config;
pub mod headers;
pub mod json;
pub mod locate;
pub mod model;
pub mod rate;
pub mod refusal;
pub mod registry;
pub mod route;
pub mod time;

pub use model::{AuthMethod, Call, CallMeta, Ingress, Principal};
pub use refusal::Refusal;
pub use registry::{Backend, FunctionDef, Registry, ToolDef};
