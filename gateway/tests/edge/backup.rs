//! compose/backup/redis-snapshot.sh against a real (private) Redis: the copy it leaves is a fresh
//! snapshot — it holds what was written just before the script ran, even right after another save — and
//! a Redis started from it has the keys back. A save that fails is an error, not a wait.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

/// Runs the script against `redis`, copying into `out`; its exit status and stderr.
fn snapshot(redis: &RedisServer, out: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/backup/redis-snapshot.sh");
    let run = Command::new("sh")
        .arg(&script)
        .args(["127.0.0.1", &redis.port.to_string()])
        .arg(redis.data_dir())
        .arg(out)
        .env("REDISCLI_AUTH", &redis.password)
        .output()
        .expect("sh compose/backup/redis-snapshot.sh (redis-cli from scripts/test.sh)");
    (
        run.status.success(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

/// The `.rdb` files the script left in `out`.
fn copies(out: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(out)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "rdb"));
    v.sort();
    v
}

#[tokio::test]
async fn redis_snapshot_copies_a_fresh_dump_that_restores_the_keys() {
    let redis = RedisServer::start().await;
    let mut c = redis.conn().await;
    let set = |k: &'static str, v: &'static str| redis::cmd("SET").arg(k).arg(v).to_owned();
    set("aggios:deny:jti-1", "1")
        .query_async::<()>(&mut c)
        .await
        .expect("set");
    // A save of the server's own just before: the script's snapshot must still be a new one (LASTSAVE
    // has a one-second resolution, so "LASTSAVE changed" cannot tell a save in the same second).
    redis::cmd("SAVE")
        .query_async::<()>(&mut c)
        .await
        .expect("save");
    set("aggios:deny:jti-2", "1")
        .query_async::<()>(&mut c)
        .await
        .expect("set");
    let out = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let (ok, stderr) = snapshot(&redis, out.path());
    assert!(
        ok,
        "redis-snapshot.sh failed after {:?}: {stderr}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "a snapshot of a few keys took {:?}",
        started.elapsed()
    );
    let copied = copies(out.path());
    assert_eq!(copied.len(), 1, "{copied:?}");

    // A Redis started from the copy has both keys: the one written after the earlier save too.
    let restore = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&copied[0], restore.path().join("dump.rdb")).expect("copy");
    let port = free_port();
    let mut restored = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .current_dir(restore.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut keys: Vec<String> = loop {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            // An error while the server still loads the file: ask again.
            if let Ok(k) = redis::cmd("KEYS")
                .arg("aggios:*")
                .query_async::<Vec<String>>(&mut conn)
                .await
            {
                break k;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restored Redis did not answer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let _ = restored.kill();
    let _ = restored.wait();
    keys.sort();
    assert_eq!(keys, ["aggios:deny:jti-1", "aggios:deny:jti-2"]);

    // A save that fails (here: a directory where its file goes, so the rename fails) fails the script
    // fast, with the reason, and leaves no copy.
    let failing_out = tempfile::tempdir().expect("tempdir");
    let dump = redis.data_dir().join("dump.rdb");
    std::fs::remove_file(&dump).expect("remove dump.rdb");
    std::fs::create_dir(&dump).expect("a directory named dump.rdb");
    let started = std::time::Instant::now();
    let (ok, stderr) = snapshot(&redis, failing_out.path());
    assert!(!ok, "a failed save passed: {stderr}");
    assert!(
        stderr.contains("redis-snapshot:"),
        "no reason given: {stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the failed save took {:?} to report",
        started.elapsed()
    );
    assert!(copies(failing_out.path()).is_empty());
}
