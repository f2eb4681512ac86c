//! The gateway's own outbound HTTP (not the proxied traffic): JWKS documents and the backend's API-key
//! lookups. One pooled client per process, HTTP/1.1, plain or TLS (rustls with the `ring` provider, the
//! system's roots).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Bodies larger than this are refused (a JWKS or a key record is a few KiB).
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL `{0}`")]
    Url(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("response body unreadable or over {MAX_BODY} bytes")]
    Body,
}

fn client() -> Result<&'static Client<Connector, Empty<Bytes>>, FetchError> {
    static CLIENT: OnceLock<Result<Client<Connector, Empty<Bytes>>, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let tls = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .map_err(|e| format!("TLS roots: {e}"))?
                .https_or_http()
                .enable_http1()
                .build();
            Ok(Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(tls))
        })
        .as_ref()
        .map_err(|e| FetchError::Request(e.clone()))
}

/// `GET url`: the status and the whole body, within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, Bytes), FetchError> {
    let uri: http::Uri = url.parse().map_err(|_| FetchError::Url(url.to_string()))?;
    let req = http::Request::get(uri)
        .header(http::header::USER_AGENT, "aggios-gateway")
        .body(Empty::new())
        .map_err(|_| FetchError::Url(url.to_string()))?;
    let call = async {
        let resp = client()?
            .request(req)
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}
