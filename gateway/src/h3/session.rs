//! One HTTP/3 request as a Pingora server session (`ServerSession::Custom`): the proxy's own request
//! machinery — every `ProxyHttp` phase of [`crate::edge`], the upstream pools, retries, the access log
//! — runs on it unchanged. Only the framing differs: the head arrives parsed (QPACK), the body and the
//! response travel as HTTP/3 DATA and HEADERS frames on the request's QUIC stream.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use h3::error::Code;
use http::{header, HeaderMap, HeaderName};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, OrErr, Result};

use pingora::http::{RequestHeader, ResponseHeader};

/// The request stream of one HTTP/3 request (both directions).
pub type RequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// The request body kept for a retry, like Pingora's HTTP/1 and HTTP/2 sessions (64 KiB).
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// Why a request head cannot be served as it came (the stream is refused with `H3_MESSAGE_ERROR`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("an https request needs :authority or Host")]
    NoAuthority,
    #[error("Host and :authority differ")]
    HostMismatch,
    #[error("the :scheme of a request over QUIC must be https")]
    Scheme,
}

/// The request head as the proxy sees it: HTTP/3's pseudo-headers checked (RFC 9114 §4.3.1: the
/// scheme is https over QUIC; with both `:authority` and `Host`, they must agree), `Host` set from
/// `:authority` when the client sent none (as an HTTP/1 upstream needs it, and as the edge routes by
/// it), and the version HTTP/3.
pub fn request_head(req: http::Request<()>) -> std::result::Result<RequestHeader, HeadError> {
    let (mut parts, ()) = req.into_parts();
    if parts.uri.scheme_str().is_some_and(|s| s != "https") {
        return Err(HeadError::Scheme);
    }
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (authority.as_deref(), hosts.next(), hosts.next()) {
        (_, Some(_), Some(_)) => return Err(HeadError::HostMismatch),
        (Some(a), Some(h), None) if !a.as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(HeadError::HostMismatch)
        }
        (None, None, _) => return Err(HeadError::NoAuthority),
        _ => {}
    }
    if let (Some(a), false) = (authority, parts.headers.contains_key(header::HOST)) {
        let value = http::HeaderValue::from_str(&a).map_err(|_| HeadError::NoAuthority)?;
        parts.headers.insert(header::HOST, value);
    }
    parts.version = http::Version::HTTP_3;
    Ok(RequestHeader::from(parts))
}

/// Fields of HTTP/1 that HTTP/3 forbids in a message (RFC 9114 §4.2): never sent to the client.
fn strip_connection_fields(resp: &mut ResponseHeader) {
    resp.remove_header(&header::TRANSFER_ENCODING);
    resp.remove_header(&header::CONNECTION);
    resp.remove_header(&header::UPGRADE);
    resp.remove_header(&HeaderName::from_static("keep-alive"));
    resp.remove_header(&HeaderName::from_static("proxy-connection"));
}

/// A write to the client within `timeout`, if any.
async fn timed<F>(timeout: Option<Duration>, what: &'static str, f: F) -> Result<()>
where
    F: std::future::Future<Output = std::result::Result<(), h3::error::StreamError>>,
{
    match timeout {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .or_err(ErrorType::WriteTimedout, what)?,
        None => f.await,
    }
    .or_err(ErrorType::WriteError, what)
}

/// A request over HTTP/3, served by the proxy as any other session.
pub struct H3Session {
    req: RequestHeader,
    /// Behind a mutex only to make the session `Sync` (h3's stream is not); every use goes through
    /// `get_mut` on `&mut self`, so it is never locked.
    stream: Mutex<RequestStream>,
    digest: Digest,
    client: SocketAddr,
    server: SocketAddr,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    /// A DATA frame read ahead while finding out whether the body is over.
    peeked: Option<Bytes>,
    body_read: usize,
    body_sent: usize,
    /// The client ended its request stream.
    body_done: bool,
    response_written: Option<Box<ResponseHeader>>,
    /// The response was ended (finished or reset): nothing more is sent.
    ended: bool,
    retry_buffer: Option<(BytesMut, bool)>,
}

impl H3Session {
    pub fn new(
        req: RequestHeader,
        stream: RequestStream,
        digest: Digest,
        client: std::net::SocketAddr,
        server: std::net::SocketAddr,
    ) -> Self {
        H3Session {
            req,
            stream: Mutex::new(stream),
            digest,
            client: SocketAddr::Inet(client),
            server: SocketAddr::Inet(server),
            read_timeout: None,
            write_timeout: None,
            drain_timeout: None,
            peeked: None,
            body_read: 0,
            body_sent: 0,
            body_done: false,
            response_written: None,
            ended: false,
            retry_buffer: None,
        }
    }

    fn stream(&mut self) -> &mut RequestStream {
        self.stream.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the client has ended its request body, found without waiting: one poll of the stream
    /// (a DATA frame it yields is kept for the next read).
    fn poll_body_end(&mut self) -> bool {
        if self.body_done || self.peeked.is_some() {
            return self.body_done;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream().poll_recv_data(&mut cx) {
            Poll::Ready(Ok(None)) => self.body_done = true,
            Poll::Ready(Ok(Some(mut data))) => {
                let bytes = data.copy_to_bytes(data.remaining());
                self.peeked = Some(bytes);
            }
            // An error shows at the next read.
            Poll::Ready(Err(_)) | Poll::Pending => {}
        }
        self.body_done
    }

    async fn next_data(&mut self) -> Result<Option<Bytes>> {
        if let Some(data) = self.peeked.take() {
            return Ok(Some(data));
        }
        if self.body_done {
            return Ok(None);
        }
        let read_timeout = self.read_timeout;
        let stream = self.stream();
        let read = async {
            match stream.recv_data().await {
                Ok(Some(mut data)) => Ok(Some(data.copy_to_bytes(data.remaining()))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let data = match read_timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .or_err(ErrorType::ReadTimedout, "reading an HTTP/3 request body")?,
            None => read.await,
        }
        .or_err(ErrorType::ReadError, "reading an HTTP/3 request body")?;
        if data.is_none() {
            self.body_done = true;
        }
        Ok(data)
    }

    async fn send_head(&mut self, mut resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.ended || self.response_written.is_some() {
            return Ok(());
        }
        // 1xx answers are not relayed (as Pingora's HTTP/2 session: one final response per stream).
        if resp.status.is_informational() {
            return Ok(());
        }
        strip_connection_fields(&mut resp);
        if !resp.headers.contains_key(header::DATE) {
            resp.insert_header(
                header::DATE,
                pingora::protocols::http::date::get_cached_date(),
            )?;
        }
        let head = http::Response::from_parts(resp.as_owned_parts(), ());
        let write_timeout = self.write_timeout;
        let send = self.stream().send_response(head);
        timed(write_timeout, "writing an HTTP/3 response head", send).await?;
        self.response_written = Some(resp);
        if end {
            self.end_stream().await?;
        }
        Ok(())
    }

    async fn end_stream(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        let write_timeout = self.write_timeout;
        let finish = self.stream().finish();
        timed(write_timeout, "ending an HTTP/3 response", finish).await
    }

    async fn send_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.response_written.is_none() {
            return Error::e_explain(
                ErrorType::WriteError,
                "an HTTP/3 body before its response head",
            );
        }
        if !data.is_empty() {
            let len = data.len();
            let write_timeout = self.write_timeout;
            let send = self.stream().send_data(data);
            timed(write_timeout, "writing an HTTP/3 response body", send).await?;
            self.body_sent += len;
        }
        if end {
            self.end_stream().await?;
        }
        Ok(())
    }

    async fn send_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.response_written.is_none() {
            return Error::e_explain(
                ErrorType::WriteError,
                "HTTP/3 trailers before the response head",
            );
        }
        let write_timeout = self.write_timeout;
        let send = self.stream().send_trailers(trailers);
        timed(write_timeout, "writing HTTP/3 trailers", send).await?;
        self.end_stream().await
    }

    /// Gives the response up: the client sees the stream reset, never a short body taken as whole.
    fn reset(&mut self, code: Code) {
        if !self.ended {
            self.ended = true;
            let stream = self.stream();
            stream.stop_stream(code);
            if !self.body_done {
                self.stream().stop_sending(code);
            }
        }
    }

    fn keep_for_retry(&mut self, data: &Bytes) {
        if let Some((buf, truncated)) = self.retry_buffer.as_mut() {
            if *truncated || buf.len() + data.len() > RETRY_BUFFER_LIMIT {
                *truncated = true;
            } else {
                buf.extend_from_slice(data);
            }
        }
    }
}

impl Drop for H3Session {
    fn drop(&mut self) {
        // A session dropped before its response ended (an error, a cancelled task): reset the stream
        // rather than let QUIC finish it cleanly after a partial answer.
        self.reset(Code::H3_INTERNAL_ERROR);
    }
}

#[async_trait]
impl CustomSession for H3Session {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        let data = self.next_data().await?;
        if let Some(d) = data.as_ref() {
            self.body_read += d.len();
            self.keep_for_retry(d);
        }
        Ok(data)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        let drain_timeout = self.drain_timeout;
        let drain = async {
            while self.read_body_bytes().await?.is_some() {}
            Ok(())
        };
        match drain_timeout {
            Some(t) => tokio::time::timeout(t, drain)
                .await
                .or_err(ErrorType::ReadTimedout, "draining an HTTP/3 request body")?,
            None => drain.await,
        }
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.send_head(resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.send_head(Box::new(resp.clone()), end).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.send_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.send_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end_stream = false;
        for task in tasks {
            let end = match task {
                HttpTask::Header(head, end) => {
                    self.send_head(head, end).await.map_err(|e| e.into_down())?;
                    end
                }
                HttpTask::Body(data, end) => {
                    if let Some(d) = data {
                        self.send_body(d, false).await.map_err(|e| e.into_down())?;
                    }
                    end
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "an upgraded body on an HTTP/3 session",
                    );
                }
                HttpTask::Trailer(Some(trailers)) => {
                    self.send_trailers(*trailers)
                        .await
                        .map_err(|e| e.into_down())?;
                    true
                }
                HttpTask::Trailer(None) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            };
            end_stream = end_stream || end;
        }
        if end_stream {
            self.end_stream().await.map_err(|e| e.into_down())?;
        }
        Ok(end_stream)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        format!(
            "{} {}, Host: {} (h3)",
            self.req.method,
            self.req
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or_default(),
            self.req
                .uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default(),
        )
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.response_written.as_deref()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.reset(Code::H3_INTERNAL_ERROR);
    }

    async fn abandon(&mut self, _ctx: &str) {
        self.reset(Code::H3_INTERNAL_ERROR);
    }

    fn is_body_done(&mut self) -> bool {
        self.poll_body_end() && self.peeked.is_none()
    }

    async fn finish(&mut self) -> Result<()> {
        if self.response_written.is_some() {
            self.end_stream().await?;
        }
        Ok(())
    }

    fn is_body_empty(&mut self) -> bool {
        self.body_read == 0
            && (self
                .req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0")
                || (self.poll_body_end() && self.peeked.is_none()))
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.is_body_done() {
            // Nothing more comes from the client; a reset of its stream shows at the next write.
            std::future::pending::<()>().await;
        }
        self.read_body_bytes().await
    }

    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    fn digest(&self) -> Option<&Digest> {
        Some(&self.digest)
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        Some(&mut self.digest)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        Some(&self.client)
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        Some(&self.server)
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        let mut out = format!(
            "{} {} HTTP/1.1\r\n",
            self.req.method,
            self.req.uri.path_and_query().map_or("/", |p| p.as_str())
        )
        .into_bytes();
        if !self.req.headers.contains_key(header::HOST) {
            if let Some(a) = self.req.uri.authority() {
                out.extend_from_slice(b"host: ");
                out.extend_from_slice(a.as_str().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        for (name, value) in &self.req.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Bytes::from(out)
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry_buffer.is_none() {
            self.retry_buffer = Some((BytesMut::new(), false));
        }
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry_buffer.as_ref().is_some_and(|(_, t)| *t)
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        match self.retry_buffer.as_ref() {
            Some((buf, false)) if !buf.is_empty() => Some(Bytes::copy_from_slice(buf)),
            _ => None,
        }
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn futures_util::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>>
    {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<
            dyn futures_util::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static,
        >,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}

/// The TLS facts of a QUIC connection as the edge reads them for TCP ones (`X-Forwarded-Proto: https`,
/// HSTS): TLS 1.3 always, the negotiated suite.
pub fn connection_digest(cipher: Option<&'static str>) -> Digest {
    Digest {
        ssl_digest: Some(Arc::new(pingora::protocols::tls::SslDigest::new(
            cipher.unwrap_or("TLS13"),
            "TLSv1.3",
            None,
            None,
            Vec::new(),
        ))),
        timing_digest: Vec::new(),
        proxy_digest: None,
        socket_digest: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn the_head_keeps_its_authority_and_says_http3() {
        let head = request_head(req("https://a.aggios.app/x?y=1", None)).expect("head");
        assert_eq!(head.version, http::Version::HTTP_3);
        assert_eq!(
            head.uri.authority().map(|a| a.as_str()),
            Some("a.aggios.app")
        );
        assert_eq!(head.uri.path(), "/x");
        assert_eq!(
            head.headers.get("host").map(|h| h.as_bytes()),
            Some(&b"a.aggios.app"[..]),
            "Host from :authority"
        );
        assert!(request_head(req("https://a.aggios.app/", Some("A.aggios.app"))).is_ok());
    }

    #[test]
    fn conflicting_or_missing_authorities_are_refused() {
        assert_eq!(
            request_head(req("https://a.aggios.app/", Some("b.aggios.app"))).err(),
            Some(HeadError::HostMismatch)
        );
        assert_eq!(
            request_head(req("/", None)).err(),
            Some(HeadError::NoAuthority)
        );
        assert_eq!(
            request_head(req("http://a.aggios.app/", None)).err(),
            Some(HeadError::Scheme)
        );
        let mut two = req("https://a.aggios.app/", Some("a.aggios.app"));
        two.headers_mut()
            .append("host", http::HeaderValue::from_static("a.aggios.app"));
        assert_eq!(request_head(two).err(), Some(HeadError::HostMismatch));
    }

    #[test]
    fn connection_fields_never_reach_an_http3_client() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        for (n, v) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ] {
            resp.insert_header(n, v).expect("header");
        }
        strip_connection_fields(&mut resp);
        assert_eq!(resp.headers.len(), 1);
        assert!(resp.headers.contains_key("x-kept"));
    }
}
