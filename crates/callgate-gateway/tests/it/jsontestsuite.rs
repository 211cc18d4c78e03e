//! JSONTestSuite (nst/JSONTestSuite, MIT) through the real gateway: every `n_*` file sent as a
//! function body is refused with 400 and never forwarded; every `y_*` object body is accepted
//! and forwarded — except the two duplicate-key files, which Callgate refuses by its own rule.

use crate::common::*;
use crate::gateway::{POLICY, config};
use http::Method;
use std::path::PathBuf;

fn suite() -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("../shared/testdata/JSONTestSuite/test_parsing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn json_test_suite_through_the_gateway() {
    let up = Upstream::start().await;
    let (ops, ops_hash) = api_key();
    let (_, viewer_hash) = api_key();
    let cfg = config(&up.url(), &ops_hash, &viewer_hash)
        .replace("max_body_bytes: 2048", "max_body_bytes: 1048576");
    let gw = TestGateway::start(&cfg, &[("main.cedar", POLICY)]).await;
    let files = suite();
    assert!(files.len() > 300, "the suite is there");
    let mut wrong = Vec::new();
    let (mut n_refused, mut y_accepted) = (0, 0);
    for (name, body) in &files {
        let before = up.count();
        let r = send(
            Method::POST,
            &gw.url("/echo"),
            &[("x-api-key", &ops), ("content-type", "application/json")],
            Some(body),
        )
        .await;
        let forwarded = up.count() > before;
        let status = r.status.as_u16();
        assert!(status < 500, "{name}: {status}");
        if name.starts_with("n_") {
            if status == 400 && !forwarded {
                n_refused += 1;
            } else {
                wrong.push(format!("{name}: {status}, forwarded={forwarded}"));
            }
        } else if name.starts_with("y_") {
            let is_object = serde_json::from_slice::<serde_json::Value>(body)
                .map(|v| v.is_object())
                .unwrap_or(false);
            let duplicate_keys = name.contains("duplicated_key");
            if duplicate_keys {
                if status != 400 || forwarded {
                    wrong.push(format!(
                        "{name}: duplicate keys must be refused, got {status}"
                    ));
                }
            } else if is_object {
                if status == 200 && forwarded {
                    y_accepted += 1;
                    // The upstream gets the same value, re-serialized.
                    let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
                    let got: serde_json::Value = serde_json::from_slice(&up.last().body).unwrap();
                    assert_eq!(sent, got, "{name}");
                } else {
                    wrong.push(format!(
                        "{name}: a valid object body must be accepted, got {status}"
                    ));
                }
            } else if status != 400 {
                wrong.push(format!(
                    "{name}: a non-object body is not a set of arguments, got {status}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(n_refused > 150, "{n_refused}");
    assert!(y_accepted >= 10, "{y_accepted}");
}
