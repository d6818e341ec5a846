//! Per-core inboxes: a bounded frame queue plus an eventfd, and the network thread's end of it.
//!
//! Owns the hand-off of inbound frames from the network thread to one core. It must never grow
//! past its capacity and never drop a frame: a full inbox makes the network thread wait (its
//! connections stop reading) until the core drains it.

use crate::frame::Frame;
use crate::io::EventFd;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
struct Shared {
    efd: EventFd,
    /// True while the eventfd has been signalled and not yet cleared by the core. Saves one
    /// `write(2)` per pushed batch when the core is already awake or about to be.
    armed: AtomicBool,
    /// Woken when the core has drained frames (space is free).
    space: tokio::sync::Notify,
}

/// The consumer side of one core's inbox. Owned by that core's thread.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Frame>,
    shared: Arc<Shared>,
}

/// The network thread's side of one inbox.
#[derive(Debug, Clone)]
pub(crate) struct InboxSender {
    tx: Sender<Frame>,
    shared: Arc<Shared>,
}

/// Creates an inbox of `capacity` frames.
pub(crate) fn inbox(capacity: usize) -> std::io::Result<(InboxSender, Inbox)> {
    assert!(capacity > 0);
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let shared = Arc::new(Shared {
        efd: EventFd::new()?,
        armed: AtomicBool::new(false),
        space: tokio::sync::Notify::new(),
    });
    Ok((
        InboxSender {
            tx,
            shared: shared.clone(),
        },
        Inbox { rx, shared },
    ))
}

impl Inbox {
    /// An eventfd that is readable while frames are waiting. Poll it for `POLLIN` (e.g. an
    /// io_uring `PollAdd` in the core's ring); [`Inbox::drain`] clears it. Owned by the inbox:
    /// do not close it, and do not read it yourself (that could hide waiting frames).
    pub fn fd(&self) -> RawFd {
        self.shared.efd.raw()
    }

    /// Moves up to `max` waiting frames into `out` (in arrival order per connection) and
    /// returns how many. Clears the eventfd first; if frames remain after `max`, it is left
    /// readable so the core comes back for them.
    pub fn drain(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        // Clear before taking: a push that lands after our last `try_recv` re-arms the fd
        // (see `InboxSender::signal`), so no frame is left behind without a wake-up.
        self.shared.armed.store(false, Ordering::SeqCst);
        self.shared.efd.clear();
        let mut drained = 0;
        while drained < max {
            match self.rx.try_recv() {
                Ok(frame) => {
                    out.push(frame);
                    drained += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if drained == max && !self.rx.is_empty() {
            self.shared.armed.store(true, Ordering::SeqCst);
            self.shared.efd.signal();
        }
        if drained > 0 {
            self.shared.space.notify_waiters();
        }
        drained
    }

    /// Blocks until frames are waiting or `timeout` passes; true if frames are waiting.
    /// For cores (and tests, benchmarks) that do not watch the eventfd with their own ring.
    pub fn wait(&self, timeout: Duration) -> bool {
        if !self.rx.is_empty() {
            return true;
        }
        match self.shared.efd.wait_readable(timeout) {
            Ok(readable) => readable || !self.rx.is_empty(),
            Err(err) => {
                tracing::error!(%err, "poll on an inbox eventfd failed");
                !self.rx.is_empty()
            }
        }
    }

    /// Frames waiting now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no frame is waiting now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The capacity in frames.
    pub fn capacity(&self) -> usize {
        self.rx.capacity().unwrap_or(0)
    }
}

/// The outcome of a push that did not go through.
pub(crate) enum PushError {
    /// The inbox is full; the frame is handed back.
    Full(Frame),
    /// The core dropped its inbox; the frame is dropped.
    Closed,
}

impl InboxSender {
    /// Queues a frame without waiting. Does not signal: call [`InboxSender::signal`] once after
    /// a run of pushes.
    pub(crate) fn try_push(&self, frame: Frame) -> Result<(), PushError> {
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(frame)) => Err(PushError::Full(frame)),
            Err(TrySendError::Disconnected(_)) => Err(PushError::Closed),
        }
    }

    /// Makes the eventfd readable unless it already is.
    pub(crate) fn signal(&self) {
        if !self.shared.armed.swap(true, Ordering::SeqCst) {
            self.shared.efd.signal();
        }
    }

    /// Waits until the core has drained some frames (or `is_full` turns false meanwhile).
    pub(crate) async fn space(&self) {
        let notified = self.shared.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.tx.is_full() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(group: u32) -> Frame {
        Frame {
            kind: 1,
            group,
            from: 2,
            body: Bytes::new(),
        }
    }

    #[test]
    fn drain_respects_max_and_keeps_fd_readable_for_the_rest() {
        let (tx, mut rx) = inbox(8).unwrap();
        for group in 0..5 {
            assert!(tx.try_push(frame(group)).is_ok());
        }
        tx.signal();
        assert!(rx.wait(Duration::ZERO));
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 3), 3);
        assert!(rx.shared.efd.wait_readable(Duration::ZERO).unwrap());
        assert_eq!(rx.drain(&mut out, 10), 2);
        assert!(!rx.shared.efd.wait_readable(Duration::ZERO).unwrap());
        let groups: Vec<u32> = out.iter().map(|f| f.group).collect();
        assert_eq!(groups, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn full_inbox_hands_the_frame_back() {
        let (tx, _rx) = inbox(1).unwrap();
        assert!(tx.try_push(frame(1)).is_ok());
        assert!(matches!(tx.try_push(frame(2)), Err(PushError::Full(f)) if f.group == 2));
    }
}
