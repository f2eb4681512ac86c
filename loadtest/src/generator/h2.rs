//! HTTP/2 on one connection (hyper's client connection; one stream at a time per connection, like
//! `h2load -m1`, so a connection count means the same in both protocols).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::stats::Failure;
use super::stream::Stream;

pub struct Conn {
    send: http2::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn handshake(stream: Stream) -> Result<Conn, Failure> {
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            // The connection task ends with the connection; its error shows on the next request.
            let _ = conn.await;
        });
        Ok(Conn { send })
    }

    /// Sends one request and reads its response body to the end; returns the status.
    pub async fn exchange(
        &mut self,
        head: &http::Request<()>,
        body: &Bytes,
    ) -> Result<u16, Failure> {
        self.send.ready().await.map_err(|_| Failure::Io)?;
        let mut req = http::Request::new(Full::new(body.clone()));
        *req.method_mut() = head.method().clone();
        *req.uri_mut() = head.uri().clone();
        *req.headers_mut() = head.headers().clone();
        let resp = self.send.send_request(req).await.map_err(classify)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(classify)?;
        }
        Ok(status)
    }
}

fn classify(e: hyper::Error) -> Failure {
    if e.is_parse() || e.is_user() {
        Failure::Protocol
    } else {
        Failure::Io
    }
}
