//! `shmrpc ls`: this user's servers (runtime directory) and named segments (`/dev/shm`),
//! each alive or stale.

use anyhow::Context;
use serde_json::{json, Value};
use shmrpc::lowlevel::sys::names;

use super::scan::{self, SegmentEntry, ServerEntry};
use super::{human_bytes, print_table, Format};

/// Arguments of `shmrpc ls`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Columns:
  KIND     server (a socket in the runtime directory) or segment (/dev/shm)
  PID      a server: the process holding its lock; a segment: its creator
  STATE    alive, or stale (its process is gone: `shmrpc cleanup` removes it)
  CLIENTS  a live server's connected clients (from /proc/net/unix)
  MEMORY   a live server: its resident memory; a segment: its size")]
pub struct LsArgs {
    /// Only names starting with this.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub prefix: String,
    /// `json`: an array of objects with kind, name, pid, state, clients, memory_bytes, path.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Lists servers and segments.
pub fn run(args: &LsArgs) -> anyhow::Result<()> {
    let dir = names::runtime_dir().context("cannot open the runtime directory")?;
    let servers = scan::servers(&dir, &args.prefix)
        .with_context(|| format!("cannot list {}", dir.display()))?;
    let segments = scan::segments(&args.prefix);
    let rows: Vec<Value> = servers
        .iter()
        .map(server_row)
        .chain(segments.iter().map(segment_row))
        .collect();
    match args.format {
        Format::Json => println!("{}", Value::Array(rows)),
        Format::Text if rows.is_empty() => println!(
            "no shmrpc servers or segments of uid {} (runtime directory {}, segments in {})",
            names::uid(),
            dir.display(),
            names::SHM_DIR
        ),
        Format::Text => {
            let cell = |v: &Value| match v {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mem = r["memory_bytes"].as_u64().map_or("-".into(), human_bytes);
                    vec![
                        cell(&r["kind"]),
                        cell(&r["name"]),
                        cell(&r["pid"]),
                        cell(&r["state"]),
                        cell(&r["clients"]),
                        mem,
                        cell(&r["path"]),
                    ]
                })
                .collect();
            print_table(
                &["KIND", "NAME", "PID", "STATE", "CLIENTS", "MEMORY", "PATH"],
                &table,
            );
            for s in &segments {
                if let Err(e) = &s.status {
                    eprintln!("shmrpc ls: segment {}: {e}", s.name);
                }
            }
        }
    }
    Ok(())
}

fn server_row(s: &ServerEntry) -> Value {
    let pid = s.pid();
    let live_socket = s.socket.as_deref().filter(|_| s.alive());
    json!({
        "kind": "server",
        "name": s.name,
        "pid": pid,
        "state": if s.alive() { "alive" } else { "stale" },
        "clients": live_socket.and_then(scan::clients),
        "memory_bytes": pid.filter(|_| s.alive()).and_then(scan::rss_bytes),
        "path": s.path(),
        "files": s.files(),
    })
}

fn segment_row(s: &SegmentEntry) -> Value {
    json!({
        "kind": "segment",
        "name": s.name,
        "pid": s.pid(),
        "state": s.state(),
        "clients": Value::Null,
        "memory_bytes": s.size,
        "path": s.path,
        "error": s.status.as_ref().err(),
    })
}
