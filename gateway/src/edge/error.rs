//! Every error the edge answers itself, mapped to a status and a JSON body in exactly one place.

use bytes::Bytes;

/// An answer decided at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// 400: the request head breaks HTTP/1.1 framing rules.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// 400: Host missing or not a valid host.
    #[error("missing or invalid Host header")]
    BadHost,
    /// 400: dot segments or encoded separators in the path.
    #[error("path contains dot segments or encoded separators")]
    PathTraversal,
    /// 431: the header section is larger than `limits.max_header_bytes`.
    #[error("request header section too large")]
    HeaderTooLarge,
    /// 431: more header fields than `limits.max_headers`.
    #[error("too many request header fields")]
    TooManyHeaders,
    /// 413: the body is larger than the route's `max_body_bytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// 404: no route matches.
    #[error("no route for this host and path")]
    NoRoute,
    /// 503: the route's upstream has no healthy server.
    #[error("no healthy server for this route")]
    NoHealthyServer,
    /// 504: the upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// 502: the upstream could not be reached or answered badly.
    #[error("upstream unreachable or sent an invalid response")]
    BadGateway,
    /// 408: the client was too slow to send its request.
    #[error("request timed out")]
    RequestTimeout,
    /// 401 or 403: authentication failed or the token belongs to another tenant.
    #[error("{0}")]
    Auth(crate::edge::auth::AuthError),
    /// 421: the route asks for a client certificate and this connection was set up for a name whose
    /// handshake did not ask for one (HTTP/2 connection reuse, or a Host other than the SNI name): a
    /// new connection to this host will.
    #[error("this connection cannot serve this host; open a new connection to it")]
    Misdirected,
    /// 403: the client address is not served by this route (`allow_ips` / `deny_ips`).
    #[error("this route does not serve your address")]
    IpDenied,
    /// 403: a CORS preflight from an origin, method or header the route does not allow.
    #[error("cross-origin request not allowed for this route")]
    CorsDenied,
    /// 503: the shared store (Redis) did not answer and the route fails closed.
    #[error("authorization store unavailable; retry shortly")]
    StoreUnavailable,
    /// 429: a rate limit refused the request (`quota_exceeded`: the tenant's monthly quota).
    #[error("{}", .0.message())]
    RateLimited(Box<RateLimitRefusal>),
    /// 403: the tenant is suspended by the platform.
    #[error("this tenant is suspended")]
    TenantSuspended,
    /// 503: the tenant's plan could not be fetched and `[plans] on_policy_error = "refuse"`.
    #[error("the tenant's plan is unavailable; retry shortly")]
    PolicyUnavailable,
    /// 405: a CONNECT request (the gateway does not tunnel).
    #[error("CONNECT is not supported")]
    ConnectNotAllowed,
    /// 503: the upstream's concurrency limit is reached and no slot came free in time (or its queue
    /// is full); answered with `Retry-After`.
    #[error("the service is overloaded ({}); retry shortly", .0.label())]
    Overloaded(crate::upstream::admission::Refusal),
    /// 500: a bug on our side.
    #[error("internal error")]
    Internal,
}

/// What a 429 tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRefusal {
    pub policy: String,
    pub retry_after_secs: u64,
    /// `RateLimit-Policy` and `RateLimit` field values.
    pub policy_field: String,
    pub ratelimit_field: String,
    /// The tenant's monthly quota refused it (`policy` names the plan), not a rate.
    pub quota: bool,
}

impl RateLimitRefusal {
    fn message(&self) -> String {
        if self.quota {
            format!(
                "the monthly request quota of plan `{}` is spent; it renews in {} s",
                self.policy, self.retry_after_secs
            )
        } else {
            format!(
                "rate limit `{}` exceeded; retry in {} s",
                self.policy, self.retry_after_secs
            )
        }
    }
}

impl EdgeError {
    /// This answer as the error a Pingora hook returns: Pingora sees its status (for its retry and log
    /// decisions) and `fail_to_proxy` gets the very `EdgeError` back ([`EdgeError::carried`]), never a
    /// bare status code to map back.
    pub fn into_pingora(self, context: &'static str) -> Box<pingora::Error> {
        let status = self.status();
        pingora::Error::because(pingora::ErrorType::HTTPStatus(status), context, self)
    }

    /// The edge error a hook's Pingora error carries, if a hook made it with [`EdgeError::into_pingora`].
    pub fn carried(e: &pingora::Error) -> Option<&EdgeError> {
        e.cause.as_deref()?.downcast_ref::<EdgeError>()
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::Malformed(_) | EdgeError::BadHost | EdgeError::PathTraversal => 400,
            EdgeError::HeaderTooLarge | EdgeError::TooManyHeaders => 431,
            EdgeError::BodyTooLarge => 413,
            EdgeError::NoRoute => 404,
            EdgeError::RequestTimeout => 408,
            EdgeError::NoHealthyServer => 503,
            EdgeError::UpstreamTimeout => 504,
            EdgeError::BadGateway => 502,
            EdgeError::Auth(a) => a.status(),
            EdgeError::CorsDenied | EdgeError::IpDenied => 403,
            EdgeError::Misdirected => 421,
            EdgeError::StoreUnavailable => 503,
            EdgeError::RateLimited(_) => 429,
            EdgeError::TenantSuspended => 403,
            EdgeError::PolicyUnavailable => 503,
            EdgeError::ConnectNotAllowed => 405,
            EdgeError::Overloaded(_) => 503,
            EdgeError::Internal => 500,
        }
    }

    /// The gRPC status for this refusal of a gRPC request (grpc/doc/statuscodes.md): what a gRPC client
    /// can act on instead of a JSON body it cannot read.
    pub fn grpc_status(&self) -> u8 {
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const PERMISSION_DENIED: u8 = 7;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        const UNAUTHENTICATED: u8 = 16;
        match self {
            EdgeError::Malformed(_) | EdgeError::BadHost | EdgeError::PathTraversal => {
                INVALID_ARGUMENT
            }
            EdgeError::HeaderTooLarge | EdgeError::TooManyHeaders | EdgeError::BodyTooLarge => {
                RESOURCE_EXHAUSTED
            }
            EdgeError::RateLimited(_) => RESOURCE_EXHAUSTED,
            EdgeError::NoRoute | EdgeError::ConnectNotAllowed => UNIMPLEMENTED,
            EdgeError::RequestTimeout | EdgeError::UpstreamTimeout => DEADLINE_EXCEEDED,
            EdgeError::NoHealthyServer
            | EdgeError::Misdirected
            | EdgeError::BadGateway
            | EdgeError::StoreUnavailable
            | EdgeError::PolicyUnavailable
            | EdgeError::Overloaded(_) => UNAVAILABLE,
            EdgeError::Auth(a) if a.status() == 401 => UNAUTHENTICATED,
            EdgeError::Auth(_)
            | EdgeError::CorsDenied
            | EdgeError::IpDenied
            | EdgeError::TenantSuspended => PERMISSION_DENIED,
            EdgeError::Internal => INTERNAL,
        }
    }

    /// The machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            EdgeError::Malformed(_) => "malformed_request",
            EdgeError::BadHost => "invalid_host",
            EdgeError::PathTraversal => "invalid_path",
            EdgeError::HeaderTooLarge => "header_too_large",
            EdgeError::TooManyHeaders => "too_many_headers",
            EdgeError::BodyTooLarge => "body_too_large",
            EdgeError::NoRoute => "no_route",
            EdgeError::RequestTimeout => "request_timeout",
            EdgeError::NoHealthyServer => "no_healthy_upstream",
            EdgeError::UpstreamTimeout => "upstream_timeout",
            EdgeError::BadGateway => "bad_gateway",
            EdgeError::Auth(a) => a.reason(),
            EdgeError::CorsDenied => "cors_denied",
            EdgeError::IpDenied => "ip_denied",
            EdgeError::Misdirected => "misdirected_request",
            EdgeError::StoreUnavailable => "store_unavailable",
            EdgeError::RateLimited(r) if r.quota => "quota_exceeded",
            EdgeError::RateLimited(_) => "rate_limited",
            EdgeError::TenantSuspended => "tenant_suspended",
            EdgeError::PolicyUnavailable => "policy_unavailable",
            EdgeError::ConnectNotAllowed => "method_not_allowed",
            EdgeError::Overloaded(crate::upstream::admission::Refusal::QueueFull) => {
                "overloaded_queue_full"
            }
            EdgeError::Overloaded(crate::upstream::admission::Refusal::Deadline) => {
                "overloaded_deadline"
            }
            EdgeError::Overloaded(crate::upstream::admission::Refusal::Core) => "overloaded_core",
            EdgeError::Internal => "internal_error",
        }
    }

    /// Whether the connection must be closed after answering (framing can no longer be trusted).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            EdgeError::Malformed(_)
                | EdgeError::BadHost
                | EdgeError::HeaderTooLarge
                | EdgeError::TooManyHeaders
                | EdgeError::BodyTooLarge
                | EdgeError::RequestTimeout
                | EdgeError::ConnectNotAllowed
        )
    }

    /// `{"error":{"code":…,"message":…,"request_id":…}}` ([`error_body`]).
    pub fn body(&self, request_id: &str) -> Bytes {
        error_body(self.code(), &self.to_string(), request_id)
    }
}

/// `{"error":{"code":…,"message":…,"request_id":…}}`: the body of every error the edge writes.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    Bytes::from(v.to_string())
}
