//! Peers that send what a correct peer never would: malformed frames, newer protocol
//! versions, and a client running as another user.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig, RecvError};
use shmrpc::lowlevel::frame::{
    self, FrameHeader, Kind, FLAG_CONTINUES, FLAG_MORE, FLAG_TO_CALLEE, FLAG_UNCHECKED,
    FRAME_HEADER_LEN, FRAME_VERSION,
};
use shmrpc::method_id;
use shmrpc::{Client, ClientConfig};
use shmrpc_tests::BadServerMode;

use crate::rpc::rpc_runtime;
use crate::{accept, bind, fail, say, serve_stdin, wait_for_exit};

/// A frame as a client would send it.
pub(crate) fn frame_bytes(
    kind: Kind,
    flags: u16,
    method: u32,
    call_id: u64,
    payload: &[u8],
) -> Vec<u8> {
    let h = FrameHeader {
        kind,
        flags,
        method,
        call_id,
        len: 0,
    };
    frame::encode(&h, payload).unwrap_or_else(|e| fail(format!("encode: {e}")))
}

/// Recomputes the CRC of a frame after its header was edited.
fn fix_crc(f: &mut [u8]) {
    f[24..28].fill(0);
    let c = crc32c::crc32c_append(
        crc32c::crc32c(&f[..FRAME_HEADER_LEN]),
        &f[FRAME_HEADER_LEN..],
    );
    f[24..28].copy_from_slice(&c.to_le_bytes());
}

/// A well-formed `echo` request (deadline prefix 0).
pub(crate) fn echo_request(call_id: u64, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 4];
    p.extend_from_slice(body);
    frame_bytes(
        Kind::Request,
        FLAG_TO_CALLEE,
        method_id("echo"),
        call_id,
        &p,
    )
}

/// The messages of one kind of garbage (each sent as one ring record).
fn garbage(kind: &str) -> Vec<Vec<u8>> {
    let mut rng = shmrpc_tests::SplitMix64::new(0x6a7b);
    let good = echo_request(7, b"garbage follows");
    let edited = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut g = good.clone();
        f(&mut g);
        g
    };
    match kind {
        "random" => vec![(0..100).map(|_| rng.next() as u8).collect()],
        "short" => vec![good[..FRAME_HEADER_LEN - 5].to_vec()],
        "magic" => vec![edited(&|g| {
            g[0] = b'X';
            fix_crc(g);
        })],
        "version" => vec![edited(&|g| {
            g[4] = FRAME_VERSION + 1;
            fix_crc(g);
        })],
        "kind" => vec![edited(&|g| {
            g[5] = 200;
            fix_crc(g);
        })],
        "flags" => vec![edited(&|g| {
            g[6] = 0x80;
            fix_crc(g);
        })],
        "reserved" => vec![edited(&|g| {
            g[29] = 1;
            fix_crc(g);
        })],
        // The header claims more payload than follows, and less.
        "length-long" => vec![edited(&|g| {
            let n = (g.len() - FRAME_HEADER_LEN + 1000) as u32;
            g[12..16].copy_from_slice(&n.to_le_bytes());
            fix_crc(g);
        })],
        "length-short" => vec![edited(&|g| {
            g[12..16].copy_from_slice(&3u32.to_le_bytes());
            fix_crc(g);
        })],
        "crc" => vec![edited(&|g| {
            let last = g.len() - 1;
            g[last] ^= 0x20;
        })],
        // Marked as carrying no CRC (as shared-memory frames are), with one in its field.
        "unchecked-crc" => vec![edited(&|g| {
            g[6..8].copy_from_slice(&(FLAG_TO_CALLEE | FLAG_UNCHECKED).to_le_bytes());
            fix_crc(g);
        })],
        // Valid frames a client must not send.
        // An answer sent the wrong way: towards a callee.
        "response" => vec![frame_bytes(
            Kind::Response,
            FLAG_TO_CALLEE,
            method_id("echo"),
            7,
            b"x",
        )],
        // The first fragment of one call's request, then the first fragment of another's
        // (a whole message may come between fragments, a second fragmented one may not).
        "interleaved" => [8, 9]
            .map(|id| {
                frame_bytes(
                    Kind::Request,
                    FLAG_MORE | FLAG_TO_CALLEE,
                    method_id("echo"),
                    id,
                    &[0u8; 64],
                )
            })
            .to_vec(),
        // A fragment that continues a message never begun.
        "stray" => vec![frame_bytes(
            Kind::Request,
            FLAG_CONTINUES | FLAG_TO_CALLEE,
            method_id("echo"),
            8,
            &[0u8; 64],
        )],
        _ => fail(format!("unknown garbage {kind}")),
    }
}

/// For each kind of garbage: connects a raw channel to the RPC server, checks that a
/// well-formed `echo` works on it, sends the garbage, and reports how the connection ended:
/// `garbage kind=<k> echo=ok said=<the code of the reason the server gave, or nothing>
/// end=<closed|peer-gone|timeout|frame>`.
pub(crate) fn rpc_garbage(name: &str) {
    for kind in [
        "random",
        "short",
        "magic",
        "version",
        "kind",
        "flags",
        "reserved",
        "length-long",
        "length-short",
        "crc",
        "unchecked-crc",
        "response",
        "interleaved",
        "stray",
    ] {
        let mut ep = channel::connect(name, &ChannelConfig::default())
            .unwrap_or_else(|e| fail(format!("connect: {e}")));
        // Control: the same connection answers a well-formed request.
        ep.send(&echo_request(1, b"hello"))
            .unwrap_or_else(|e| fail(format!("{kind}: send echo: {e}")));
        let echo = match ep.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => match frame::decode(&m) {
                // The server's frames on shared memory carry no CRC.
                Ok((h, p))
                    if h.kind == Kind::Response
                        && h.call_id == 1
                        && p == b"hello"
                        && h.flags & FLAG_UNCHECKED != 0 =>
                {
                    "ok".to_owned()
                }
                Ok((h, p)) => format!("unexpected-{:?}-{}-{}", h.kind, h.call_id, p.len()),
                Err(e) => format!("undecodable-{e}").replace(' ', "_"),
            },
            Err(e) => format!("{e}").replace(' ', "_"),
        };
        for g in garbage(kind) {
            if let Err(e) = ep.send(&g) {
                let e = e.to_string().replace(' ', "_");
                say(format!(
                    "garbage kind={kind} echo={echo} end=send-failed-{e}"
                ));
            }
        }
        // The server may first say why it ends the connection (an Error of call 0).
        let mut said = "nothing".to_owned();
        let end = loop {
            break match ep.recv_timeout(Duration::from_secs(5)) {
                Ok(m) => match frame::decode(&m) {
                    Ok((h, payload)) if h.kind == Kind::Error && h.call_id == 0 => {
                        // Its code (u16) leads the payload, the message follows.
                        said = match payload {
                            [a, b, ..] => u16::from_le_bytes([*a, *b]).to_string(),
                            _ => "no-code".to_owned(),
                        };
                        continue;
                    }
                    Ok((h, _)) => format!("frame-{:?}", h.kind),
                    Err(_) => "undecodable-frame".to_owned(),
                },
                Err(RecvError::Closed) => "closed".to_owned(),
                Err(RecvError::PeerGone) => "peer-gone".to_owned(),
                Err(RecvError::TimedOut) => "timeout".to_owned(),
                Err(e) => format!("error-{e}").replace(' ', "_"),
            };
        };
        say(format!(
            "garbage kind={kind} echo={echo} said={said} end={end}"
        ));
    }
    say("done");
}

/// Run as another user (the test sets uid, gid and `XDG_RUNTIME_DIR`). Tries to reach the
/// server and reports each outcome on its own line:
/// 1. `direct`: connects to the server's socket path itself (in the server user's 0700
///    runtime directory);
/// 2. `rpc`: `Client::connect(name)`, which looks in this user's own runtime directory;
/// 3. on `again` (once the test has linked the server's socket into this user's runtime
///    directory and opened its mode): `rpc-linked`, `Client::connect(name)` again, then
///    `raw`: a plain socket connection, reporting how many bytes of hello the server sends.
pub(crate) fn rpc_foreign(name: &str, path: &Path) {
    let one_line = |s: String| s.replace(['\n', ' '], "_");
    let direct = match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    say(format!(
        "direct uid={} result={direct}",
        shmrpc::lowlevel::sys::names::uid()
    ));
    let rt = rpc_runtime();
    let cfg = ClientConfig::default().with_reconnect_for(Duration::from_millis(200));
    let attempt = |label: &str| {
        let r = rt.block_on(Client::connect(name, cfg.clone()));
        match r {
            Ok(_) => say(format!("{label} result=connected")),
            Err(e) => {
                // Reported as a caller sees it through `RpcError`: the code, and the
                // whole chain of causes as the message.
                let e = shmrpc::RpcError::from(e);
                say(format!(
                    "{label} code={:?} message={}",
                    e.code,
                    one_line(shmrpc_tests::error_chain(&e))
                ))
            }
        }
    };
    attempt("rpc");
    serve_stdin(|line| {
        if line != "again" {
            return true;
        }
        attempt("rpc-linked");
        // Raw: connect to the socket and read what the server sends a foreign uid.
        let sock = shmrpc::lowlevel::sys::names::runtime_dir()
            .map(|d| d.join(format!("{name}.sock")))
            .and_then(std::os::unix::net::UnixStream::connect);
        match sock {
            Err(e) => say(format!("raw connect={:?}", e.kind())),
            Ok(mut s) => {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n) => say(format!("raw connect=ok read={n}")),
                    Err(e) => say(format!("raw connect=ok read-error={:?}", e.kind())),
                }
            }
        }
        false
    });
    say("done");
}

/// A server that breaks the protocol for a client to notice:
/// - `frame-version`: accepts one client, answers its first request with a frame of the
///   next frame version;
/// - `hello-version`: listens on the name's socket path and sends each client a hello of
///   the next handshake version (no descriptors).
///
/// Prints `ready`; leaves (removing its socket) on "exit" or end of stdin.
pub(crate) fn rpc_bad_server(name: &str, mode: BadServerMode) {
    match mode {
        BadServerMode::FrameVersion => {
            let l = bind(name, ChannelConfig::default().with_capacity(64 * 1024));
            say("ready");
            let mut ep = accept(&l);
            drop(l);
            let (h, _) = {
                let m = ep
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|e| fail(format!("recv request: {e}")));
                let (h, p) = frame::decode(&m).unwrap_or_else(|e| fail(format!("decode: {e}")));
                (h, p.to_vec())
            };
            let mut f = frame_bytes(Kind::Response, 0, h.method, h.call_id, b"from the future");
            f[4] = FRAME_VERSION + 1;
            fix_crc(&mut f);
            ep.send(&f)
                .unwrap_or_else(|e| fail(format!("send reply: {e}")));
            say("answered");
            wait_for_exit();
            drop(ep);
        }
        BadServerMode::HelloVersion => {
            let path = shmrpc_tests::socket_file(name);
            let l = std::os::unix::net::UnixListener::bind(&path)
                .unwrap_or_else(|e| fail(format!("bind {}: {e}", path.display())));
            l.set_nonblocking(true)
                .unwrap_or_else(|e| fail(format!("nonblocking: {e}")));
            say("ready");
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s2 = stop.clone();
            std::thread::spawn(move || {
                wait_for_exit();
                s2.store(true, Ordering::SeqCst);
            });
            let mut hellos = 0;
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        use std::io::Write;
                        let mut hello = [0u8; 32];
                        hello[..8].copy_from_slice(b"SHMRPCH1");
                        let v = channel::HANDSHAKE_VERSION + 1;
                        hello[8..12].copy_from_slice(&v.to_le_bytes());
                        hello[12..16].copy_from_slice(&1u32.to_le_bytes());
                        hello[16..24].copy_from_slice(&65536u64.to_le_bytes());
                        hello[24..32].copy_from_slice(&65536u64.to_le_bytes());
                        let _ = s.write_all(&hello);
                        hellos += 1;
                        say(format!("sent hellos={hellos}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    say("done");
}
