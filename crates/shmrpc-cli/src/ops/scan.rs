//! What `ls` and `cleanup` look at: the servers in this user's runtime directory (a
//! `NAME.sock` and the `NAME.lock` its server holds with `flock`) and the named segments
//! `/dev/shm/shmrpc.<uid>.NAME`.
//!
//! Looking never disturbs a live server: whether a lock is held, and by which process, is
//! read from `/proc/locks` rather than by taking the lock (a probe lock held for even a
//! moment would make a server starting at that moment fail with "address in use"). Only
//! when `/proc/locks` cannot be read does it fall back to such a probe.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use shmrpc::lowlevel::sys::{names, Segment, SegmentStatus};

/// A server name found in the runtime directory.
#[derive(Debug)]
pub struct ServerEntry {
    pub name: String,
    /// `NAME.sock`, if present.
    pub socket: Option<PathBuf>,
    /// Whether `socket` is really a socket (anything else there is left alone).
    pub socket_is_socket: bool,
    /// `NAME.lock`, if present.
    pub lock: Option<PathBuf>,
    pub holder: Holder,
}

/// Who holds a server's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A live process holds it (its pid, when `/proc/locks` names it).
    Held(Option<u32>),
    /// Nobody: the server that made these files is gone.
    Free,
}

impl ServerEntry {
    pub fn alive(&self) -> bool {
        matches!(self.holder, Holder::Held(_))
    }

    pub fn pid(&self) -> Option<u32> {
        match self.holder {
            Holder::Held(pid) => pid,
            Holder::Free => None,
        }
    }

    /// The path to show: the socket, or the lock when there is no socket.
    pub fn path(&self) -> Option<&Path> {
        self.socket.as_deref().or(self.lock.as_deref())
    }

    /// The files this entry consists of.
    pub fn files(&self) -> Vec<&Path> {
        self.socket
            .iter()
            .chain(&self.lock)
            .map(|p| p.as_path())
            .collect()
    }
}

/// A named segment found in `/dev/shm`.
#[derive(Debug)]
pub struct SegmentEntry {
    pub name: String,
    pub path: PathBuf,
    /// File size (header included).
    pub size: Option<u64>,
    /// What its header says, or why it could not be read.
    pub status: Result<SegmentStatus, String>,
}

impl SegmentEntry {
    pub fn state(&self) -> &'static str {
        match &self.status {
            Ok(SegmentStatus::Live(_)) => "alive",
            Ok(SegmentStatus::Stale(_)) => "stale",
            Ok(SegmentStatus::Initialising) => "initialising",
            Ok(_) | Err(_) => "unknown",
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.status {
            Ok(SegmentStatus::Live(p)) | Ok(SegmentStatus::Stale(Some(p))) => Some(p.pid),
            _ => None,
        }
    }
}

/// The runtime directory's server entries whose name starts with `prefix`, by name.
pub fn servers(dir: &Path, prefix: &str) -> std::io::Result<Vec<ServerEntry>> {
    let mut by_name: BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Ok(file) = e.file_name().into_string() else {
            continue;
        };
        let (name, is_sock) = if let Some(n) = file.strip_suffix(".sock") {
            (n, true)
        } else if let Some(n) = file.strip_suffix(".lock") {
            (n, false)
        } else {
            continue;
        };
        if !name.starts_with(prefix) || names::validate(name).is_err() {
            continue;
        }
        let slot = by_name.entry(name.to_owned()).or_default();
        if is_sock {
            slot.0 = Some(e.path());
        } else {
            slot.1 = Some(e.path());
        }
    }
    let locks = ProcLocks::read();
    Ok(by_name
        .into_iter()
        .map(|(name, (socket, lock))| {
            let socket_is_socket = socket.as_deref().is_some_and(|p| {
                std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
            });
            let holder = lock
                .as_deref()
                .map_or(Holder::Free, |l| lock_holder(l, locks.as_ref()));
            ServerEntry {
                name,
                socket,
                socket_is_socket,
                lock,
                holder,
            }
        })
        .collect())
}

/// This user's named segments whose name starts with `prefix`, by name.
pub fn segments(prefix: &str) -> Vec<SegmentEntry> {
    names::list_segments()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .filter_map(|name| {
            let path = names::segment_path(&name).ok()?;
            let size = std::fs::symlink_metadata(&path).ok().map(|m| m.len());
            let status = Segment::status(&name).map_err(|e| error_chain(&e));
            Some(SegmentEntry {
                name,
                path,
                size,
                status,
            })
        })
        .collect()
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The `flock` locks of `/proc/locks`: (device major, minor, inode) -> pid.
pub struct ProcLocks(Vec<(u32, u32, u64, u32)>);

impl ProcLocks {
    /// `None` if `/proc/locks` cannot be read.
    pub fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/locks").ok()?;
        Some(Self(text.lines().filter_map(parse_lock_line).collect()))
    }

    /// Whether a lock is held on (dev, ino), and by whom (pid 0 means another namespace).
    fn holder(&self, dev: u64, ino: u64) -> Option<Option<u32>> {
        let (maj, min) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        self.0
            .iter()
            .find(|&&(a, b, i, _)| (a, b, i) == (maj, min, ino))
            .map(|&(_, _, _, pid)| (pid != 0).then_some(pid))
    }
}

/// `1: FLOCK  ADVISORY  WRITE 31193 fe:00:10584137 0 EOF` -> (0xfe, 0, 10584137, 31193).
/// Lines of waiters (`1: -> FLOCK ...`) and other lock types are skipped.
fn parse_lock_line(line: &str) -> Option<(u32, u32, u64, u32)> {
    let mut f = line.split_ascii_whitespace().skip(1);
    if f.next()? != "FLOCK" {
        return None;
    }
    let pid = f.nth(2)?.parse().ok()?;
    let mut id = f.next()?.split(':');
    let maj = u32::from_str_radix(id.next()?, 16).ok()?;
    let min = u32::from_str_radix(id.next()?, 16).ok()?;
    let ino = id.next()?.parse().ok()?;
    Some((maj, min, ino, pid))
}

/// Whether the lock file at `path` is held. Uses `/proc/locks` when there is one; else
/// takes and at once releases a shared non-blocking `flock` (a probe).
fn lock_holder(path: &Path, locks: Option<&ProcLocks>) -> Holder {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Holder::Free;
    };
    if let Some(locks) = locks {
        return match locks.holder(meta.dev(), meta.ino()) {
            Some(pid) => Holder::Held(pid),
            None => Holder::Free,
        };
    }
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Holder::Free;
    };
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&fd, FlockOperation::Unlock);
            Holder::Free
        }
        Err(_) => Holder::Held(None),
    }
}

/// Resident memory of `pid` (`VmRSS`), if it can be read.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Connected clients of the server listening at `socket`: the connected Unix sockets in
/// `/proc/net/unix` that carry its path (an accepted connection shares its listener's
/// address). Counts connections still in their handshake too.
pub fn clients(socket: &Path) -> Option<usize> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let want = socket.to_str()?;
    // Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
    Some(
        text.lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_ascii_whitespace().collect();
                f.len() >= 8 && f[5] == "03" && f[7] == want
            })
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        assert_eq!(
            parse_lock_line("1: FLOCK  ADVISORY  WRITE 31193 fe:00:10584137 0 EOF"),
            Some((0xfe, 0, 10584137, 31193))
        );
        assert_eq!(
            parse_lock_line("2: POSIX  ADVISORY  WRITE 26296 fe:00:10560182 0 EOF"),
            None
        );
        assert_eq!(
            parse_lock_line("3: -> FLOCK  ADVISORY  WRITE 5 00:1a:7 0 EOF"),
            None
        );
    }
}
