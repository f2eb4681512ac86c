//! Test support shared by the backend's integration test crates.
#![allow(dead_code)]

pub mod private_pg;

/// A small pool on `url`, retrying for up to 60 s while the server starts.
pub async fn pool(url: &str) -> sqlx::PgPool {
    let start = std::time::Instant::now();
    loop {
        match sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
        {
            Ok(p) => return p,
            Err(e) if start.elapsed() > std::time::Duration::from_secs(60) => panic!("{url}: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
