//! Stored audit records as `callgate audit verify` reads them: any bytes give a record or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callgate_audit::record::parse_record(0, data);
    let _ = callgate_audit::record::parse_record(u64::MAX, data);
});
