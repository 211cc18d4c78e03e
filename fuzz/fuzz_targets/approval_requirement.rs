//! The `@approval` one-line syntax: never panics; a parsed requirement needs at least one
//! approver.
#![no_main]

use callgate_approvals::requirement::Requirement;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(r) = Requirement::parse(text)
    {
        assert!(r.approvers_needed() >= 1);
    }
});
