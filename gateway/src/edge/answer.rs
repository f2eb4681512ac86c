//! Every answer the edge writes itself for a request: the JSON error (with the request id and the
//! fields of its kind), the mapping of Pingora's errors back to edge errors, the panic guard of the
//! hooks, and the lingering close after a refused body.

use super::*;

/// Runs one of the request's hooks; a panic in it becomes this request's 500 (`internal_error`, with its
/// request id), counted in `gateway_panics_total`, instead of ending the connection's task unanswered.
pub(super) async fn caught<T>(
    hook: &'static str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await {
        Ok(result) => result,
        Err(_) => {
            metrics().panics.inc();
            tracing::error!(hook, "a request hook panicked; answered 500");
            Err(EdgeError::Internal.into_pingora("a request hook panicked"))
        }
    }
}

/// Lingering close after an error answered before the request body was read: at most this long, and
/// this much of the client's remaining input read and dropped.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(2);
pub(super) const LINGER_BYTES: usize = 1 << 20;

/// Whether a request announces a body (chunked, or a non-zero `Content-Length`).
pub(super) fn declares_body(req: &pingora::http::RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Writes an edge error as a JSON response, closing the connection when framing can't be trusted.
pub(super) async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: EdgeError,
) -> Result<()> {
    if matches!(
        err,
        EdgeError::Malformed(_)
            | EdgeError::HeaderTooLarge
            | EdgeError::TooManyHeaders
            | EdgeError::BadHost
    ) {
        metrics().malformed.inc();
    }
    let reply = Reply::Error(err);
    write(session, ctx, &reply).await?;
    if let Reply::Error(err) = reply {
        ctx.answer.error = Some(err);
    }
    Ok(())
}

/// Writes an answer of the edge's own ([`Reply`], the one renderer) for this request; to a gRPC request,
/// an error in gRPC's own form (HTTP 200, `grpc-status` in the head: [`Reply::grpc_head`]).
pub(super) async fn write(session: &mut Session, ctx: &RequestCtx, reply: &Reply) -> Result<()> {
    if reply.closes_connection() {
        session.set_keepalive(None);
    }
    let id = ctx.request.request_id.as_str();
    let content_type = session.req_header().headers.get(http::header::CONTENT_TYPE);
    if matches!(reply, Reply::Error(_)) && super::reply::is_grpc(content_type) {
        let content_type = content_type.map(|v| v.as_bytes()).unwrap_or_default();
        let head = reply.grpc_head(id, content_type)?;
        return session.write_response_header(Box::new(head), true).await;
    }
    let body = reply.body(id);
    let head = reply.head(id, body.as_ref())?;
    match body {
        Some(body) => {
            session.write_response_header(Box::new(head), false).await?;
            session.write_response_body(Some(body), true).await
        }
        None => session.write_response_header(Box::new(head), true).await,
    }
}

/// An authentication refusal on `route`, counted in `gateway_auth_rejections_total{route,reason}`.
pub(super) fn refused(route: &crate::edge::state::RouteRt, a: auth::AuthError) -> EdgeError {
    metrics()
        .auth_rejections
        .with_label_values(&[&route.spec.name, a.reason()])
        .inc();
    EdgeError::Auth(a)
}

/// Maps a Pingora error to the edge error answered for it.
pub(super) fn classify(e: &Error) -> Option<EdgeError> {
    // An answer one of our hooks decided comes back as itself.
    if let Some(err) = EdgeError::carried(e) {
        return Some(err.clone());
    }
    if let ErrorType::HTTPStatus(code) = e.etype() {
        return Some(match code {
            413 => EdgeError::BodyTooLarge,
            503 => EdgeError::NoHealthyServer,
            502 => EdgeError::BadGateway,
            504 => EdgeError::UpstreamTimeout,
            404 => EdgeError::NoRoute,
            408 => EdgeError::RequestTimeout,
            _ if *code >= 500 => EdgeError::Internal,
            _ => EdgeError::Malformed("invalid request"),
        });
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                EdgeError::UpstreamTimeout
            }
            _ => EdgeError::BadGateway,
        }),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::ReadTimedout => Some(EdgeError::RequestTimeout),
            ErrorType::WriteError
            | ErrorType::ReadError
            | ErrorType::ConnectionClosed
            | ErrorType::WriteTimedout => None,
            _ => Some(EdgeError::Malformed("invalid request body or framing")),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout => EdgeError::UpstreamTimeout,
            ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
                EdgeError::BadGateway
            }
            _ => EdgeError::Internal,
        }),
    }
}

/// The stage behind `fail_to_proxy`.
impl Gateway {
    /// Proxying failed: answer with the JSON error that fits.
    pub(super) async fn fail(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.request.request_id.is_empty() {
            ctx.request.request_id = headers::new_request_id();
        }
        let Some(err) = classify(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = err.status();
        if session.response_written().is_none() {
            // Refused as malformed or too large while it declares a body: the client may still be
            // sending it (a body reader in error counts as done, so the declaration decides).
            ctx.answer.linger = matches!(code, 400 | 413) && declares_body(session.req_header());
            if let Err(write_err) = answer(session, ctx, err).await {
                tracing::debug!(error = %write_err, "could not write the error response");
            }
        } else {
            ctx.answer.error = Some(err);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// The answers a request gets from the edge itself instead of an upstream.
impl Gateway {
    /// Answers a CORS preflight without touching the backend: 204 with the policy, or 403.
    pub(super) async fn answer_preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> Result<()> {
        let req = session.req_header();
        let (Some(route), Some(origin)) = (
            ctx.route(rt),
            req.headers
                .get(http::header::ORIGIN)
                .and_then(|o| o.to_str().ok()),
        ) else {
            return answer(session, ctx, EdgeError::Internal).await;
        };
        let Some(spec) = &route.spec.cors else {
            return answer(session, ctx, EdgeError::Internal).await;
        };
        let method = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .map_or(&b""[..], |m| m.as_bytes());
        let asked = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .map(|h| h.as_bytes());
        match cors::preflight(spec, origin, &ctx.request.host, method, asked) {
            Ok(headers) => write(session, ctx, &Reply::Preflight(headers)).await,
            Err(_) => answer(session, ctx, EdgeError::CorsDenied).await,
        }
    }

    /// The key authorization of a pending HTTP-01 challenge (RFC 8555 §8.3).
    pub(super) async fn answer_acme(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        key_authorization: String,
    ) -> Result<()> {
        write(session, ctx, &Reply::AcmeChallenge(key_authorization)).await
    }

    /// `redirect_https` on plain HTTP: 308 to the same host and path over HTTPS.
    pub(super) async fn redirect_https(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let pq = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let location = format!("https://{}{}", ctx.request.host, pq);
        write(session, ctx, &Reply::Redirect(location)).await
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    /// An answer a hook decided reaches `fail_to_proxy` as itself: a status alone would map a 403 CORS
    /// refusal back to a 400 and a 503 store outage to "no healthy server".
    #[test]
    fn a_hooks_edge_error_comes_back_as_itself() {
        for err in [
            EdgeError::CorsDenied,
            EdgeError::StoreUnavailable,
            EdgeError::BodyTooLarge,
            EdgeError::ConnectNotAllowed,
            EdgeError::Internal,
        ] {
            let e = err.clone().into_pingora("test");
            assert_eq!(classify(&e), Some(err.clone()), "{err:?}");
            assert_eq!(e.etype(), &ErrorType::HTTPStatus(err.status()));
        }
        // Errors Pingora makes itself still map by source and type.
        let up = Error::explain(ErrorType::ConnectTimedout, "x").into_up();
        assert_eq!(classify(&up), Some(EdgeError::UpstreamTimeout));
    }
}
