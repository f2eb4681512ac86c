//! gRPC-Web for browsers (grpc/doc/PROTOCOL-WEB.md), on routes with `grpc_web = true` and an HTTP/2
//! upstream: a `application/grpc-web[+proto]` or `application/grpc-web-text[+proto]` call, over
//! HTTP/1.1 or HTTP/2, goes upstream as gRPC (`application/grpc…`, `TE: trailers`, the `-text` body
//! base64-decoded), and the answer comes back as gRPC-Web: its content type, its trailers as the body's
//! last frame (flag `0x80`, `name:value\r\n` lines), and for `-text` every body chunk base64-encoded on
//! its own (padding may appear mid-body, which the protocol allows). A refusal at the edge is already a
//! gRPC-Web answer (`Reply::grpc_head`).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::edge::error::EdgeError;

const GRPC_WEB: &str = "application/grpc-web";
const GRPC_WEB_TEXT: &str = "application/grpc-web-text";

/// One gRPC-Web call being bridged.
#[derive(Debug)]
pub struct GrpcWeb {
    /// `-text`: bodies are base64 both ways.
    text: bool,
    /// The suffix after the flavour (`+proto`, `+json`, or nothing).
    suffix: String,
    /// Request base64 not yet decoded (a 4-character group split across chunks).
    carry: Vec<u8>,
    /// The upstream answered gRPC: its trailers become the last frame.
    bridged: bool,
}

impl GrpcWeb {
    /// The bridge for a request with this content type, if it is gRPC-Web.
    pub fn detect(content_type: Option<&http::HeaderValue>) -> Option<GrpcWeb> {
        let ct = content_type?.to_str().ok()?.to_ascii_lowercase();
        let (text, rest) = match ct.strip_prefix(GRPC_WEB_TEXT) {
            Some(rest) => (true, rest),
            None => (false, ct.strip_prefix(GRPC_WEB)?),
        };
        // `application/grpc-web`, `…+proto`, `…; charset=…`: nothing else may follow the flavour.
        if !(rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')) {
            return None;
        }
        Some(GrpcWeb {
            text,
            suffix: rest.to_string(),
            carry: Vec::new(),
            bridged: false,
        })
    }

    /// The upstream request as gRPC.
    pub fn rewrite_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        req.insert_header(CONTENT_TYPE, format!("application/grpc{}", self.suffix))?;
        req.insert_header("te", "trailers")?;
        if self.text {
            // The decoded body is shorter than the one announced.
            req.remove_header(&CONTENT_LENGTH);
        }
        // gRPC ends a request on its last DATA frame (an empty one when there is no body).
        req.set_send_end_stream(false);
        Ok(())
    }

    /// A `-text` request body chunk, decoded (complete 4-character groups; the rest waits for the next
    /// chunk). Whitespace is skipped; anything else that is not base64 refuses the request.
    pub fn decode_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<(), EdgeError> {
        if !self.text {
            return Ok(());
        }
        if let Some(chunk) = body.as_ref() {
            self.carry
                .extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
        }
        let whole = if end_of_stream {
            self.carry.len()
        } else {
            self.carry.len() / 4 * 4
        };
        let mut out = BytesMut::with_capacity(whole / 4 * 3);
        for group in self.carry[..whole].chunks(4) {
            // Each group on its own: a padded group may be followed by more.
            let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, group)
                .map_err(|_| EdgeError::Malformed("gRPC-Web text body is not base64"))?;
            out.put_slice(&decoded);
        }
        self.carry.drain(..whole);
        *body = (!out.is_empty() || body.is_some()).then(|| out.freeze());
        Ok(())
    }

    /// The upstream's answer head as gRPC-Web (a gRPC answer only; anything else passes as it is).
    pub fn rewrite_response(
        &mut self,
        resp: &mut ResponseHeader,
        h1_client: bool,
    ) -> pingora::Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        let grpc = resp
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return Ok(());
        }
        let flavour = if self.text { GRPC_WEB_TEXT } else { GRPC_WEB };
        resp.insert_header(CONTENT_TYPE, format!("{flavour}{}", self.suffix))?;
        resp.remove_header(&CONTENT_LENGTH);
        if h1_client {
            // The trailers frame comes after a body of unknown length.
            resp.insert_header(TRANSFER_ENCODING, "chunked")?;
        }
        self.bridged = true;
        Ok(())
    }

    /// A response body chunk: base64 for `-text`.
    pub fn encode_body(&self, body: &mut Option<Bytes>) {
        if !(self.text && self.bridged) {
            return;
        }
        if let Some(chunk) = body.as_ref().filter(|c| !c.is_empty()) {
            *body = Some(Bytes::from(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                chunk,
            )));
        }
    }

    /// The upstream's trailers as the body's last frame.
    pub fn trailers(&mut self, trailers: &HeaderMap) -> Option<Bytes> {
        if !self.bridged {
            return None;
        }
        let mut lines = BytesMut::with_capacity(128);
        for (name, value) in trailers {
            lines.put_slice(name.as_str().as_bytes());
            lines.put_u8(b':');
            lines.put_slice(value.as_bytes());
            lines.put_slice(b"\r\n");
        }
        let mut frame = BytesMut::with_capacity(5 + lines.len());
        frame.put_u8(0x80);
        frame.put_u32(u32::try_from(lines.len()).ok()?);
        frame.put_slice(&lines);
        self.bridged = false;
        Some(match self.text {
            true => Bytes::from(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &frame,
            )),
            false => frame.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(v: &str) -> Option<GrpcWeb> {
        GrpcWeb::detect(Some(&http::HeaderValue::from_str(v).expect("value")))
    }

    #[test]
    fn only_grpc_web_content_types_are_bridged() {
        assert!(matches!(ct("application/grpc-web"), Some(g) if !g.text && g.suffix.is_empty()));
        assert!(
            matches!(ct("application/grpc-web+proto"), Some(g) if !g.text && g.suffix == "+proto")
        );
        assert!(matches!(ct("Application/gRPC-Web-Text+proto"), Some(g) if g.text));
        assert!(ct("application/grpc").is_none());
        assert!(ct("application/grpc+proto").is_none());
        assert!(ct("application/grpc-webx").is_none());
        assert!(GrpcWeb::detect(None).is_none());
    }

    #[test]
    fn text_bodies_decode_across_chunks_and_mid_body_padding() {
        let mut g = ct("application/grpc-web-text").expect("bridge");
        // "AAAAAAJoaQ==" is frame(0, "hi"); split inside a group, then a second padded segment.
        let mut out = Vec::new();
        for (chunk, end) in [("AAAAAA", false), ("JoaQ==AAAA", false), ("AAF\r\no", true)] {
            let mut body = Some(Bytes::from(chunk));
            g.decode_body(&mut body, end).expect("decode");
            out.extend_from_slice(&body.unwrap_or_default());
        }
        assert_eq!(out, b"\0\0\0\0\x02hi\0\0\0\0\x01h".to_vec());
        let mut bad = Some(Bytes::from("AA*A"));
        assert!(g.decode_body(&mut bad, true).is_err());
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut g = ct("application/grpc-web+proto").expect("bridge");
        let mut resp = ResponseHeader::build(200, None).expect("head");
        resp.insert_header("content-type", "application/grpc+proto")
            .expect("ct");
        resp.insert_header("content-length", "7").expect("cl");
        g.rewrite_response(&mut resp, true).expect("rewrite");
        assert_eq!(resp.headers["content-type"], "application/grpc-web+proto");
        assert!(resp.headers.get("content-length").is_none());
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().expect("v"));
        let frame = g.trailers(&t).expect("frame");
        assert_eq!(&frame[..], b"\x80\0\0\0\x0fgrpc-status:0\r\n");
        // Not an answer to bridge: nothing added.
        let mut plain = ct("application/grpc-web").expect("bridge");
        let mut html = ResponseHeader::build(502, None).expect("head");
        html.insert_header("content-type", "text/html").expect("ct");
        plain.rewrite_response(&mut html, true).expect("rewrite");
        assert_eq!(html.headers["content-type"], "text/html");
        assert!(plain.trailers(&t).is_none());
    }
}
