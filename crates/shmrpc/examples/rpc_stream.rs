//! A server stream of small items: a server and a client, each on its own thread with its
//! own current-thread runtime and its own CPU, like two processes. Prints items per second
//! and the time to the first item, in turn for three ways of streaming: one item per frame
//! (`send_raw` in a loop, read with `next_raw`), all at once (`send_all_raw`: several to a
//! frame, read with `next_raw`), and all at once written and read in place (`send_all_with`,
//! read with `next_items`); then each median's ratio to the first. Cross-process figures
//! beside tarpc and tonic come from the peers crate
//! (`cd peers && cargo run --release -- --only rpc`).
//!
//! Run: `cargo run --release -p shmrpc --example rpc_stream [-- ITEMS ITEM_BYTES [MODE]]`,
//! MODE `all` (the default), `items`, `batched` or `lent`.

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
    // Which handlers: all (the default), or one of them alone (to profile it).
    let methods: &[&str] = match args.get(2).map(String::as_str) {
        None | Some("all") => &["items", "batched", "lent"],
        Some("items") => &["items"],
        Some("batched") => &["batched"],
        Some("lent") => &["lent"],
        Some(other) => {
            return Err(format!("MODE is all, items, batched or lent, not {other}").into())
        }
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
        .streaming_raw("lent", move |_ctx, req, sink| async move {
            let n = u64::from_le_bytes(req[..8].try_into().unwrap_or_default());
            sink.send_all_with(0..n, |_, item| {
                item.append_zeroed(size).fill(5);
                Ok(())
            })
            .await
        })
        .bind(&name)?;
    let serving = Serving::start(server);
    pin(0);
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(&name, ClientConfig::default()).await?;
        let mut rates = vec![Vec::new(); methods.len()];
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
                if method == "lent" {
                    while let Some(items) = s.next_items().await {
                        for item in items? {
                            first.get_or_insert_with(|| t0.elapsed());
                            assert_eq!(item.len(), size);
                            got += 1;
                        }
                    }
                } else {
                    while let Some(item) = s.next_raw().await {
                        let item = item?;
                        first.get_or_insert_with(|| t0.elapsed());
                        assert_eq!(item.len(), size);
                        got += 1;
                    }
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
        let medians: Vec<f64> = rates.iter_mut().map(median).collect();
        for (method, m) in methods.iter().zip(&medians) {
            println!(
                "median {method:>7}: {m:.0} items/s, {:.2}x {}",
                m / medians[0],
                methods[0]
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(rt);
    serving.stop();
    Ok(())
}
