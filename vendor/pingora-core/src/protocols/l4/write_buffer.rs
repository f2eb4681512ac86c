// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A write buffer that holds memory only while it holds bytes.
//!
//! It buffers writes as [`tokio::io::BufWriter`] does (small writes are gathered, a write that
//! does not fit flushes first, a write at least as large as the capacity goes straight through),
//! but its buffer is allocated by the first write it keeps and freed by the flush that empties it.
//! A connection that waits (a kept-alive client between requests, an idle HTTP/2 connection, a
//! pooled upstream connection) then holds no write buffer, where a `BufWriter` keeps its whole
//! capacity for the connection's life.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct WriteBuffer<W> {
    inner: W,
    buf: Vec<u8>,
    written: usize,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> WriteBuffer<W> {
    /// Buffers up to `capacity` bytes; nothing is allocated until a write is kept. A zero
    /// capacity writes straight through.
    pub(crate) fn with_capacity(capacity: usize, inner: W) -> Self {
        WriteBuffer {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The stream under the buffer. Bytes still buffered are lost.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// The bytes the buffer holds in memory now (its allocation, not what is queued in it).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    fn room(&self) -> usize {
        self.capacity - self.buf.len()
    }

    /// Keeps `data`, which fits in the room left.
    fn keep(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.capacity);
        }
        self.buf.extend_from_slice(data);
    }

    /// Writes out what is buffered (tokio's `BufWriter::flush_buf`).
    fn flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let len = self.buf.len();
        let mut ret = Ok(());
        while self.written < len {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => {
                    ret = Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    ));
                    break;
                }
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            }
        }
        if self.written > 0 {
            self.buf.drain(..self.written);
        }
        self.written = 0;
        Poll::Ready(ret)
    }

    /// Frees the buffer once it is empty: what comes next may be a long wait.
    fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteBuffer<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.len() > this.room() {
            ready!(this.flush_buf(cx))?;
        }
        if data.len() >= this.capacity {
            Pin::new(&mut this.inner).poll_write(cx, data)
        } else {
            this.keep(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.inner.is_write_vectored() {
            let total = bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len()));
            if total > this.room() {
                ready!(this.flush_buf(cx))?;
            }
            if total >= this.capacity {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
            for b in bufs {
                this.keep(b);
            }
            return Poll::Ready(Ok(total));
        }
        // Not vectored below: keep the slices that fit, writing a first one too large directly.
        while bufs.first().map(|b| b.len()) == Some(0) {
            bufs = &bufs[1..];
        }
        let Some(first) = bufs.first() else {
            return Poll::Ready(Ok(0));
        };
        if first.len() > this.room() {
            ready!(this.flush_buf(cx))?;
        }
        if first.len() >= this.capacity {
            return Pin::new(&mut this.inner).poll_write(cx, first);
        }
        let mut total = 0;
        for b in bufs {
            if b.len() > this.room() {
                break;
            }
            this.keep(b);
            total += b.len();
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.flush_buf(cx))?;
        this.release();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.flush_buf(cx))?;
        this.release();
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for WriteBuffer<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<W: fmt::Debug> fmt::Debug for WriteBuffer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBuffer")
            .field("writer", &self.inner)
            .field(
                "buffer",
                &format_args!("{}/{}", self.buf.len(), self.capacity),
            )
            .field("allocated", &self.buf.capacity())
            .field("written", &self.written)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that takes at most `chunk` bytes per write and counts its writes.
    #[derive(Default)]
    struct Sink {
        data: Vec<u8>,
        writes: usize,
        chunk: usize,
        flushes: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.chunk.max(1));
            this.data.extend_from_slice(&data[..n]);
            this.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn sink(chunk: usize) -> Sink {
        Sink {
            chunk,
            ..Sink::default()
        }
    }

    #[tokio::test]
    async fn holds_memory_only_while_it_holds_bytes() {
        let mut w = WriteBuffer::with_capacity(4096, sink(usize::MAX));
        assert_eq!(w.allocated(), 0, "nothing allocated before a write");
        w.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        w.write_all(b"content-length: 2\r\n\r\nok").await.unwrap();
        assert_eq!(w.allocated(), 4096, "the writes are kept in one buffer");
        assert_eq!(w.get_ref().writes, 0, "small writes are gathered");
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().writes, 1, "one write for the gathered bytes");
        assert_eq!(w.get_ref().flushes, 1);
        assert_eq!(
            w.get_ref().data,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        );
        assert_eq!(w.allocated(), 0, "the flush that empties it frees it");
        // And again for the next response.
        w.write_all(b"next").await.unwrap();
        assert_eq!(w.allocated(), 4096);
        w.shutdown().await.unwrap();
        assert_eq!(w.allocated(), 0, "shutdown flushes and frees too");
        assert!(w.get_ref().data.ends_with(b"oknext"));
    }

    #[tokio::test]
    async fn large_writes_go_through_and_partial_writes_keep_order() {
        let mut w = WriteBuffer::with_capacity(16, sink(5));
        w.write_all(b"0123456789").await.unwrap();
        assert_eq!(w.get_ref().writes, 0);
        // Does not fit: the buffered bytes go first (in 5-byte writes), then these straight through.
        let big: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        w.write_all(&big).await.unwrap();
        assert_eq!(w.allocated(), 16, "an emptied buffer is kept until a flush");
        w.flush().await.unwrap();
        assert_eq!(w.allocated(), 0);
        let mut want = b"0123456789".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(w.get_ref().data, want);
    }

    #[tokio::test]
    async fn vectored_writes_are_gathered_in_order() {
        let mut w = WriteBuffer::with_capacity(64, sink(usize::MAX));
        let parts = [
            IoSlice::new(b"head "),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        let n = std::future::poll_fn(|cx| Pin::new(&mut w).poll_write_vectored(cx, &parts))
            .await
            .unwrap();
        assert_eq!(n, 9);
        assert_eq!(w.allocated(), 64);
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().data, b"head body");
        assert_eq!(w.allocated(), 0);
    }

    #[tokio::test]
    async fn zero_capacity_writes_straight_through() {
        let mut w = WriteBuffer::with_capacity(0, sink(usize::MAX));
        w.write_all(b"abc").await.unwrap();
        assert_eq!(w.get_ref().writes, 1);
        assert_eq!(w.allocated(), 0);
    }
}
