//! TCP streams and listeners over the two backends: tokio-uring (io_uring) and plain tokio (epoll).
//!
//! Owns the difference between the backends so that connection logic is written once. Every
//! operation takes `&self` so a connection's reader and writer can share one stream. It must never
//! interpret bytes (that is the codec's) and never buffer beyond the buffer it is handed.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// A connected TCP stream.
#[allow(async_fn_in_trait)]
pub(crate) trait Stream: 'static {
    /// Reads once into the spare capacity of `buf` (appending); returns bytes read, 0 at EOF.
    async fn read_some(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut);
    /// Writes every byte of `bufs`, in order, with vectored writes.
    async fn write_all_vectored(&self, bufs: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>);
    /// Shuts both directions down; pending reads and writes complete with EOF or an error.
    fn close(&self);
}

/// A backend: how to listen, accept and connect.
#[allow(async_fn_in_trait)]
pub(crate) trait Backend: 'static {
    /// Its name in logs and stats.
    const NAME: &'static str;
    /// The stream type.
    type Stream: Stream;
    /// The listener type.
    type Listener: 'static;
    /// Adopts a bound, non-blocking std listener (inside the runtime).
    fn listener(std: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts one connection.
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)>;
    /// Connects to `addr` with TCP_NODELAY set.
    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream>;
    /// Sets keepalive and the user timeout (see `io::set_liveness`).
    fn set_liveness(stream: &Self::Stream, dead_after: Duration) -> io::Result<()>;
    /// Stops `listener` (at shutdown): an accept in progress returns with an error.
    fn close_listener(listener: &Self::Listener);
}

/// Drops the first `n` bytes of `bufs` (after a partial vectored write).
fn advance(bufs: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for buf in bufs.iter_mut() {
        if n == 0 {
            break;
        }
        let take = n.min(buf.len());
        buf.advance(take);
        n -= take;
        if buf.is_empty() {
            done += 1;
        }
    }
    assert_eq!(n, 0, "a write reported more bytes than it was given");
    bufs.drain(..done);
    bufs.retain(|b| !b.is_empty());
}

/// At most this many buffers go to one `writev` (below the kernel's IOV_MAX of 1024).
const IOVECS_PER_WRITE_MAX: usize = 512;

// ---------------------------------------------------------------------------------------------
// io_uring

/// The io_uring backend (tokio-uring).
pub(crate) struct Uring;

impl Stream for tokio_uring::net::TcpStream {
    async fn read_some(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        use tokio_uring::buf::BoundedBuf;
        assert!(buf.capacity() > buf.len(), "read_some needs spare capacity");
        let len = buf.len();
        let capacity = buf.capacity();
        // The slice covers the spare capacity; tokio-uring owns the buffer until completion
        // and sets the length to `len + n` when it returns.
        let (result, slice) = self.read(buf.slice(len..capacity)).await;
        buf = slice.into_inner();
        (result, buf)
    }

    async fn write_all_vectored(&self, mut bufs: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        while !bufs.is_empty() {
            let rest = if bufs.len() > IOVECS_PER_WRITE_MAX {
                bufs.split_off(IOVECS_PER_WRITE_MAX)
            } else {
                Vec::new()
            };
            let (result, mut chunk) = self.writev(bufs).await;
            match result {
                Ok(0) => {
                    chunk.extend(rest);
                    return (Err(io::ErrorKind::WriteZero.into()), chunk);
                }
                Ok(n) => {
                    advance(&mut chunk, n);
                    chunk.extend(rest);
                    bufs = chunk;
                }
                Err(err) => {
                    chunk.extend(rest);
                    return (Err(err), chunk);
                }
            }
        }
        (Ok(()), bufs)
    }

    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Backend for Uring {
    const NAME: &'static str = "io_uring";
    type Stream = tokio_uring::net::TcpStream;
    type Listener = tokio_uring::net::TcpListener;

    fn listener(std: std::net::TcpListener) -> io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(std))
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, addr))
    }

    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio_uring::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn set_liveness(stream: &Self::Stream, dead_after: Duration) -> io::Result<()> {
        crate::io::set_liveness(stream.as_raw_fd(), dead_after)
    }

    fn close_listener(listener: &Self::Listener) {
        let _ = crate::io::shutdown_listener(listener.as_raw_fd());
    }
}

// ---------------------------------------------------------------------------------------------
// epoll

/// The epoll backend (plain tokio).
pub(crate) struct Epoll;

impl Stream for tokio::net::TcpStream {
    async fn read_some(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        assert!(buf.capacity() > buf.len(), "read_some needs spare capacity");
        loop {
            if let Err(err) = self.readable().await {
                return (Err(err), buf);
            }
            match self.try_read_buf(&mut buf) {
                Ok(n) => return (Ok(n), buf),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return (Err(err), buf),
            }
        }
    }

    async fn write_all_vectored(&self, mut bufs: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        while !bufs.is_empty() {
            let result = {
                let slices: Vec<io::IoSlice<'_>> = bufs
                    .iter()
                    .take(IOVECS_PER_WRITE_MAX)
                    .map(|b| io::IoSlice::new(b))
                    .collect();
                self.try_write_vectored(&slices)
            };
            match result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), bufs),
                Ok(n) => advance(&mut bufs, n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(err) = self.writable().await {
                        return (Err(err), bufs);
                    }
                }
                Err(err) => return (Err(err), bufs),
            }
        }
        (Ok(()), bufs)
    }

    fn close(&self) {
        let _ = socket2::SockRef::from(self).shutdown(Shutdown::Both);
    }
}

impl Backend for Epoll {
    const NAME: &'static str = "epoll";
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    fn listener(std: std::net::TcpListener) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::from_std(std)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, addr))
    }

    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn set_liveness(stream: &Self::Stream, dead_after: Duration) -> io::Result<()> {
        crate::io::set_liveness(stream.as_raw_fd(), dead_after)
    }

    fn close_listener(listener: &Self::Listener) {
        let _ = crate::io::shutdown_listener(listener.as_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_written_prefix() {
        let mut bufs = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ];
        advance(&mut bufs, 4);
        assert_eq!(
            bufs,
            vec![Bytes::from_static(b"e"), Bytes::from_static(b"f")]
        );
        advance(&mut bufs, 2);
        assert!(bufs.is_empty());
    }
}
