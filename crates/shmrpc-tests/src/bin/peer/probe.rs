//! File-permission probes, usually run as another user.

use shmrpc::channel::{ChannelConfig, Listener};
use shmrpc_tests::Probe;

use crate::say;

/// What a process (often running as another user) can do to shmrpc's files. Prints one
/// line per probe: `probe what=<probe> result=<ok or the error's kind> message=<..>`.
pub(crate) fn perm_probe(probe: &Probe) {
    let what = match probe {
        Probe::Open { .. } => "open",
        Probe::SquatFile { .. } => "squat-file",
        Probe::SquatSymlink { .. } => "squat-symlink",
        Probe::Bind { .. } => "bind",
    };
    let report = |r: Result<String, String>| {
        let (result, message) = match r {
            Ok(m) => ("ok".to_owned(), m),
            Err(m) => ("err".to_owned(), m),
        };
        say(format!(
            "probe what={what} result={result} message={}",
            message.replace(' ', "_")
        ));
    };
    let kind = |e: std::io::Error| format!("{:?}:{e}", e.kind());
    match probe {
        // Open an existing file for reading and writing.
        Probe::Open { path } => report(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(|_| "opened".to_owned())
                .map_err(kind),
        ),
        // Put a file of our own where a victim will look for its segment.
        Probe::SquatFile { path } => {
            use std::os::unix::fs::PermissionsExt;
            let r = std::fs::write(path, b"attacker").and_then(|()| {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            });
            report(r.map(|()| "squatted".to_owned()).map_err(kind));
        }
        // Put a symlink there, to a file of the victim's.
        Probe::SquatSymlink { path, target } => {
            report(
                std::os::unix::fs::symlink(target, path)
                    .map(|()| "squatted".to_owned())
                    .map_err(kind),
            );
        }
        // Bind a listener (the runtime directory comes from the environment).
        Probe::Bind { name } => report(
            Listener::bind(name, ChannelConfig::default())
                .map(|l| format!("bound_at_{}", l.path().display()))
                .map_err(|e| {
                    // The whole chain: the cause is in the source.
                    let mut m = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        m = format!("{m}: {s}");
                        src = s.source();
                    }
                    m
                }),
        ),
    }
}
