//! Callgate's tamper-evident audit log, without IO.
//!
//! - [`canonical`]: RFC 8785 canonical JSON, shared by records, approval digests and tool pins.
//! - [`record`]: the canonical, versioned encoding of audit records (what an independent
//!   verifier hashes).
//! - [`merkle`]: the RFC 6962 Merkle tree: leaf and node hashes, roots, inclusion and
//!   consistency proofs and their verification.
//! - [`note`]: C2SP signed notes and `tlog-checkpoint` checkpoints with Ed25519 keys.
//! - [`verify`]: checking a whole log (records, leaf hashes, checkpoints) and naming the first
//!   bad index.
//!
//! Storage, the group-commit writer and publishing live in `callgate-store` and the gateway;
//! this crate only computes, so every rule here is testable without a disk.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod merkle;
pub mod note;
pub mod record;
pub mod verify;

pub use merkle::Hash;
