//! Taking connections: a shared-memory handshake or a TCP connection handshake (TLS and
//! hello, see `rpc::net`), each in a task of its own, a bounded number at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Server, Shared};
use crate::channel::{Endpoint, Listener, PendingClient};
use crate::rpc::inspect::ConnInfo;
use crate::rpc::net::hello::{self, HandshakeError, ServerSide};
use crate::rpc::net::TcpServerConfig;
use crate::rpc::session::{self, Ends, Role};
use crate::rpc::transport::{FrameRx, FrameTx, NetRx, NetTx};

pub(super) enum Acceptor {
    Shm(Arc<Listener>),
    Tcp(tokio::net::TcpListener, Arc<NetAccept>),
}

/// What a TCP listener requires of a connection, and the connections it holds now.
pub(super) struct NetAccept {
    side: Arc<ServerSide>,
    cfg: TcpServerConfig,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One TCP connection's place within the limits, given back when it is dropped.
struct Slot {
    net: Arc<NetAccept>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.net.held.lock().expect("poisoned");
        held.total -= 1;
        if let Some(n) = held.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.per_address.remove(&self.ip);
            }
        }
    }
}

impl NetAccept {
    pub(super) fn new(side: ServerSide, cfg: TcpServerConfig) -> Self {
        Self {
            side: Arc::new(side),
            cfg,
            held: Mutex::default(),
        }
    }

    /// A place for a connection from `ip`, unless the server, or that address, holds as
    /// many as allowed.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().expect("poisoned");
        let n = held.per_address.get(&ip).copied().unwrap_or(0);
        if held.total >= self.cfg.max_connections || n >= self.cfg.max_per_address {
            return None;
        }
        held.total += 1;
        held.per_address.insert(ip, n + 1);
        Some(Slot {
            net: self.clone(),
            ip,
        })
    }
}

impl Server {
    /// Takes the next connection and starts serving it. A shared-memory client's
    /// handshake runs in a task of its own, so a client that never acknowledges it holds
    /// up nobody else; at most `max_handshakes` run at once (beyond that, this waits and
    /// connecting clients wait in the listen backlog).
    pub(super) async fn accept_one(&self) {
        match &self.acceptor {
            Acceptor::Shm(l) => {
                let permit = self
                    .shared
                    .handshakes
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let pending = match l.accept_pending_async().await {
                    Ok(p) => p,
                    Err(_) => {
                        // Out of fds or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return;
                    }
                };
                let pending = pending.with_timeout(self.shared.cfg.handshake_timeout);
                let shared = self.shared.clone();
                shared.registry().handshake_started();
                tokio::spawn(async move {
                    let done = handshake(pending).await;
                    drop(permit);
                    shared.registry().handshake_ended(done.is_ok());
                    match done {
                        Ok(endpoint) => start_shm(&shared, endpoint),
                        Err(e) => shared.obs().handshake_failed(&e),
                    }
                });
            }
            Acceptor::Tcp(l, net) => {
                let permit = self
                    .shared
                    .handshakes
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let Ok((s, from)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return;
                };
                let Some(slot) = net.take(from.ip()) else {
                    // Over a limit: closed at once, before any byte is read.
                    self.shared.registry().handshake_started();
                    self.shared.registry().handshake_ended(false);
                    return;
                };
                let (shared, net) = (self.shared.clone(), net.clone());
                shared.registry().handshake_started();
                tokio::spawn(async move {
                    let limit = shared.cfg.handshake_timeout;
                    let done = match tokio::time::timeout(limit, hello::accept(s, net.side.clone()))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(HandshakeError::Timeout(limit)),
                    };
                    drop(permit);
                    shared.registry().handshake_ended(done.is_ok());
                    match done {
                        Ok(conn) => {
                            if *shared.draining.borrow() {
                                return;
                            }
                            let id = shared.registry().next_id();
                            let info = Arc::new(ConnInfo::new(id, None, conn.transport, None));
                            let cfg = &net.cfg;
                            let above = conn.lz4.then_some(cfg.compress_above);
                            let tx = FrameTx::Tcp(NetTx::new(conn.write, above));
                            let max = shared.cfg.max_message;
                            let rx = NetRx::new(conn.read, max, conn.lz4, cfg.frame_timeout);
                            serve(&shared, tx, FrameRx::Tcp(rx), info, Some(slot));
                        }
                        Err(e) => shared.obs().handshake_failed(&e),
                    }
                });
            }
        }
    }
}

/// Runs a client's (blocking) handshake on the blocking pool.
async fn handshake(pending: PendingClient) -> Result<Endpoint, crate::channel::AcceptError> {
    match tokio::task::spawn_blocking(move || pending.handshake()).await {
        Ok(r) => r,
        // The blocking task panicked or the runtime is shutting down.
        Err(e) => Err(crate::channel::AcceptError::Handshake(
            std::io::Error::other(e.to_string()),
        )),
    }
}

/// Serves a connection whose handshake is done (unless the server has begun to shut down:
/// then the client is dropped, and finds the server gone).
fn start_shm(shared: &Arc<Shared>, mut endpoint: Endpoint) {
    if *shared.draining.borrow() {
        return;
    }
    let pid = endpoint.peer_pid();
    let rings = (
        endpoint.sender().producer().inspector(),
        endpoint.receiver().consumer().inspector(),
    );
    let id = shared.registry().next_id();
    let info = Arc::new(ConnInfo::new(id, pid, "shm", Some(rings)));
    let (tx, rx) = endpoint.split();
    let max = shared.cfg.max_message;
    let (tx, rx) = (FrameTx::Shm(tx, Vec::new()), FrameRx::shm(rx, max));
    serve(shared, tx, rx, info, None);
}

/// Serves an accepted connection: its client is a peer (to call) until it ends.
fn serve(shared: &Arc<Shared>, tx: FrameTx, rx: FrameRx, info: Arc<ConnInfo>, slot: Option<Slot>) {
    let ends = Ends {
        draining: Some(shared.draining.subscribe()),
        shut: None,
    };
    let id = info.id;
    let (peer, run) = session::open(shared.host.clone(), Role::Server, tx, rx, info, ends);
    shared.peers.lock().expect("poisoned").insert(id, peer);
    let peers = shared.peers.clone();
    shared.conns.spawn(async move {
        run.await;
        peers.lock().expect("poisoned").remove(&id);
        drop(slot);
    });
}
