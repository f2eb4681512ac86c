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

    let (status, list, _) = app
        .call("GET", "/api/files?prefix=docs/", host, Some(&a), None)
        .await;
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
    let (_, list, _) = app
        .call("GET", "/api/files", "globex.aggios.app", Some(&g), None)
        .await;
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
    let (_, token_body, _) = app
        .call(
            "POST",
            "/api/auth/login",
            "acme.aggios.app",
            None,
            Some(serde_json::json!({"email":"ann@acme.test","password":PASSWORD})),
        )
        .await;
    let (status, body, _) = app
        .call(
            "GET",
            "/api/files/docs/b.txt?presign=1",
            "acme.aggios.app",
            token_body["access_token"].as_str(),
            None,
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
    let (_, token_body, _) = app
        .call(
            "POST",
            "/api/auth/login",
            "acme.aggios.app",
            None,
            Some(serde_json::json!({"email":"ann@acme.test","password":PASSWORD})),
        )
        .await;
    let (status, body, _) = app
        .call(
            "GET",
            "/api/files/docs/b.txt?presign=1",
            "acme.aggios.app",
            token_body["access_token"].as_str(),
            None,
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
    let acme = app.tenant("acme").await;
    app.user(acme, "ann@acme.test", "member").await;
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
