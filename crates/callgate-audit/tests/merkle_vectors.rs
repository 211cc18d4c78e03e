//! Every inclusion and consistency vector in `../shared/testdata/merkle` (transparency-dev,
//! Apache-2.0), positive and negative. A leaf or proof hash that is not 32 bytes must be in a
//! vector that expects an error: Callgate's verifier only takes SHA-256 hashes there.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callgate_audit::merkle::{Hash, verify_consistency, verify_inclusion};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vectors(kind: &str) -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/merkle")
        .join(kind);
    let mut out = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                out.push((p, v));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn hash(v: &Value) -> Option<Hash> {
    let s = v.as_str()?;
    STANDARD.decode(s).ok()?.try_into().ok()
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    STANDARD.decode(v.as_str()?).ok()
}

fn proof(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(vec![]),
        Value::Array(a) => a.iter().map(hash).collect(),
        _ => None,
    }
}

/// Runs `check` on every vector of `kind` and compares its outcome with `wantErr`.
fn run(kind: &str, at_least: usize, check: impl Fn(&Value) -> Result<(), &'static str>) {
    let all = vectors(kind);
    assert!(
        all.len() >= at_least,
        "only {} {kind} vectors found",
        all.len()
    );
    for (path, v) in &all {
        let want_err = v["wantErr"].as_bool().unwrap();
        let result = check(v);
        assert_eq!(
            result.is_err(),
            want_err,
            "{}: {} -> {result:?}",
            path.display(),
            v["desc"]
        );
    }
}

#[test]
fn inclusion_vectors() {
    run("inclusion", 90, |v| {
        let leaf = hash(&v["leafHash"]).ok_or("bad leaf hash")?;
        let root = hash(&v["root"]).ok_or("bad root")?;
        let proof = proof(&v["proof"]).ok_or("bad proof hash")?;
        verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &leaf,
            &proof,
            &root,
        )
        .map_err(|_| "rejected")
    });
}

#[test]
fn consistency_vectors() {
    run("consistency", 80, |v| {
        let root1 = bytes(&v["root1"]).ok_or("bad root1")?;
        let root2 = bytes(&v["root2"]).ok_or("bad root2")?;
        let proof = proof(&v["proof"]).ok_or("bad proof hash")?;
        verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &proof,
            &root1,
            &root2,
        )
        .map_err(|_| "rejected")
    });
}
