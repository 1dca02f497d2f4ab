//! A server stream of small items: a server and a client, each on its own thread with its
//! own current-thread runtime and its own CPU, like two processes. Prints items per second
//! and the time to the first item, in turn for a handler that sends one item per frame
//! (`send_raw` in a loop) and one that sends them all at once (`send_all_raw`: several to a
//! frame), and the ratio of their medians. Cross-process figures beside tarpc and tonic come from
//! the peers crate (`cd peers && cargo run --release -- --only rpc`).
//!
//! Run: `cargo run --release -p shmrpc --example rpc_stream [-- ITEMS ITEM_BYTES [MODE]]`,
//! MODE `both` (the default), `items` or `batched`.

use std::time::Instant;

use shmrpc::{CallOptions, Client, ClientConfig, Server};

mod probe;
use probe::{pin, runtime, Serving};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let items = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let size = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(32);
    // Which handlers: both (the default), or one of them alone (to profile it).
    let methods: &[&str] = match args.get(2).map(String::as_str) {
        None | Some("both") => &["items", "batched"],
        Some("items") => &["items"],
        Some("batched") => &["batched"],
        Some(other) => return Err(format!("MODE is both, items or batched, not {other}").into()),
    };
    let name = format!("rpc-stream-{}", std::process::id());
    let server = Server::builder()
        .streaming_raw("items", move |_ctx, req, sink| async move {
            let n = u64::from_le_bytes(req[..8].try_into().unwrap_or_default());
            let item = vec![5u8; size];
            for _ in 0..n {
                sink.send_raw(&item).await?;
            }
            Ok(())
        })
        .streaming_raw("batched", move |_ctx, req, sink| async move {
            let n = u64::from_le_bytes(req[..8].try_into().unwrap_or_default());
            let item = vec![5u8; size];
            sink.send_all_raw((0..n).map(|_| &item)).await
        })
        .bind(&name)?;
    let serving = Serving::start(server);
    pin(0);
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(&name, ClientConfig::default()).await?;
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..5 {
            for (k, &method) in methods.iter().enumerate() {
                let t0 = Instant::now();
                let mut s = client
                    .call_stream_raw(
                        method,
                        &(items as u64).to_le_bytes(),
                        CallOptions::default(),
                    )
                    .await?;
                let mut first = None;
                let mut got = 0usize;
                while let Some(item) = s.next_raw().await {
                    let item = item?;
                    first.get_or_insert_with(|| t0.elapsed());
                    assert_eq!(item.len(), size);
                    got += 1;
                }
                assert_eq!(got, items);
                let dt = t0.elapsed();
                let rate = items as f64 / dt.as_secs_f64();
                rates[k].push(rate);
                println!(
                    "round {round} {method:>7}: {rate:.0} items/s, first item after {:?}",
                    first.unwrap_or(dt)
                );
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [one, all] = &mut rates;
        if !one.is_empty() && !all.is_empty() {
            let (one, all) = (median(one), median(all));
            println!(
                "median: one per frame {one:.0}, batched {all:.0} items/s: {:.2}x",
                all / one
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(rt);
    serving.stop();
    Ok(())
}
