//! An eventfd doorbell: how a producer wakes a consumer that waits in an async runtime.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::{eventfd, EventfdFlags};

/// A non-blocking eventfd. Ringing adds one to its counter; draining reads it back to zero.
/// The fd is what a tokio task awaits (through `AsyncFd`) and what is passed to the peer.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::sys::Doorbell;
///
/// let bell = Doorbell::new()?;
/// let other = bell.try_clone()?; // same eventfd, e.g. for the peer
/// assert!(!bell.drain()?); // nothing rung yet; never blocks
/// other.ring();
/// other.ring();
/// assert!(bell.drain()?); // both rings read at once
/// assert!(!bell.drain()?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// Creates a new doorbell (`eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`).
    ///
    /// # Errors
    /// The OS error of `eventfd(2)`, e.g. when the process is out of file descriptors.
    pub fn new() -> io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Wraps an eventfd received from a peer. The fd is made non-blocking here, since a
    /// peer could have passed a blocking one and a blocking read would hang a runtime thread.
    ///
    /// # Errors
    /// The OS error of `fcntl(2)`.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self { fd })
    }

    /// A second handle to the same eventfd (`dup`), e.g. for the peer's side of a pair.
    ///
    /// # Errors
    /// The OS error of `fcntl(F_DUPFD_CLOEXEC)`.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// Rings the bell. Never blocks: a full counter (2^64 - 2 unread rings) already means
    /// "wake up", so `EAGAIN` is success.
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Reads and clears the counter. Returns `Ok(false)` if it was already zero.
    ///
    /// # Errors
    /// `WouldBlock` is mapped to `Ok(false)`; any other OS error is returned.
    pub fn drain(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Registers the doorbell with the current tokio runtime's reactor (read interest), so
    /// a task can await it.
    ///
    /// # Errors
    /// `Other` if called outside a tokio runtime; the OS error of `epoll_ctl` otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmrpc::lowlevel::sys::Doorbell;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let bell = Doorbell::new()?;
    /// let ringer = bell.try_clone()?;
    /// let bell = bell.into_async()?;
    /// std::thread::spawn(move || ringer.ring());
    /// // Watchdog: a lost ring fails instead of hanging.
    /// let mut guard = tokio::time::timeout(Duration::from_secs(10), bell.readable())
    ///     .await
    ///     .expect("the bell rang")?;
    /// assert!(bell.get_ref().drain()?);
    /// guard.clear_ready();
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Doorbell>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("not inside a tokio runtime"));
        }
        // SAFETY: `Doorbell` owns its fd (an `OwnedFd` that is never replaced), so the fd is
        // valid, open and the same for the whole life of the `AsyncFd`, and `as_raw_fd`
        // always returns it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
    }

    /// Gives up the fd (for passing it to a peer).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Registers an owned file descriptor with the current tokio runtime's reactor, for read
/// readiness (which includes the peer's hang-up on a socket).
///
/// # Errors
/// `Other` outside a tokio runtime; the OS error of `epoll_ctl` otherwise.
pub fn register_owned(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("not inside a tokio runtime"));
    }
    // SAFETY: an `OwnedFd` owns its descriptor and never changes it, so the fd stays valid,
    // open and the same for the whole life of the `AsyncFd`, as `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
