//! Approvals with segregation of duties, as pure rules.
//!
//! - [`requirement`]: what an `@approval(...)` obligation or a function's default asks for —
//!   reviewer groups, distinct approvers per group (groups are AND-ed), how long a request may
//!   wait, and whether a reason is required.
//! - [`state`]: the held call's state machine. Every rule of segregation of duties lives here
//!   (the requester never approves, approvals count distinct humans, deny wins, late reviews
//!   change nothing), so it is tested once, table-driven and with property tests, and the store
//!   and gateway only persist and execute what it decides.
//! - [`digest`]: the SHA-256 over the canonical form of exactly what will be executed; an
//!   approval binds to it.
#![forbid(unsafe_code)]

pub mod digest;
pub mod requirement;
pub mod state;

pub use requirement::Requirement;
pub use state::{Approval, Expiry, Requester, ReviewError, ReviewRecord, Reviewer, State, Verdict};
