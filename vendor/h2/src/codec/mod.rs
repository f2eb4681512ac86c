mod error;
mod framed_read;
mod framed_write;

pub use self::error::{SendError, UserError};

use self::framed_read::FramedRead;
use self::framed_write::FramedWrite;

use crate::frame::{self, Data, Frame};
use crate::proto::Error;

use bytes::Buf;
use futures_core::Stream;
use futures_sink::Sink;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::length_delimited;

use std::io;

#[derive(Debug)]
pub struct Codec<T, B> {
    inner: FramedRead<FramedWrite<T, B>>,
}

impl<T, B> Codec<T, B>
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: Buf,
{
    /// Returns a new `Codec` with the default max frame size
    #[inline]
    pub fn new(io: T) -> Self {
        Self::with_max_recv_frame_size(io, frame::DEFAULT_MAX_FRAME_SIZE as usize)
    }

    /// Returns a new `Codec` with the given maximum frame size
    pub fn with_max_recv_frame_size(io: T, max_frame_size: usize) -> Self {
        // Wrap with writer
        let framed_write = FramedWrite::new(io);

        // Delimit the frames
        let delimited = length_delimited::Builder::new()
            .big_endian()
            .length_field_length(3)
            .length_adjustment(9)
            .num_skip(0) // Don't skip the header
            .new_read(framed_write);

        let mut inner = FramedRead::new(delimited);

        // Use FramedRead's method since it checks the value is within range.
        inner.set_max_frame_size(max_frame_size);

        Codec { inner }
    }
}

impl<T, B> Codec<T, B> {
    /// Updates the max received frame size.
    ///
    /// The change takes effect the next time a frame is decoded. In other
    /// words, if a frame is currently in process of being decoded with a frame
    /// size greater than `val` but less than the max frame size in effect
    /// before calling this function, then the frame will be allowed.
    #[inline]
    pub fn set_max_recv_frame_size(&mut self, val: usize) {
        self.inner.set_max_frame_size(val)
    }

    /// Returns the current max received frame size setting.
    ///
    /// This is the largest size this codec will accept from the wire. Larger
    /// frames will be rejected.
    #[cfg(feature = "unstable")]
    #[inline]
    pub fn max_recv_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }

    /// Returns the max frame size that can be sent to the peer.
    pub fn max_send_frame_size(&self) -> usize {
        self.inner.get_ref().max_frame_size()
    }

    /// Set the peer's max frame size.
    pub fn set_max_send_frame_size(&mut self, val: usize) {
        self.framed_write().set_max_frame_size(val)
    }

    /// Set the peer's header table size size.
    pub fn set_send_header_table_size(&mut self, val: usize) {
        self.framed_write().set_header_table_size(val)
    }

    /// Set the decoder header table size size.
    pub fn set_recv_header_table_size(&mut self, val: usize) {
        self.inner.set_header_table_size(val)
    }

    /// Set the max header list size that can be received.
    pub fn set_max_recv_header_list_size(&mut self, val: usize) {
        self.inner.set_max_header_list_size(val);
    }

    /// Get a reference to the inner stream.
    #[cfg(feature = "unstable")]
    pub fn get_ref(&self) -> &T {
        self.inner.get_ref().get_ref()
    }

    /// Get a mutable reference to the inner stream.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().get_mut()
    }

    /// Takes the data payload value that was fully written to the socket
    pub(crate) fn take_last_data_frame(&mut self) -> Option<Data<B>> {
        self.framed_write().take_last_data_frame()
    }

    fn framed_write(&mut self) -> &mut FramedWrite<T, B> {
        self.inner.get_mut()
    }

    /// The (write, read) buffer allocations now (tests).
    #[cfg(test)]
    pub(crate) fn buffer_capacities(&self) -> (usize, usize) {
        (
            self.inner.get_ref().write_buffer_capacity(),
            self.inner.read_buffer_capacity(),
        )
    }
}

impl<T, B> Codec<T, B>
where
    T: AsyncWrite + Unpin,
    B: Buf,
{
    /// Returns `Ready` when the codec can buffer a frame
    pub fn poll_ready(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().poll_ready(cx)
    }

    /// Returns whether the codec can buffer a frame without flushing the
    /// underlying I/O object.
    pub(crate) fn has_send_capacity(&mut self) -> bool {
        self.framed_write().has_capacity()
    }

    /// Buffer a frame.
    ///
    /// `poll_ready` must be called first to ensure that a frame may be
    /// accepted.
    ///
    /// TODO: Rename this to avoid conflicts with Sink::buffer
    pub fn buffer(&mut self, item: Frame<B>) -> Result<(), UserError> {
        self.framed_write().buffer(item)
    }

    /// Flush buffered data to the wire
    pub fn flush(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().flush(cx)
    }

    /// Frees the codec's buffers that hold nothing — the read buffer with no partial frame,
    /// HPACK's arena, the write buffer with nothing waiting — for a connection that goes idle.
    /// Each is allocated again when it is next used.
    pub fn release_idle_buffers(&mut self) {
        self.inner.release_idle_buffers();
        self.framed_write().release_idle_buffer();
    }

    /// Shutdown the send half
    pub fn shutdown(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().shutdown(cx)
    }
}

impl<T, B> Stream for Codec<T, B>
where
    T: AsyncRead + Unpin,
{
    type Item = Result<Frame, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<T, B> Sink<Frame<B>> for Codec<T, B>
where
    T: AsyncWrite + Unpin,
    B: Buf,
{
    type Error = SendError;

    fn start_send(mut self: Pin<&mut Self>, item: Frame<B>) -> Result<(), Self::Error> {
        Codec::buffer(&mut self, item)?;
        Ok(())
    }
    /// Returns `Ready` when the codec can buffer a frame
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.framed_write().poll_ready(cx).map_err(Into::into)
    }

    /// Flush buffered data to the wire
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.framed_write().flush(cx).map_err(Into::into)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

// TODO: remove (or improve) this
impl<T> From<T> for Codec<T, bytes::Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn from(src: T) -> Self {
        Self::new(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Ping;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A PING frame on the wire: 9-byte head (length 8, type 6, no flags, stream 0), payload.
    fn ping_bytes(payload: [u8; 8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
        b.extend_from_slice(&payload);
        b
    }

    /// One poll of the next frame.
    async fn next_now<T: AsyncRead + AsyncWrite + Unpin>(
        codec: &mut Codec<T, bytes::Bytes>,
    ) -> Poll<Option<Result<Frame, Error>>> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *codec).poll_next(cx))).await
    }

    #[tokio::test]
    async fn the_write_buffer_is_allocated_for_frames_and_freed_when_idle() {
        let (io, mut peer) = tokio::io::duplex(1 << 16);
        let mut codec: Codec<_, bytes::Bytes> = Codec::new(io);
        assert_eq!(
            codec.buffer_capacities().0,
            0,
            "no write buffer before a frame"
        );
        for round in 0..2u8 {
            poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
            codec.buffer(Ping::new([round; 8]).into()).unwrap();
            codec.buffer(Ping::pong([round + 10; 8]).into()).unwrap();
            assert_eq!(
                codec.buffer_capacities().0,
                16 * 1024,
                "frames wait in one buffer"
            );
            // Frames waiting are never dropped.
            codec.release_idle_buffers();
            assert_eq!(codec.buffer_capacities().0, 16 * 1024);
            poll_fn(|cx| codec.flush(cx)).await.unwrap();
            assert_eq!(codec.buffer_capacities().0, 16 * 1024, "kept while busy");
            codec.release_idle_buffers();
            assert_eq!(codec.buffer_capacities().0, 0, "freed once idle");
            let mut wire = [0u8; 34];
            peer.read_exact(&mut wire).await.unwrap();
            assert_eq!(&wire[..17], ping_bytes([round; 8]).as_slice());
            assert_eq!(wire[17 + 4], 1, "the second frame is the ACK");
            assert_eq!(&wire[26..], &[round + 10; 8]);
        }
    }

    #[tokio::test]
    async fn the_read_buffer_is_freed_when_idle_unless_it_holds_a_partial_frame() {
        let (io, mut peer) = tokio::io::duplex(1 << 16);
        let mut codec: Codec<_, bytes::Bytes> = Codec::new(io);
        assert!(next_now(&mut codec).await.is_pending());
        codec.release_idle_buffers();
        assert_eq!(
            codec.buffer_capacities().1,
            0,
            "an idle codec holds no read buffer"
        );

        peer.write_all(&ping_bytes([7; 8])).await.unwrap();
        match next_now(&mut codec).await {
            Poll::Ready(Some(Ok(Frame::Ping(p)))) => assert_eq!(p.payload(), &[7; 8]),
            other => panic!("expected the PING, got {other:?}"),
        }
        assert!(next_now(&mut codec).await.is_pending());
        codec.release_idle_buffers();
        assert_eq!(codec.buffer_capacities().1, 0, "freed again once idle");

        // A frame that arrives in two pieces keeps its first piece while it waits for the rest.
        let frame = ping_bytes([9; 8]);
        peer.write_all(&frame[..5]).await.unwrap();
        assert!(next_now(&mut codec).await.is_pending());
        codec.release_idle_buffers();
        assert!(codec.buffer_capacities().1 >= 5, "a partial frame is kept");
        peer.write_all(&frame[5..]).await.unwrap();
        match next_now(&mut codec).await {
            Poll::Ready(Some(Ok(Frame::Ping(p)))) => assert_eq!(p.payload(), &[9; 8]),
            other => panic!("expected the second PING, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_server_connection_with_no_open_stream_holds_no_codec_buffers() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let (idle_tx, mut idle_rx) = tokio::sync::mpsc::channel(2);
        let server = tokio::spawn(async move {
            let mut conn = crate::server::handshake(server_io).await.unwrap();
            for _ in 0..2 {
                let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
                let mut body = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                body.send_data(bytes::Bytes::from_static(b"hello"), true)
                    .unwrap();
                drop(body);
                // Drive the connection until the response is out and it waits for a frame:
                // then it holds no codec buffer.
                let mut held = (usize::MAX, usize::MAX);
                for _ in 0..10_000 {
                    let polled = poll_fn(|cx| Poll::Ready(conn.poll_accept(cx))).await;
                    assert!(polled.is_pending(), "the client sends nothing meanwhile");
                    held = conn.codec_buffers();
                    if held == (0, 0) {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                assert_eq!(held, (0, 0), "(write, read) buffers of an idle connection");
                idle_tx.send(()).await.unwrap();
            }
        });
        let (mut client, connection) = crate::client::handshake(client_io).await.unwrap();
        let driver = tokio::spawn(connection);
        for round in 0..2 {
            if round > 0 {
                client = client.ready().await.unwrap();
            }
            let request = http::Request::get("http://example.test/").body(()).unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let mut body = response.await.unwrap().into_body();
            let data = body.data().await.unwrap().unwrap();
            assert_eq!(&data[..], b"hello");
            idle_rx
                .recv()
                .await
                .expect("the server saw its connection idle");
        }
        server.await.unwrap();
        driver.abort();
    }
}
