//! Taking connections: a shared-memory handshake (each in a task of its own, a bounded
//! number at once) or a TCP accept.

use std::sync::Arc;
use std::time::Duration;

use super::{Server, Shared};
use crate::channel::{Endpoint, Listener, PendingClient};
use crate::rpc::inspect::ConnInfo;
use crate::rpc::session::{self, Ends, Role};
use crate::rpc::transport::{FrameRx, FrameTx};

pub(super) enum Acceptor {
    Shm(Arc<Listener>),
    Tcp(tokio::net::TcpListener),
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
            Acceptor::Tcp(l) => {
                let Ok((s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return;
                };
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                let id = self.shared.registry().next_id();
                let info = Arc::new(ConnInfo::new(id, None, "tcp", None));
                let max = self.shared.cfg.max_message;
                let (tx, rx) = (FrameTx::Tcp(w, Vec::new()), FrameRx::tcp(r, max));
                serve(&self.shared, tx, rx, info);
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
    serve(shared, tx, rx, info);
}

/// Serves an accepted connection: its client is a peer (to call) until it ends.
fn serve(shared: &Arc<Shared>, tx: FrameTx, rx: FrameRx, info: Arc<ConnInfo>) {
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
    });
}
