//! An editor and its AI engine, as two processes, on one connection both ways.
//!
//! - The editor streams a chat conversation to the engine, message by message, and reads
//!   the engine's tokens as they come: one bidirectional call (`chat`).
//! - In the middle of its answer the engine wants to run a tool: it calls the editor back
//!   (`approveTool`, a method the editor serves on the same connection) and waits for the
//!   user's decision before it goes on; then it pushes the run's diagnostics to the editor
//!   as notifications (no answer awaited; bounded, in order).
//! - Meanwhile the editor asks for completions and a hover (typed, language-server-style
//!   requests) on the same connection: their latency during the chat is printed beside the
//!   same requests on the idle connection.
//! - The user types on: the editor abandons the chat halfway, which cancels the engine's
//!   handler.
//!
//! Run: `cargo run --release -p shmrpc --example editor_engine`
//! (it starts the engine as a child process of itself).
//!
//! With `--tls`, the same conversation runs over TCP instead, as between two hosts: TLS 1.3
//! with certificates both ways (mutual TLS) and a token. The editor makes a CA, the
//! engine's and its own certificate, and a token, in memory (rcgen), and hands the engine
//! what it needs on its standard input; the engine listens on 127.0.0.1, a port the OS
//! picks, and says which. Real deployments load these from files
//! (`ServerTls::from_pem_files`, `ClientTls::from_ca_file`, `Token::load`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmrpc::{
    CallOptions, Client, ClientBuilder, ClientConfig, ClientTls, Code, Items, RpcError,
    ServerBuilder, ServerConfig, ServerTls, TcpClientConfig, TcpServerConfig, Token,
};

/// A place in a document, as language servers count it (zero-based).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Position {
    line: u32,
    character: u32,
}

/// The parameters of both document requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TextDocumentPosition {
    uri: String,
    position: Position,
}

/// One completion suggestion.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CompletionItem {
    label: String,
    detail: String,
}

/// What the editor shows when the pointer rests on a symbol.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hover {
    contents: String,
}

/// How much harm a tool run could do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Risk {
    Low,
    High,
}

/// What the engine asks the editor before it runs a tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ToolApproval {
    command: String,
    risk: Risk,
}

/// A problem the engine found, pushed to the editor as a notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Diagnostic {
    uri: String,
    line: u32,
    message: String,
}

/// The diagnostics the engine's tool run finds.
const FINDINGS: [(u32, &str); 3] = [
    (3, "unused variable `x`"),
    (7, "this test has no assertion"),
    (9, "missing documentation"),
];

/// The conversation the editor sends, one message at a time.
const CONVERSATION: [&str; 3] = [
    "explain fn main ( ) { }",
    "now add a test for it",
    "and make the test run on every platform we ship to please",
];

/// Tokens of the last message the editor reads before the user types on.
const READ_OF_LAST: usize = 4;

#[derive(Default)]
struct EngineStats {
    cancelled: AtomicU64,
    tokens: AtomicU64,
}

/// Where the engine listens.
enum Listen {
    /// Shared memory, under this name.
    Shm(String),
    /// TCP on 127.0.0.1 (any port), with mutual TLS and a token.
    Tls(EngineSecrets),
}

/// Where the editor connects.
enum Dial {
    Shm(String),
    Tls(std::net::SocketAddr, EditorSecrets),
}

/// What the engine needs for TLS: the CA its clients' certificates must be signed by, its
/// own certificate and key, and the token.
struct EngineSecrets {
    ca: String,
    cert: String,
    key: String,
    token: Token,
}

/// What the editor needs: the CA the engine's certificate must be signed by, its own
/// certificate and key, and the token.
struct EditorSecrets {
    ca: String,
    cert: String,
    key: String,
    token: Token,
}

/// A CA, and the engine's ("localhost") and the editor's certificates signed by it.
fn make_secrets() -> Result<(EngineSecrets, EditorSecrets), Box<dyn std::error::Error>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "editor-engine example CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, usage| -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    };
    let (engine_cert, engine_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (editor_cert, editor_key) = leaf("editor.example", ExtendedKeyUsagePurpose::ClientAuth)?;
    let token = Token::generate()?;
    Ok((
        EngineSecrets {
            ca: ca_pem.clone(),
            cert: engine_cert,
            key: engine_key,
            token: token.clone(),
        },
        EditorSecrets {
            ca: ca_pem,
            cert: editor_cert,
            key: editor_key,
            token,
        },
    ))
}

impl EngineSecrets {
    /// Length-prefixed fields, for the engine's standard input (never its command line
    /// or environment, which other processes of the user may read).
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let token = self.token.to_hex();
        for field in [&self.ca, &self.cert, &self.key, &token] {
            out.extend_from_slice(format!("{}\n", field.len()).as_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    fn from_bytes(mut s: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let mut field = || -> Result<String, Box<dyn std::error::Error>> {
            let (len, rest) = s.split_once('\n').ok_or("truncated secrets")?;
            let len: usize = len.parse()?;
            let value = rest.get(..len).ok_or("truncated secrets")?.to_string();
            s = &rest[len..];
            Ok(value)
        };
        Ok(Self {
            ca: field()?,
            cert: field()?,
            key: field()?,
            token: Token::from_hex(&field()?)?,
        })
    }
}

async fn engine(listen: Listen) -> Result<(), Box<dyn std::error::Error>> {
    let stats = Arc::new(EngineStats::default());
    let s2 = stats.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    let cfg = match &listen {
        Listen::Shm(_) => ServerConfig::default(),
        Listen::Tls(secrets) => ServerConfig::default().with_tcp(
            TcpServerConfig::default()
                .with_tls(
                    ServerTls::from_pem(secrets.cert.clone(), secrets.key.clone())
                        .with_client_ca_pem(secrets.ca.clone()),
                )
                .with_token(secrets.token.clone()),
        ),
    };
    let routes = ServerBuilder::new(cfg)
        .bidi("chat", move |ctx, mut messages: Items<String>, sink| {
            let stats = s2.clone();
            async move {
                let mut turn = 0;
                loop {
                    // The next message of the conversation, or the editor giving up.
                    let message = tokio::select! {
                        m = messages.next() => m,
                        () = ctx.cancelled() => None,
                    };
                    let message = match message {
                        Some(Ok(m)) => m,
                        // The editor finished the conversation.
                        None if !ctx.is_cancelled() => return Ok(()),
                        // Cancelled (dropped by the editor).
                        _ => break,
                    };
                    turn += 1;
                    for (i, word) in message.split_whitespace().enumerate() {
                        tokio::select! {
                            () = ctx.cancelled() => break,
                            // "Thinking" between tokens.
                            () = tokio::time::sleep(Duration::from_millis(2)) => {}
                        }
                        sink.send(&format!("{turn}.{i}:{word}")).await?;
                        stats.tokens.fetch_add(1, Ordering::SeqCst);
                    }
                    if turn == 2 {
                        // The answer needs a tool run: ask the editor first, on the same
                        // connection, while its chat call is open.
                        let ask = ToolApproval {
                            command: "cargo test".into(),
                            risk: Risk::Low,
                        };
                        let opts = CallOptions::timeout(Duration::from_secs(10));
                        let approved: bool = ctx.peer().call("approveTool", &ask, opts).await?;
                        let verdict = if approved { "approved" } else { "denied" };
                        if approved {
                            // What the run found goes to the editor as it is found.
                            for (line, message) in FINDINGS {
                                let d = Diagnostic {
                                    uri: "file:///src/main.rs".into(),
                                    line,
                                    message: message.into(),
                                };
                                ctx.peer()
                                    .notify("textDocument/publishDiagnostics", &d)
                                    .await?;
                            }
                        }
                        sink.send(&format!("{turn}.tool:cargo test {verdict}"))
                            .await?;
                    }
                    if ctx.is_cancelled() {
                        break;
                    }
                }
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                Err(RpcError::new(Code::Cancelled, "editor moved on"))
            }
        })
        .unary(
            "textDocument/completion",
            |_ctx, p: TextDocumentPosition| async move {
                let items = ["println!", "print!", "panic!"]
                    .iter()
                    .map(|label| CompletionItem {
                        label: label.to_string(),
                        detail: format!("macro, {}:{}", p.position.line, p.position.character),
                    })
                    .collect::<Vec<_>>();
                Ok(items)
            },
        )
        .unary(
            "textDocument/hover",
            |_ctx, p: TextDocumentPosition| async move {
                Ok(Hover {
                    contents: format!(
                        "{}:{}:{}: fn main()",
                        p.uri, p.position.line, p.position.character
                    ),
                })
            },
        )
        .unary("stats", move |_ctx, (): ()| {
            let stats = stats.clone();
            async move {
                Ok((
                    stats.cancelled.load(Ordering::SeqCst),
                    stats.tokens.load(Ordering::SeqCst),
                ))
            }
        })
        .unary("quit", move |_ctx, (): ()| {
            let stop = stop2.clone();
            async move {
                stop.notify_one();
                Ok(())
            }
        });
    let server = match &listen {
        Listen::Shm(name) => routes.bind(name)?,
        Listen::Tls(_) => routes.bind_tcp("127.0.0.1:0".parse()?).await?,
    };
    // A graceful shutdown: finish calls in flight, then remove the socket on the way out.
    let handle = server.handle();
    tokio::spawn(async move {
        stop.notified().await;
        handle.shutdown();
    });
    // Where the editor finds the engine: the shared-memory name it chose, or the port.
    match server.local_addr() {
        Some(addr) => println!("ready {addr}"),
        None => println!("ready"),
    }
    server.serve().await;
    Ok(())
}

/// A completion request at 3:7, as the editor sends one per keystroke.
async fn complete(client: &Client) -> Result<Vec<CompletionItem>, RpcError> {
    let at = TextDocumentPosition {
        uri: "file:///src/main.rs".into(),
        position: Position {
            line: 3,
            character: 7,
        },
    };
    let opts = CallOptions::timeout(Duration::from_secs(5));
    client.call("textDocument/completion", &at, opts).await
}

/// Median and largest of some durations, in microseconds.
fn p50_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        v.get(v.len() / 2).copied().map_or(0.0, us),
        v.last().copied().map_or(0.0, us),
    )
}

/// Reads the engine's tokens of one turn: `words` tokens in order (and the tool verdict
/// line on the turn that runs a tool).
async fn read_turn(
    rx: &mut shmrpc::CallStream,
    turn: usize,
    words: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    for expect in 0..words {
        let token: String = rx.next().await.ok_or("chat ended early")??;
        let (at, _word) = token.split_once(':').ok_or("token without position")?;
        if at != format!("{turn}.{expect}") {
            return Err(format!("token {token:?} out of order (expected {turn}.{expect})").into());
        }
        println!("editor <- {token}");
    }
    Ok(())
}

async fn editor(dial: Dial) -> Result<(), Box<dyn std::error::Error>> {
    let approvals = Arc::new(AtomicU64::new(0));
    // Diagnostics shown so far (they come on their own, not as answers to anything).
    let (seen, mut shown) = tokio::sync::watch::channel(0usize);
    let a2 = approvals.clone();
    let cfg = match &dial {
        Dial::Shm(_) => ClientConfig::default(),
        Dial::Tls(_, secrets) => ClientConfig::default().with_tcp(
            TcpClientConfig::default()
                .with_tls(
                    ClientTls::from_ca_pem(secrets.ca.clone(), "localhost")
                        .with_client_cert_pem(secrets.cert.clone(), secrets.key.clone()),
                )
                .with_token(secrets.token.clone()),
        ),
    };
    let builder = ClientBuilder::new(cfg)
        .unary("approveTool", move |_ctx, ask: ToolApproval| {
            let approvals = a2.clone();
            async move {
                // Here a real editor shows a dialog; this user approves low-risk runs.
                let ok = matches!(ask.risk, Risk::Low);
                println!(
                    "editor: the engine asks to run `{}` (risk {:?}): {}",
                    ask.command,
                    ask.risk,
                    if ok { "approved" } else { "denied" }
                );
                approvals.fetch_add(1, Ordering::SeqCst);
                Ok(ok)
            }
        })
        .on_notify("textDocument/publishDiagnostics", {
            let seen = seen.clone();
            move |_ctx, d: Diagnostic| {
                let seen = seen.clone();
                async move {
                    println!("editor: diagnostic {}:{}: {}", d.uri, d.line, d.message);
                    seen.send_modify(|n| *n += 1);
                }
            }
        });
    let client = match &dial {
        Dial::Shm(name) => builder.connect(name).await?,
        Dial::Tls(addr, _) => builder.connect_tcp(*addr).await?,
    };
    // How the engine sees this connection (every server answers the inspect method).
    let report: shmrpc::inspect::ServerReport = client
        .call(
            shmrpc::inspect::INSPECT_METHOD,
            &(),
            CallOptions::timeout(Duration::from_secs(5)),
        )
        .await?;
    let transports: Vec<&str> = report
        .connections
        .iter()
        .map(|c| c.transport.as_str())
        .collect();
    println!("editor: the engine serves this connection over {transports:?}");

    // Completion latency on the idle connection, for comparison.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        complete(&client).await?;
        idle.push(t.elapsed());
    }

    let (mut tx, mut rx) = client
        .call_bidi("chat", CallOptions::default())
        .await?
        .split();
    // Meanwhile, language-server-style requests on the same connection (another task),
    // one per "keystroke" until the chat is over.
    let chatting = Arc::new(AtomicBool::new(true));
    let lsp = tokio::spawn({
        let (client, chatting) = (client.clone(), chatting.clone());
        async move {
            let mut during = Vec::new();
            let mut items = Vec::new();
            while chatting.load(Ordering::SeqCst) || during.is_empty() {
                let t = Instant::now();
                items = complete(&client).await?;
                during.push(t.elapsed());
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            let at = TextDocumentPosition {
                uri: "file:///src/main.rs".into(),
                position: Position {
                    line: 3,
                    character: 7,
                },
            };
            let opts = CallOptions::timeout(Duration::from_secs(5));
            let hover: Hover = client.call("textDocument/hover", &at, opts).await?;
            Ok::<_, RpcError>((items, hover, during))
        }
    });

    for (i, message) in CONVERSATION.iter().enumerate() {
        let turn = i + 1;
        println!("editor -> {message}");
        tx.send(&message.to_string()).await?;
        let words = message.split_whitespace().count();
        if turn < CONVERSATION.len() {
            read_turn(&mut rx, turn, words).await?;
        } else {
            read_turn(&mut rx, turn, READ_OF_LAST.min(words)).await?;
        }
        if turn == 2 {
            let verdict: String = rx.next().await.ok_or("no tool verdict")??;
            println!("editor <- {verdict}");
        }
    }
    println!("editor: user typed on; abandoning the chat");
    drop((tx, rx));
    chatting.store(false, Ordering::SeqCst);
    let (items, hover, during) = lsp.await??;
    let labels: Vec<&str> = items.iter().map(|i| i.label.as_str()).collect();
    let detail = items.first().map_or("", |i| i.detail.as_str());
    println!("editor: completion at 3:7 -> {labels:?} ({detail})");
    println!("editor: hover at 3:7 -> {}", hover.contents);
    let ((idle50, idle_max), (busy50, busy_max)) = (p50_max(idle), p50_max(during.clone()));
    println!(
        "editor: completion latency p50 {idle50:.1} µs idle, {busy50:.1} µs during the chat \
         ({:.2}x; max {idle_max:.0} / {busy_max:.0} µs; {} requests during the chat)",
        busy50 / idle50.max(f64::MIN_POSITIVE),
        during.len()
    );
    println!(
        "editor: approved {} tool run(s)",
        approvals.load(Ordering::SeqCst)
    );
    // The engine pushed the run's diagnostics before its verdict; their handler runs apart
    // from this task, so wait (bounded) until all are shown.
    tokio::time::timeout(
        Duration::from_secs(10),
        shown.wait_for(|n| *n >= FINDINGS.len()),
    )
    .await
    .map_err(|_| "not every diagnostic arrived")??;
    for _ in 0..100 {
        let (cancelled, tokens): (u64, u64) = client
            .call("stats", &(), CallOptions::timeout(Duration::from_secs(5)))
            .await?;
        if cancelled > 0 {
            println!("engine saw the cancel after {tokens} tokens");
            let () = client.call("quit", &(), CallOptions::default()).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the engine never saw the cancel".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = format!("editor-engine-{}", std::process::id());
    match args.get(1).map(String::as_str) {
        Some("engine") => engine(Listen::Shm(args[2].clone())).await,
        Some("engine-tls") => {
            let mut secrets = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut secrets)?;
            engine(Listen::Tls(EngineSecrets::from_bytes(&secrets)?)).await
        }
        mode => {
            let tls = mode == Some("--tls");
            let secrets = if tls { Some(make_secrets()?) } else { None };
            let mut child = std::process::Command::new(std::env::current_exe()?)
                .args(if tls {
                    vec!["engine-tls".to_string()]
                } else {
                    vec!["engine".to_string(), name.clone()]
                })
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            if let Some((engine_secrets, _)) = &secrets {
                std::io::Write::write_all(&mut stdin, &engine_secrets.to_bytes())?;
            }
            drop(stdin);
            // Wait for "ready" so the first connect finds the engine.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?),
                &mut line,
            )?;
            let dial = match secrets {
                Some((_, editor_secrets)) => {
                    let addr = line
                        .trim()
                        .strip_prefix("ready ")
                        .ok_or("the engine did not say where it listens")?
                        .parse()?;
                    println!("editor: connecting to the engine at {addr} over TLS (mutual, with a token)");
                    Dial::Tls(addr, editor_secrets)
                }
                None => Dial::Shm(name),
            };
            let result = editor(dial).await;
            let status = child.wait()?;
            result?;
            if !status.success() {
                return Err(format!("engine exited with {status}").into());
            }
            println!("done");
            Ok(())
        }
    }
}
