//! `shmrpc cleanup`: removes what dead processes left behind (stale sockets and lock
//! files, stale named segments), never a live server's or a live owner's files.
//!
//! A server's files are removed while holding its lock (taken exactly as a server binding
//! the name takes it), so a server cannot be alive, or come alive, while they go.
//! Segments go through the library's `Segment::reclaim_stale`, which removes a segment
//! only if its recorded owner is dead.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};
use shmrpc::lowlevel::sys::names::{self, NameLock};
use shmrpc::lowlevel::sys::Segment;

use super::scan::{self, error_chain};
use super::{human_bytes, Format};

/// Arguments of `shmrpc cleanup`.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only names starting with this.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub prefix: String,
    /// `json`: {"dry_run": ..., "removed": [{kind, name, pid, paths}], "errors": [...]}.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// One thing removed (or, in a dry run, to remove).
struct Removed {
    kind: &'static str,
    name: String,
    /// The dead owner, when known (segments record it).
    pid: Option<u32>,
    paths: Vec<PathBuf>,
    bytes: Option<u64>,
}

/// Removes stale servers' files and stale segments.
pub fn run(args: &CleanupArgs) -> anyhow::Result<()> {
    let dir = names::runtime_dir().context("cannot open the runtime directory")?;
    let mut removed = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let servers = scan::servers(&dir, &args.prefix)
        .with_context(|| format!("cannot list {}", dir.display()))?;
    for s in servers.iter().filter(|s| !s.alive()) {
        if s.socket.is_some() && !s.socket_is_socket {
            errors.push(format!(
                "{}: not a socket, left alone",
                s.socket.as_deref().unwrap_or(Path::new("")).display()
            ));
            continue;
        }
        let paths: Vec<PathBuf> = s.files().into_iter().map(Path::to_path_buf).collect();
        if !args.dry_run {
            match remove_server(&dir, &s.name, s.socket.as_deref()) {
                Ok(true) => {}
                Ok(false) => continue, // came alive meanwhile
                Err(e) => {
                    errors.push(format!("server {}: {e:#}", s.name));
                    continue;
                }
            }
        }
        removed.push(Removed {
            kind: "server",
            name: s.name.clone(),
            pid: None,
            paths,
            bytes: None,
        });
    }
    for seg in scan::segments(&args.prefix) {
        if seg.state() != "stale" {
            continue;
        }
        if !args.dry_run {
            match Segment::reclaim_stale(&seg.name) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    errors.push(format!("segment {}: {}", seg.name, error_chain(&e)));
                    continue;
                }
            }
        }
        removed.push(Removed {
            kind: "segment",
            name: seg.name.clone(),
            pid: seg.pid(),
            paths: vec![seg.path.clone()],
            bytes: seg.size,
        });
    }
    report(args, &removed, &errors);
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} item(s) could not be removed", errors.len())
    }
}

/// Removes a dead server's socket and lock file while holding its lock. `Ok(false)` if a
/// live server holds the name.
fn remove_server(dir: &Path, name: &str, socket: Option<&Path>) -> anyhow::Result<bool> {
    let lock_path = dir.join(format!("{name}.lock"));
    let Some(lock) = NameLock::try_lock(&lock_path).context("lock")? else {
        return Ok(false);
    };
    if let Some(sock) = socket {
        // Holding the lock, any socket file here is a dead server's; re-check its type
        // (it was looked at before the lock was taken).
        match std::fs::symlink_metadata(sock) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(sock).with_context(|| format!("remove {}", sock.display()))?
            }
            Ok(_) => anyhow::bail!("{} is not a socket, left alone", sock.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("inspect {}", sock.display())),
        }
    }
    // Dropping the lock removes its file (while still holding it).
    drop(lock);
    Ok(true)
}

fn report(args: &CleanupArgs, removed: &[Removed], errors: &[String]) {
    match args.format {
        Format::Json => {
            let items: Vec<Value> = removed
                .iter()
                .map(|r| {
                    json!({"kind": r.kind, "name": r.name, "pid": r.pid, "paths": r.paths,
                           "memory_bytes": r.bytes})
                })
                .collect();
            println!(
                "{}",
                json!({"dry_run": args.dry_run, "removed": items, "errors": errors})
            );
        }
        Format::Text => {
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for r in removed {
                let paths: Vec<String> = r.paths.iter().map(|p| p.display().to_string()).collect();
                let mut what = format!("{verb} stale {} {}: {}", r.kind, r.name, paths.join(", "));
                if let Some(b) = r.bytes {
                    what.push_str(&format!(" ({})", human_bytes(b)));
                }
                if let Some(pid) = r.pid {
                    what.push_str(&format!(", owner pid {pid} is gone"));
                }
                println!("{what}");
            }
            for e in errors {
                eprintln!("shmrpc cleanup: {e}");
            }
            if removed.is_empty() && errors.is_empty() {
                println!("nothing to clean up: no stale servers or segments");
            } else if !removed.is_empty() {
                let n = removed.len();
                println!("{verb} {n} stale item{}", if n == 1 { "" } else { "s" });
            }
        }
    }
}
