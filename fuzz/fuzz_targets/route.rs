//! Request paths and route templates: normalization and matching never panic, and a
//! normalized path normalizes to itself.
#![no_main]

use callgate_core::route::{Route, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(segs) = normalize_path(text) {
        let joined = format!("/{}", segs.join("/"));
        if segs.iter().all(|s| !s.contains(['/', '%', ';', '\\'])) {
            assert_eq!(normalize_path(&joined).as_ref(), Ok(&segs));
        }
        if let Ok(route) = Route::parse("GET /users/{id}/items/{item}") {
            let _ = route.match_segments(&segs);
        }
    }
    if let Ok(route) = Route::parse(text) {
        let _ = route.render(|p| Some(p.to_string()));
    }
});
