//! Installing the helper binary for another user.

use std::process::Command;

/// Puts the helper binary `src` (a test's `env!("CARGO_BIN_EXE_peer")`) at `dest` (for a test that runs it as another user, from a
/// directory that user can enter) without ever holding a write descriptor to it in this
/// process: a hard link, or else a copy made by a `cp` child. A copy written here would be
/// inherited by any child another test thread forks meanwhile, and exec of `dest` would
/// then fail with ETXTBSY until that child execs.
pub fn install_peer_exe(src: &str, dest: &std::path::Path) {
    if std::fs::hard_link(src, dest).is_err() {
        let st = Command::new("cp")
            .arg(src)
            .arg(dest)
            .status()
            .expect("running cp");
        assert!(st.success(), "cp {src} {}: {st}", dest.display());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).unwrap();
}
