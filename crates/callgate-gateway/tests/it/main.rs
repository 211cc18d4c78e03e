//! Integration tests: the real gateway on loopback against real upstream servers, the real
//! embedded config and policy files, and a real OIDC provider.
#![allow(dead_code)]

mod approvals;
mod audit;
mod common;
mod credentials;
mod demo;
mod gateway;
mod hardening;
mod jsontestsuite;
mod masking;
mod mcp;
mod oidc;
mod tls;
mod wycheproof;
