//! `shmrpc serve NAME`: a demo RPC server whose methods take and return JSON, so a shell
//! (`shmrpc call`) or any client can try them.
//!
//! - `echo`: returns its JSON input.
//! - `add`: `{"a": 1, "b": 2}` -> `3`.
//! - `chat` (server-streaming): `{"prompt": "hello there", "delay_ms": 100}` -> `"hello"`,
//!   `"there"`: the prompt's words, one item each, `delay_ms` apart (default 100), until
//!   the caller cancels.
//!
//! It serves until SIGINT, SIGTERM or SIGHUP, then shuts down gracefully: no new calls, streams
//! end with `ShuttingDown`, calls in flight finish, the socket and lock files are removed.
//! A second signal stops it at once (still removing its files).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use shmrpc::{Code, RpcError, ServerBuilder, ServerConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::Format;

/// The longest pause `chat` accepts between words.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// `chat`'s pause between words when the request names none.
const DEFAULT_DELAY_MS: u64 = 100;

/// Arguments of `shmrpc serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Methods (JSON in, JSON out):
  echo   any JSON            -> the same JSON
  add    {\"a\": 1, \"b\": 2}    -> 3
  chat   {\"prompt\": \"hello there\", \"delay_ms\": 100}
                            -> streams \"hello\", \"there\" (one item per word)

Try: shmrpc serve demo & shmrpc call demo add '{\"a\":1,\"b\":2}'")]
pub struct ServeArgs {
    /// Name to serve under: a socket in this user's runtime directory.
    #[arg(required_unless_present = "tcp", conflicts_with = "tcp")]
    pub name: Option<String>,
    /// Serve over TCP on this address instead (e.g. 127.0.0.1:7000; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<SocketAddr>,
    /// How to print the ready line.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Server settings from a TOML file (ring_size, max_in_flight, max_message, heartbeat,
    /// cancel_grace, wait, spin, allowed_uids, metrics, and a [tcp] table: cert, key,
    /// client_ca, token_file, insecure_plaintext, compression, ...); checked before serving.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9464; port 0
    /// picks one, printed in the ready line): GET /metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Log a span per call and connection events to stderr (`tracing`; the filter can be
    /// changed with RUST_LOG, default `shmrpc=debug`).
    #[arg(long)]
    pub trace: bool,
    /// TLS, token and compression for --tcp (over the `[tcp]` table of --config).
    #[command(flatten)]
    pub remote: super::remote::ServerTcpArgs,
}

/// Runs the demo server until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Registered before the ready line, so a signal sent as soon as it is read is ours.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut cfg = match &args.config {
        Some(path) => ServerConfig::from_toml_file(path)
            .with_context(|| format!("bad configuration file {}", path.display()))?,
        None => ServerConfig::default(),
    };
    if let (None, Some(flag)) = (args.tcp, args.remote.any_set()) {
        anyhow::bail!("{flag} applies only with --tcp ADDR");
    }
    cfg.tcp = args.remote.apply(cfg.tcp)?;
    let tls = cfg.tcp.tls.is_some();
    let token = cfg.tcp.token.is_some();
    if args.trace {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("shmrpc=debug"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    let metrics_addr = match args.metrics {
        Some(addr) => {
            cfg.metrics = true;
            Some(super::metrics::serve_prometheus(addr).await?)
        }
        None => None,
    };
    let builder = routes(ServerBuilder::new(cfg), stop_rx);
    let pid = std::process::id();
    let (server, ready) = match (&args.name, args.tcp) {
        (_, Some(addr)) => {
            let server = match builder.bind_tcp(addr).await {
                Ok(s) => s,
                Err(e) => {
                    let hint =
                        super::remote::server_hint(&e).map_or(String::new(), |h| format!(" ({h})"));
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot listen on {addr}{hint}"))
                    );
                }
            };
            let local = server.local_addr().unwrap_or(addr);
            let ready = match args.format {
                Format::Text => format!(
                    "serving tcp {local} ({}{}, pid {pid}){}",
                    if tls { "tls" } else { "plaintext" },
                    if token { ", token" } else { "" },
                    metrics_note(metrics_addr)
                ),
                Format::Json => json!({
                    "event": "ready", "tcp": local.to_string(), "pid": pid,
                    "tls": tls, "token": token,
                    "methods": METHODS, "metrics": metrics_addr.map(|a| a.to_string()),
                })
                .to_string(),
            };
            (server, ready)
        }
        (Some(name), None) => {
            let server = builder
                .bind(name)
                .with_context(|| format!("cannot serve {name:?}"))?;
            let socket = shmrpc::lowlevel::sys::names::runtime_dir()
                .map(|d| d.join(format!("{name}.sock")))
                .context("runtime directory")?;
            let ready = match args.format {
                Format::Text => format!(
                    "serving {name} at {} (pid {pid}){}",
                    socket.display(),
                    metrics_note(metrics_addr)
                ),
                Format::Json => json!({
                    "event": "ready", "name": name, "socket": socket, "pid": pid,
                    "methods": METHODS, "metrics": metrics_addr.map(|a| a.to_string()),
                })
                .to_string(),
            };
            (server, ready)
        }
        (None, None) => unreachable!("clap requires NAME or --tcp"),
    };
    println!("{ready}");
    if args.format == Format::Text {
        println!("methods: {}; stop with Ctrl-C", METHODS.join(", "));
    }
    let handle = server.handle();
    let serving = server.serve();
    tokio::pin!(serving);
    let sig = tokio::select! {
        () = &mut serving => return Ok(()),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    };
    eprintln!("shmrpc serve: {sig}: shutting down (signal again to stop at once)");
    stop_tx.send_replace(true);
    handle.shutdown();
    tokio::select! {
        () = &mut serving => eprintln!("shmrpc serve: stopped"),
        _ = term.recv() => eprintln!("shmrpc serve: stopped without waiting for calls in flight"),
        _ = int.recv() => eprintln!("shmrpc serve: stopped without waiting for calls in flight"),
        _ = hup.recv() => eprintln!("shmrpc serve: stopped without waiting for calls in flight"),
    }
    // Dropping the server (here, or by returning) removes its socket and lock files.
    Ok(())
}

const METHODS: [&str; 3] = ["echo", "add", "chat"];

fn metrics_note(addr: Option<SocketAddr>) -> String {
    addr.map_or(String::new(), |a| {
        format!(", metrics at http://{a}/metrics")
    })
}

fn bad(msg: impl Into<String>) -> RpcError {
    RpcError::new(Code::BadRequest, msg)
}

fn parse(body: &[u8]) -> Result<Value, RpcError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))
}

fn to_body(v: &Value) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(v).map_err(|e| RpcError::handler(e.to_string()))
}

/// `a + b`: exact for integers (unless it overflows), else in floating point.
fn add(v: &Value) -> Result<Value, RpcError> {
    const USAGE: &str = r#"add expects {"a": number, "b": number}"#;
    let (a, b) = (v.get("a"), v.get("b"));
    if let (Some(x), Some(y)) = (a.and_then(Value::as_i64), b.and_then(Value::as_i64)) {
        if let Some(s) = x.checked_add(y) {
            return Ok(json!(s));
        }
    }
    match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (Some(x), Some(y)) => serde_json::Number::from_f64(x + y)
            .map(Value::Number)
            .ok_or_else(|| bad("the sum is not a finite number")),
        _ => Err(bad(USAGE)),
    }
}

/// `chat`'s request: its words and the pause between them.
fn chat_request(v: &Value) -> Result<(Vec<String>, Duration), RpcError> {
    const USAGE: &str = r#"chat expects {"prompt": string, "delay_ms": number (optional)}"#;
    let prompt = v
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(USAGE))?;
    let delay = match v.get("delay_ms") {
        None | Some(Value::Null) => DEFAULT_DELAY_MS,
        Some(d) => d.as_u64().ok_or_else(|| bad(USAGE))?,
    };
    let words = prompt.split_whitespace().map(str::to_owned).collect();
    Ok((words, Duration::from_millis(delay).min(MAX_DELAY)))
}

/// The demo methods. `stop` turns true when the server starts shutting down: streams end
/// then instead of holding the shutdown up for as long as they would run.
fn routes(b: ServerBuilder, stop: watch::Receiver<bool>) -> ServerBuilder {
    b.unary_raw("echo", |_ctx, body| async move {
        parse(&body)?;
        Ok(body)
    })
    .unary_raw("add", |_ctx, body| async move { to_body(&add(&parse(&body)?)?) })
    .streaming_raw("chat", move |ctx, body, sink| {
        let mut stop = stop.clone();
        async move {
            let (words, delay) = chat_request(&parse(&body)?)?;
            for (i, word) in words.iter().enumerate() {
                if i > 0 {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = ctx.cancelled() => {
                            return Err(RpcError::new(Code::Cancelled, "cancelled by the caller"));
                        }
                        _ = stop.wait_for(|s| *s) => {
                            return Err(RpcError::new(Code::ShuttingDown, "server is shutting down"));
                        }
                    }
                }
                sink.send_raw(&to_body(&json!(word))?).await?;
            }
            Ok(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_is_exact_for_integers_and_checks_its_input() {
        assert_eq!(add(&json!({"a": 2, "b": 40})).unwrap(), json!(42));
        assert_eq!(add(&json!({"a": 0.5, "b": 1})).unwrap(), json!(1.5));
        assert_eq!(
            add(&json!({"a": i64::MAX, "b": 1})).unwrap(),
            json!(i64::MAX as f64 + 1.0)
        );
        assert_eq!(add(&json!({"a": 1})).unwrap_err().code, Code::BadRequest);
        assert_eq!(add(&json!([1, 2])).unwrap_err().code, Code::BadRequest);
    }

    #[test]
    fn chat_requests() {
        let (w, d) = chat_request(&json!({"prompt": " a  b c", "delay_ms": 5})).unwrap();
        assert_eq!(
            (w, d),
            (
                vec!["a".into(), "b".into(), "c".into()],
                Duration::from_millis(5)
            )
        );
        let (_, d) = chat_request(&json!({"prompt": ""})).unwrap();
        assert_eq!(d, Duration::from_millis(DEFAULT_DELAY_MS));
        assert!(chat_request(&json!({"prompt": 3})).is_err());
        assert!(chat_request(&json!({"prompt": "x", "delay_ms": -1})).is_err());
    }
}
