//! Backups restore: compose/backup's scripts take a base backup of a private cluster that archives its
//! WAL (pg-archive-wal.sh as archive_command), and restore it plus the WAL into a fresh cluster up to a
//! moment before a mistake (pg-restore.sh). The tenants' rows written after the base backup come back from
//! the WAL, the mistake does not, and row-level security still isolates tenants for the application role.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pool;
use common::private_pg::{as_postgres, PrivatePg};
use sqlx::PgPool;

const APP_ROLE: &str = "aggios_backup_app";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../compose/backup")
        .join(name)
        .canonicalize()
        .expect("compose/backup script")
}

/// Runs a compose/backup script as the `postgres` user with `env`; returns its stdout.
fn run_script(name: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let path = format!("{}:/usr/bin:/bin", PrivatePg::bin_dir().display());
    let mut argv: Vec<String> = vec![format!("PATH={path}")];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.push(script(name).display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = as_postgres(Path::new("/usr/bin/env"), &argv);
    assert!(
        out.status.success(),
        "{name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn user(app: &PgPool, tenant: uuid::Uuid, email: &str) {
    let hash = backend::auth::hash_password("correct horse battery").expect("hash");
    let mut tx = backend::db::tenant_tx(app, tenant).await.expect("tx");
    backend::db::users::create(
        &mut tx,
        &backend::db::users::NewUser {
            tenant_id: tenant,
            email,
            password_hash: &hash,
            first_name: "",
            last_name: "",
            role: "member",
        },
    )
    .await
    .expect("user");
    tx.commit().await.expect("commit");
}

async fn emails(app: &PgPool, tenant: uuid::Uuid) -> Vec<String> {
    let mut tx = backend::db::tenant_tx(app, tenant).await.expect("tx");
    let mut v: Vec<String> = sqlx::query_scalar("SELECT email FROM users")
        .fetch_all(&mut *tx)
        .await
        .expect("users");
    v.sort();
    v
}

#[tokio::test]
async fn a_base_backup_plus_archived_wal_restores_to_a_moment_with_rows_and_rls_intact() {
    let archive = PrivatePg::postgres_dir();
    let backups = PrivatePg::postgres_dir();
    let primary = PrivatePg::init();
    primary.configure(&[
        ("wal_level", "replica"),
        ("archive_mode", "on"),
        (
            "archive_command",
            &format!(
                "WAL_ARCHIVE_DIR={} {} %p %f",
                archive.path().display(),
                script("pg-archive-wal.sh").display()
            ),
        ),
    ]);
    primary.pg_ctl_start();
    let port = primary.port;
    let admin = pool(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
    sqlx::query("CREATE DATABASE aggios")
        .execute(&admin)
        .await
        .expect("create db");
    let owner_url = format!("postgres://postgres@127.0.0.1:{port}/aggios");
    let app_url = format!("postgres://{APP_ROLE}:pw@127.0.0.1:{port}/aggios");
    backend::db::migrate(&owner_url, &app_url)
        .await
        .expect("migrate");
    let owner = pool(&owner_url).await;
    let app = pool(&app_url).await;

    // Before the base backup: acme and one user.
    let acme = backend::db::tenants::create(&owner, "Acme Inc", "acme", None)
        .await
        .expect("tenant")
        .id;
    user(&app, acme, "ann@acme.test").await;

    let base = run_script(
        "pg-basebackup.sh",
        &[],
        &[
            ("BACKUP_DIR", backups.path().display().to_string()),
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", port.to_string()),
            ("PGUSER", "postgres".into()),
        ],
    );
    let base = base
        .lines()
        .last()
        .expect("the backup's folder")
        .trim()
        .to_string();
    assert!(Path::new(&base).join("base.tar.gz").exists(), "{base}");

    // After it, only in the WAL: another tenant and more users.
    let globex = backend::db::tenants::create(&owner, "Globex", "globex", None)
        .await
        .expect("tenant")
        .id;
    user(&app, globex, "gus@globex.test").await;
    user(&app, acme, "bob@acme.test").await;
    // Commit timestamps have microseconds: a pause on each side keeps the target strictly between.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let target: String = sqlx::query_scalar("SELECT now()::text")
        .fetch_one(&owner)
        .await
        .expect("now");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The mistake to undo: every acme user deleted.
    sqlx::query("DELETE FROM users WHERE tenant_id = $1")
        .bind(acme)
        .execute(&owner)
        .await
        .expect("delete");
    // Close the segment and wait until the archiver has it.
    let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&owner)
        .await
        .expect("switch wal");
    let start = Instant::now();
    while !archive.path().join(&segment).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "segment {segment} not archived: {}",
            primary.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((admin, owner, app));
    primary.stop();

    // Restore into a fresh cluster, up to the moment before the delete.
    let restored_dir = PrivatePg::postgres_dir();
    let data = restored_dir.path().join("data");
    run_script(
        "pg-restore.sh",
        &[&base, data.to_str().expect("utf8"), &target],
        &[("WAL_ARCHIVE_DIR", archive.path().display().to_string())],
    );
    let restored = PrivatePg::on(restored_dir);
    restored.pg_ctl_start();
    let rport = restored.port;
    let owner = pool(&format!("postgres://postgres@127.0.0.1:{rport}/aggios")).await;
    // Recovery ends and the server promotes itself (recovery_target_action = promote).
    let start = Instant::now();
    loop {
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&owner)
            .await
            .expect("recovery state");
        if !in_recovery {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still recovering: {}",
            restored.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        restored.log().contains("recovery stopping before commit"),
        "the replay did not stop at the target: {}",
        restored.log()
    );
    let app = pool(&format!(
        "postgres://{APP_ROLE}:pw@127.0.0.1:{rport}/aggios"
    ))
    .await;
    // Rows from the base backup and from the WAL; the delete after the target is not replayed.
    assert_eq!(
        emails(&app, acme).await,
        vec!["ann@acme.test", "bob@acme.test"]
    );
    assert_eq!(emails(&app, globex).await, vec!["gus@globex.test"]);
    // RLS intact: the application role sees nothing without a tenant, and one tenant never sees another.
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app)
        .await
        .expect("count");
    assert_eq!(unscoped, 0);
    let (sup, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(APP_ROLE)
            .fetch_one(&owner)
            .await
            .expect("role");
    assert!(!sup && !bypass);
    let forced: bool = sqlx::query_scalar(
        "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE relname = 'users'",
    )
    .fetch_one(&owner)
    .await
    .expect("rls");
    assert!(forced);
    // The restored cluster takes writes again, still under RLS.
    user(&app, acme, "cy@acme.test").await;
    assert_eq!(emails(&app, acme).await.len(), 3);
    assert_eq!(emails(&app, globex).await, vec!["gus@globex.test"]);
}
