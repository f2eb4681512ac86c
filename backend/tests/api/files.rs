//! Per-tenant files: round trips, listing, content type, size limit, traversal attempts, isolation.
//! Run against a local directory and against a real S3 server (s3s-fs).

use bytes::Bytes;

use crate::helpers::*;

async fn suite(app: &TestApp) {
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    app.user(acme, "ann@acme.test", "member").await;
    app.user(globex, "gus@globex.test", "member").await;
    let (a, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let (g, _) = app.login("globex.aggios.app", "gus@globex.test").await;
    let host = "acme.aggios.app";

    let png = Bytes::from(vec![0x89u8, b'P', b'N', b'G', 1, 2, 3]);
    let (status, body, _) = app
        .call_raw(
            "PUT",
            "/api/files/img/logo%20v1.png",
            host,
            Some(&a),
            "image/png",
            png.clone(),
        )
        .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    app.call_raw(
        "PUT",
        "/api/files/docs/a.txt",
        host,
        Some(&a),
        "text/plain",
        Bytes::from_static(b"hello"),
    )
    .await;
    app.call_raw(
        "PUT",
        "/api/files/docs/b.txt",
        host,
        Some(&a),
        "text/plain",
        Bytes::from_static(b"world"),
    )
    .await;

    let (status, got, headers) = app
        .call_raw(
            "GET",
            "/api/files/img/logo%20v1.png",
            host,
            Some(&a),
            "",
            Bytes::new(),
        )
        .await;
    assert_eq!((status, got), (200, png));
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("image/png")
    );

    let (status, list, _) = app.get("/api/files?prefix=docs/", host, Some(&a)).await;
    assert_eq!(status, 200, "{list}");
    let paths: Vec<&str> = list["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(paths, vec!["docs/a.txt", "docs/b.txt"]);

    // Another tenant sees none of it, even with the same path.
    let (status, _, _) = app
        .call_raw(
            "GET",
            "/api/files/docs/a.txt",
            "globex.aggios.app",
            Some(&g),
            "",
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 404);
    let (_, list, _) = app.get("/api/files", "globex.aggios.app", Some(&g)).await;
    assert_eq!(list["files"].as_array().map(Vec::len), Some(0));

    for bad in [
        "/api/files/../x",
        "/api/files/a/%2e%2e/%2e%2e/x",
        "/api/files/a%2f..%2fb",
        "/api/files/%2Fetc%2Fpasswd",
        "/api/files/a//b",
        "/api/files/a%5cb",
        "/api/files/a%00b",
    ] {
        let (status, body, _) = app
            .call_raw(
                "PUT",
                bad,
                host,
                Some(&a),
                "text/plain",
                Bytes::from_static(b"x"),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    let big = Bytes::from(vec![0u8; 1024 * 1024 + 1]);
    let (status, _, _) = app
        .call_raw(
            "PUT",
            "/api/files/big.bin",
            host,
            Some(&a),
            "application/octet-stream",
            big,
        )
        .await;
    assert_eq!(status, 413);
    let (status, _, _) = app
        .call_raw(
            "PUT",
            "/api/files/x.txt",
            host,
            None,
            "text/plain",
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(status, 401);

    let (status, _, _) = app
        .call("DELETE", "/api/files/docs/a.txt", host, Some(&a), None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = app
        .call("DELETE", "/api/files/docs/a.txt", host, Some(&a), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn files_on_a_local_directory() {
    let app = TestApp::spawn().await;
    suite(&app).await;
    let acme = backend::db::tenants::by_subdomain(&app.owner_pool, "acme")
        .await
        .expect("q")
        .expect("acme");
    let (access, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let (status, body, _) = app
        .get(
            "/api/files/docs/b.txt?presign=1",
            "acme.aggios.app",
            Some(&access),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("presign_unsupported"))
    );
    // The layout on disk: `{tenant uuid}/{path}` (metadata beside it under `.meta/{tenant uuid}/`).
    let root = app.files.path();
    let stored = std::fs::read(root.join(acme.id.to_string()).join("docs").join("b.txt"))
        .expect("acme's docs/b.txt under its tenant id");
    assert_eq!(stored, b"world");
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                files.push(
                    e.path()
                        .strip_prefix(root)
                        .expect("under root")
                        .to_path_buf(),
                );
            }
        }
    }
    assert!(!files.is_empty());
    for f in &files {
        let mut parts = f.iter().map(|p| p.to_string_lossy().into_owned());
        let mut first = parts.next().unwrap_or_default();
        if first == ".meta" {
            first = parts.next().unwrap_or_default();
        }
        assert!(
            uuid::Uuid::parse_str(&first).is_ok(),
            "{} is not under a tenant id",
            f.display()
        );
    }
}

#[tokio::test]
async fn files_on_s3() {
    let s3 = S3Server::start().await;
    let app = TestApp::spawn_with_storage(Some(s3.config())).await;
    suite(&app).await;
    let (access, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let (status, body, _) = app
        .get(
            "/api/files/docs/b.txt?presign=1",
            "acme.aggios.app",
            Some(&access),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let url = body["url"].as_str().expect("url");
    assert!(url.contains("X-Amz-Signature"), "{url}");
    // The presigned URL works without any credentials, straight against the S3 server.
    let fetched = s3.plain_get(url).await;
    assert_eq!(fetched, b"world");
    let acme = backend::db::tenants::by_subdomain(&app.owner_pool, "acme")
        .await
        .expect("q")
        .expect("acme");
    assert!(
        s3.root
            .path()
            .join("aggios")
            .join(acme.id.to_string())
            .join("docs")
            .join("b.txt")
            .exists(),
        "keys live under {{tenant_id}}/"
    );
}

#[tokio::test]
async fn active_content_is_served_as_an_attachment() {
    let app = TestApp::spawn().await;
    app.tenant_with_user("acme", "ann@acme.test", "member")
        .await;
    let (a, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let host = "acme.aggios.app";
    let cases = [
        (
            "/api/files/x/page.html",
            "text/html; charset=utf-8",
            Some("attachment; filename=\"page.html\""),
        ),
        (
            "/api/files/x/logo.svg",
            "image/svg+xml",
            Some("attachment; filename=\"logo.svg\""),
        ),
        (
            "/api/files/x/evil%22name.js",
            "application/javascript",
            Some("attachment; filename=\"evil_name.js\""),
        ),
        ("/api/files/x/photo.png", "image/png", None),
        ("/api/files/x/notes.txt", "text/plain", None),
    ];
    for (path, ct, disposition) in cases {
        let (status, _, _) = app
            .call_raw(
                "PUT",
                path,
                host,
                Some(&a),
                ct,
                Bytes::from_static(b"<script>alert(1)</script>"),
            )
            .await;
        assert_eq!(status, 201, "{path}");
        let (status, _, headers) = app
            .call_raw("GET", path, host, Some(&a), "", Bytes::new())
            .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            headers
                .get("content-disposition")
                .and_then(|v| v.to_str().ok()),
            disposition,
            "{path}"
        );
    }
}

/// A tmpfs of `kib` KiB mounted on a fresh directory (the test runs as root, as CI does; otherwise through
/// `sudo -n`), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(kib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let mut cmd = if root {
            std::process::Command::new("mount")
        } else {
            let mut c = std::process::Command::new("sudo");
            c.args(["-n", "mount"]);
            c
        };
        let out = cmd
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "a full-disk test needs to mount a small tmpfs (root or passwordless sudo): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
        let _ = std::process::Command::new("sudo")
            .args(["-n", "umount"])
            .arg(self.dir.path())
            .status();
    }
}

/// The disk of the local file store fills up: the upload that does not fit gets 507 with a clear error,
/// leaves nothing visible (no partial file, in the listing or by path), and other tenants' files are
/// still read; once room is made, uploads work again without a restart.
#[tokio::test]
async fn a_full_disk_refuses_the_upload_cleanly_and_reads_go_on() {
    let disk = SmallDisk::mount(256);
    let app = TestApp::spawn_with_storage(Some(backend::config::StorageConfig::Local {
        dir: disk.dir.path().to_path_buf(),
    }))
    .await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    app.user(acme, "ann@acme.test", "member").await;
    app.user(globex, "gus@globex.test", "member").await;
    let (a, _) = app.login("acme.aggios.app", "ann@acme.test").await;
    let (g, _) = app.login("globex.aggios.app", "gus@globex.test").await;
    let small = bytes::Bytes::from_static(b"globex keeps reading this");
    let (status, _, _) = app
        .call_raw(
            "PUT",
            "/api/files/keep.txt",
            "globex.aggios.app",
            Some(&g),
            "text/plain",
            small.clone(),
        )
        .await;
    assert_eq!(status, 201);

    // 600 KiB into a 256 KiB disk (the service allows 1 MiB per file).
    let big = bytes::Bytes::from(vec![b'x'; 600 * 1024]);
    let (status, body, headers) = app
        .call_raw(
            "PUT",
            "/api/files/big.bin",
            "acme.aggios.app",
            Some(&a),
            "application/octet-stream",
            big,
        )
        .await;
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("insufficient_storage")),
        "{body}"
    );
    assert!(headers.get("x-request-id").is_some());
    let (status, _, _) = app
        .call_raw(
            "GET",
            "/api/files/big.bin",
            "acme.aggios.app",
            Some(&a),
            "",
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(status, 404, "a partial file is visible");
    let (status, list, _) = app.get("/api/files", "acme.aggios.app", Some(&a)).await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("big.bin"), "{list}");
    // Another tenant reads on.
    let (status, got, _) = app
        .call_raw(
            "GET",
            "/api/files/keep.txt",
            "globex.aggios.app",
            Some(&g),
            "",
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!((status, got), (200, small));
    // Nothing of the refused upload is left taking room: a file that fits is stored at once.
    let fits = bytes::Bytes::from(vec![b'y'; 100 * 1024]);
    let (status, _, _) = app
        .call_raw(
            "PUT",
            "/api/files/fits.bin",
            "acme.aggios.app",
            Some(&a),
            "application/octet-stream",
            fits,
        )
        .await;
    assert_eq!(status, 201, "the refused upload left its bytes on the disk");
}
