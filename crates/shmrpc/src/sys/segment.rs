//! Shared-memory segments: named (`/dev/shm`) and anonymous (sealed memfd).
//!
//! # The creation protocol
//!
//! A segment is a file that several processes map. The failed first attempt at this system
//! re-ran `ftruncate` and rewrote the header whenever a segment was opened, wiping live
//! data. Here creation and opening are different operations that cannot be confused:
//!
//! 1. [`Segment::create`] opens the file with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600,
//!    so exactly one process creates a name, and a pre-planted symlink is refused. Only the
//!    creator calls `ftruncate`, once. It maps the file, writes the header and runs the
//!    caller's initialiser, and only then publishes `state = READY` with a Release store.
//! 2. [`Segment::open`] never truncates or writes the header. It checks the file's owner
//!    and size, maps it, waits (bounded) for `READY` with an Acquire load that pairs with
//!    the creator's Release store, then validates magic, layout version and recorded size.
//! 3. [`Segment::open_or_create`] tries (1), and on `EEXIST` does (2).
//!
//! # Ownership and unlinking
//!
//! The process that created a named segment owns it: dropping the creator's `Segment`
//! unlinks the name (unless [`Segment::persist`] was called), after checking that the name
//! still refers to *our* file. Openers never unlink. The owner's pid and start time are
//! recorded in the header; a segment whose owner is dead is [`SegmentStatus::Stale`] and is
//! removed only when asked ([`Segment::reclaim_stale`]). Anonymous segments have no name at
//! all: the kernel frees them when the last mapping and fd are gone, so nothing can leak.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use thiserror::Error;

use super::names::{self, NameError};
use super::proc::ProcessId;

/// Bytes at the start of every segment taken by its header; the payload follows.
pub const SEGMENT_HEADER_SIZE: usize = 256;
/// "SHMRPCSG", little-endian.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SHMRPCSG");
/// Bumped whenever `SegmentHeader`'s layout or meaning changes.
pub const SEGMENT_LAYOUT_VERSION: u32 = 1;
/// Largest payload accepted (1 TiB): a sanity bound on sizes read from the peer.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 40;
/// Default bound on how long [`Segment::open`] waits for a creator to finish.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(2);
/// A segment still initialising after this long, with no live owner recorded, is stale.
const ABANDONED_AFTER: Duration = Duration::from_secs(5);

const STATE_READY: u32 = 0x5245_4459; // "REDY"

/// Number of caller-defined parameter words in the header (e.g. ring capacities).
pub const SEGMENT_PARAMS: usize = 8;

/// The header at offset 0 of every segment. All fields are atomics because other
/// processes read them concurrently; they are written before `state` is published and
/// never changed afterwards.
#[repr(C)]
struct SegmentHeader {
    magic: AtomicU64,
    layout_version: AtomicU32,
    /// `0` while initialising, [`STATE_READY`] once the creator is done (Release).
    state: AtomicU32,
    /// Total file size, header included.
    size: AtomicU64,
    owner_pid: AtomicU32,
    owner_uid: AtomicU32,
    owner_start: AtomicU64,
    /// What the payload holds, chosen by the layer above (e.g. a duplex channel).
    kind: AtomicU32,
    _pad: AtomicU32,
    params: [AtomicU64; SEGMENT_PARAMS],
    _reserved: [u8; 144],
}

const _: () = {
    assert!(std::mem::size_of::<SegmentHeader>() == SEGMENT_HEADER_SIZE);
    assert!(std::mem::offset_of!(SegmentHeader, state) == 12);
    assert!(std::mem::offset_of!(SegmentHeader, size) == 16);
    assert!(std::mem::offset_of!(SegmentHeader, owner_pid) == 24);
    assert!(std::mem::offset_of!(SegmentHeader, owner_start) == 32);
    assert!(std::mem::offset_of!(SegmentHeader, kind) == 40);
    assert!(std::mem::offset_of!(SegmentHeader, params) == 48);
};

/// Errors of [`Segment::create`] and [`Segment::anonymous`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The name is not acceptable.
    #[error("invalid segment name")]
    InvalidName(#[from] NameError),
    /// A segment of that name exists already. It is never wiped; open it instead.
    #[error("segment {0} already exists")]
    AlreadyExists(PathBuf),
    /// The requested payload size is zero or above [`MAX_SEGMENT_SIZE`].
    #[error("segment size {0} is outside 1..={MAX_SEGMENT_SIZE}")]
    InvalidSize(u64),
    /// The caller's initialiser refused.
    #[error("initialising the segment failed: {0}")]
    Init(String),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Errors of [`Segment::open`] and [`Segment::from_fd`]. Each names what differs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The name is not acceptable.
    #[error("invalid segment name")]
    InvalidName(#[from] NameError),
    /// No segment of that name.
    #[error("segment {0} does not exist")]
    NotFound(PathBuf),
    /// The file is a symlink or not a regular file.
    #[error("segment file is not a regular file")]
    NotRegular,
    /// The file belongs to another user.
    #[error("segment is owned by uid {found}, expected uid {expected}")]
    WrongOwner {
        /// Owner found.
        found: u32,
        /// Our uid.
        expected: u32,
    },
    /// Group or others may access the file.
    #[error("segment mode is {0:o}; group and others must have no access")]
    WrongMode(u32),
    /// The creator did not finish in time (or died while initialising).
    #[error("segment was not ready after waiting {0:?}")]
    NotReady(Duration),
    /// The magic number is not ours: not a shmrpc segment.
    #[error("bad magic {found:#018x}, expected {expected:#018x}: not a shmrpc segment")]
    BadMagic {
        /// Magic found.
        found: u64,
        /// Magic expected.
        expected: u64,
    },
    /// Written by an incompatible version of this library.
    #[error("segment layout version {found}, this library speaks {expected}")]
    VersionMismatch {
        /// Version found.
        found: u32,
        /// Version expected.
        expected: u32,
    },
    /// The size recorded in the header differs from the file's size.
    #[error("header records size {header} but the file has {file} bytes")]
    SizeMismatch {
        /// Recorded size.
        header: u64,
        /// Actual size.
        file: u64,
    },
    /// The file is smaller than a header or larger than [`MAX_SEGMENT_SIZE`].
    #[error("segment file size {0} is out of range")]
    BadSize(u64),
    /// An anonymous segment received from a peer is not sealed against shrinking, so the
    /// peer could truncate it under us (SIGBUS on access).
    #[error("anonymous segment is not sealed against shrinking (seals {0:?})")]
    NotSealed(SealFlags),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Errors of [`Segment::open_or_create`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenOrCreateError {
    /// Creating failed for a reason other than "exists".
    #[error(transparent)]
    Create(#[from] CreateError),
    /// It existed, and opening it failed.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Errors of [`Segment::status`] and [`Segment::reclaim_stale`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The name is not acceptable.
    #[error("invalid segment name")]
    InvalidName(#[from] NameError),
    /// No segment of that name.
    #[error("segment {0} does not exist")]
    NotFound(PathBuf),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What a named segment's header says about its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentStatus {
    /// Initialised, owner alive.
    Live(ProcessId),
    /// The owner is dead (or the segment was abandoned mid-creation).
    Stale(Option<ProcessId>),
    /// Being created right now.
    Initialising,
}

/// A mapping of a whole segment file. Unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize) -> Result<Self, rustix::io::Errno> {
        // SAFETY: we ask the kernel for a fresh mapping at an address of its choosing
        // (null hint, no MAP_FIXED), so no existing memory is replaced. The mapping is
        // owned by the returned `Mapping`, which unmaps exactly this range on drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(rustix::io::Errno::NOMEM)?;
        Ok(Self { ptr, len })
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: every mapping is at least SEGMENT_HEADER_SIZE bytes (checked before
        // mapping), page-aligned (so aligned for the header's 8-byte atomics), and lives as
        // long as `self`. The header is all atomics, so shared access from other processes
        // is not a data race.
        unsafe { self.ptr.cast::<SegmentHeader>().as_ref() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; every reference into the
        // mapping borrows the `Segment` owning this `Mapping`, so none outlives it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A mapped shared-memory segment.
///
/// See the [module documentation](self) for the creation protocol and ownership rules.
///
/// # Example
///
/// ```
/// use shmrpc::lowlevel::sys::Segment;
/// let name = format!("doc-example-{}", std::process::id());
/// let seg = Segment::create(&name, 4096)?;
/// // SAFETY: no ring lives in this segment; these 8 bytes are only accessed atomically.
/// let word = unsafe { seg.atomic_u64(0) }.unwrap();
/// word.store(42, std::sync::atomic::Ordering::Release);
/// let (again, created) = Segment::open_or_create(&name, 4096)?;
/// assert!(!created); // opened, not wiped
/// // SAFETY: as above.
/// let word = unsafe { again.atomic_u64(0) }.unwrap();
/// assert_eq!(word.load(std::sync::atomic::Ordering::Acquire), 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Segment {
    map: Mapping,
    fd: OwnedFd,
    /// Set for named segments.
    path: Option<PathBuf>,
    /// The creator unlinks the name on drop.
    unlink_on_drop: bool,
}

// SAFETY: a `Segment` is a mapping plus an fd; all access to the shared bytes goes through
// atomics or through the ring layer's protocol, which is designed for concurrent access
// from other processes, and therefore also from other threads.
unsafe impl Send for Segment {}
// SAFETY: as above; safe methods of `&Segment` only reach the header's atomics; raw access
// to the payload is `unsafe` (its callers exclude concurrent non-atomic access).
unsafe impl Sync for Segment {}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len())
            .field("owner", &self.owner())
            .finish()
    }
}

/// Whether a file of `size` bytes could be a segment.
fn size_in_range(size: u64) -> bool {
    size >= SEGMENT_HEADER_SIZE as u64 && size <= MAX_SEGMENT_SIZE + SEGMENT_HEADER_SIZE as u64
}

impl Segment {
    /// Creates the named segment `name` with `size` payload bytes. Fails with
    /// [`CreateError::AlreadyExists`] if it exists: an existing segment is never wiped.
    ///
    /// # Errors
    /// See [`CreateError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::{CreateError, Segment};
    ///
    /// let name = format!("doc-create-{}", std::process::id());
    /// let seg = Segment::create(&name, 1 << 16)?;
    /// assert_eq!(seg.len(), 1 << 16);
    /// // A second create of the same name fails instead of wiping the segment.
    /// assert!(matches!(
    ///     Segment::create(&name, 1 << 16),
    ///     Err(CreateError::AlreadyExists(_))
    /// ));
    /// drop(seg); // the creator removes the name
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(name: &str, size: usize) -> Result<Self, CreateError> {
        Self::create_with(name, size, 0, |_| Ok(()))
    }

    /// Like [`create`](Self::create), with a payload `kind` recorded in the header and an
    /// initialiser that runs before the segment is published as ready: whoever opens the
    /// segment sees the initialiser's writes (Release/Acquire on the header's state word).
    ///
    /// # Errors
    /// See [`CreateError`]. If `init` fails, the file is removed again.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::{CreateError, Segment};
    ///
    /// let name = format!("doc-create-with-{}", std::process::id());
    /// let seg = Segment::create_with(&name, 4096, 0xC0FFEE, |s| {
    ///     // SAFETY: nobody else has the segment yet.
    ///     unsafe { s.write_bytes(0, b"ready") }.ok_or("out of bounds")?;
    ///     Ok(())
    /// })?;
    /// // Whoever opens it sees the initialiser's writes and the kind.
    /// let other = Segment::open(&name)?;
    /// let mut buf = [0u8; 5];
    /// // SAFETY: nothing writes these bytes any more.
    /// unsafe { other.read_bytes(0, &mut buf) }.unwrap();
    /// assert_eq!((&buf, other.kind()), (b"ready", 0xC0FFEE));
    /// drop((other, seg));
    ///
    /// // A failing initialiser leaves nothing behind.
    /// let failed = Segment::create_with(&name, 4096, 0, |_| Err("no".into()));
    /// assert!(failed.is_err());
    /// assert!(Segment::open(&name).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_with(
        name: &str,
        size: usize,
        kind: u32,
        init: impl FnOnce(&Segment) -> Result<(), String>,
    ) -> Result<Self, CreateError> {
        let path = names::segment_path(name)?;
        let total = checked_total(size)?;
        let fd = match rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => return Err(CreateError::AlreadyExists(path)),
            Err(e) => {
                return Err(CreateError::Io {
                    op: "open(O_CREAT|O_EXCL)",
                    source: e.into(),
                })
            }
        };
        // From here on a failure must remove the half-made file.
        let result = Self::init_new(fd, total, Some(path.clone()), kind, init);
        if result.is_err() {
            let _ = rustix::fs::unlink(&path);
        }
        result
    }

    /// Creates an anonymous segment (`memfd_create`), sealed so that nobody (including a
    /// peer it is passed to) can shrink or grow it. It has no name: nothing can leak in
    /// `/dev/shm`. Pass [`fd`](Self::fd) to a peer, which maps it with
    /// [`from_fd`](Self::from_fd).
    ///
    /// # Errors
    /// See [`CreateError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let seg = Segment::anonymous(4096, 7, |s| {
    ///     // SAFETY: nobody else has the segment yet.
    ///     unsafe { s.write_bytes(0, b"hello") }.ok_or("out of bounds")?;
    ///     Ok(())
    /// })?;
    /// assert!(seg.path().is_none()); // nothing in /dev/shm
    /// // A peer maps the same memory from a duplicate of the fd.
    /// let peer = Segment::from_fd(seg.fd().try_clone_to_owned()?)?;
    /// let mut buf = [0u8; 5];
    /// // SAFETY: nothing writes these bytes any more; bytes 8..16 are only used atomically.
    /// unsafe {
    ///     peer.read_bytes(0, &mut buf).unwrap();
    ///     peer.atomic_u64(8).unwrap().store(9, Ordering::Release);
    ///     assert_eq!(seg.atomic_u64(8).unwrap().load(Ordering::Acquire), 9);
    /// }
    /// assert_eq!((&buf, peer.kind()), (b"hello", 7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn anonymous(
        size: usize,
        kind: u32,
        init: impl FnOnce(&Segment) -> Result<(), String>,
    ) -> Result<Self, CreateError> {
        let total = checked_total(size)?;
        let fd = rustix::fs::memfd_create(
            "shmrpc",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| CreateError::Io {
            op: "memfd_create",
            source: e.into(),
        })?;
        // Default memfd mode is 0777; narrow it so /proc/<pid>/fd/N is no wider than a
        // named segment.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(|e| CreateError::Io {
            op: "fchmod",
            source: e.into(),
        })?;
        rustix::fs::ftruncate(&fd, total).map_err(|e| CreateError::Io {
            op: "ftruncate",
            source: e.into(),
        })?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| CreateError::Io {
                op: "fcntl(F_ADD_SEALS)",
                source: e.into(),
            })?;
        Self::init_new(fd, total, None, kind, init)
    }

    fn init_new(
        fd: OwnedFd,
        total: u64,
        path: Option<PathBuf>,
        kind: u32,
        init: impl FnOnce(&Segment) -> Result<(), String>,
    ) -> Result<Self, CreateError> {
        if path.is_some() {
            // The one and only ftruncate of a named segment, by its creator.
            rustix::fs::ftruncate(&fd, total).map_err(|e| CreateError::Io {
                op: "ftruncate",
                source: e.into(),
            })?;
        }
        let map = Mapping::new(fd.as_fd(), total as usize).map_err(|e| CreateError::Io {
            op: "mmap",
            source: e.into(),
        })?;
        let me = ProcessId::current();
        let h = map.header();
        // Owner first, so that `status` can tell a dead creator from a slow one.
        h.owner_pid.store(me.pid, Ordering::Relaxed);
        h.owner_start.store(me.start_time, Ordering::Relaxed);
        h.owner_uid.store(names::uid(), Ordering::Relaxed);
        h.magic.store(SEGMENT_MAGIC, Ordering::Relaxed);
        h.layout_version
            .store(SEGMENT_LAYOUT_VERSION, Ordering::Relaxed);
        h.size.store(total, Ordering::Relaxed);
        h.kind.store(kind, Ordering::Relaxed);
        let seg = Segment {
            map,
            fd,
            unlink_on_drop: path.is_some(),
            path,
        };
        init(&seg).map_err(CreateError::Init)?;
        // Publish: pairs with the Acquire load of `state` in `wait_ready`/`validate`, which
        // makes every write above (and the initialiser's) visible to the opener.
        seg.map.header().state.store(STATE_READY, Ordering::Release);
        Ok(seg)
    }

    /// Opens the existing named segment `name`, waiting up to [`DEFAULT_OPEN_WAIT`] for a
    /// creator that is still initialising it. Never truncates or writes the header.
    ///
    /// # Errors
    /// See [`OpenError`]; each mismatch names what differs.
    ///
    /// # Examples
    ///
    /// One side creates, the other opens (here both in one process; usually two) and sees
    /// the same bytes:
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::{OpenError, Segment};
    ///
    /// let name = format!("doc-open-{}", std::process::id());
    /// let creator = Segment::create(&name, 4096)?;
    /// // SAFETY: one thread, no ring in the segment: nothing else accesses these bytes.
    /// unsafe { creator.write_bytes(0, b"hello") }.ok_or("out of bounds")?;
    ///
    /// let opener = Segment::open(&name)?;
    /// let mut buf = [0u8; 5];
    /// // SAFETY: as above.
    /// unsafe { opener.read_bytes(0, &mut buf) }.ok_or("out of bounds")?;
    /// assert_eq!(&buf, b"hello");
    ///
    /// drop(opener);
    /// drop(creator); // unlinks the name: it cannot be opened any more
    /// assert!(matches!(Segment::open(&name), Err(OpenError::NotFound(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::open_timeout(name, DEFAULT_OPEN_WAIT)
    }

    /// [`open`](Self::open) with an explicit bound on the wait for readiness.
    ///
    /// # Errors
    /// See [`OpenError`].
    pub fn open_timeout(name: &str, wait: Duration) -> Result<Self, OpenError> {
        let path = names::segment_path(name)?;
        let fd = open_existing(&path)?;
        let deadline = Instant::now() + wait;
        // The creator may be between O_EXCL and ftruncate: wait for the size to appear.
        let size = loop {
            let size = check_file(&fd, true)?;
            if size > 0 {
                break size;
            }
            if Instant::now() >= deadline {
                return Err(OpenError::NotReady(wait));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if !size_in_range(size) {
            return Err(OpenError::BadSize(size));
        }
        let map = Mapping::new(fd.as_fd(), size as usize).map_err(|e| OpenError::Io {
            op: "mmap",
            source: e.into(),
        })?;
        while map.header().state.load(Ordering::Acquire) != STATE_READY {
            if Instant::now() >= deadline {
                return Err(OpenError::NotReady(wait));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        validate(&map, size)?;
        Ok(Segment {
            map,
            fd,
            path: Some(path),
            unlink_on_drop: false,
        })
    }

    /// Creates the named segment, or opens it if it exists. Returns the segment and whether
    /// this call created it. A live segment is never truncated or re-initialised; `init`
    /// runs only when this call created it.
    ///
    /// # Errors
    /// See [`OpenOrCreateError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let name = format!("doc-ooc-{}", std::process::id());
    /// let (first, created) = Segment::open_or_create(&name, 4096)?;
    /// assert!(created && first.unlinks_on_drop());
    /// let (second, created) = Segment::open_or_create(&name, 4096)?;
    /// assert!(!created && !second.unlinks_on_drop());
    /// drop((second, first)); // the creator removes the name
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create(name: &str, size: usize) -> Result<(Self, bool), OpenOrCreateError> {
        Self::open_or_create_with(name, size, 0, |_| Ok(()))
    }

    /// [`open_or_create`](Self::open_or_create) with a kind and an initialiser (see
    /// [`create_with`](Self::create_with)).
    ///
    /// # Errors
    /// See [`OpenOrCreateError`].
    pub fn open_or_create_with(
        name: &str,
        size: usize,
        kind: u32,
        init: impl FnOnce(&Segment) -> Result<(), String>,
    ) -> Result<(Self, bool), OpenOrCreateError> {
        match Self::create_with(name, size, kind, init) {
            Ok(seg) => Ok((seg, true)),
            Err(CreateError::AlreadyExists(_)) => Ok((Self::open(name)?, false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Maps an anonymous segment received from a peer. It must be sealed against
    /// shrinking, fully initialised, and valid.
    ///
    /// # Errors
    /// See [`OpenError`].
    pub fn from_fd(fd: OwnedFd) -> Result<Self, OpenError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| OpenError::Io {
            op: "fcntl(F_GET_SEALS)",
            source: e.into(),
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(OpenError::NotSealed(seals));
        }
        // An anonymous file is reachable only through its fd, so its mode bits do not matter.
        let size = check_file(&fd, false)?;
        if !size_in_range(size) {
            return Err(OpenError::BadSize(size));
        }
        let map = Mapping::new(fd.as_fd(), size as usize).map_err(|e| OpenError::Io {
            op: "mmap",
            source: e.into(),
        })?;
        if map.header().state.load(Ordering::Acquire) != STATE_READY {
            return Err(OpenError::NotReady(Duration::ZERO));
        }
        validate(&map, size)?;
        Ok(Segment {
            map,
            fd,
            path: None,
            unlink_on_drop: false,
        })
    }

    /// Reports whether the named segment's owner is alive, without waiting.
    ///
    /// # Errors
    /// See [`StatusError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::proc::ProcessId;
    /// use shmrpc::lowlevel::sys::{Segment, SegmentStatus, StatusError};
    ///
    /// let name = format!("doc-status-{}", std::process::id());
    /// assert!(matches!(Segment::status(&name), Err(StatusError::NotFound(_))));
    /// let seg = Segment::create(&name, 4096)?;
    /// assert_eq!(Segment::status(&name)?, SegmentStatus::Live(ProcessId::current()));
    /// drop(seg);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn status(name: &str) -> Result<SegmentStatus, StatusError> {
        let path = names::segment_path(name)?;
        let fd = match open_existing(&path) {
            Ok(fd) => fd,
            Err(OpenError::NotFound(p)) => return Err(StatusError::NotFound(p)),
            Err(e) => {
                return Err(StatusError::Io {
                    op: "open",
                    source: io::Error::other(e.to_string()),
                })
            }
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| StatusError::Io {
            op: "fstat",
            source: e.into(),
        })?;
        let size = st.st_size as u64;
        let age = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if !size_in_range(size) {
            // Not even sized yet: only its age tells a slow creator from a dead one.
            return Ok(if age > ABANDONED_AFTER {
                SegmentStatus::Stale(None)
            } else {
                SegmentStatus::Initialising
            });
        }
        let map = Mapping::new(fd.as_fd(), SEGMENT_HEADER_SIZE).map_err(|e| StatusError::Io {
            op: "mmap",
            source: e.into(),
        })?;
        let h = map.header();
        let ready = h.state.load(Ordering::Acquire) == STATE_READY;
        let owner = ProcessId {
            pid: h.owner_pid.load(Ordering::Relaxed),
            start_time: h.owner_start.load(Ordering::Relaxed),
        };
        Ok(if owner.pid != 0 && owner.is_alive() {
            if ready {
                SegmentStatus::Live(owner)
            } else {
                SegmentStatus::Initialising
            }
        } else if owner.pid == 0 && !ready && age <= ABANDONED_AFTER {
            SegmentStatus::Initialising
        } else {
            SegmentStatus::Stale((owner.pid != 0).then_some(owner))
        })
    }

    /// Removes the named segment if, and only if, it is stale (its owner is dead).
    /// Returns whether it was removed. Processes that still map it keep their mapping.
    ///
    /// # Errors
    /// See [`StatusError`].
    ///
    /// # Examples
    ///
    /// A segment whose owner is alive (here: this process) is left alone:
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let name = format!("doc-reclaim-{}", std::process::id());
    /// let seg = Segment::create(&name, 4096)?;
    /// assert!(!Segment::reclaim_stale(&name)?);
    /// assert!(Segment::open(&name).is_ok());
    /// drop(seg);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim_stale(name: &str) -> Result<bool, StatusError> {
        match Self::status(name)? {
            SegmentStatus::Stale(_) => {
                let path = names::segment_path(name)?;
                match rustix::fs::unlink(&path) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(true),
                    Err(e) => Err(StatusError::Io {
                        op: "unlink",
                        source: e.into(),
                    }),
                }
            }
            _ => Ok(false),
        }
    }

    /// Removes the name `name` unconditionally (existing mappings stay valid).
    ///
    /// # Errors
    /// The OS error of `unlink`, or an invalid name.
    pub fn unlink(name: &str) -> io::Result<()> {
        let path = names::segment_path(name).map_err(io::Error::other)?;
        rustix::fs::unlink(&path).map_err(io::Error::from)
    }

    /// Keeps the name after the creator drops its handle (it must then be removed with
    /// [`unlink`](Self::unlink) or [`reclaim_stale`](Self::reclaim_stale)).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let name = format!("doc-persist-{}", std::process::id());
    /// let mut seg = Segment::create(&name, 4096)?;
    /// seg.persist();
    /// drop(seg);
    /// let still_there = Segment::open(&name).is_ok();
    /// Segment::unlink(&name)?; // clean up before checking
    /// assert!(still_there);
    /// assert!(Segment::open(&name).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn persist(&mut self) {
        self.unlink_on_drop = false;
    }

    /// Whether dropping this handle removes the name (true for the creator).
    pub fn unlinks_on_drop(&self) -> bool {
        self.unlink_on_drop
    }

    /// The segment's file in `/dev/shm`, for a named segment.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file descriptor (for passing an anonymous segment to a peer).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Payload bytes (the header excluded).
    pub fn len(&self) -> usize {
        self.map.len - SEGMENT_HEADER_SIZE
    }

    /// Whether the payload is empty (never, for a valid segment).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The process that created the segment.
    pub fn owner(&self) -> ProcessId {
        let h = self.map.header();
        ProcessId {
            pid: h.owner_pid.load(Ordering::Relaxed),
            start_time: h.owner_start.load(Ordering::Relaxed),
        }
    }

    /// The payload kind recorded by the creator.
    pub fn kind(&self) -> u32 {
        self.map.header().kind.load(Ordering::Relaxed)
    }

    /// Caller-defined parameter word `i` (< [`SEGMENT_PARAMS`]). The creator writes them
    /// in its initialiser; for a segment from a peer they are untrusted input.
    pub fn param(&self, i: usize) -> Option<&AtomicU64> {
        self.map.header().params.get(i)
    }

    /// The atomic `u64` at payload offset `offset`, if in bounds and 8-aligned.
    ///
    /// Raw access to memory that rings lend out as slices: for hand-written layouts
    /// (benchmarks), and for tests and fuzzers playing a hostile peer.
    ///
    /// # Safety
    /// While the returned reference is used, every other access to these 8 bytes from
    /// this process must be atomic: no concurrent [`write_bytes`](Self::write_bytes) or
    /// [`read_bytes`](Self::read_bytes) of them, and no slice over them — a ring attached in
    /// this process lends its payload bytes out as `&mut [u8]` / `&[u8]` (its header and
    /// record-header words are atomics, so pointing at those is fine). Other processes'
    /// accesses are ordered by the caller's protocol.
    pub unsafe fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        let p = self.payload_range(offset, 8, 8)?;
        // SAFETY: `payload_range` checked that [offset, offset+8) lies in the mapping and
        // is 8-aligned; AtomicU64 has the size and alignment of u64; the reference borrows
        // `self`, which keeps the mapping alive; the caller guarantees that nothing in this
        // process accesses the bytes non-atomically meanwhile.
        Some(unsafe { &*p.cast::<AtomicU64>() })
    }

    /// The atomic `u32` at payload offset `offset`, if in bounds and 4-aligned.
    ///
    /// # Safety
    /// As for [`atomic_u64`](Self::atomic_u64), for these 4 bytes.
    pub unsafe fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        let p = self.payload_range(offset, 4, 4)?;
        // SAFETY: as in `atomic_u64`, for a 4-byte, 4-aligned range.
        Some(unsafe { &*p.cast::<AtomicU32>() })
    }

    /// Copies `src` into the payload at `offset`. Returns `None` if out of bounds.
    /// Ordering with other processes is the caller's protocol (e.g. a Release store after).
    ///
    /// # Safety
    /// Nothing else in this process may access these bytes while the copy runs: no other
    /// thread's `write_bytes`, `read_bytes` or atomics on them, and no slice over them (a
    /// ring attached in this process lends its payload bytes out as slices). A concurrent
    /// non-atomic access would be a data race.
    pub unsafe fn write_bytes(&self, offset: usize, src: &[u8]) -> Option<()> {
        let p = self.payload_range(offset, src.len(), 1)?;
        // SAFETY: the destination range is inside the mapping (checked); `src` is a
        // separate Rust allocation, so the ranges do not overlap; the caller guarantees
        // that nothing else in this process accesses the destination meanwhile. Another
        // process can at worst make the bytes garbage, never move the copy out of bounds.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Some(())
    }

    /// Copies payload bytes at `offset` into `dst`. Returns `None` if out of bounds.
    ///
    /// # Safety
    /// Nothing in this process may write these bytes while the copy runs: no other
    /// thread's `write_bytes` or atomic stores to them, and no `&mut [u8]` over them (a
    /// ring producer's write grant).
    pub unsafe fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let p = self.payload_range(offset, dst.len(), 1)?;
        // SAFETY: the source range is inside the mapping (checked) and `dst` is a separate
        // exclusive borrow; the caller guarantees no concurrent writer in this process; the
        // copy reads bytes, valid for any value.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Some(())
    }

    /// Pointer to payload byte `offset` if `[offset, offset + len)` is in bounds and
    /// `offset` is a multiple of `align`.
    fn payload_range(&self, offset: usize, len: usize, align: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len() || offset % align != 0 {
            return None;
        }
        // SAFETY: SEGMENT_HEADER_SIZE + offset <= map.len (checked above), so the result
        // stays inside the mapping.
        Some(unsafe { self.map.ptr.as_ptr().add(SEGMENT_HEADER_SIZE + offset) })
    }

    /// The segment file's (device, inode): the same for every mapping of one file, so the
    /// ring layer can tell two mappings of the same memory apart from two segments.
    pub(crate) fn file_id(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok((st.st_dev as u64, st.st_ino as u64))
    }

    /// Raw pointer to the payload and its length, for the ring layer.
    pub(crate) fn payload_raw(&self) -> (NonNull<u8>, usize) {
        // SAFETY: the mapping is at least SEGMENT_HEADER_SIZE bytes long.
        let p = unsafe { self.map.ptr.add(SEGMENT_HEADER_SIZE) };
        (p, self.len())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let Some(path) = self.path.as_ref().filter(|_| self.unlink_on_drop) else {
            return;
        };
        // Only unlink if the name still refers to our file: someone may have reclaimed and
        // re-created it, and their segment is not ours to remove.
        let ours = rustix::fs::fstat(&self.fd).ok();
        let named = std::fs::symlink_metadata(path).ok();
        if let (Some(a), Some(b)) = (ours, named) {
            if a.st_dev == b.dev() && a.st_ino == b.ino() {
                let _ = rustix::fs::unlink(path);
            }
        }
    }
}

fn checked_total(size: usize) -> Result<u64, CreateError> {
    let size64 = size as u64;
    if size == 0 || size64 > MAX_SEGMENT_SIZE {
        return Err(CreateError::InvalidSize(size64));
    }
    Ok(size64 + SEGMENT_HEADER_SIZE as u64)
}

fn open_existing(path: &Path) -> Result<OwnedFd, OpenError> {
    match rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOENT) => Err(OpenError::NotFound(path.to_owned())),
        // O_NOFOLLOW on a symlink.
        Err(rustix::io::Errno::LOOP) => Err(OpenError::NotRegular),
        Err(e) => Err(OpenError::Io {
            op: "open",
            source: e.into(),
        }),
    }
}

/// Checks type, owner and (for named files) mode; returns the size.
fn check_file(fd: &OwnedFd, check_mode: bool) -> Result<u64, OpenError> {
    let st = rustix::fs::fstat(fd).map_err(|e| OpenError::Io {
        op: "fstat",
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(OpenError::NotRegular);
    }
    let uid = names::uid();
    if st.st_uid != uid {
        return Err(OpenError::WrongOwner {
            found: st.st_uid,
            expected: uid,
        });
    }
    if check_mode && st.st_mode & 0o077 != 0 {
        return Err(OpenError::WrongMode(st.st_mode & 0o777));
    }
    Ok(st.st_size as u64)
}

/// Validates a READY header (after the Acquire load of `state`) against the file size.
fn validate(map: &Mapping, file_size: u64) -> Result<(), OpenError> {
    let h = map.header();
    let magic = h.magic.load(Ordering::Relaxed);
    if magic != SEGMENT_MAGIC {
        return Err(OpenError::BadMagic {
            found: magic,
            expected: SEGMENT_MAGIC,
        });
    }
    let version = h.layout_version.load(Ordering::Relaxed);
    if version != SEGMENT_LAYOUT_VERSION {
        return Err(OpenError::VersionMismatch {
            found: version,
            expected: SEGMENT_LAYOUT_VERSION,
        });
    }
    let size = h.size.load(Ordering::Relaxed);
    if size != file_size {
        return Err(OpenError::SizeMismatch {
            header: size,
            file: file_size,
        });
    }
    Ok(())
}

/// Test support: overwrite header fields of a named segment to provoke open errors.
/// Only with the `testing` feature, which test crates enable.
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;

    /// Which header field to damage.
    #[derive(Debug, Clone, Copy)]
    pub enum Damage {
        /// Write another magic.
        Magic(u64),
        /// Write another layout version.
        Version(u32),
        /// Record another size.
        Size(u64),
    }

    /// Damages the header of `seg` in place.
    pub fn damage(seg: &Segment, what: Damage) {
        let h = seg.map.header();
        match what {
            Damage::Magic(m) => h.magic.store(m, Ordering::Release),
            Damage::Version(v) => h.layout_version.store(v, Ordering::Release),
            Damage::Size(s) => h.size.store(s, Ordering::Release),
        }
    }
}
