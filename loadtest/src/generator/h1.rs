//! HTTP/1.1 on one connection, written by hand: a request is a prepared byte string, and a response is
//! parsed in place (httparse) and its body skipped by its framing. No per-request allocation once the
//! connection's buffer has grown, which keeps the generator's own cost under wrk's.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::stats::Failure;

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The outcome of one exchange that got a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection (or already did): do not reuse it.
    pub close: bool,
}

/// A reusable read buffer for one connection.
pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    /// Bytes of `buf` that hold data not yet consumed.
    filled: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: vec![0; 16 * 1024],
            filled: 0,
        }
    }

    /// Writes `request` (a whole HTTP/1.1 request) and reads one response to its end.
    /// `head_only`: the request was a HEAD (the response has no body whatever its headers say).
    pub async fn exchange(&mut self, request: &[u8], head_only: bool) -> Result<Response, Failure> {
        self.stream
            .write_all(request)
            .await
            .map_err(|_| Failure::Io)?;
        // A TLS stream may keep records in its buffer after `write` returned (tokio-rustls does when the
        // socket pushes back): without a flush, a request can sit there until the server's head deadline
        // (2 in ~90 000 new TLS connections did, 10 s each).
        self.stream.flush().await.map_err(|_| Failure::Io)?;
        self.filled = 0;
        // The head.
        let (status, framing, close, head_len) = loop {
            if self.filled > 0 {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(&self.buf[..self.filled]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = parsed.code.ok_or(Failure::Protocol)?;
                        if (100..200).contains(&status) && status != 101 {
                            // An interim response: drop it and read the final one.
                            self.buf.copy_within(n..self.filled, 0);
                            self.filled -= n;
                            continue;
                        }
                        let (framing, close) = framing(&parsed, status, head_only)?;
                        break (status, framing, close, n);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(Failure::Protocol),
                }
            }
            self.fill(MAX_HEAD).await?;
        };
        // The body.
        let mut pos = head_len;
        match framing {
            Framing::None => {}
            Framing::Length(len) => {
                let mut left = len.saturating_sub((self.filled - pos) as u64);
                while left > 0 {
                    let n = self.read_some().await?;
                    left = left.saturating_sub(n as u64);
                }
            }
            Framing::Chunked => {
                let mut dechunk = Dechunk::default();
                loop {
                    pos += dechunk.feed(&self.buf[pos..self.filled])?;
                    if dechunk.done() {
                        break;
                    }
                    // Keep only the undecided tail (a partial size line) and read more.
                    self.buf.copy_within(pos..self.filled, 0);
                    self.filled -= pos;
                    pos = 0;
                    self.fill(MAX_HEAD).await?;
                }
            }
            Framing::UntilClose => loop {
                self.filled = 0;
                match self.stream.read(&mut self.buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(Failure::Io),
                }
            },
        }
        Ok(Response {
            status,
            close: close || matches!(framing, Framing::UntilClose),
        })
    }

    /// Reads more bytes after `filled`, growing the buffer up to `limit`. EOF is an I/O failure.
    async fn fill(&mut self, limit: usize) -> Result<usize, Failure> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= limit {
                return Err(Failure::Protocol);
            }
            self.buf.resize((self.buf.len() * 2).min(limit), 0);
        }
        match self.stream.read(&mut self.buf[self.filled..]).await {
            Ok(0) | Err(_) => Err(Failure::Io),
            Ok(n) => {
                self.filled += n;
                Ok(n)
            }
        }
    }

    /// Reads and discards body bytes (the buffer is reused from the start).
    async fn read_some(&mut self) -> Result<usize, Failure> {
        self.filled = 0;
        match self.stream.read(&mut self.buf).await {
            Ok(0) | Err(_) => Err(Failure::Io),
            Ok(n) => Ok(n),
        }
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    head_only: bool,
) -> Result<(Framing, bool), Failure> {
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| Failure::Protocol)?;
            length = Some(v.trim().parse::<u64>().map_err(|_| Failure::Protocol)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked")
                || h.value.to_ascii_lowercase().ends_with(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        }
    }
    let framing = if head_only || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((framing, close))
}

/// A chunked body's decoder: it only finds the body's end, discarding the data.
#[derive(Debug, Default)]
struct Dechunk {
    state: Chunk,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Chunk {
    #[default]
    SizeLine,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl Dechunk {
    /// Consumes what can be decided of `data`; returns the bytes consumed.
    fn feed(&mut self, mut data: &[u8]) -> Result<usize, Failure> {
        let total = data.len();
        while self.state != Chunk::Done {
            match self.state {
                Chunk::SizeLine | Chunk::Trailer => {
                    let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
                        if data.len() > 4096 {
                            return Err(Failure::Protocol);
                        }
                        break;
                    };
                    let line = &data[..eol];
                    self.state = if self.state == Chunk::Trailer {
                        if line.is_empty() {
                            Chunk::Done
                        } else {
                            Chunk::Trailer
                        }
                    } else {
                        let size = line.split(|b| *b == b';').next().unwrap_or(line);
                        let size = std::str::from_utf8(size).map_err(|_| Failure::Protocol)?;
                        match u64::from_str_radix(size.trim(), 16).map_err(|_| Failure::Protocol)? {
                            0 => Chunk::Trailer,
                            n => Chunk::Data(n),
                        }
                    };
                    data = &data[eol + 2..];
                }
                Chunk::Data(left) => {
                    if data.is_empty() {
                        break;
                    }
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if data.len() < 2 {
                        break;
                    }
                    if &data[..2] != b"\r\n" {
                        return Err(Failure::Protocol);
                    }
                    data = &data[2..];
                    self.state = Chunk::SizeLine;
                }
                Chunk::Done => {}
            }
        }
        Ok(total - data.len())
    }

    fn done(&self) -> bool {
        self.state == Chunk::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(parts: &[&[u8]]) -> Result<bool, Failure> {
        let mut d = Dechunk::default();
        let mut pending = Vec::new();
        for p in parts {
            pending.extend_from_slice(p);
            let n = d.feed(&pending)?;
            pending.drain(..n);
        }
        Ok(d.done())
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        assert_eq!(dechunk(&[b"5\r\nhello\r\n0\r\n\r\n"]), Ok(true));
        assert_eq!(
            dechunk(&[b"5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"]),
            Ok(true)
        );
        assert_eq!(dechunk(&[b"5\r\nhello\r\n"]), Ok(false));
        // Split anywhere, even inside the size line and the data.
        assert_eq!(
            dechunk(&[b"1", b"0\r\n0123456", b"789abcdef\r", b"\n0\r", b"\n\r\n"]),
            Ok(true)
        );
        assert_eq!(dechunk(&[b"zz\r\n"]), Err(Failure::Protocol));
        assert_eq!(dechunk(&[b"2\r\nabXX"]), Err(Failure::Protocol));
    }

    #[tokio::test]
    async fn reads_length_chunked_and_interim_responses_on_one_connection() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut scratch = [0u8; 4096];
            let answers: [&[u8]; 3] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            ];
            for a in answers {
                let _ = server.read(&mut scratch).await;
                server.write_all(a).await.expect("write");
            }
        });
        let mut conn = Conn::new(client);
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            conn.exchange(req, false).await,
            Ok(Response {
                status: 200,
                close: false
            })
        );
        assert_eq!(
            conn.exchange(req, false).await,
            Ok(Response {
                status: 404,
                close: false
            })
        );
        assert_eq!(
            conn.exchange(req, false).await,
            Ok(Response {
                status: 503,
                close: true
            })
        );
        assert_eq!(conn.exchange(req, false).await, Err(Failure::Io));
    }

    /// A stream that delivers what is written only when flushed, as a TLS stream may.
    struct FlushGated {
        inner: tokio::io::DuplexStream,
        pending: Vec<u8>,
    }

    impl AsyncRead for FlushGated {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for FlushGated {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.pending.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            while !this.pending.is_empty() {
                match std::pin::Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                    std::task::Poll::Ready(Ok(n)) => {
                        this.pending.drain(..n);
                    }
                    std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => return std::task::Poll::Pending,
                }
            }
            std::pin::Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_request_is_flushed_through_a_buffering_stream() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut scratch = [0u8; 1024];
            if server.read(&mut scratch).await.unwrap_or(0) > 0 {
                let _ = server
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let mut conn = Conn::new(FlushGated {
            inner: client,
            pending: Vec::new(),
        });
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
        )
        .await;
        assert_eq!(
            r.ok(),
            Some(Ok(Response {
                status: 200,
                close: false
            }))
        );
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_failure() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut scratch = [0u8; 1024];
            let _ = server.read(&mut scratch).await;
            let _ = server.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        });
        let mut conn = Conn::new(client);
        assert_eq!(
            conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await,
            Err(Failure::Protocol)
        );
    }
}
