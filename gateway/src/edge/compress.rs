//! Response compression at the edge (`compression = { … }` of a route): the coding is negotiated from
//! `Accept-Encoding` when the request is admitted ([`negotiate`], q-values and `*` honoured), decided
//! when the response head arrives ([`decide`]: never on an encoded response, `no-transform`, a range,
//! 1xx/204/206/304, `HEAD`, a type outside the route's list, a body announced smaller than
//! `min_bytes`, or a response setting a cookie on a route with credentials), and the body is encoded as
//! it streams through (Pingora's gzip, brotli and zstd encoders), never buffered whole.

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, SET_COOKIE,
    VARY,
};
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::{Algorithm, Encode};

use crate::config::{Coding, CompressionSpec};

/// A request's compression state.
pub enum Compress {
    /// The route compresses; what the request allows: the coding negotiated (`None`: none of the
    /// route's codings is acceptable) and whether the request rules compression out (a range, `HEAD`).
    Negotiated {
        coding: Option<Coding>,
        ruled_out: bool,
    },
    /// The response's body goes through this encoder.
    Encoding(Box<dyn Encode + Send + Sync>),
}

/// The quality a client gives each coding, in thousandths (RFC 9110 §12.5.3); `None`: not a valid
/// `qvalue`.
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The coding of `offered` (in the server's order of preference) that `accept` (an `Accept-Encoding`
/// value) rates highest, above zero; ties go to the server's order. A coding not named takes the
/// quality of `*`, if given, else is not acceptable. No header: none (the body goes as it is).
pub fn negotiate(accept: Option<&[u8]>, offered: &[Coding]) -> Option<Coding> {
    let accept = std::str::from_utf8(accept?).ok()?;
    let mut star: Option<u16> = None;
    let mut q = [None::<u16>; 3];
    let slot = |c: Coding| match c {
        Coding::Zstd => 0,
        Coding::Brotli => 1,
        Coding::Gzip => 2,
    };
    for element in accept.split(',') {
        let mut parts = element.split(';');
        let token = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let mut quality = Some(1000);
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    quality = qvalue(v.trim());
                }
            }
        }
        // An element with a malformed qvalue says nothing.
        let Some(quality) = quality else { continue };
        let coding = match token.as_str() {
            "*" => {
                star = Some(quality);
                continue;
            }
            "gzip" | "x-gzip" => Coding::Gzip,
            "br" => Coding::Brotli,
            "zstd" => Coding::Zstd,
            _ => continue,
        };
        // The same coding twice: the lower quality holds (the stricter reading).
        let s = &mut q[slot(coding)];
        *s = Some(s.map_or(quality, |prev| prev.min(quality)));
    }
    let mut best: Option<(Coding, u16)> = None;
    for &c in offered {
        let quality = q[slot(c)].or(star).unwrap_or(0);
        if quality > 0 && best.is_none_or(|(_, b)| quality > b) {
            best = Some((c, quality));
        }
    }
    best.map(|(c, _)| c)
}

/// What the edge does with a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not a response the route compresses: untouched.
    Untouched,
    /// Compressible, but not for this request: sent as it is, with `Vary: Accept-Encoding` (a cache
    /// must not give it to a client that asked differently).
    VaryOnly,
    /// Encoded with this coding.
    Encode(Coding),
}

/// The decision for `resp` on a route with `spec`, for a request that negotiated `coding` (and is
/// `ruled_out` by a range or `HEAD`); `credentials`: the route authenticates its callers.
pub fn decide(
    spec: &CompressionSpec,
    resp: &ResponseHeader,
    coding: Option<Coding>,
    ruled_out: bool,
    credentials: bool,
) -> Decision {
    let status = resp.status.as_u16();
    if status < 200 || matches!(status, 204 | 206 | 304) {
        return Decision::Untouched;
    }
    let h = &resp.headers;
    if h.get(CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Decision::Untouched;
    }
    let no_transform = h.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    if no_transform {
        return Decision::Untouched;
    }
    let mime = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let Some(mime) = mime else {
        return Decision::Untouched;
    };
    if mime == "text/event-stream" || !spec.types.iter().any(|t| t.matches(&mime)) {
        return Decision::Untouched;
    }
    let small = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n < spec.min_bytes);
    // BREACH: a compressed response's size can leak a secret it holds next to text an attacker
    // reflects into it. A response that sets a cookie on a credentialed route is one that may hold a
    // session secret: it goes uncompressed (the JSON API's bearer tokens are not sent by browsers on
    // their own, so cross-site size probing of its other responses has nothing to measure).
    let sets_cookie = credentials && h.contains_key(SET_COOKIE);
    match coding {
        Some(c) if !ruled_out && !small && !sets_cookie => Decision::Encode(c),
        _ => Decision::VaryOnly,
    }
}

/// Rewrites the head for `decision`; the encoder for the body when encoding.
pub fn apply(
    spec: &CompressionSpec,
    resp: &mut ResponseHeader,
    decision: Decision,
) -> Option<Box<dyn Encode + Send + Sync>> {
    if decision == Decision::Untouched {
        return None;
    }
    add_vary(resp);
    let Decision::Encode(coding) = decision else {
        return None;
    };
    let algorithm = match coding {
        Coding::Gzip => Algorithm::Gzip,
        Coding::Brotli => Algorithm::Brotli,
        Coding::Zstd => Algorithm::Zstd,
    };
    // Level 0 is "store" for brotli; Pingora's encoders treat 0 as off: the lowest real level then.
    let encoder = algorithm.compressor(spec.level(coding).max(1))?;
    let _ = resp.insert_header(CONTENT_ENCODING, coding.token());
    // The length changes (the body is sent chunked, or framed by HTTP/2), byte ranges of the encoded
    // body mean nothing, and the encoded representation is not byte-identical: a strong ETag weakens.
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    if let Some(etag) = resp.headers.get(ETAG).cloned() {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = http::HeaderValue::from_bytes(&weak) {
                let _ = resp.insert_header(ETAG, v);
            }
        }
    }
    Some(encoder)
}

fn add_vary(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !present {
        let _ = resp.append_header(VARY, "Accept-Encoding");
    }
}

/// Encodes one body chunk (`end`: the last); what to send in its place.
pub fn encode(
    encoder: &mut (dyn Encode + Send + Sync),
    chunk: Option<&Bytes>,
    end: bool,
) -> pingora::Result<Option<Bytes>> {
    let out = encoder.encode(chunk.map_or(&[][..], |b| b.as_ref()), end)?;
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TypePattern;

    const ALL: &[Coding] = &[Coding::Zstd, Coding::Brotli, Coding::Gzip];

    #[test]
    fn accept_encoding_with_q_values_star_and_identity() {
        let n = |a: &str| negotiate(Some(a.as_bytes()), ALL);
        assert_eq!(negotiate(None, ALL), None, "no header: sent as it is");
        assert_eq!(n("gzip"), Some(Coding::Gzip));
        assert_eq!(
            n("gzip, deflate, br, zstd"),
            Some(Coding::Zstd),
            "server's order on ties"
        );
        assert_eq!(
            n("gzip;q=1.0, br;q=0.8"),
            Some(Coding::Gzip),
            "the client's q first"
        );
        assert_eq!(n("br;q=0.5, gzip;q=0.6, zstd;q=0.4"), Some(Coding::Gzip));
        assert_eq!(n("GZIP;Q=0.9"), Some(Coding::Gzip));
        assert_eq!(n("x-gzip"), Some(Coding::Gzip));
        assert_eq!(n("identity"), None);
        assert_eq!(n("identity;q=0"), None, "nothing acceptable: sent as it is");
        assert_eq!(n("gzip;q=0"), None);
        assert_eq!(n("*"), Some(Coding::Zstd));
        assert_eq!(
            n("*;q=0.1, zstd;q=0"),
            Some(Coding::Brotli),
            "`*` covers the codings not named"
        );
        assert_eq!(n("*;q=0"), None);
        assert_eq!(n("gzip;q=2"), None, "a malformed qvalue says nothing");
        assert_eq!(n("gzip;q=0.0001"), None);
        assert_eq!(n("gzip;q=1.001"), None);
        assert_eq!(n("gzip;q=0.001"), Some(Coding::Gzip));
        assert_eq!(n("gzip, gzip;q=0"), None, "twice: the stricter reading");
        assert_eq!(n(" , ;, deflate"), None);
        assert_eq!(
            negotiate(Some(b"gzip, br"), &[Coding::Gzip]),
            Some(Coding::Gzip)
        );
        assert_eq!(negotiate(Some(b"br"), &[Coding::Gzip]), None);
        assert_eq!(negotiate(Some(b"\xff"), ALL), None);
    }

    fn spec() -> CompressionSpec {
        CompressionSpec {
            algorithms: ALL.to_vec(),
            types: vec![
                TypePattern::Exact("application/json".into()),
                TypePattern::AnySubtype("text".into()),
            ],
            min_bytes: 100,
            level_gzip: 4,
            level_br: 4,
            level_zstd: 3,
        }
    }

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("head");
        for (k, v) in headers {
            r.append_header(*k, *v).expect("header");
        }
        r
    }

    #[test]
    fn what_is_never_compressed() {
        let json = ("content-type", "application/json; charset=utf-8");
        let d = |r: &ResponseHeader| decide(&spec(), r, Some(Coding::Gzip), false, true);
        assert_eq!(d(&resp(200, &[json])), Decision::Encode(Coding::Gzip));
        assert_eq!(
            d(&resp(200, &[("content-type", "text/html")])),
            Decision::Encode(Coding::Gzip)
        );
        for (what, r) in [
            ("204", resp(204, &[json])),
            ("304", resp(304, &[json])),
            ("206", resp(206, &[json])),
            ("101", resp(101, &[json])),
            (
                "already encoded",
                resp(200, &[json, ("content-encoding", "br")]),
            ),
            (
                "no-transform",
                resp(200, &[json, ("cache-control", "public, No-Transform")]),
            ),
            (
                "type not listed",
                resp(200, &[("content-type", "image/png")]),
            ),
            ("no type", resp(200, &[])),
            (
                "event stream",
                resp(200, &[("content-type", "text/event-stream")]),
            ),
        ] {
            assert_eq!(d(&r), Decision::Untouched, "{what}");
        }
        // Compressible, but not for this request or this body: sent with Vary.
        assert_eq!(
            d(&resp(200, &[json, ("content-length", "99")])),
            Decision::VaryOnly
        );
        assert_eq!(
            d(&resp(200, &[json, ("content-length", "100")])),
            Decision::Encode(Coding::Gzip)
        );
        assert_eq!(
            d(&resp(200, &[json, ("content-encoding", "identity")])),
            Decision::Encode(Coding::Gzip)
        );
        assert_eq!(
            decide(&spec(), &resp(200, &[json]), None, false, true),
            Decision::VaryOnly
        );
        assert_eq!(
            decide(&spec(), &resp(200, &[json]), Some(Coding::Gzip), true, true),
            Decision::VaryOnly
        );
        let cookie = resp(200, &[json, ("set-cookie", "sid=1")]);
        assert_eq!(
            d(&cookie),
            Decision::VaryOnly,
            "BREACH: a cookie on a credentialed route"
        );
        assert_eq!(
            decide(&spec(), &cookie, Some(Coding::Gzip), false, false),
            Decision::Encode(Coding::Gzip),
            "no credentials on the route"
        );
    }

    #[test]
    fn the_head_is_rewritten_and_the_body_round_trips() {
        let mut r = resp(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "5000"),
                ("accept-ranges", "bytes"),
                ("etag", "\"abc\""),
                ("vary", "Origin"),
            ],
        );
        let mut enc = apply(&spec(), &mut r, Decision::Encode(Coding::Gzip)).expect("encoder");
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert!(
            r.headers.get("content-length").is_none() && r.headers.get("accept-ranges").is_none()
        );
        assert_eq!(r.headers["etag"], "W/\"abc\"");
        let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        let body = br#"{"items":[1,2,3,4,5,6,7,8,9,10]}"#.repeat(100);
        let mut out = Vec::new();
        for (i, chunk) in body.chunks(700).enumerate() {
            let last = (i + 1) * 700 >= body.len();
            if let Some(b) =
                encode(enc.as_mut(), Some(&Bytes::copy_from_slice(chunk)), last).expect("encode")
            {
                out.extend_from_slice(&b);
            }
        }
        let mut gunzip = Algorithm::Gzip.decompressor(true).expect("gzip decoder");
        let plain = gunzip.encode(&out, true).expect("gunzip");
        assert_eq!(&plain[..], &body[..]);
        assert!(
            out.len() < body.len() / 10,
            "{} of {}",
            out.len(),
            body.len()
        );
        // Vary only once, and `Vary: *` already covers it.
        let mut r = resp(200, &[("vary", "accept-encoding")]);
        assert!(apply(&spec(), &mut r, Decision::VaryOnly).is_none());
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    }
}
