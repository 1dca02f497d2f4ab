//! Per-user names: `/dev/shm/shmrpc.<uid>.<name>` for segments and
//! `$XDG_RUNTIME_DIR/shmrpc/` (or `/tmp/shmrpc-<uid>/`, mode 0700) for sockets.
//!
//! Namespacing by uid keeps users from colliding with (or squatting on) each other's
//! names; the exclusive, no-follow creation in [`crate::sys::segment`] does the rest.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use thiserror::Error;

/// Prefix of every segment file this crate creates in `/dev/shm`.
pub const SEGMENT_PREFIX: &str = "shmrpc.";

/// Where POSIX shared memory objects live on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// The longest user-supplied name accepted.
pub const MAX_NAME_LEN: usize = 200;

/// A user-supplied name was not acceptable.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// Empty, or longer than [`MAX_NAME_LEN`].
    #[error("name length {0} is outside 1..={MAX_NAME_LEN}")]
    BadLength(usize),
    /// Contains a character other than ASCII letters, digits, `.`, `_`, `-`, or starts with `.`.
    #[error("name {0:?} may only contain ASCII letters, digits, '.', '_' and '-', and may not start with '.'")]
    BadChar(String),
}

/// Checks a user-supplied name.
///
/// # Errors
/// [`NameError`] naming what is wrong.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(NameError::BadLength(name.len()));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok || name.starts_with('.') {
        return Err(NameError::BadChar(name.to_owned()));
    }
    Ok(())
}

/// The effective uid of this process.
pub fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The file name in `/dev/shm` of the segment called `name` for this user.
///
/// # Errors
/// [`NameError`] if `name` is not valid.
pub fn segment_file_name(name: &str) -> Result<String, NameError> {
    validate(name)?;
    Ok(format!("{SEGMENT_PREFIX}{}.{name}", uid()))
}

/// Full path of the segment called `name` for this user.
///
/// # Errors
/// [`NameError`] if `name` is not valid.
pub fn segment_path(name: &str) -> Result<PathBuf, NameError> {
    Ok(PathBuf::from(SHM_DIR).join(segment_file_name(name)?))
}

/// The user names (without prefix) of this user's segments in `/dev/shm`.
pub fn list_segments() -> Vec<String> {
    let prefix = format!("{SEGMENT_PREFIX}{}.", uid());
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|f| f.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// This user's runtime directory for shmrpc, created 0700 if missing.
///
/// `$XDG_RUNTIME_DIR/shmrpc` when that variable names an existing directory, else
/// `/tmp/shmrpc-<uid>`. An existing directory must be a real directory (not a symlink),
/// owned by us, and not accessible to others; otherwise someone could be watching or
/// squatting on our sockets.
///
/// # Errors
/// The OS error of creating or inspecting the directory, or `PermissionDenied` naming the
/// unsafe property.
pub fn runtime_dir() -> io::Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if std::path::Path::new(&x).is_dir() => PathBuf::from(x).join("shmrpc"),
        _ => PathBuf::from(format!("/tmp/shmrpc-{}", uid())),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory (a symlink?)", dir.display()),
        ));
    }
    if meta.uid() != uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is owned by uid {}, not us", dir.display(), meta.uid()),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {:o}; it must not be accessible to others",
                dir.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    Ok(dir)
}

/// An exclusive claim on a name in the runtime directory: an `flock`ed lock file. The
/// kernel drops the lock when its holder dies, so a crashed server's name is free again at
/// once, without anyone probing the live server's socket.
#[derive(Debug)]
pub struct NameLock {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl NameLock {
    /// Takes the lock at `path` without blocking. `Ok(None)` if a live process holds it.
    ///
    /// # Errors
    /// The OS error of opening or locking the file.
    pub fn try_lock(path: &std::path::Path) -> io::Result<Option<Self>> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        loop {
            let fd = rustix::fs::open(
                path,
                OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            // The previous holder may have unlinked the file between our open and our lock;
            // then we hold a lock on a file nobody else will ever open. Retry on the new one.
            let ours = rustix::fs::fstat(&fd)?;
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.dev() == ours.st_dev && m.ino() == ours.st_ino => {
                    return Ok(Some(Self {
                        fd,
                        path: path.to_owned(),
                    }))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock (see the re-check in `try_lock`).
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.fd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate("ok-name_1.x").is_ok());
        assert_eq!(validate(""), Err(NameError::BadLength(0)));
        assert!(matches!(validate("a/b"), Err(NameError::BadChar(_))));
        assert!(matches!(validate(".."), Err(NameError::BadChar(_))));
        assert!(matches!(
            validate(&"x".repeat(201)),
            Err(NameError::BadLength(201))
        ));
    }

    #[test]
    fn segment_names_carry_the_uid() {
        let f = segment_file_name("abc").unwrap();
        assert_eq!(f, format!("shmrpc.{}.abc", uid()));
    }
}
