//! Observability of the server: counters and histograms through the `metrics` facade
//! (cargo feature `metrics`) and a `tracing` span per call (cargo feature `tracing`).
//!
//! Without the features every type here is empty and every method an inlined no-op, so a
//! build without them pays nothing on the call path. With `metrics`, the handles are
//! registered once (per method, per error code) when the server is built, and a call costs
//! a few relaxed atomic additions and one clock read — and nothing beyond the facade's
//! no-op if no recorder is installed.
//!
//! Series (all prefixed `shmrpc_`):
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `calls_total` | counter | `method` | calls started |
//! | `call_seconds` | histogram | `method` | from the request read to the answer sent |
//! | `errors_total` | counter | `code` | calls that ended with an error, by [`Code`] |
//! | `bytes_received_total` | counter | | request bytes |
//! | `bytes_sent_total` | counter | | response and stream-item bytes |
//! | `backpressure_waits_total` | counter | | requests that waited for a concurrency permit |
//! | `connections` | gauge | | connections being served |
//! | `ring_occupancy_bytes` | histogram | | bytes queued towards a client, sampled per heartbeat |

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
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(not(any(feature = "metrics", feature = "tracing")))]
        let _ = name;
        Self {
            #[cfg(feature = "metrics")]
            calls: Some(metrics::counter!("shmrpc_calls_total", "method" => name.to_owned())),
            #[cfg(feature = "metrics")]
            seconds: Some(metrics::histogram!("shmrpc_call_seconds", "method" => name.to_owned())),
            #[cfg(feature = "tracing")]
            name: name.into(),
        }
    }

    /// A call of this method starts; `bytes` of request.
    #[inline]
    pub(crate) fn start(&self, server: &ServerObs, call_id: u64, bytes: usize) -> CallObs {
        #[cfg(not(any(feature = "metrics", feature = "tracing")))]
        let _ = (server, call_id, bytes);
        #[cfg(feature = "metrics")]
        {
            if let Some(c) = &self.calls {
                c.increment(1);
            }
            server.bytes_in.increment(bytes as u64);
        }
        CallObs {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
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
    start: std::time::Instant,
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
        #[cfg(not(any(feature = "metrics", feature = "tracing")))]
        let _ = (server, error);
        #[cfg(feature = "metrics")]
        {
            if let Some(h) = &self.seconds {
                h.record(self.start.elapsed().as_secs_f64());
            }
            if let Some(code) = error {
                server.error(code);
            }
        }
        #[cfg(feature = "tracing")]
        if let Some(code) = error {
            let _e = self.span.enter();
            tracing::debug!(?code, "call failed");
        }
    }
}

/// The server-wide handles.
pub(crate) struct ServerObs {
    #[cfg(feature = "metrics")]
    bytes_in: metrics::Counter,
    #[cfg(feature = "metrics")]
    bytes_out: metrics::Counter,
    #[cfg(feature = "metrics")]
    backpressure: metrics::Counter,
    #[cfg(feature = "metrics")]
    connections: metrics::Gauge,
    #[cfg(feature = "metrics")]
    occupancy: metrics::Histogram,
    #[cfg(feature = "metrics")]
    errors: Vec<(Code, metrics::Counter)>,
}

impl ServerObs {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            bytes_in: metrics::counter!("shmrpc_bytes_received_total"),
            #[cfg(feature = "metrics")]
            bytes_out: metrics::counter!("shmrpc_bytes_sent_total"),
            #[cfg(feature = "metrics")]
            backpressure: metrics::counter!("shmrpc_backpressure_waits_total"),
            #[cfg(feature = "metrics")]
            connections: metrics::gauge!("shmrpc_connections"),
            #[cfg(feature = "metrics")]
            occupancy: metrics::histogram!("shmrpc_ring_occupancy_bytes"),
            #[cfg(feature = "metrics")]
            errors: CODES
                .iter()
                .map(|&c| {
                    (
                        c,
                        metrics::counter!("shmrpc_errors_total", "code" => format!("{c:?}")),
                    )
                })
                .collect(),
        }
    }

    #[cfg(feature = "metrics")]
    fn error(&self, code: Code) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == code) {
            c.increment(1);
        }
    }

    /// An error answered outside a handler (unknown method, bad request, shutting down).
    #[inline]
    pub(crate) fn rejected(&self, code: Code) {
        #[cfg(feature = "metrics")]
        self.error(code);
        #[cfg(not(feature = "metrics"))]
        let _ = code;
    }

    /// `n` bytes of answer sent.
    #[inline]
    pub(crate) fn sent(&self, n: usize) {
        #[cfg(feature = "metrics")]
        self.bytes_out.increment(n as u64);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    /// A request waits for a concurrency permit.
    #[inline]
    pub(crate) fn backpressure(&self) {
        #[cfg(feature = "metrics")]
        self.backpressure.increment(1);
    }

    /// A connection starts (`+1`) or ends (`-1`).
    #[inline]
    pub(crate) fn connection(&self, delta: f64, peer_pid: Option<u32>) {
        #[cfg(feature = "metrics")]
        self.connections.increment(delta);
        #[cfg(feature = "tracing")]
        if delta > 0.0 {
            tracing::debug!(?peer_pid, "connection accepted");
        } else {
            tracing::debug!(?peer_pid, "connection closed");
        }
        #[cfg(not(any(feature = "metrics", feature = "tracing")))]
        let _ = (delta, peer_pid);
    }

    /// Bytes queued towards a client, sampled.
    #[inline]
    pub(crate) fn occupancy(&self, bytes: u64) {
        #[cfg(feature = "metrics")]
        self.occupancy.record(bytes as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = bytes;
    }

    /// Whether sampling ring occupancy is worth its lock.
    pub(crate) fn wants_occupancy(&self) -> bool {
        cfg!(feature = "metrics")
    }
}
