//! `shmrpc inspect NAME`: what a live server reports of its connections (the built-in
//! method `shmrpc.inspect`): peers, messages and bytes moved, handlers running, and for
//! each ring its positions, occupancy and waiting flags.

use std::time::Duration;

use anyhow::Context;
use shmrpc::inspect::ServerReport;
use shmrpc::inspect::INSPECT_METHOD;
use shmrpc::lowlevel::ring::RingState;
use shmrpc::{CallOptions, Client, ClientConfig};

use super::{human_bytes, print_table, Format};

/// Arguments of `shmrpc inspect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Per connection:
  PEER      the client's pid (shared memory)
  IN / OUT  messages and bytes received from / sent to the client
  RUN       handlers running in tasks now
  TO/FROM   the ring towards / from the client: queued bytes of its capacity, the
            published (write) and released (read) positions, and who sleeps:
            c = consumer waiting for data, p = producer waiting for room, - = nobody
(The inspecting connection itself is listed too.)
Handshakes: clients connected but not yet acknowledged (running), and those that
never completed since the server started (failed: timed out, hung up, refused).")]
pub struct InspectArgs {
    /// The server's name.
    pub name: String,
    /// `json`: the server's report as is.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// How long to try to reach the server.
    #[arg(long, value_parser = super::parse_duration, default_value = "1s")]
    pub timeout: Duration,
}

fn ring(r: &Option<RingState>) -> String {
    match r {
        None => "-".into(),
        Some(r) => {
            let waiting = match (r.consumer_waiting != 0, r.producer_waiting != 0) {
                (false, false) => "-",
                (true, false) => "c",
                (false, true) => "p",
                (true, true) => "cp",
            };
            format!(
                "{}/{} w{} r{} {waiting}{}",
                human_bytes(r.queued),
                human_bytes(r.capacity),
                r.write_pos,
                r.read_pos,
                if r.closed != 0 { " closed" } else { "" }
            )
        }
    }
}

/// Asks the server and prints its report.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report: ServerReport = rt.block_on(async {
        let cfg = ClientConfig::default().with_reconnect_for(args.timeout);
        let client = Client::connect(&args.name, cfg)
            .await
            .with_context(|| format!("cannot reach {}", args.name))?;
        client
            .call(
                INSPECT_METHOD,
                &(),
                CallOptions::timeout(Duration::from_secs(10)),
            )
            .await
            .with_context(|| format!("{} did not answer the inspection", args.name))
    })?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Text => {
            println!(
                "server {} (pid {}): {} connection(s); handshakes: {} running, {} failed",
                args.name,
                report.pid,
                report.connections.len(),
                report.handshakes_running,
                report.handshake_failures
            );
            let rows: Vec<Vec<String>> = report
                .connections
                .iter()
                .map(|c| {
                    vec![
                        c.id.to_string(),
                        c.peer_pid.map_or("-".into(), |p| p.to_string()),
                        c.transport.clone(),
                        format!("{:.1}s", c.age_ms as f64 / 1000.0),
                        format!("{} / {}", c.frames_in, human_bytes(c.bytes_in)),
                        format!("{} / {}", c.frames_out, human_bytes(c.bytes_out)),
                        c.calls_running.to_string(),
                        ring(&c.to_client),
                        ring(&c.from_client),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "PEER",
                    "VIA",
                    "AGE",
                    "IN",
                    "OUT",
                    "RUN",
                    "TO CLIENT",
                    "FROM CLIENT",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
