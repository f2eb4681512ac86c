//! The command-line tasks as the compose stack runs them: the one-shot `migrate` service has the two
//! database URLs in its environment and nothing else (no Redis, JWT or S3 settings).

use std::io::Write as _;
use std::process::{Command, Stdio};

use sqlx::postgres::PgPoolOptions;

use crate::helpers::{admin_url, app_url, owner_url};

fn backend(db: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", app_url(db))
        .env("DATABASE_OWNER_URL", owner_url(db))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backend binary");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("backend exits");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn migrate_and_the_admin_commands_need_only_the_database_urls() {
    let db = format!("aggios_t_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url())
        .await
        .expect("connect as Postgres superuser");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create database");

    let (ok, out) = backend(&db, &["migrate"], None);
    assert!(ok && out.contains("migrations applied"), "{out}");
    let (ok, out) = backend(
        &db,
        &["tenant", "create", "--subdomain", "acme", "--name", "Acme"],
        None,
    );
    assert!(ok && out.contains("\"acme\""), "{out}");
    let (ok, out) = backend(
        &db,
        &[
            "user",
            "create",
            "--tenant",
            "acme",
            "--email",
            "a@acme.test",
        ],
        Some("a-long-enough-password\n"),
    );
    assert!(!ok && out.contains("--password-stdin"), "{out}");
    let (ok, out) = backend(
        &db,
        &[
            "user",
            "create",
            "--tenant",
            "acme",
            "--email",
            "a@acme.test",
            "--password-stdin",
        ],
        Some("a-long-enough-password\n"),
    );
    assert!(ok && out.contains("a@acme.test"), "{out}");
    // Serving still refuses to start without the rest of its settings, and says which.
    let (ok, out) = backend(&db, &["serve"], None);
    assert!(!ok && out.contains("REDIS_URL"), "{out}");

    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");
}
