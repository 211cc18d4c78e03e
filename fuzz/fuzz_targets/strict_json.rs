//! Strict JSON (`callgate_core::json::parse_strict`): never panics; what it accepts serde_json
//! accepts too, and the value survives a round trip through compact serialization.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = callgate_core::json::parse_strict(data) {
        assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
        let again = serde_json::to_vec(&v).unwrap();
        assert_eq!(callgate_core::json::parse_strict(&again).unwrap(), v);
    }
    let _ = callgate_core::json::parse_object(data);
});
