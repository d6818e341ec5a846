//! The WAL's I/O backends: an io_uring ring (batch writes, linked fdatasync, fd polls and the
//! wake-up timeout, all on one ring) and the blocking fallback (pwrite + fdatasync / RWF_DSYNC,
//! poll(2)).
//!
//! Owns: every `unsafe` block that hands a buffer to the kernel. Must never decide what to
//! write or when; the log (`wal`) owns the buffers and keeps each one untouched until the
//! completion of the write that uses it has been reaped.
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

/// Submission queue entries of the ring.
pub(crate) const RING_ENTRIES: u32 = 64;
/// The most fds one `wait` may watch (each needs an entry besides the write, sync and timeout).
pub const WAIT_FDS_MAX: usize = 32;
const _: () = assert!(WAIT_FDS_MAX + 4 <= RING_ENTRIES as usize);

const TAG_SHIFT: u32 = 56;
const TAG_WRITE: u64 = 1;
const TAG_SYNC: u64 = 2;
const TAG_POLL: u64 = 3;
const TAG_TIMEOUT: u64 = 4;
const TAG_TIMEOUT_REMOVE: u64 = 5;

/// A reaped completion, decoded from its user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The batch write with this sequence number finished with this result (bytes or -errno).
    Write(u64, i32),
    /// The fdatasync linked to the batch write with this sequence number finished with this
    /// result.
    Sync(u64, i32),
    /// A watched fd became ready (or the poll failed).
    Poll(RawFd, i32),
    /// A wake-up timeout of this generation fired (or was cancelled).
    Timeout(u64, i32),
    /// Bookkeeping (timeout removal); ignored.
    Other,
}

fn user_data(tag: u64, value: u64) -> u64 {
    (tag << TAG_SHIFT) | (value & ((1 << TAG_SHIFT) - 1))
}

fn decode(data: u64, result: i32) -> Completion {
    let value = data & ((1 << TAG_SHIFT) - 1);
    match data >> TAG_SHIFT {
        TAG_WRITE => Completion::Write(value, result),
        TAG_SYNC => Completion::Sync(value, result),
        TAG_POLL => Completion::Poll(value as u32 as RawFd, result),
        TAG_TIMEOUT => Completion::Timeout(value, result),
        _ => Completion::Other,
    }
}

/// True when an `io_uring_setup` error means "io_uring is not available here" (disabled by
/// `kernel.io_uring_disabled`, seccomp, or an old kernel), as opposed to a resource error.
pub(crate) fn means_unavailable(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES)
    )
}

/// One io_uring ring carrying a WAL's writes and its core's wake-ups.
pub(crate) struct Ring {
    ring: IoUring,
    /// The timespec of the armed timeout; boxed so its address is stable while the kernel may
    /// read it (it is read at submission).
    timespec: Box<types::Timespec>,
    timeout_generation: u64,
    timeout_armed: Option<u64>,
    polls_armed: Vec<RawFd>,
}

impl Ring {
    pub(crate) fn new() -> io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(RING_ENTRIES)?,
            timespec: Box::new(types::Timespec::new()),
            timeout_generation: 0,
            timeout_armed: None,
            polls_armed: Vec::new(),
        })
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed here either references no memory (poll, fsync, timeout
            // removal), the boxed timespec owned by `self` (timeout; the kernel copies it at
            // submission), or a write buffer whose owner (`Wal`) guarantees it stays mapped and
            // unmodified until the write's completion is reaped (see `push_write`).
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Queue full: hand what is queued to the kernel, then retry.
            self.ring.submit()?;
        }
    }

    /// Queues one write of `len` bytes from `buffer` at `offset` of `fd`: with RWF_DSYNC when
    /// `dsync`, else linked to an fdatasync. Its completions carry `seq` (several writes may be
    /// in flight). Does not submit.
    ///
    /// # Safety
    /// `buffer..buffer + len` must stay valid and unmodified until the write's completion (and,
    /// when linked, the sync's) has been reaped by `reap`.
    pub(crate) unsafe fn push_write(
        &mut self,
        fd: RawFd,
        buffer: *const u8,
        len: u32,
        offset: u64,
        dsync: bool,
        seq: u64,
    ) -> io::Result<()> {
        let write = opcode::Write::new(types::Fd(fd), buffer, len)
            .offset(offset)
            .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
            .build()
            .user_data(user_data(TAG_WRITE, seq));
        if dsync {
            return self.push(&write);
        }
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(user_data(TAG_SYNC, seq));
        // Both entries must land in the same submission for the link to hold.
        let free = {
            let queue = self.ring.submission();
            queue.capacity() - queue.len()
        };
        if free < 2 {
            self.ring.submit()?;
        }
        self.push(&write.flags(squeue::Flags::IO_LINK))?;
        self.push(&sync)
    }

    /// Arms a one-shot POLLIN watch on every fd of `fds` not already armed.
    pub(crate) fn arm_polls(&mut self, fds: &[RawFd]) -> io::Result<()> {
        for &fd in fds {
            if self.polls_armed.contains(&fd) {
                continue;
            }
            let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(user_data(TAG_POLL, fd as u32 as u64));
            self.push(&entry)?;
            self.polls_armed.push(fd);
        }
        Ok(())
    }

    /// Replaces any armed wake-up timeout with one of `after`; returns its generation.
    pub(crate) fn arm_timeout(&mut self, after: Duration) -> io::Result<u64> {
        self.cancel_timeout()?;
        self.timeout_generation += 1;
        *self.timespec = types::Timespec::from(after);
        let entry = opcode::Timeout::new(&*self.timespec as *const types::Timespec)
            .build()
            .user_data(user_data(TAG_TIMEOUT, self.timeout_generation));
        self.push(&entry)?;
        // The kernel reads the timespec at submission: submit now, while it is what we set.
        self.ring.submit()?;
        self.timeout_armed = Some(self.timeout_generation);
        Ok(self.timeout_generation)
    }

    /// Removes the armed timeout, if any (its cancelled completion is ignored later).
    pub(crate) fn cancel_timeout(&mut self) -> io::Result<()> {
        if let Some(generation) = self.timeout_armed.take() {
            let entry = opcode::TimeoutRemove::new(user_data(TAG_TIMEOUT, generation))
                .build()
                .user_data(user_data(TAG_TIMEOUT_REMOVE, 0));
            self.push(&entry)?;
        }
        Ok(())
    }

    /// Submits queued entries without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// Submits queued entries and sleeps in one `io_uring_enter` until a completion arrives.
    pub(crate) fn submit_and_wait_one(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Moves every available completion into `out`, updating the armed polls and timeout.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        for entry in self.ring.completion() {
            let completion = decode(entry.user_data(), entry.result());
            match completion {
                Completion::Poll(fd, _) => self.polls_armed.retain(|&armed| armed != fd),
                Completion::Timeout(generation, _) if self.timeout_armed == Some(generation) => {
                    self.timeout_armed = None;
                }
                _ => {}
            }
            out.push(completion);
        }
    }
}

/// Blocking durable write: RWF_DSYNC `pwritev2` when `dsync`, else `pwrite` then `fdatasync`.
/// Returns the number of durable operations (always 1) or the error.
pub(crate) fn blocking_durable_write(
    fd: RawFd,
    bytes: &[u8],
    offset: u64,
    dsync: bool,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        // SAFETY: `iov` points into `bytes`, borrowed for this synchronous call only; the kernel
        // keeps no reference after it returns.
        let written =
            unsafe { libc::pwritev2(fd, &iov, 1, (offset + done as u64) as libc::off_t, flags) };
        if written < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += written as usize;
    }
    if !dsync {
        // SAFETY: plain system call on a descriptor the caller keeps open.
        if unsafe { libc::fdatasync(fd) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// poll(2) for POLLIN on `fds`, up to `timeout` (None = forever). Returns the ready fds.
pub(crate) fn blocking_poll(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<RawFd>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = match timeout {
        None => -1,
        Some(after) => after.as_millis().min(i32::MAX as u128) as i32,
    };
    // SAFETY: `polls` is a live, correctly sized array for this synchronous call.
    let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(error);
    }
    Ok(polls
        .iter()
        .filter(|p| p.revents != 0)
        .map(|p| p.fd)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_that_mean_unavailable() {
        for errno in [libc::EPERM, libc::ENOSYS, libc::EACCES] {
            assert!(means_unavailable(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOMEM, libc::EMFILE, libc::EINVAL] {
            assert!(!means_unavailable(&io::Error::from_raw_os_error(errno)));
        }
    }

    #[test]
    fn user_data_round_trips() {
        assert_eq!(
            decode(user_data(TAG_WRITE, 3), 4096),
            Completion::Write(3, 4096)
        );
        assert_eq!(decode(user_data(TAG_SYNC, 7), -5), Completion::Sync(7, -5));
        assert_eq!(decode(user_data(TAG_POLL, 17), 1), Completion::Poll(17, 1));
        assert_eq!(
            decode(user_data(TAG_TIMEOUT, 9), -62),
            Completion::Timeout(9, -62)
        );
        assert_eq!(
            decode(user_data(TAG_TIMEOUT_REMOVE, 0), 0),
            Completion::Other
        );
    }
}
