//! `callgate audit` against logs written by a real `callgate serve` process: tampering of
//! every kind makes `verify` fail and name the index, and a gateway killed with SIGKILL under
//! load leaves a log that verifies after restart, with a forward record for every request the
//! upstream received.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callgate_store::{AuditStore, SqliteStore, ops};

const POLICY: &str = r#"
@id("ops-refunds")
permit (principal in Callgate::Group::"ops", action == Callgate::Action::"orders.refund", resource);
"#;

/// A real upstream that remembers the request id of every request it received.
async fn counting_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            if let Some(id) = req.headers().get("x-request-id") {
                s.lock().unwrap().push(id.to_str().unwrap().to_string());
            }
            axum::Json(serde_json::json!({"refunded": true}))
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen)
}

/// Writes a config for `upstream` into a fresh dir; returns (dir, config path, api key).
fn setup(upstream: SocketAddr) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = callgate_gateway::identity::apikey::generate_key();
    let hash = callgate_gateway::identity::apikey::hash_key(&key);
    let cfg = format!(
        r#"listen: 127.0.0.1:0
logging: {{format: json, level: info}}
identity:
  api_keys:
    - {{id: ops, hash: "{hash}", subject: olivia, groups: [ops]}}
upstreams:
  orders: {{url: "http://{upstream}"}}
policies: [policies]
audit:
  publish_dir: published
  checkpoint_interval_ms: 200
functions:
  - name: orders.refund
    upstream: orders
    route: POST /orders/{{order_id}}/refund
    arguments:
      type: object
      properties:
        order_id: {{type: string}}
        amount_cents: {{type: integer}}
      required: [order_id, amount_cents]
"#
    );
    let path = dir.path().join("callgate.yaml");
    std::fs::write(&path, cfg).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.cedar"), POLICY).unwrap();
    (dir, path, key)
}

/// Starts `callgate serve` and waits for its listen address.
fn serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        let line = lines.next().expect("callgate serve exited").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(a) = v["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("callgate listening on http://"))
        {
            break a.to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn signal(child: &mut Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    child.wait().unwrap();
}

fn audit(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callgate"))
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn refund(addr: &str, key: &str, i: usize) -> Option<u16> {
    let client = callgate_gateway::http_client::build_client(None, Duration::from_secs(2)).ok()?;
    let req = http::Request::post(format!("http://{addr}/orders/ord_{i}/refund"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            r#"{{"amount_cents": {i}}}"#
        ))))
        .unwrap();
    let resp = client.request(req).await.ok()?;
    Some(resp.status().as_u16())
}

/// A refund with an optional session; returns the status and the request id.
async fn refund_with_id(addr: &str, key: &str, i: usize, session: Option<&str>) -> (u16, String) {
    let client = callgate_gateway::http_client::build_client(None, Duration::from_secs(2)).unwrap();
    let mut req = http::Request::post(format!("http://{addr}/orders/ord_{i}/refund"))
        .header("x-api-key", key)
        .header("content-type", "application/json");
    if let Some(s) = session {
        req = req.header("callgate-session", s);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            r#"{{"amount_cents": {i}}}"#
        ))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    (resp.status().as_u16(), id)
}

/// show, prove, search, export, replay and tail on a log written by `serve`.
fn auditor_commands_read_the_log(config: &Path, ids: &[String]) {
    let ok = |args: &[&str]| {
        let out = audit(config, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let story = ok(&["show", &ids[3]]);
    for want in [
        "olivia",
        "orders.refund",
        "ord_3",
        "allow",
        "ops-refunds",
        "to orders",
        "200",
    ] {
        assert!(story.contains(want), "show lacks {want}:\n{story}");
    }
    let proof: serde_json::Value = serde_json::from_str(&ok(&["prove", &ids[3]])).unwrap();
    assert_eq!(proof["record"]["event"]["request_id"], ids[3].as_str());
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/audit/rfc6962_verify.py"))
        .arg(proof.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let found = ok(&[
        "search",
        "--caller",
        "olivia",
        "--decision",
        "allow",
        "--json",
    ]);
    assert_eq!(found.lines().count(), 12);
    let none = ok(&["search", "--decision", "deny"]);
    assert_eq!(none.lines().count(), 0);
    let ocsf = ok(&["export", "--format", "ocsf", "--kind", "call"]);
    let first: serde_json::Value = serde_json::from_str(ocsf.lines().next().unwrap()).unwrap();
    assert_eq!(first["class_uid"], 6003);
    assert_eq!(first["actor"]["user"]["name"], "olivia");
    assert_eq!(
        (&first["status_id"], &first["status"]),
        (&serde_json::json!(1), &serde_json::json!("Success"))
    );
    // No nulls where OCSF types a field: left out when the record has no value.
    for line in ocsf.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            !v["api"]["response"]["code"].is_null() || v["api"].get("response").is_none(),
            "{v}"
        );
        assert!(v["actor"]["user"]["name"].is_string(), "{v}");
    }
    // Export pages through the whole log; search says when it stops at its limit.
    let all = ok(&["export", "--format", "jsonl"]).lines().count();
    assert_eq!(all, ok(&["tail", "-n", "1000"]).lines().count());
    assert_eq!(
        ok(&["export", "--format", "jsonl", "--limit", "5"])
            .lines()
            .count(),
        5
    );
    let capped = audit(config, &["search", "--limit", "3"]);
    assert_eq!(String::from_utf8_lossy(&capped.stdout).lines().count(), 3);
    assert!(
        text(&capped).contains("the first 3 matches"),
        "{}",
        text(&capped)
    );
    let replay = ok(&["replay", "s-cli"]);
    assert!(replay.starts_with("session s-cli: 24 records"), "{replay}");
    assert!(replay.contains(r#"body {"refunded":true}"#), "{replay}");
    let bad = audit(config, &["export", "--format", "csv"]);
    assert!(!bad.status.success() && text(&bad).contains("possible values: jsonl, ocsf"));
    let missing = audit(config, &["show", "no-such-id"]);
    assert!(!missing.status.success() && text(&missing).contains("no record"));
    // Arguments leave in OCSF as the function's current masking profile shows them to
    // auditors, even where the record holds them as they were (no profile back then).
    let original = std::fs::read_to_string(config).unwrap();
    let masked = original.replace(
        "policies: [policies]",
        "policies: [policies]\nmasking:\n  profiles:\n    money:\n      rules:\n        - {keys: [amount_cents], strategy: redact}",
    ).replace("    upstream: orders\n", "    upstream: orders\n    mask: money\n");
    std::fs::write(config, &masked).unwrap();
    let events: Vec<serde_json::Value> = ok(&["export", "--format", "ocsf", "--kind", "call"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::write(config, original).unwrap();
    assert!(!events.is_empty());
    for e in &events {
        let args = &e["unmapped"]["arguments"];
        assert!(args["order_id"].is_string(), "{e}");
        assert!(
            !args["amount_cents"].is_number(),
            "raw argument exported: {e}"
        );
    }
}

fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()")
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_bad_index_for_every_kind_of_tampering() {
    let (up, _) = counting_upstream().await;
    let (dir, config, key) = setup(up);
    let (mut child, addr) = serve(&config);
    let mut ids = Vec::new();
    for i in 0..12 {
        let (status, id) = refund_with_id(&addr, &key, i, Some("s-cli")).await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    signal(&mut child, "-TERM");
    let ok = audit(&config, &["verify"]);
    assert!(ok.status.success(), "{}", text(&ok));
    auditor_commands_read_the_log(&config, &ids);
    let published = dir.path().join("published/checkpoint");
    assert!(published.exists(), "checkpoints are published");
    // Published checkpoints are public, whatever the process's umask (the store is not).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&published), 0o644);
    assert_eq!(mode(published.parent().unwrap()), 0o755);
    assert_eq!(mode(&dir.path().join("callgate-data/audit.db")) & 0o077, 0);

    // Each case: SQL run on a copy of the store, and the index verify must name.
    let cases: &[(&str, &str, u64)] = &[
        (
            "alter a record",
            "UPDATE records SET body = replace(body, 'ord_5', 'ord_X') WHERE idx = 11",
            11,
        ),
        ("delete a record", "DELETE FROM records WHERE idx = 7", 7),
        (
            "hide a record from searches",
            "UPDATE records SET subject = 'nobody' WHERE idx = 3",
            3,
        ),
        (
            "erase a record that retention never prunes",
            "UPDATE records SET body = NULL WHERE idx = 0",
            0,
        ),
        (
            "reorder two records",
            "UPDATE records SET idx = -1 WHERE idx = 4; UPDATE records SET idx = 4 WHERE idx = 5; UPDATE records SET idx = 5 WHERE idx = -1",
            4,
        ),
        (
            "truncate the log",
            "DELETE FROM records WHERE idx >= 20",
            20,
        ),
        (
            "forge the last checkpoint",
            "UPDATE checkpoints SET note = replace(note, substr(note, instr(note, char(10)) + 1, 2), '99') WHERE size = (SELECT MAX(size) FROM checkpoints)",
            u64::MAX,
        ),
    ];
    for (name, sql, want) in cases {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let cfg = copy.path().join("callgate.yaml");
        sqlite(&copy.path().join("callgate-data/audit.db"), sql);
        let out = audit(&cfg, &["verify"]);
        let t = text(&out);
        assert!(!out.status.success(), "{name}: verify passed:\n{t}");
        if *want != u64::MAX {
            assert!(
                t.contains(&format!("first bad index {want}:")),
                "{name}: {t}"
            );
        } else {
            assert!(t.contains("first bad index"), "{name}: {t}");
        }
    }

    // Deleting the tail together with every checkpoint that covered it: only a checkpoint
    // kept outside the store can tell.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let cfg = copy.path().join("callgate.yaml");
    sqlite(
        &copy.path().join("callgate-data/audit.db"),
        "DELETE FROM records WHERE idx >= 20; DELETE FROM checkpoints WHERE size > 20",
    );
    assert!(
        audit(&cfg, &["verify"]).status.success(),
        "the store alone looks intact"
    );
    let out = audit(
        &cfg,
        &["verify", "--from-checkpoint", published.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("first bad index 20:"), "{}", text(&out));

    // `audit key` prints the verifier key that signs the published checkpoint.
    let key_out = audit(&config, &["key"]);
    let vkey = String::from_utf8_lossy(&key_out.stdout).trim().to_string();
    assert!(vkey.starts_with("callgate.local/audit+"), "{vkey}");
    let note = std::fs::read_to_string(&published).unwrap();
    let verifier = callgate_audit::note::Verifier::parse(&vkey).unwrap();
    assert!(ops::open_checkpoint(&note, &verifier).is_ok());
    let pinned = audit(&config, &["verify", "--key", &vkey]);
    assert!(pinned.status.success(), "{}", text(&pinned));

    // Key rotation: recorded, and the log still verifies from the old key onwards.
    let rotated = audit(&config, &["rotate-key"]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let new_key = String::from_utf8_lossy(&audit(&config, &["key"]).stdout)
        .trim()
        .to_string();
    assert_ne!(new_key, vkey);
    let out = audit(&config, &["verify", "--key", &vkey]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&new_key),
        "the new key is trusted: {}",
        text(&out)
    );
    // A checkpoint published before the rotation, signed by the old key only, still checks
    // out against the log with the key that signed it.
    let before = std::fs::read_to_string(&published).unwrap();
    assert!(ops::open_checkpoint(&before, &verifier).is_ok());
    let out = audit(
        &config,
        &[
            "verify",
            "--key",
            &vkey,
            "--from-checkpoint",
            published.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let rotations = audit(&config, &["search", "--kind", "admin.key_rotation"]);
    assert_eq!(
        String::from_utf8_lossy(&rotations.stdout).lines().count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_leaves_a_log_that_verifies() {
    let (up, seen) = counting_upstream().await;
    let (_dir, config, key) = setup(up);
    let (mut child, addr) = serve(&config);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..8 {
        let (addr, key, stop) = (addr.clone(), key.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = t * 100_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = refund(&addr, &key, i).await;
                i += 1;
            }
        }));
    }
    // Let calls flow, then kill the gateway without warning.
    while seen.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&mut child, "-KILL");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let received: Vec<String> = seen.lock().unwrap().clone();

    // Restart: the crash is recorded, then stop cleanly.
    let (mut child, _) = serve(&config);
    signal(&mut child, "-TERM");
    let out = audit(&config, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));

    let store =
        SqliteStore::open_read_only(&config.parent().unwrap().join("callgate-data/audit.db"))
            .await
            .unwrap();
    for id in &received {
        let recs = ops::call_records(&store, id).await.unwrap();
        let forward = recs.iter().find(|r| r.kind == "call").map(ops::record_json);
        let forward =
            forward.unwrap_or_else(|| panic!("the upstream received {id} with no record"));
        assert_eq!(forward["event"]["forward"]["upstream"], "orders", "{id}");
    }
    let recovery = store
        .search(&callgate_store::Filter {
            kind: Some("admin.recovery".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(recovery.len(), 1, "the restart records the crash");
}
