//! A panic inside a request hook is that request's 500, counted; the process and every other request go
//! on (fault injected with `GATEWAY_FAULT_PANIC_PATH`).

use crate::helpers::*;

#[tokio::test]
async fn a_panic_in_a_request_hook_is_a_500_for_that_request_only() {
    let up = TestUpstream::start("u");
    let body = format!(
        "[tenancy]\nbase_domains = [\"aggios.app\"]\n\n{}\n[[routes]]\nname = \"all\"\nhosts = [\"*.aggios.app\"]\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    );
    let gw = Gateway::start_with_env(&body, &[("GATEWAY_FAULT_PANIC_PATH", "/fault/panic")]).await;
    let r = gw.get("acme.aggios.app", "/fault/panic").await;
    assert_eq!((r.status, r.error_code().as_str()), (500, "internal_error"));
    let id = r.json()["error"]["request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert_eq!(up.hits(), 0, "the panicking request reached the upstream");
    assert_eq!(gw.metric("gateway_panics_total").await, 1.0);
    // Logged as one line with the backtrace, down to the hook that panicked.
    eventually("the panic's line with its backtrace", || async {
        gw.stderr().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "panic"
                    && v["backtrace"]
                        .as_str()
                        .is_some_and(|b| b.contains("gateway::edge"))
            })
        })
    })
    .await;

    // Beside ordinary requests, each panic stays its own request's.
    let calls = (0..8).map(|i| {
        let gw = &gw;
        async move {
            let path = if i % 2 == 0 { "/fault/panic" } else { "/ok" };
            gw.get("acme.aggios.app", path).await.status
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses, [500, 200, 500, 200, 500, 200, 500, 200]);
    assert_eq!(up.hits(), 4);
    assert_eq!(gw.metric("gateway_panics_total").await, 5.0);
    // One access-log line per request, the panics' with the error code.
    eventually("the access log has every request", || async {
        gw.access_log()
            .iter()
            .filter(|l| l["path"] == "/fault/panic" && l["status"] == 500)
            .count()
            == 5
    })
    .await;
    assert_eq!(gw.get("acme.aggios.app", "/after").await.status, 200);
}
