//! Row-level security is the last line of tenant isolation: proven here with queries that "forgot"
//! their WHERE clause, run as the application role.

use crate::helpers::*;

#[tokio::test]
async fn app_role_cannot_bypass_rls_and_owns_nothing() {
    let app = TestApp::spawn().await;
    let (sup, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(APP_ROLE)
            .fetch_one(&app.owner_pool)
            .await
            .expect("role");
    assert!(!sup && !bypass);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = $1",
    )
    .bind(APP_ROLE)
    .fetch_one(&app.owner_pool)
    .await
    .expect("count");
    assert_eq!(owned, 0);
    for table in [
        "users",
        "refresh_tokens",
        "audit_log",
        "api_keys",
        "oauth_clients",
        "oauth_consents",
        "oauth_codes",
        "oauth_refresh_tokens",
        "oauth_access_tokens",
    ] {
        let (enabled, forced): (bool, bool) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(&app.owner_pool)
        .await
        .expect("class");
        assert!(enabled && forced, "{table}");
    }
    // Migrating again is harmless.
    backend::db::migrate(&owner_url(&app.db_name), &app_url(&app.db_name))
        .await
        .expect("second migrate");
}

#[tokio::test]
async fn tenants_never_see_or_touch_each_other() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let a = app.user(acme, "ann@acme.test", "admin").await;
    let g = app.user(globex, "gus@globex.test", "admin").await;

    // No tenant set: nothing is visible.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.app_pool)
        .await
        .expect("count");
    assert_eq!(n, 0);

    // Tenant A: a query without WHERE sees only A's rows.
    let mut tx = backend::db::tenant_tx(&app.app_pool, acme)
        .await
        .expect("tx");
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM users")
        .fetch_all(&mut *tx)
        .await
        .expect("select");
    assert_eq!(ids, vec![a]);
    // …cannot change B's rows…
    let changed = sqlx::query("UPDATE users SET first_name = 'pwned'")
        .execute(&mut *tx)
        .await
        .expect("update")
        .rows_affected();
    assert_eq!(changed, 1, "only A's own row");
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(g)
        .execute(&mut *tx)
        .await
        .expect("delete")
        .rows_affected();
    assert_eq!(deleted, 0);
    // …and cannot write rows into B.
    let insert = sqlx::query(
        "INSERT INTO users (tenant_id, email, password_hash) VALUES ($1, 'x@y.z', 'h')",
    )
    .bind(globex)
    .execute(&mut *tx)
    .await;
    assert!(
        insert.is_err(),
        "WITH CHECK must refuse a row of another tenant"
    );
    tx.rollback().await.expect("rollback");

    // The setting is transaction-local: the pooled connection carries nothing into the next use.
    let mut tx = backend::db::tenant_tx(&app.app_pool, acme)
        .await
        .expect("tx");
    sqlx::query("SELECT 1").execute(&mut *tx).await.expect("q");
    tx.commit().await.expect("commit");
    for _ in 0..8 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&app.app_pool)
            .await
            .expect("count");
        assert_eq!(n, 0);
    }
    let name: String = sqlx::query_scalar("SELECT first_name FROM users WHERE id = $1")
        .bind(g)
        .fetch_one(&app.owner_pool)
        .await
        .expect("g");
    assert_eq!(name, "");
}
