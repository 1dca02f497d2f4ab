//! What another user, or a peer holding our descriptors, cannot do:
//!
//! - open our named segments (created 0600) or reach into our runtime directory (0700);
//! - hijack a segment name by creating the file, or a symlink, before we do: creating,
//!   opening and open-or-create all refuse it, and the squatter's file (or the symlink's
//!   target) is left untouched;
//! - prepare our runtime directory for us (owned by them, a symlink, or open to others):
//!   binding refuses it;
//! - shrink or grow a connection's sealed memfd segment under us.
//!
//! The tests that switch to another user (uid 65534) need root and say "skipped" without it.
#![forbid(unsafe_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig};
use shmrpc::lowlevel::sys::Segment;
use shmrpc_tests::{
    field, segment_file, unique_name, with_watchdog, PeerCommand, PeerProcess, Probe, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().as_raw() == 0
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(word: &str) -> Self {
        let d = std::env::temp_dir().join(unique_name(word));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one `peer perm-probe` and returns its `probe` line. With `as_nobody`, it runs as
/// uid 65534 from a copy of the peer binary (the build tree may be closed to that user).
fn probe(bin_dir: &TempDir, as_nobody: bool, env: Option<(&str, &Path)>, probe: Probe) -> String {
    let exe = bin_dir.0.join("peer");
    if !exe.exists() {
        shmrpc_tests::install_peer_exe(env!("CARGO_BIN_EXE_peer"), &exe);
    }
    let mut cmd = PeerCommand::PermProbe { probe }.command(&exe);
    if as_nobody {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut p = PeerProcess::spawn_command(cmd);
    let line = p.expect("probe", WAIT);
    p.assert_exits_ok(WAIT);
    line
}

#[test]
fn another_user_cannot_open_our_segments_or_enter_our_runtime_directory() {
    if !is_root() {
        println!("skipped: switching to another user needs root");
        return;
    }
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let bin = TempDir::new("perm-bin");
        let name = names.name("perm-open");
        let seg = Segment::create(&name, 4096).expect("create");
        let path = segment_file(&name);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "segment mode");
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        let line = probe(&bin, true, None, Probe::Open { path: path.clone() });
        assert_eq!(field(&line, "result"), Some("err"), "{line}");
        assert!(
            field(&line, "message").is_some_and(|m| m.starts_with("PermissionDenied")),
            "{line}"
        );

        let lname = names.name("perm-sock");
        let listener = channel::Listener::bind(&lname, ChannelConfig::default()).expect("bind");
        let dir = listener.path().parent().unwrap().to_owned();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let sock = listener.path().to_str().unwrap().to_owned();
        let line = probe(&bin, true, None, Probe::Open { path: sock.into() });
        assert!(
            field(&line, "message").is_some_and(|m| m.starts_with("PermissionDenied")),
            "the socket is out of another user's reach: {line}"
        );
        drop(listener);
        drop(seg);
        names.assert_clean_with_locks();
    });
}

/// Asserts that creating, opening and open-or-create of `name` all fail, and returns the
/// three errors as text.
fn all_refuse(name: &str) -> [String; 3] {
    let c = Segment::create(name, 4096).expect_err("create over a squatted name");
    let o = Segment::open_timeout(name, Duration::from_millis(200))
        .expect_err("open of a squatted name");
    let b = Segment::open_or_create(name, 4096).expect_err("open_or_create of a squatted name");
    [c.to_string(), o.to_string(), b.to_string()]
}

#[test]
fn a_segment_name_squatted_by_another_user_is_refused_and_left_alone() {
    if !is_root() {
        println!("skipped: switching to another user needs root");
        return;
    }
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let bin = TempDir::new("perm-bin");

        // A file of theirs where ours would be.
        let name = names.name("perm-squat-file");
        let path = segment_file(&name);
        let line = probe(&bin, true, None, Probe::SquatFile { path: path.clone() });
        assert_eq!(field(&line, "result"), Some("ok"), "{line}");
        let errors = all_refuse(&name);
        println!("squatted file: {errors:?}");
        assert!(errors[0].contains("exists"), "create: {}", errors[0]);
        assert!(
            errors[1].contains("65534") && errors[2].contains("65534"),
            "open and open_or_create name the foreign owner: {errors:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"attacker", "left untouched");
        std::fs::remove_file(&path).unwrap();

        // A symlink of theirs, to a file of ours.
        let name = names.name("perm-squat-link");
        let path = segment_file(&name);
        let target_dir = TempDir::new("perm-target");
        let target = target_dir.0.join("precious");
        std::fs::write(&target, b"victim data").unwrap();
        let line = probe(
            &bin,
            true,
            None,
            Probe::SquatSymlink {
                path: path.clone(),
                target: target.clone(),
            },
        );
        assert_eq!(field(&line, "result"), Some("ok"), "{line}");
        let errors = all_refuse(&name);
        println!("squatted symlink: {errors:?}");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"victim data",
            "target untouched"
        );
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
        std::fs::remove_file(&path).unwrap();
        names.assert_clean_with_locks();
    });
}

#[test]
fn a_runtime_directory_prepared_by_someone_else_is_refused() {
    if !is_root() {
        println!("skipped: giving a directory to another user needs root");
        return;
    }
    with_watchdog(Duration::from_secs(60), || {
        let bin = TempDir::new("perm-bin");
        let name = unique_name("perm-rundir");
        let bind = |xdg: &Path| {
            probe(
                &bin,
                false,
                Some(("XDG_RUNTIME_DIR", xdg)),
                Probe::Bind { name: name.clone() },
            )
        };

        // Owned by another user (who could then replace our sockets).
        let theirs = TempDir::new("perm-xdg-theirs");
        let dir = theirs.0.join("shmrpc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        let line = bind(&theirs.0);
        assert_eq!(field(&line, "result"), Some("err"), "{line}");
        assert!(line.contains("owned_by_uid_65534"), "{line}");

        // A symlink to a directory elsewhere.
        let linked = TempDir::new("perm-xdg-link");
        let elsewhere = TempDir::new("perm-xdg-elsewhere");
        std::fs::set_permissions(&elsewhere.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere.0, linked.0.join("shmrpc")).unwrap();
        let line = bind(&linked.0);
        assert_eq!(field(&line, "result"), Some("err"), "{line}");
        assert!(line.contains("symlink"), "{line}");

        // Ours, but open to everyone.
        let open = TempDir::new("perm-xdg-open");
        let dir = open.0.join("shmrpc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let line = bind(&open.0);
        assert_eq!(field(&line, "result"), Some("err"), "{line}");
        assert!(line.contains("must_not_be_accessible"), "{line}");

        // Control: a proper one is accepted (and the probe's listener cleans up after itself).
        let good = TempDir::new("perm-xdg-good");
        let line = bind(&good.0);
        assert_eq!(field(&line, "result"), Some("ok"), "{line}");
        let left: Vec<_> = std::fs::read_dir(good.0.join("shmrpc"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
            .collect();
        assert!(left.is_empty(), "socket files left behind: {left:?}");
    });
}

/// The memfd of a `channel::pair`, opened again through `/proc/self/fd` as a peer holding
/// the descriptor could.
fn reopen_memfd() -> std::fs::File {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if link.to_string_lossy().starts_with("/memfd:shmrpc") {
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
            {
                return f;
            }
        }
    }
    panic!("no shmrpc memfd among this process's fds");
}

#[test]
fn a_peer_cannot_shrink_or_grow_a_sealed_segment() {
    with_watchdog(Duration::from_secs(60), || {
        let (mut a, mut b) = channel::pair(&ChannelConfig::default()).expect("pair");
        let f = reopen_memfd();
        let len = f.metadata().unwrap().len();
        assert!(len > 0);
        let shrink = f.set_len(len / 2).expect_err("shrinking a sealed segment");
        assert_eq!(
            shrink.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{shrink}"
        );
        let grow = f.set_len(len * 2).expect_err("growing a sealed segment");
        assert_eq!(grow.kind(), std::io::ErrorKind::PermissionDenied, "{grow}");
        assert_eq!(f.metadata().unwrap().len(), len, "size unchanged");
        // And the channel works on.
        a.send(b"still here").unwrap();
        let m = b.recv_timeout(WAIT).unwrap();
        assert_eq!(&*m, b"still here");
    });
}
