//! `shmrpc call NAME METHOD [JSON]`: one call from the shell. The JSON text is sent as the
//! raw request body; the answer is printed as JSON if it parses, else as text, else as hex.
//! With `--stream`, each item of a server-streaming method is printed as it arrives.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError};

use super::{hex, parse_duration, Format};

/// Arguments of `shmrpc call`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "shmrpc call [OPTIONS] NAME METHOD [JSON]\n       shmrpc call [OPTIONS] --tcp ADDR METHOD [JSON]",
    after_help = "The exit status is 0 on success; 1 if the call failed (the error's code, \
e.g. UnknownMethod, Unavailable or DeadlineExceeded, is printed on stderr) or the body is \
not JSON; 2 for a usage error.

Examples:
  shmrpc call demo add '{\"a\": 1, \"b\": 2}'
  shmrpc call demo chat '{\"prompt\": \"hello there\"}' --stream
  echo '[1, 2]' | shmrpc call demo echo - --format json
  shmrpc call --tcp 127.0.0.1:7000 --ca ca.pem --server-name localhost \\
      --cert client.pem --key client.key --token-file token echo '\"hi\"'"
)]
pub struct CallArgs {
    /// NAME METHOD [JSON] (with --tcp: METHOD [JSON]). JSON is the request body (default
    /// `null`); `-` reads it from standard input.
    #[arg(value_name = "ARGS", num_args = 1..=3, required = true, allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// Call a server on this TCP address instead of a name.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<SocketAddr>,
    /// The method streams: print each item as it arrives, one per line.
    #[arg(long)]
    pub stream: bool,
    /// Give up after this long (e.g. 500ms, 2s); the server sees the call cancelled.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// How long to keep trying to reach the server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,
    /// Send the body as it is, without checking that it is JSON.
    #[arg(long)]
    pub raw: bool,
    /// `json` prints {"ok": true, "value": ...} or {"ok": false, "code": ..., "message": ...}
    /// (one line per item with --stream).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// TLS, token and compression for --tcp.
    #[command(flatten)]
    pub remote: super::remote::ClientTcpArgs,
}

/// Where the call goes.
enum Target {
    Name(String),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Name(n) => write!(f, "{n}"),
            Target::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

/// Makes the call; an error names the failure's code.
pub fn run(args: &CallArgs) -> anyhow::Result<()> {
    let (target, method, body) = split_args(args)?;
    let body = read_body(body.as_deref(), args.raw)?;
    let tcp = match &target {
        Target::Tcp(addr) => args.remote.config(*addr)?,
        Target::Name(_) => match args.remote.any_set() {
            Some(flag) => bail!("{flag} applies only with --tcp ADDR"),
            None => shmrpc::TcpClientConfig::default(),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match rt.block_on(call(args, tcp, &target, &method, &body)) {
        Ok(()) => Ok(()),
        Err(e) => {
            if args.format == Format::Json {
                let doc =
                    json!({"ok": false, "code": format!("{:?}", e.code), "message": e.message});
                // The error is also reported on stderr; a closed stdout changes nothing.
                let _ = writeln!(std::io::stdout(), "{doc}");
            }
            let hint = match e.code {
                Code::Protocol if args.stream => {
                    format!(" (hint: is {method:?} a unary method? then call it without --stream)")
                }
                Code::Protocol => {
                    format!(" (hint: is {method:?} a streaming method? then add --stream)")
                }
                _ => super::remote::client_hint(&e, &args.remote)
                    .map_or(String::new(), |h| format!(" ({h})")),
            };
            Err(anyhow::Error::new(e).context(format!("call {method} on {target} failed{hint}")))
        }
    }
}

/// NAME METHOD [JSON], or METHOD [JSON] with --tcp.
fn split_args(args: &CallArgs) -> anyhow::Result<(Target, String, Option<String>)> {
    let mut a = args.args.iter().cloned();
    let target = match args.tcp {
        Some(addr) => Target::Tcp(addr),
        None => Target::Name(a.next().expect("clap requires one argument")),
    };
    let Some(method) = a.next() else {
        bail!("no METHOD given (usage: shmrpc call NAME METHOD [JSON])");
    };
    let body = a.next();
    if a.next().is_some() {
        bail!("too many arguments: with --tcp, give only METHOD [JSON]");
    }
    Ok((target, method, body))
}

/// The request body: the argument (or stdin for `-`), `null` if none; checked to be JSON
/// unless `raw`.
fn read_body(arg: Option<&str>, raw: bool) -> anyhow::Result<Vec<u8>> {
    let text = match arg {
        None => "null".to_owned(),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the body from standard input")?;
            s
        }
        Some(s) => s.to_owned(),
    };
    if !raw {
        if let Err(e) = serde_json::from_str::<Value>(&text) {
            bail!("the body is not JSON ({e}); quote it for the shell, e.g. '{{\"a\": 1}}', or pass --raw");
        }
    }
    Ok(text.into_bytes())
}

async fn call(
    args: &CallArgs,
    tcp: shmrpc::TcpClientConfig,
    target: &Target,
    method: &str,
    body: &[u8],
) -> Result<(), RpcError> {
    let cfg = ClientConfig::default()
        .with_reconnect_for(
            args.timeout
                .map_or(args.connect_timeout, |t| args.connect_timeout.min(t)),
        )
        .with_tcp(tcp);
    let client = match target {
        Target::Name(n) => Client::connect(n, cfg).await?,
        Target::Tcp(a) => Client::connect_tcp(*a, cfg).await?,
    };
    let opts = CallOptions::default().with_timeout(args.timeout);
    let mut out = std::io::stdout().lock();
    if !args.stream {
        let answer = client.call_raw(method, body, opts).await?;
        let _ = print_value(&mut out, &answer, args.format);
        return Ok(());
    }
    let mut stream = client.call_stream_raw(method, body, opts).await?;
    while let Some(item) = stream.next_raw().await {
        if print_value(&mut out, &item?, args.format).is_err() {
            // Standard output closed (e.g. `| head -1`): stop reading; dropping the stream
            // cancels the call on the server.
            return Ok(());
        }
    }
    Ok(())
}

/// Prints one answer or item on a line of its own and flushes, so a stream shows as it
/// arrives even through a pipe.
fn print_value(out: &mut impl Write, bytes: &[u8], format: Format) -> std::io::Result<()> {
    let (value, encoding) = decode(bytes);
    match format {
        Format::Text => match &value {
            Value::String(s) if encoding != "json" => writeln!(out, "{s}")?,
            v => writeln!(out, "{v}")?,
        },
        Format::Json => writeln!(
            out,
            "{}",
            json!({"ok": true, "value": value, "encoding": encoding})
        )?,
    }
    out.flush()
}

/// An answer as a JSON value: parsed if it is JSON, else its text, else its hex.
fn decode(bytes: &[u8]) -> (Value, &'static str) {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return (v, "json");
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (Value::String(s.to_owned()), "text"),
        Err(_) => (Value::String(hex(bytes)), "hex"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_json_text_or_hex() {
        assert_eq!(decode(br#"{"a":1}"#), (json!({"a": 1}), "json"));
        assert_eq!(decode(b"hello"), (json!("hello"), "text"));
        assert_eq!(decode(&[0xff, 0x00]), (json!("ff00"), "hex"));
        let mut out = Vec::new();
        print_value(&mut out, b"\"word\"", Format::Text).unwrap();
        print_value(&mut out, b"plain", Format::Text).unwrap();
        print_value(&mut out, b"7", Format::Json).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"word\"\nplain\n{\"encoding\":\"json\",\"ok\":true,\"value\":7}\n"
        );
    }
}
