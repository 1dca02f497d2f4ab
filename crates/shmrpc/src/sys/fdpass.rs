//! Passing file descriptors over a Unix socket (`SCM_RIGHTS`), and the peer's credentials.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// Sends `bytes` with `fds` attached, in one message. Blocks until sent.
///
/// # Errors
/// The OS error of `sendmsg`; `InvalidInput` for more than [`MAX_FDS`] fds; `WriteZero`
/// if the message was cut short.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fds do not fit",
        ));
    }
    let n = loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives one message into `buf` and up to [`MAX_FDS`] attached fds. Blocks.
///
/// Returns the number of bytes received and the fds. A peer that attaches more fds than
/// fit, or sends a truncated message, gets an error (the surplus fds are closed by the
/// kernel or by dropping them here), so it can never make us leak descriptors.
///
/// # Errors
/// The OS error of `recvmsg`; `InvalidData` if the message or its fds were truncated.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handshake message or its descriptors were truncated",
        ));
    }
    Ok((msg.bytes, fds))
}

/// The pid and uid of the process at the other end of a connected Unix socket, as recorded
/// by the kernel when it connected (`SO_PEERCRED`): unforgeable by the peer.
///
/// # Errors
/// The OS error of `getsockopt`.
pub fn peer_credentials(sock: impl AsFd) -> io::Result<(u32, u32)> {
    let c = rustix::net::sockopt::socket_peercred(sock)?;
    Ok((c.pid.as_raw_nonzero().get() as u32, c.uid.as_raw()))
}
