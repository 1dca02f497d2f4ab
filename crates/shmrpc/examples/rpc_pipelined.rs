//! Pipelined unary calls: a server and a client, each on its own thread with its own
//! current-thread runtime and its own CPU, like two processes; many caller tasks share one
//! connection. Prints calls per second. Cross-process figures beside a Unix-socket baseline
//! come from `shmrpc bench --only rpc.pipelined`.
//!
//! Run: `cargo run --release -p shmrpc --example rpc_pipelined [-- CALLERS CALLS CONNS]`

use std::time::Instant;

use shmrpc::{CallOptions, Client, ClientConfig, Server};

mod probe;
use probe::{pin, runtime, Serving};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let callers = args.next().transpose()?.unwrap_or(64);
    let calls = args.next().transpose()?.unwrap_or(400_000);
    let conns = args.next().transpose()?.unwrap_or(1);
    let name = format!("rpc-pipelined-{}", std::process::id());
    let server = Server::builder()
        .unary_raw("echo", |_ctx, req| async move { Ok(req) })
        .bind(&name)?;
    let serving = Serving::start(server);
    pin(0);
    let rt = runtime();
    let rate = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..conns {
            clients.push(Client::connect(&name, ClientConfig::default()).await?);
        }
        let mut best = 0.0f64;
        for round in 0..4 {
            let per = calls / (callers * conns);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for c in &clients {
                for _ in 0..callers {
                    let c = c.clone();
                    tasks.push(tokio::spawn(async move {
                        let body = [7u8; 64];
                        for _ in 0..per {
                            let r = c.call_raw("echo", &body, CallOptions::default()).await?;
                            assert_eq!(r, body);
                        }
                        Ok::<_, shmrpc::RpcError>(())
                    }));
                }
            }
            for t in tasks {
                t.await??;
            }
            let rate = (per * callers * conns) as f64 / start.elapsed().as_secs_f64();
            println!("round {round}: {rate:.0} calls/s");
            best = best.max(rate);
        }
        Ok::<_, Box<dyn std::error::Error>>(best)
    })?;
    println!("{callers} callers x {conns} connection(s): best {rate:.0} calls/s");
    drop(rt);
    serving.stop();
    Ok(())
}
