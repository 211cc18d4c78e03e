//! Data protection, as pure functions: finding sensitive values and masking them.
//!
//! - [`detect`]: content detectors for values that must not leak — email addresses, phone
//!   numbers, payment cards (Luhn), IBANs (ISO 7064 mod 97), US SSNs, IP addresses, JWTs,
//!   private-key blocks, bearer tokens and common cloud/SaaS key formats. Every detector is a
//!   regular expression narrowed by validation (checksums, ranges, context), because a
//!   detector's false positives matter as much as its misses.
//! - [`strategy`]: what to do with a value once selected — redact, keep the last N
//!   characters, a keyed hash (stable per value, so analysts can still join on it), or drop.
//! - [`profile`]: rules (JSONPath, key names, detectors) and how they apply to a JSON
//!   document or plain text.
//! - [`stream`]: the same masking in one pass over a JSON body's bytes, for responses.
#![forbid(unsafe_code)]

pub mod detect;
pub mod profile;
pub mod strategy;
pub mod stream;

pub use detect::{Detector, Finding};
pub use profile::{Profile, Rule, RuleSpec};
pub use strategy::Strategy;
pub use stream::mask_json_bytes;
