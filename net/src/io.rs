//! The crate's only `unsafe` code: the inbox eventfd and socket options on raw descriptors.
//!
//! Owns one eventfd per inbox: created non-blocking and close-on-exec, signalled by the
//! network thread, cleared and polled by the core; and the liveness options set on every peer
//! socket. It must never block the network thread (writes are non-blocking; a saturated
//! counter is already readable, which is all we need) and never close a descriptor it does not own.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking eventfd used as a level-triggered "something is waiting" flag.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a negative return is an error reported via errno.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns; OwnedFd closes it once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the eventfd readable. EAGAIN (counter saturated) means it already is: fine.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: the fd is owned by self and open; the buffer is a live 8-byte u64 on our stack,
        // only read by the kernel for the duration of the call.
        let written = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
        debug_assert!(
            written == 8 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
        );
    }

    /// Resets the counter to zero (not readable). EAGAIN means it already was zero.
    pub(crate) fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: the fd is owned by self and open; the buffer is a live, writable 8-byte u64 on
        // our stack, written by the kernel only during the call.
        let read = unsafe { libc::read(self.raw(), (&mut value as *mut u64).cast(), 8) };
        debug_assert!(read == 8 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock);
    }

    /// Waits until the eventfd is readable or `timeout` passes; true when readable.
    pub(crate) fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: `pollfd` is one live, writable pollfd on our stack and nfds is 1; the
            // kernel writes `revents` only during the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
            if ready >= 0 {
                return Ok(ready > 0 && pollfd.revents & libc::POLLIN != 0);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Makes a vanished peer show up as a failed connection within about `dead_after`: TCP
/// keepalive probes on an idle connection, and TCP_USER_TIMEOUT on unacknowledged data.
///
/// `fd` must be an open TCP socket owned by a stream the caller holds for the whole call.
pub(crate) fn set_liveness(fd: RawFd, dead_after: Duration) -> io::Result<()> {
    // SAFETY: the caller holds the stream that owns `fd`, so it stays open for the borrow, which
    // ends with this function; SockRef neither closes nor keeps it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let idle = (dead_after / 2).max(Duration::from_secs(1));
    let interval = (dead_after / 8).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(4);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(dead_after))?;
    Ok(())
}

/// Shuts a listening socket down, so that an accept in progress on it returns (with an error)
/// and no new connection is accepted; the descriptor stays open (its owner closes it).
///
/// `fd` must be an open socket owned by a listener the caller holds for the whole call.
pub(crate) fn shutdown_listener(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller holds the listener that owns `fd`, so it stays open for the borrow,
    // which ends with this function; SockRef neither closes nor keeps it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed).shutdown(std::net::Shutdown::Both)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_makes_readable_and_clear_resets() {
        let efd = EventFd::new().unwrap();
        assert!(!efd.wait_readable(Duration::ZERO).unwrap());
        efd.signal();
        efd.signal();
        assert!(efd.wait_readable(Duration::ZERO).unwrap());
        efd.clear();
        assert!(!efd.wait_readable(Duration::ZERO).unwrap());
        efd.clear();
        assert!(!efd.wait_readable(Duration::ZERO).unwrap());
    }

    #[test]
    fn liveness_options_are_set() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        set_liveness(stream.as_raw_fd(), Duration::from_secs(8)).unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(8))
        );
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(4));
    }
}
