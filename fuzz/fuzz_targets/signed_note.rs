//! Signed notes and checkpoints (C2SP signed-note): parsing and opening against a key never
//! panic, and nothing unsigned by the key opens.
#![no_main]

use callgate_audit::note::{Checkpoint, Note, Signer};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::from_seed("callgate.local/audit", [7; 32]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Note::parse(text);
    let _ = Checkpoint::parse(text);
    let _ = callgate_audit::note::Verifier::parse(text);
    // Random text carries no valid signature by this key.
    assert!(Checkpoint::open(text, &[signer().verifier().clone()]).is_err());
});
