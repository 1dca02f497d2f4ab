//! Taking connections: a shared-memory handshake or a TCP accept.

use std::sync::Arc;
use std::time::Duration;

use super::Server;
use crate::channel::{self, Listener};
use crate::rpc::inspect::ConnInfo;
use crate::rpc::transport::{FrameRx, FrameTx};

pub(super) enum Acceptor {
    Shm(Arc<Listener>),
    Tcp(tokio::net::TcpListener),
}

impl Server {
    /// The next connection, handshake done; `None` if this client failed (keep going).
    pub(super) async fn accept(&self) -> Option<(FrameTx, FrameRx, Arc<ConnInfo>)> {
        let max = self.shared.cfg.max_message;
        match &self.acceptor {
            Acceptor::Shm(l) => {
                let sock = match l.accept_socket_async().await {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of fds or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return None;
                    }
                };
                let l = l.clone();
                // The handshake blocks (up to its timeout): keep it off the accept loop.
                let endpoint = tokio::task::spawn_blocking(move || {
                    channel::server_handshake(sock, l.config())
                })
                .await
                .ok()?
                .ok()?;
                let mut endpoint = endpoint;
                let pid = endpoint.peer_pid();
                let rings = (
                    endpoint.sender().producer().inspector(),
                    endpoint.receiver().consumer().inspector(),
                );
                let id = self.shared.registry.next_id();
                let info = Arc::new(ConnInfo::new(id, pid, "shm", Some(rings)));
                let (tx, rx) = endpoint.split();
                Some((FrameTx::Shm(tx, Vec::new()), FrameRx::shm(rx, max), info))
            }
            Acceptor::Tcp(l) => {
                let (s, _) = l.accept().await.ok()?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                let id = self.shared.registry.next_id();
                let info = Arc::new(ConnInfo::new(id, None, "tcp", None));
                Some((FrameTx::Tcp(w, Vec::new()), FrameRx::tcp(r, max), info))
            }
        }
    }
}
