//! "bank-ops": the demo's built-in upstream. A deliberately naive service — it trusts its
//! input, resolves `..` in file paths and would serve `/etc/passwd` — so the demo shows what
//! Callgate keeps away from it.

use axum::extract::{Path, Query};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

pub fn router() -> Router {
    Router::new()
        .route("/users/{id}", get(user))
        .route("/billing/reset", post(reset))
        .route("/quota/adjust", post(quota))
        .route("/files", get(file))
}

async fn user(Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    let n: usize = match id.strip_prefix("u_").and_then(|n| n.parse().ok()) {
        Some(n) if (1..=5).contains(&n) => n,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such user", "id": id})),
            );
        }
    };
    let names = [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
        "Katherine Johnson",
        "Edsger Dijkstra",
    ];
    (
        StatusCode::OK,
        Json(json!({
            "id": id,
            "name": names[n - 1],
            "email": format!("user{n}@example.com"),
            "phone": format!("+1-202-555-01{n:02}"),
            "ssn": format!("123-45-678{n}"),
            "card_number": "4111 1111 1111 1111",
            "api_token": format!("sk_live_demo{n}xxxxxxxxxxxxxxxxxxxx"),
            "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "account_id": format!("acct_{n}"),
        })),
    )
}

#[derive(Deserialize)]
struct Reset {
    account_id: String,
}

async fn reset(Json(r): Json<Reset>) -> Json<Value> {
    Json(json!({"account_id": r.account_id, "status": "reset", "balance": 0}))
}

#[derive(Deserialize)]
struct Adjust {
    account_id: String,
    delta: i64,
}

async fn quota(Json(a): Json<Adjust>) -> Json<Value> {
    Json(json!({"account_id": a.account_id, "delta": a.delta, "quota": 1000 + a.delta}))
}

/// Resolves dot segments the naive way, like many real backends.
fn naive_resolve(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

async fn file(Query(q): Query<HashMap<String, String>>) -> (StatusCode, String) {
    let Some(path) = q.get("path") else {
        return (StatusCode::BAD_REQUEST, "path is required\n".into());
    };
    match naive_resolve(path).as_str() {
        "/srv/reports/q3.csv" => (StatusCode::OK, "quarter,revenue\nQ3,1200000\n".into()),
        "/srv/reports/q2.csv" => (StatusCode::OK, "quarter,revenue\nQ2,1100000\n".into()),
        "/etc/passwd" => (StatusCode::OK, "root:x:0:0:root:/root:/bin/bash\n".into()),
        _ => (StatusCode::NOT_FOUND, "no such file\n".into()),
    }
}
