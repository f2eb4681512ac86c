//! The one renderer of every answer the edge writes itself — an error of the request path, a CORS
//! preflight, an ACME HTTP-01 challenge, an HTTPS redirect, a refusal of the head-deadline layer below
//! Pingora, an admin listener's refusal. Each carries the request id (`X-Request-Id`), and each error
//! the one JSON shape `{"error":{"code":…,"message":…,"request_id":…}}` ([`super::error::error_body`]).
//!
//! A [`Reply`] renders to Pingora's response head and body ([`Reply::head`], [`Reply::body`]), written by
//! `edge::answer`; to raw HTTP/1.1 bytes for a connection Pingora no longer holds
//! ([`Reply::to_http1`]); or to an `http::Response` for the admin listener ([`Reply::to_response`]).

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::error::{error_body, EdgeError};

/// An answer the edge writes itself.
#[derive(Debug)]
pub enum Reply {
    /// An error decided on the request's way.
    Error(EdgeError),
    /// An allowed CORS preflight: 204 with the policy's fields.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// The key authorization of a pending HTTP-01 challenge (RFC 8555 §8.3).
    AcmeChallenge(String),
    /// `redirect_https`: 308 to this location.
    Redirect(String),
    /// A refusal of the admin listener (its codes are its own; the shape is the edge's).
    Admin {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
}

impl Reply {
    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Error(e) => e.status(),
            Reply::Preflight(_) => 204,
            Reply::AcmeChallenge(_) => 200,
            Reply::Redirect(_) => 308,
            Reply::Admin { status, .. } => *status,
        }
    }

    /// Whether the connection is closed after it (framing can no longer be trusted).
    pub fn closes_connection(&self) -> bool {
        matches!(self, Reply::Error(e) if e.closes_connection())
    }

    /// The body, if any.
    pub fn body(&self, request_id: &str) -> Option<Bytes> {
        match self {
            Reply::Error(e) => Some(e.body(request_id)),
            Reply::AcmeChallenge(k) => Some(Bytes::from(k.clone())),
            Reply::Admin { code, message, .. } => Some(error_body(code, message, request_id)),
            Reply::Preflight(_) | Reply::Redirect(_) => None,
        }
    }

    /// The response head for `body` (from [`Reply::body`]).
    pub fn head(&self, request_id: &str, body: Option<&Bytes>) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status(), Some(8))?;
        for (name, value) in self.fields(body) {
            resp.insert_header(name, value)?;
        }
        resp.insert_header(contracts::headers::REQUEST_ID, request_id)?;
        if self.closes_connection() {
            resp.insert_header(CONNECTION, "close")?;
        }
        Ok(resp)
    }

    /// The answer to a gRPC request (`content-type: application/grpc…`, given as `content_type`): an
    /// error as gRPC's "trailers-only" response — HTTP 200 and the status in the head (`grpc-status`,
    /// `grpc-message`: `{code}: {message}` percent-encoded), no body — with the fields of its kind
    /// (`Retry-After`, `RateLimit-*`, `WWW-Authenticate`) and the request id. Other kinds as usual.
    pub fn grpc_head(
        &self,
        request_id: &str,
        content_type: &[u8],
    ) -> pingora::Result<ResponseHeader> {
        let Reply::Error(e) = self else {
            return self.head(request_id, self.body(request_id).as_ref());
        };
        let mut resp = ResponseHeader::build(200, Some(8))?;
        for (name, value) in self.fields(None) {
            if name != CONTENT_TYPE && name != CONTENT_LENGTH {
                resp.insert_header(name, value)?;
            }
        }
        // The client's own flavour: gRPC-Web clients read the status from the head too.
        let flavour = if content_type.starts_with(b"application/grpc-web-text") {
            "application/grpc-web-text"
        } else if content_type.starts_with(b"application/grpc-web") {
            "application/grpc-web+proto"
        } else {
            "application/grpc"
        };
        resp.insert_header(CONTENT_TYPE, flavour)?;
        resp.insert_header("grpc-status", e.grpc_status().to_string())?;
        resp.insert_header("grpc-message", grpc_message(&format!("{}: {e}", e.code())))?;
        resp.insert_header(contracts::headers::REQUEST_ID, request_id)?;
        if self.closes_connection() {
            resp.insert_header(CONNECTION, "close")?;
        }
        Ok(resp)
    }

    /// The fields of this kind of answer (the request id and `Connection` aside).
    fn fields(&self, body: Option<&Bytes>) -> Vec<(HeaderName, HeaderValue)> {
        let len = |b: Option<&Bytes>| HeaderValue::from(b.map_or(0, Bytes::len));
        let json = HeaderValue::from_static("application/json");
        match self {
            Reply::Error(e) => {
                let mut f = vec![(CONTENT_TYPE, json), (CONTENT_LENGTH, len(body))];
                if let EdgeError::Auth(a) = e {
                    if let Some(Ok(v)) = a.www_authenticate().map(|v| HeaderValue::from_str(&v)) {
                        f.push((WWW_AUTHENTICATE, v));
                    }
                }
                if let EdgeError::Overloaded(_) | EdgeError::PolicyUnavailable = e {
                    f.push((RETRY_AFTER, HeaderValue::from_static("1")));
                }
                if let EdgeError::RateLimited(r) = e {
                    f.push((RETRY_AFTER, HeaderValue::from(r.retry_after_secs)));
                    for (name, value) in [
                        ("ratelimit-policy", &r.policy_field),
                        ("ratelimit", &r.ratelimit_field),
                    ] {
                        if let Ok(v) = HeaderValue::from_str(value) {
                            f.push((HeaderName::from_static(name), v));
                        }
                    }
                }
                f
            }
            Reply::Preflight(fields) => fields.clone(),
            Reply::AcmeChallenge(_) => vec![
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (CONTENT_LENGTH, len(body)),
            ],
            Reply::Redirect(location) => {
                let mut f = vec![(CONTENT_LENGTH, HeaderValue::from(0))];
                if let Ok(v) = HeaderValue::from_str(location) {
                    f.insert(0, (LOCATION, v));
                }
                f
            }
            Reply::Admin { status, .. } => {
                let mut f = vec![
                    (CONTENT_TYPE, json),
                    (CONTENT_LENGTH, len(body)),
                    (
                        http::header::CACHE_CONTROL,
                        HeaderValue::from_static("no-store"),
                    ),
                ];
                if *status == 401 {
                    f.push((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
                }
                f
            }
        }
    }

    /// The whole answer as HTTP/1.1 bytes, for a connection the gateway writes to below Pingora (the
    /// head-deadline layer's refusals).
    pub fn to_http1(&self, request_id: &str) -> Vec<u8> {
        let body = self.body(request_id);
        let status = self.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
        let mut field = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        for (name, value) in self.fields(body.as_ref()) {
            field(name.as_str(), value.as_bytes());
        }
        field(contracts::headers::REQUEST_ID, request_id.as_bytes());
        if self.closes_connection() {
            field("connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            out.extend_from_slice(&b);
        }
        out
    }

    /// The whole answer as an `http::Response` (the admin listener's type).
    pub fn to_response(&self, request_id: &str) -> http::Response<Vec<u8>> {
        let body = self.body(request_id);
        let mut builder = http::Response::builder().status(self.status());
        for (name, value) in self.fields(body.as_ref()) {
            builder = builder.header(name, value);
        }
        builder
            .header(contracts::headers::REQUEST_ID, request_id)
            .body(body.map_or_else(Vec::new, |b| b.to_vec()))
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

/// Whether a request is gRPC (or gRPC-Web), by its content type.
pub fn is_grpc(content_type: Option<&HeaderValue>) -> bool {
    content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-message`'s encoding: printable ASCII but `%` as is, every other byte `%XX` (gRPC over HTTP/2).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_refusal_is_trailers_only_with_its_status_and_the_fields_of_its_kind() {
        let id = "0123456789abcdef0123456789abcdef";
        let refused = Reply::Error(EdgeError::NoRoute);
        let head = refused
            .grpc_head(id, b"application/grpc+proto")
            .expect("head");
        assert_eq!(head.status.as_u16(), 200);
        assert_eq!(head.headers["content-type"], "application/grpc");
        assert_eq!(head.headers["grpc-status"], "12");
        assert!(head.headers["grpc-message"]
            .to_str()
            .expect("ascii")
            .starts_with("no_route: "));
        assert_eq!(
            head.headers[contracts::headers::REQUEST_ID].as_bytes(),
            id.as_bytes()
        );
        assert!(head.headers.get("content-length").is_none());
        let web = Reply::Error(EdgeError::Internal)
            .grpc_head(id, b"application/grpc-web-text")
            .expect("head");
        assert_eq!(web.headers["content-type"], "application/grpc-web-text");
        assert_eq!(web.headers["grpc-status"], "13");
        assert_eq!(grpc_message("50% über\n"), "50%25 %C3%BCber%0A");
        assert!(is_grpc(Some(&HeaderValue::from_static("application/grpc"))));
        assert!(!is_grpc(Some(&HeaderValue::from_static(
            "application/json"
        ))));
        assert!(!is_grpc(None));
    }

    /// Every kind carries the request id; every error the JSON shape with it; the bytes written below
    /// Pingora say the same as the head Pingora writes.
    #[test]
    fn every_answer_carries_the_request_id_and_errors_one_shape() {
        let id = "0123456789abcdef0123456789abcdef";
        let replies = [
            Reply::Error(EdgeError::NoRoute),
            Reply::Error(EdgeError::Malformed("x")),
            Reply::Preflight(vec![(
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("https://a.example"),
            )]),
            Reply::AcmeChallenge("token.key".into()),
            Reply::Redirect("https://t.example/x?y".into()),
            Reply::Admin {
                status: 404,
                code: "not_found",
                message: "no such endpoint",
            },
        ];
        for r in &replies {
            let body = r.body(id);
            let head = r.head(id, body.as_ref()).expect("head");
            assert_eq!(head.status.as_u16(), r.status(), "{r:?}");
            assert_eq!(
                head.headers
                    .get(contracts::headers::REQUEST_ID)
                    .map(|v| v.as_bytes()),
                Some(id.as_bytes()),
                "{r:?}"
            );
            if r.status() >= 400 {
                let v: serde_json::Value =
                    serde_json::from_slice(body.as_deref().expect("an error has a body"))
                        .expect("json");
                assert_eq!(v["error"]["request_id"], id, "{r:?}");
                assert!(v["error"]["code"].is_string(), "{r:?}");
                assert!(v["error"]["message"].is_string(), "{r:?}");
            }
            let wire = String::from_utf8(r.to_http1(id)).expect("utf-8");
            assert!(
                wire.starts_with(&format!("HTTP/1.1 {} ", r.status())),
                "{wire}"
            );
            assert!(wire.contains(&format!("x-request-id: {id}\r\n")), "{wire}");
            let response = r.to_response(id);
            assert_eq!(response.status().as_u16(), r.status());
            assert_eq!(
                response.headers()[contracts::headers::REQUEST_ID].as_bytes(),
                id.as_bytes()
            );
        }
        let closing = Reply::Error(EdgeError::Malformed("x")).to_http1(id);
        assert!(String::from_utf8_lossy(&closing).contains("connection: close\r\n"));
    }
}
