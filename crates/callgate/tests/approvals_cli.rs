//! The approvals flow against the real `callgate demo` binary: the README's curl script, and the
//! reviewer/requester CLI (`callgate approvals|calls|grants`), including an agent's token
//! (`act` claim) counting as its person.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

struct Demo {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("callgate demo exited").unwrap();
        if let Some(u) = line.trim().strip_prefix("gateway") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        url,
        _dir: dir,
    }
}

fn callgate(args: &[&str], token: Option<&str>, gateway: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callgate"));
    c.args(args)
        .env("CALLGATE_GATEWAY", gateway)
        .env_remove("CALLGATE_TOKEN");
    if let Some(t) = token {
        c.env("CALLGATE_TOKEN", t);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn token(d: &Demo, user: &str, act: Option<&str>) -> String {
    // The gateway comes from CALLGATE_GATEWAY, as for the other client commands.
    let mut args = vec!["demo", "token", user];
    if let Some(a) = act {
        args.extend(["--act", a]);
    }
    let o = callgate(&args, None, &d.url);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// bob's reset through the transparent proxy; returns (status, call id).
fn reset(d: &Demo, token: &str, acct: &str) -> (String, String) {
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
        .arg(format!("{}/billing/reset", d.url))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "content-type: application/json"])
        .args(["-d", &format!(r#"{{"account_id":"{acct}"}}"#)])
        .output()
        .unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    let status = out.lines().last().unwrap().to_string();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("location: /v1/calls/"))
        .unwrap_or("")
        .trim()
        .to_string();
    (status, id)
}

#[test]
fn the_readme_curl_script_runs_the_demo_flow() {
    let d = demo();
    let o = Command::new("sh")
        .arg(root().join("examples/demo/approval-flow.sh"))
        .arg(&d.url)
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("ok: held, reviewed by a different person, executed once"),
        "{out}"
    );
    // The OCSF export carries the approval's steps, and --limit counts exported events.
    let config = d._dir.path().join("callgate.yaml");
    let export = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "--config",
            config.to_str().unwrap(),
            "export",
            "--format",
            "ocsf",
        ];
        args.extend_from_slice(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let all = export(&[]);
    let review = all
        .iter()
        .find(|e| e["activity_name"] == "Approval review" && e["actor"]["user"]["name"] == "carol")
        .expect("carol's review is exported");
    assert_eq!(review["unmapped"]["verdict"], "approve", "{review}");
    assert_eq!(review["status"], "Success");
    assert!(
        all.iter()
            .any(|e| e["activity_name"] == "Approval requested")
    );
    assert!(all.iter().any(|e| e["activity_name"] == "Approval state"));
    for n in [1, 2, 3, 5] {
        assert_eq!(export(&["--limit", &n.to_string()]).len(), n, "--limit {n}");
    }
}

#[test]
fn reviewers_and_requesters_use_the_cli() {
    let d = demo();
    let (bob, carol, erin) = (
        token(&d, "bob", None),
        token(&d, "carol", None),
        token(&d, "erin", None),
    );
    let (status, id) = reset(&d, &bob, "acct_3");
    assert_eq!(status, "202");
    assert!(!id.is_empty());
    let (_, id2) = reset(&d, &bob, "acct_4");
    let (_, id3) = reset(&d, &bob, "acct_5");

    // bob lists his own calls, newest first, a page at a time behind the scenes.
    let list = |args: &[&str], who: &str| {
        let mut a = vec!["calls", "list", "--json"];
        a.extend_from_slice(args);
        let o = callgate(&a, Some(who), &d.url);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(list(&[], &bob), [id3.clone(), id2.clone(), id.clone()]);
    assert_eq!(list(&["--limit", "2"], &bob), [id3.clone(), id2.clone()]);
    assert_eq!(list(&["--state", "pending,approved"], &bob).len(), 3);
    assert!(list(&["--state", "succeeded"], &bob).is_empty());
    assert!(list(&[], &erin).is_empty(), "nobody else's calls");
    let o = callgate(&["calls", "list"], Some(&bob), &d.url);
    assert!(text(&o).contains("acct_5"), "{}", text(&o));
    // GET /v1/calls pages with `next`.
    let page = |q: &str| -> serde_json::Value {
        let o = Command::new("curl")
            .args(["-s", &format!("{}/v1/calls?{q}", d.url)])
            .args(["-H", &format!("Authorization: Bearer {bob}")])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = page("limit=1");
    assert_eq!(first["calls"][0]["id"], id3.as_str());
    let next = first["next"].as_str().expect("a next page").to_string();
    let second = page(&format!("limit=1&before={next}"));
    assert_eq!(second["calls"][0]["id"], id2.as_str());
    assert_eq!(page("limit=0")["status"], 400);
    assert_eq!(page("limit=1&limit=2")["status"], 400);
    assert_eq!(page("sort=asc")["status"], 400);
    let o = callgate(&["calls", "list", "--state", "done"], Some(&bob), &d.url);
    assert!(
        !o.status.success() && text(&o).contains("none of"),
        "{}",
        text(&o)
    );

    // carol's queue shows who asked, what, and why it needs her.
    let o = callgate(&["approvals", "list"], Some(&carol), &d.url);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for want in [
        &id[..],
        "billing.reset_account",
        "bob",
        "acct_3",
        "1 of finance-approvers",
        "billing-reset",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    // bob cannot approve; the CLI says why and exits 1.
    let o = callgate(&["approvals", "approve", &id], Some(&bob), &d.url);
    assert!(!o.status.success());
    assert!(text(&o).contains("own call"), "{}", text(&o));
    // erin cannot either.
    let o = callgate(&["approvals", "approve", &id], Some(&erin), &d.url);
    assert!(!o.status.success());
    // No credential: a clear message.
    let o = callgate(&["approvals", "list"], None, &d.url);
    assert!(!o.status.success());
    assert!(text(&o).contains("CALLGATE_TOKEN"), "{}", text(&o));
    // A token file keeps the credential out of the process list; it wins over the others.
    let tok = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tok.path(), format!("{erin}\n")).unwrap();
    let o = callgate(
        &[
            "approvals",
            "list",
            "--token-file",
            tok.path().to_str().unwrap(),
        ],
        Some("cgk_not-a-key"),
        &d.url,
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = callgate(
        &["approvals", "approve", &id, "--comment", "FIN-9"],
        Some(&carol),
        &d.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("approved"), "{}", text(&o));
    let o = callgate(
        &["calls", "wait", &id, "--timeout", "10"],
        Some(&bob),
        &d.url,
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("succeeded") && out.contains("acct_3"), "{out}");
    let o = callgate(&["calls", "show", &id, "--json"], Some(&bob), &d.url);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["response"]["body"]["account_id"], "acct_3");

    // A call bob's agent makes (a token with an `act` claim) is bob's: he cannot approve it.
    let agent = token(&d, "bob", Some("billing-agent"));
    let (status, id) = reset(&d, &agent, "acct_4");
    assert_eq!(status, "202");
    let o = callgate(&["calls", "show", &id, "--json"], Some(&bob), &d.url);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["requester"]["subject"], "bob");
    assert_eq!(v["requester"]["actor"], "billing-agent");
    let o = callgate(&["approvals", "approve", &id], Some(&bob), &d.url);
    assert!(!o.status.success(), "{}", text(&o));
    // carol's agent cannot approve on her behalf either: a review is a person's own act.
    let carols_agent = token(&d, "carol", Some("assistant"));
    let o = callgate(&["approvals", "approve", &id], Some(&carols_agent), &d.url);
    assert!(!o.status.success(), "{}", text(&o));
    // bob cancels; waiting on it fails.
    let o = callgate(&["calls", "cancel", &id], Some(&bob), &d.url);
    assert!(text(&o).contains("cancelled"), "{}", text(&o));
    let o = callgate(
        &["calls", "wait", &id, "--timeout", "1"],
        Some(&bob),
        &d.url,
    );
    assert!(!o.status.success());

    // erin asks to join support for an hour; carol approves; erin can read users until she
    // gives the grant back.
    let read = |t: &str| {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{}/users/u_1", d.url))
            .args(["-H", &format!("Authorization: Bearer {t}")])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(read(&erin), "403");
    let o = callgate(
        &[
            "grants",
            "request",
            "support",
            "--duration",
            "1h",
            "--reason",
            "audit sample",
            "--json",
        ],
        Some(&erin),
        &d.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    let grant: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gid = grant["id"].as_str().unwrap().to_string();
    let o = callgate(&["approvals", "approve", &gid], Some(&carol), &d.url);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read(&erin), "200");
    let o = callgate(&["grants", "list"], Some(&erin), &d.url);
    assert!(text(&o).contains("active until"), "{}", text(&o));
    let o = callgate(&["grants", "revoke", &gid], Some(&erin), &d.url);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read(&erin), "403");
}
