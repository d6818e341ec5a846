//! The eventfd that wakes a core when proposals are queued (safe wrappers from `rustix`).
//!
//! Owns: one non-blocking eventfd per core. Never: blocks the proposer (writes are
//! non-blocking; a saturated counter is already readable, which is all a wake needs).

use rustix::event::{eventfd, EventfdFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A level-triggered "work is waiting" flag a core's io_uring wait can watch.
///
/// To spare a system call per proposal, producers write the eventfd only when the core has
/// armed it (said it is about to sleep): the core arms, then looks at its queue once more
/// before sleeping; a producer pushes, then disarms and signals if it was armed. With
/// sequentially consistent ordering one of the two always sees the other.
#[derive(Debug)]
pub(crate) struct Wake {
    fd: OwnedFd,
    armed: AtomicBool,
}

impl Wake {
    pub(crate) fn new() -> std::io::Result<Wake> {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Wake {
            fd,
            armed: AtomicBool::new(true),
        })
    }

    /// The core is about to sleep: producers must signal from now on.
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The core is awake: producers need not signal.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Called by a producer after it queued work: wakes the core if it may be asleep.
    pub(crate) fn notify(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.signal();
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the fd readable (EAGAIN: the counter is saturated, so it already is).
    pub(crate) fn signal(&self) {
        let _ = rustix::io::write(self.fd.as_fd(), &1u64.to_ne_bytes());
    }

    /// Resets it to not readable (EAGAIN: it already was).
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(self.fd.as_fd(), &mut buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_then_clear() {
        let wake = Wake::new().unwrap();
        wake.signal();
        wake.signal();
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(wake.fd.as_fd(), &mut buf).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(buf), 2);
        wake.signal();
        wake.clear();
        assert!(
            rustix::io::read(wake.fd.as_fd(), &mut buf).is_err(),
            "cleared: nothing to read"
        );
    }

    #[test]
    fn notify_signals_only_when_armed() {
        let wake = Wake::new().unwrap();
        let mut buf = [0u8; 8];
        wake.disarm();
        wake.notify();
        assert!(
            rustix::io::read(wake.fd.as_fd(), &mut buf).is_err(),
            "disarmed: no signal"
        );
        wake.arm();
        wake.notify();
        wake.notify();
        assert_eq!(rustix::io::read(wake.fd.as_fd(), &mut buf).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(buf), 1, "one signal per arming");
    }
}
