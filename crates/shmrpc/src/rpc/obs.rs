//! Observability of the server: counters and histograms through the `metrics` facade
//! (cargo feature `metrics`) and a `tracing` span per call (cargo feature `tracing`).
//!
//! Without the features every type here is empty and every method an inlined no-op, so a
//! build without them pays nothing on the call path. With `metrics`, series are recorded
//! only for a server whose `ServerConfig::metrics` is set:
//! its handles are registered once (per method, per error code) when it is built, and a
//! call costs a few relaxed atomic additions and one clock read. With the flag off, a call
//! checks one `Option` and reads no clock.
//!
//! The series are listed in the crate docs ("Observability").

use super::Code;

/// Every error code, for pre-registered per-code counters.
#[cfg(feature = "metrics")]
const CODES: [Code; 10] = [
    Code::UnknownMethod,
    Code::BadRequest,
    Code::HandlerFailed,
    Code::DeadlineExceeded,
    Code::Cancelled,
    Code::TooLarge,
    Code::PeerGone,
    Code::ShuttingDown,
    Code::Protocol,
    Code::Unavailable,
];

/// A method's handles.
pub(crate) struct MethodObs {
    #[cfg(feature = "metrics")]
    calls: Option<metrics::Counter>,
    #[cfg(feature = "metrics")]
    seconds: Option<metrics::Histogram>,
    #[cfg(feature = "tracing")]
    name: std::sync::Arc<str>,
}

impl MethodObs {
    /// Handles for method `name`; with `metrics` false (`ServerConfig::metrics`), none are
    /// registered and a call costs nothing for them, not even a clock read.
    pub(crate) fn new(name: &str, metrics: bool) -> Self {
        // Unused in some feature sets.
        let _ = (name, metrics);
        Self {
            #[cfg(feature = "metrics")]
            calls: metrics
                .then(|| metrics::counter!("shmrpc_calls_total", "method" => name.to_owned())),
            #[cfg(feature = "metrics")]
            seconds: metrics
                .then(|| metrics::histogram!("shmrpc_call_seconds", "method" => name.to_owned())),
            #[cfg(feature = "tracing")]
            name: name.into(),
        }
    }

    /// A call of this method starts; `bytes` of request.
    #[inline]
    pub(crate) fn start(&self, server: &ServerObs, call_id: u64, bytes: usize) -> CallObs {
        // Unused in some feature sets.
        let _ = (server, call_id, bytes);
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.calls {
            c.increment(1);
            if let Some(m) = &server.m {
                m.bytes_in.increment(bytes as u64);
            }
        }
        CallObs {
            #[cfg(feature = "metrics")]
            start: self.seconds.as_ref().map(|_| std::time::Instant::now()),
            #[cfg(feature = "metrics")]
            seconds: self.seconds.clone(),
            #[cfg(feature = "tracing")]
            span: tracing::debug_span!("rpc.call", method = %self.name, call_id),
        }
    }
}

/// One call in progress.
pub(crate) struct CallObs {
    #[cfg(feature = "metrics")]
    start: Option<std::time::Instant>,
    #[cfg(feature = "metrics")]
    seconds: Option<metrics::Histogram>,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl CallObs {
    /// The call's span (for the handler to run in), if tracing is built in.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// The call ended (its answer, or its error, was sent).
    #[inline]
    pub(crate) fn end(self, server: &ServerObs, error: Option<Code>) {
        // Unused in some feature sets.
        let _ = (server, error);
        #[cfg(feature = "metrics")]
        {
            if let (Some(h), Some(t)) = (&self.seconds, self.start) {
                h.record(t.elapsed().as_secs_f64());
            }
            if let Some(code) = error {
                server.error(code);
            }
        }
        #[cfg(feature = "tracing")]
        {
            let _in = self.span.enter();
            match error {
                None => tracing::debug!("call answered"),
                Some(code) => tracing::debug!(?code, "call failed"),
            }
        }
    }
}

/// The server-wide handles (none unless the `metrics` feature is built and
/// `ServerConfig::metrics` is set).
pub(crate) struct ServerObs {
    #[cfg(feature = "metrics")]
    m: Option<Handles>,
}

#[cfg(feature = "metrics")]
struct Handles {
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
    backpressure: metrics::Counter,
    connections: metrics::Gauge,
    handshake_failures: metrics::Counter,
    occupancy: metrics::Histogram,
    errors: Vec<(Code, metrics::Counter)>,
}

impl ServerObs {
    pub(crate) fn new(metrics: bool) -> Self {
        // Unused in some feature sets.
        let _ = metrics;
        Self {
            #[cfg(feature = "metrics")]
            m: metrics.then(|| Handles {
                bytes_in: metrics::counter!("shmrpc_bytes_received_total"),
                bytes_out: metrics::counter!("shmrpc_bytes_sent_total"),
                backpressure: metrics::counter!("shmrpc_backpressure_waits_total"),
                connections: metrics::gauge!("shmrpc_connections"),
                handshake_failures: metrics::counter!("shmrpc_handshake_failures_total"),
                occupancy: metrics::histogram!("shmrpc_ring_occupancy_bytes"),
                errors: CODES
                    .iter()
                    .map(|&c| {
                        (
                            c,
                            metrics::counter!("shmrpc_errors_total", "code" => format!("{c:?}")),
                        )
                    })
                    .collect(),
            }),
        }
    }

    #[cfg(feature = "metrics")]
    fn error(&self, code: Code) {
        if let Some((_, c)) = self
            .m
            .as_ref()
            .and_then(|m| m.errors.iter().find(|(k, _)| *k == code))
        {
            c.increment(1);
        }
    }

    /// An error answered outside a handler (unknown method, bad request, shutting down).
    #[inline]
    pub(crate) fn rejected(&self, code: Code) {
        #[cfg(feature = "metrics")]
        self.error(code);
        // Unused in some feature sets.
        let _ = code;
    }

    /// `n` bytes of answer sent.
    #[inline]
    pub(crate) fn sent(&self, n: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.m {
            m.bytes_out.increment(n as u64);
        }
        // Unused in some feature sets.
        let _ = n;
    }

    /// A request waits for a concurrency permit.
    #[inline]
    pub(crate) fn backpressure(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.m {
            m.backpressure.increment(1);
        }
    }

    /// A connection starts (`+1`) or ends (`-1`).
    #[inline]
    pub(crate) fn connection(&self, delta: f64, peer_pid: Option<u32>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.m {
            m.connections.increment(delta);
        }
        #[cfg(feature = "tracing")]
        if delta > 0.0 {
            tracing::debug!(?peer_pid, "connection accepted");
        } else {
            tracing::debug!(?peer_pid, "connection closed");
        }
        // Unused in some feature sets.
        let _ = (delta, peer_pid);
    }

    /// A client's handshake failed (it is dropped; the server goes on).
    #[inline]
    pub(crate) fn handshake_failed(&self, error: &(dyn std::error::Error + 'static)) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.m {
            m.handshake_failures.increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(error, "client handshake failed");
        // Unused in some feature sets.
        let _ = error;
    }

    /// Bytes queued towards a client, sampled.
    #[inline]
    pub(crate) fn occupancy(&self, bytes: u64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.m {
            m.occupancy.record(bytes as f64);
        }
        // Unused in some feature sets.
        let _ = bytes;
    }

    /// Whether sampling ring occupancy is worth its lock.
    pub(crate) fn wants_occupancy(&self) -> bool {
        #[cfg(feature = "metrics")]
        return self.m.is_some();
        #[cfg(not(feature = "metrics"))]
        false
    }
}
