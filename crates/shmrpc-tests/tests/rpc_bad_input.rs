//! Bad input to an RPC server process, while a well-behaved client keeps getting correct
//! answers before, during and after:
//!
//! - a client process sending garbage frames on a raw channel (random bytes, a short frame,
//!   wrong magic, version, kind, flags or reserved bytes, a header lying about the length,
//!   a bad CRC, a CRC where the flags say there is none, a frame only a server may send,
//!   interleaved fragments, a stray continuation): each of its connections is closed by
//!   the server;
//! - an unknown method gets `UnknownMethod`; an oversized request `TooLarge` on the client
//!   side, without reaching the server; an oversized response `TooLarge`;
//! - a client process running as another user cannot connect and gets a clear error;
//! - a server speaking another frame or handshake version gets a clear error on the client;
//! - garbage over TCP closes that connection only, and so does a frame without a CRC
//!   (only shared memory may send one); the server's frames on shared memory carry none.
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmrpc::{CallOptions, Client, ClientConfig, Code};
use shmrpc_tests::{
    field, field_parse, make_request, rpc_runtime, rpc_stats, rpc_wait_stats, socket_file,
    spawn_peer, transform, with_watchdog, within, BadServerMode, PeerCommand, PeerProcess,
    RpcTarget, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);
/// The server's largest message in these tests.
const SERVER_MAX: usize = 1 << 20;

fn start_server(name: &str) -> PeerProcess {
    let mut p = spawn_peer!(PeerCommand::RpcServer {
        target: RpcTarget::Shm(name.to_owned()),
        cap: 65536,
        heartbeat_ms: 2000,
        max_message: SERVER_MAX,
        max_in_flight: None,
        handshake_timeout_ms: None,
    });
    p.expect("ready", WAIT);
    p
}

fn stop_server(mut p: PeerProcess) {
    p.send("exit");
    p.expect("done", WAIT);
    p.assert_exits_ok(WAIT);
}

/// One checked call of `transform`.
async fn good_call(c: &Client, seq: u64) {
    let req = make_request(seq);
    let r = within(
        "a well-behaved call",
        WAIT,
        c.call_raw("transform", &req, CallOptions::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("well-behaved call {seq}: {e}"));
    assert_eq!(r, transform(&req), "answer to call {seq}");
}

/// A well-behaved client calling in the background until stopped; panics (failing the
/// test when joined) on any wrong or failed answer. Returns the number of calls made.
struct Background {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(rt: &tokio::runtime::Runtime, c: &Client) -> Self {
        let (stop, count) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s2, n2, c) = (stop.clone(), count.clone(), c.clone());
        let task = rt.spawn(async move {
            let mut seq = 1 << 40;
            while !s2.load(Ordering::SeqCst) {
                good_call(&c, seq).await;
                seq += 1;
                n2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        Self { stop, count, task }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        rt.block_on(within("the background caller", WAIT, self.task))
            .expect("the background caller failed");
        self.count.load(Ordering::SeqCst)
    }
}

#[test]
fn garbage_frames_close_only_the_senders_connection() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-garbage");
        let server = start_server(&name);
        let rt = rpc_runtime();
        let client = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");
        rt.block_on(async {
            for seq in 0..20 {
                good_call(&client, seq).await;
            }
        });
        let bg = Background::start(&rt, &client);
        let mut garbler = spawn_peer!(PeerCommand::RpcGarbage { name: name.clone() });
        let mut kinds = 0;
        let mut seq = 100;
        loop {
            let line = garbler.expect("", WAIT);
            if line == "done" {
                break;
            }
            if !line.starts_with("garbage ") {
                continue;
            }
            kinds += 1;
            assert_eq!(field(&line, "echo"), Some("ok"), "{line}");
            let end = field(&line, "end").unwrap_or("");
            assert!(
                end == "closed" || end == "peer-gone",
                "the server did not close a connection that sent garbage: {line}"
            );
            // And it said why first (if its ring to this connection had room, which in
            // this test it always has).
            let protocol = (shmrpc::Code::Protocol as u16).to_string();
            assert_eq!(field(&line, "said"), Some(protocol.as_str()), "{line}");
            // Between two garbage connections, the well-behaved client is served.
            rt.block_on(good_call(&client, seq));
            seq += 1;
        }
        assert_eq!(kinds, 14, "every kind of garbage reported");
        garbler.assert_exits_ok(WAIT);
        let during = bg.finish(&rt);
        rt.block_on(async {
            for seq in 1000..1020 {
                good_call(&client, seq).await;
            }
        });
        println!("well-behaved client: {during} background calls while garbage was sent");
        drop(client);
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

#[test]
fn unknown_methods_and_oversized_messages_get_clear_codes() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-codes");
        let server = start_server(&name);
        let rt = rpc_runtime();
        rt.block_on(async {
            let client = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            good_call(&client, 1).await;
            let e = client
                .call_raw("no.such.method", b"?", CallOptions::default())
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::UnknownMethod, "{e}");

            // Larger than the client's maximum (16 MiB by default): refused by the client
            // itself, at once; the server never sees it.
            let calls = field_parse::<u64>(&rpc_stats(&client).await, "calls");
            let huge = vec![7u8; (16 << 20) + 1];
            let e = within(
                "an oversized call",
                WAIT,
                client.call_raw("echo", &huge, CallOptions::default()),
            )
            .await
            .unwrap_err();
            assert_eq!(e.code, Code::TooLarge, "{e}");
            let small = ClientConfig::default().with_max_message(64 << 10);
            let limited = Client::connect(&name, small).await.expect("connect");
            let e = limited
                .call_raw("echo", &vec![1u8; 64 << 10], CallOptions::default())
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::TooLarge, "{e}");
            let st = rpc_stats(&client).await;
            assert_eq!(field_parse::<u64>(&st, "calls"), calls, "{st}");

            // A response larger than the server's maximum: the server refuses to send it.
            let e = client
                .call_raw(
                    "blob",
                    &shmrpc::encode(&((SERVER_MAX + 1) as u32)).unwrap(),
                    CallOptions::default(),
                )
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::TooLarge, "{e}");
            // The largest message the server takes comes through whole (fragmented).
            let big: Vec<u8> = (0..SERVER_MAX - 4).map(|i| (i % 253) as u8).collect();
            assert_eq!(
                client
                    .call_raw("echo", &big, CallOptions::default())
                    .await
                    .unwrap(),
                big
            );
            good_call(&client, 2).await;
            good_call(&limited, 3).await;
        });
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

/// A request within the client's limit but above the server's: the client should get
/// `TooLarge` (the limits are part of the handshake by design), and the
/// connection, with the other calls on it, should survive.
#[test]
fn a_request_above_the_servers_limit_fails_too_large_without_breaking_the_connection() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-server-limit");
        let server = start_server(&name);
        let rt = rpc_runtime();
        rt.block_on(async {
            let client = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            // A call in flight on the same connection while the oversized one is sent.
            let c = client.clone();
            let pending = tokio::spawn(async move {
                c.call_raw(
                    "slow",
                    b"",
                    CallOptions::timeout(Duration::from_millis(1500)),
                )
                .await
            });
            shmrpc_tests::rpc_wait_stats(&client, "the other call running", WAIT, |s| {
                field_parse::<i64>(s, "slow_in_flight") == 1
            })
            .await;
            let e = within(
                "a request above the server's limit",
                WAIT,
                client.call_raw("echo", &vec![3u8; 2 * SERVER_MAX], CallOptions::default()),
            )
            .await
            .expect_err("the server cannot accept it");
            let other = within("the other call", WAIT, pending).await.unwrap();
            println!("request above the server's limit: {e}; the other call: {other:?}");
            good_call(&client, 5).await;
            assert_eq!(e.code, Code::TooLarge, "{e}");
            assert_eq!(
                other.as_ref().map_err(|e| e.code),
                Err(Code::DeadlineExceeded),
                "the other call on the connection was affected: {other:?}"
            );
        });
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

/// Removes a directory tree when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts the socket mode back when dropped.
struct RestoreMode(PathBuf);

impl Drop for RestoreMode {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o600));
    }
}

#[test]
fn a_client_running_as_another_user_cannot_connect_and_the_server_serves_on() {
    if rustix::process::geteuid().as_raw() != 0 {
        println!("skipped: switching to another user needs root");
        return;
    }
    with_watchdog(Duration::from_secs(60), || {
        use std::os::unix::fs::PermissionsExt;
        const NOBODY: u32 = 65534;
        let mut names = TestNames::new();
        let name = names.name("rpc-foreign");
        let server = start_server(&name);
        let rt = rpc_runtime();
        let client = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");
        rt.block_on(good_call(&client, 1));
        let before = rt.block_on(rpc_stats(&client));

        // The other user's runtime directory (XDG_RUNTIME_DIR/shmrpc, 0700, its own).
        let top = TempDir(std::env::temp_dir().join(shmrpc_tests::unique_name("foreign-xdg")));
        let their_dir = top.0.join("shmrpc");
        std::fs::create_dir_all(&their_dir).unwrap();
        std::os::unix::fs::chown(&top.0, Some(NOBODY), Some(NOBODY)).unwrap();
        std::os::unix::fs::chown(&their_dir, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&their_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        let ours = socket_file(&name);
        // The build tree may sit in a directory the other user cannot enter (a fresh clone
        // under a 0700 temporary directory): give it its own copy of the peer binary.
        let their_peer = top.0.join("peer");
        shmrpc_tests::install_peer_exe(env!("CARGO_BIN_EXE_peer"), &their_peer);
        let mut cmd = PeerCommand::RpcForeign {
            name: name.clone(),
            server_socket: ours.clone(),
        }
        .command(&their_peer);
        cmd.env("XDG_RUNTIME_DIR", &top.0).uid(NOBODY).gid(NOBODY);
        let mut foreign = PeerProcess::spawn_command(cmd);

        // Our socket is in our 0700 runtime directory: the other user cannot reach it.
        let direct = foreign.expect("direct", WAIT);
        assert_eq!(field(&direct, "uid"), Some("65534"), "{direct}");
        assert_eq!(
            field(&direct, "result"),
            Some("PermissionDenied"),
            "{direct}"
        );
        // Its client looks in its own directory and finds no server there.
        let rpc = foreign.expect("rpc", WAIT);
        assert_eq!(field(&rpc, "code"), Some("Unavailable"), "{rpc}");
        assert!(rpc.contains("no_server_listens"), "{rpc}");

        // Now hand it our socket anyway (a link in its directory, the socket opened to
        // all): the uid checks on both sides refuse the connection.
        let link = their_dir.join(format!("{name}.sock"));
        std::fs::hard_link(&ours, &link).unwrap();
        let _restore = RestoreMode(ours.clone());
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o666)).unwrap();
        foreign.send("again");
        let linked = foreign.expect("rpc-linked", WAIT);
        assert_eq!(field(&linked, "code"), Some("Unavailable"), "{linked}");
        assert!(linked.contains("server_uid_0_is_not_ours"), "{linked}");
        let raw = foreign.expect("raw", WAIT);
        // The server sends a foreign uid nothing (no hello, no descriptors) and hangs up.
        assert_eq!(field(&raw, "connect"), Some("ok"), "{raw}");
        assert_eq!(field(&raw, "read"), Some("0"), "{raw}");
        foreign.expect("done", WAIT);
        foreign.assert_exits_ok(WAIT);
        std::fs::remove_file(&link).unwrap();
        drop(_restore);

        // The server serves on, and holds no descriptor for the refused connections. Each
        // refusal runs in its own handshake task, and the foreign client saw its own end
        // closed, not the end of that task: poll (bounded) until the server has let go.
        rt.block_on(good_call(&client, 2));
        let before_fds = field_parse::<u64>(&before, "fds");
        rt.block_on(rpc_wait_stats(
            &client,
            "the refused connections' descriptors to be closed",
            WAIT,
            |s| field_parse::<u64>(s, "fds") == before_fds,
        ));
        drop(client);
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

#[test]
fn a_server_speaking_another_version_gets_a_clear_error() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let rt = rpc_runtime();

        // Frames of the next version in answer to a call.
        let name = names.name("rpc-frame-version");
        let mut bad = spawn_peer!(PeerCommand::RpcBadServer {
            name: name.clone(),
            mode: BadServerMode::FrameVersion,
        });
        bad.expect("ready", WAIT);
        let e = rt.block_on(async {
            let c = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            within(
                "a call answered in another frame version",
                WAIT,
                c.call_raw("echo", b"hi", CallOptions::default()),
            )
            .await
            .expect_err("an answer of another version is not an answer")
        });
        assert_eq!(e.code, Code::Protocol, "{e}");
        assert!(e.message.contains("version"), "{e}");
        bad.expect("answered", WAIT);
        bad.send("exit");
        bad.assert_exits_ok(WAIT);

        // A handshake of the next version.
        let name = names.name("rpc-hello-version");
        let mut bad = spawn_peer!(PeerCommand::RpcBadServer {
            name: name.clone(),
            mode: BadServerMode::HelloVersion,
        });
        bad.expect("ready", WAIT);
        let cfg = ClientConfig::default().with_reconnect_for(Duration::from_millis(200));
        let e = rt
            .block_on(within(
                "connecting to a server of another handshake version",
                WAIT,
                Client::connect(&name, cfg),
            ))
            .expect_err("a handshake of another version is refused");
        let chain = shmrpc_tests::error_chain(&e);
        assert!(matches!(e, shmrpc::ConnectError::Shm { .. }), "{chain}");
        assert!(chain.contains("handshake version"), "{chain}");
        bad.expect("sent", WAIT);
        bad.send("exit");
        bad.expect("done", WAIT);
        bad.assert_exits_ok(WAIT);
        drop(rt);
        names.assert_clean_with_locks();
    });
}

#[test]
fn garbage_over_tcp_closes_only_that_connection() {
    use std::io::{Read, Write};
    with_watchdog(Duration::from_secs(60), || {
        let mut server = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Tcp,
            cap: 65536,
            heartbeat_ms: 2000,
            max_message: 1 << 20,
            max_in_flight: None,
            handshake_timeout_ms: None,
        });
        let ready = server.expect("ready", WAIT);
        let addr: std::net::SocketAddr = field(&ready, "addr").unwrap().parse().unwrap();
        let rt = rpc_runtime();
        let client = rt
            .block_on(Client::connect_tcp(addr, ClientConfig::default()))
            .expect("connect");
        let mut rng = shmrpc_tests::SplitMix64::new(99);
        let random: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
        // A valid header claiming 4 GiB of payload.
        let mut lying = shmrpc::lowlevel::frame::encode(
            &shmrpc::lowlevel::frame::FrameHeader {
                kind: shmrpc::lowlevel::frame::Kind::Request,
                flags: shmrpc::lowlevel::frame::FLAG_TO_CALLEE,
                method: shmrpc::method_id("echo"),
                call_id: 1,
                len: 0,
            },
            &[0u8; 8],
        )
        .unwrap();
        lying[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        // A well-formed echo request, but without a CRC: answered on shared memory, refused
        // over a network.
        let mut deadline_and_body = 0u32.to_le_bytes().to_vec();
        deadline_and_body.extend_from_slice(b"no crc");
        let unchecked = shmrpc::lowlevel::frame::encode(
            &shmrpc::lowlevel::frame::FrameHeader {
                kind: shmrpc::lowlevel::frame::Kind::Request,
                flags: shmrpc::lowlevel::frame::FLAG_TO_CALLEE
                    | shmrpc::lowlevel::frame::FLAG_UNCHECKED,
                method: shmrpc::method_id("echo"),
                call_id: 1,
                len: 0,
            },
            &deadline_and_body,
        )
        .unwrap();
        for (seq, (what, bytes)) in [
            ("random", random),
            ("lying length", lying),
            ("no CRC", unchecked),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            // Past the connection handshake, so that the frame reader gets the garbage
            // (before it, the hello refuses it: `remote_abuse.rs`).
            shmrpc_tests::plain_tcp_hello(&mut s);
            s.write_all(&bytes).unwrap();
            // Closed: end of file, or a reset if our garbage was still unread. Before it,
            // the server may say why (an Error of call 0, code Protocol: a reset can
            // drop it), and nothing else.
            let mut said = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Ok(n) => said.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("{what}: the server did not close the connection: {e}"),
                }
            }
            let mut rest = &said[..];
            while !rest.is_empty() {
                let (h, why) = shmrpc::lowlevel::frame::decode(rest)
                    .unwrap_or_else(|e| panic!("{what}: {} bytes, not a frame: {e}", rest.len()));
                assert_eq!(
                    (h.kind, h.call_id),
                    (shmrpc::lowlevel::frame::Kind::Error, 0),
                    "{what}: the server answered garbage"
                );
                let protocol = (shmrpc::Code::Protocol as u16).to_le_bytes();
                assert_eq!(
                    why[..2],
                    protocol,
                    "{what}: {:?}",
                    String::from_utf8_lossy(why)
                );
                rest = &rest[shmrpc::lowlevel::frame::FRAME_HEADER_LEN + why.len()..];
            }
            rt.block_on(good_call(&client, seq as u64));
        }
        drop(client);
        drop(rt);
        stop_server(server);
    });
}

/// A client process that holds the real shared memory of its connection and breaks it on
/// purpose: record lengths past the end of the ring or huge, padding that stops short, a
/// frame header lying about its length, a length word flipped while the server may be
/// reading it, its consumer position moved beyond, backwards or off alignment, every
/// doorbell rung as fast as it can, and answers never read. Each broken connection is
/// closed by the server; a flood or a stalled reader costs only that connection; a
/// well-behaved client is served throughout, and the server exits cleanly at the end.
#[test]
fn a_client_writing_into_the_shared_memory_loses_only_its_own_connection() {
    with_watchdog(Duration::from_secs(120), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-hostile");
        let server = start_server(&name);
        let rt = rpc_runtime();
        let client = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");
        rt.block_on(good_call(&client, 0));
        let bg = Background::start(&rt, &client);
        let mut hostile = spawn_peer!(PeerCommand::RpcHostile { name: name.clone() });
        let mut seen = Vec::new();
        let mut seq = 100;
        loop {
            let line = hostile.expect("", Duration::from_secs(30));
            if line == "done" {
                break;
            }
            if line.starts_with("flooded ") {
                assert!(field_parse::<u64>(&line, "writes") > 0, "{line}");
                continue;
            }
            if !line.starts_with("hostile ") {
                continue;
            }
            let mode = field(&line, "mode").unwrap_or("").to_owned();
            assert_eq!(field(&line, "echo"), Some("answered"), "{line}");
            let end = field(&line, "end").unwrap_or("");
            let allowed: &[&str] = match mode.as_str() {
                // A lie the server may read before or after the flip: checked either way.
                "length-flip" => &["closed", "answered"],
                // Not a protocol violation: the server just keeps serving it.
                "doorbell-flood" => &["answered"],
                "never-consume" => &["stalled"],
                _ => &["closed"],
            };
            assert!(
                allowed.contains(&end),
                "mode {mode}: the connection ended {end:?}, expected one of {allowed:?}: {line}"
            );
            println!("{line}");
            seen.push(mode);
            // Between two attacks, the well-behaved client is served.
            rt.block_on(good_call(&client, seq));
            seq += 1;
        }
        assert_eq!(seen.len(), 10, "every attack reported: {seen:?}");
        hostile.assert_exits_ok(WAIT);
        let during = bg.finish(&rt);
        assert!(during > 0, "the background client made no call");
        rt.block_on(async {
            for seq in 1000..1020 {
                good_call(&client, seq).await;
            }
        });
        println!("well-behaved client: {during} background calls during the attacks");
        drop(client);
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}
