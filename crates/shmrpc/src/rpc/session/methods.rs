//! The methods one end serves: names to handlers, with the duplicate-id check. Both the
//! server's and the client's builders register through this table.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::{CallContext, ItemSink};
use crate::rpc::inspect::INSPECT_METHOD;
use crate::rpc::obs::MethodObs;
use crate::rpc::{decode, encode, method_id, IdMap, RpcError};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A handler as the engine runs it: raw request in, the response (`Some`) or the end of
/// its stream (`None`) out.
pub(crate) type Handler = Arc<
    dyn Fn(CallContext, Vec<u8>, ItemSink) -> BoxFuture<Result<Option<Vec<u8>>, RpcError>>
        + Send
        + Sync,
>;

/// The id of the built-in [`INSPECT_METHOD`], answered by every end.
pub(crate) const INSPECT_ID: u32 = method_id(INSPECT_METHOD);

/// A method: its name, whether it streams, and its handler.
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) streaming: bool,
    pub(crate) handler: Handler,
    pub(crate) obs: MethodObs,
}

/// The methods an end serves, by [`method_id`]. Filled by
/// [`ServerBuilder`](crate::ServerBuilder) and [`ClientBuilder`](crate::ClientBuilder).
pub(crate) struct Methods {
    routes: IdMap<Route, u32>,
    metrics: bool,
}

impl std::fmt::Debug for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.routes.values().map(|r| &r.name).collect();
        names.sort();
        f.debug_list().entries(names).finish()
    }
}

impl Methods {
    /// No methods; `metrics`: whether each records metrics.
    pub(crate) fn new(metrics: bool) -> Self {
        Self {
            routes: IdMap::default(),
            metrics,
        }
    }

    /// The method with id `id`.
    pub(crate) fn get(&self, id: u32) -> Option<&Route> {
        self.routes.get(&id)
    }

    /// Registers a handler. Panics on a name taken by the built-in method or sharing an
    /// id with another (programming errors, found at start-up).
    fn add(&mut self, name: &str, streaming: bool, handler: Handler) {
        let id = method_id(name);
        assert!(
            id != INSPECT_ID,
            "{name:?} is the built-in inspection method's name (or has its id); rename it"
        );
        if let Some(other) = self.routes.get(&id) {
            assert!(
                other.name == name,
                "method names {:?} and {name:?} have the same id; rename one",
                other.name
            );
        }
        let name = name.to_owned();
        self.routes.insert(
            id,
            Route {
                obs: MethodObs::new(&name, self.metrics),
                name,
                streaming,
                handler,
            },
        );
    }

    pub(crate) fn unary_raw<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(CallContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            false,
            Arc::new(move |ctx, req, _sink| {
                let fut = f(ctx, req);
                Box::pin(async move { fut.await.map(Some) })
            }),
        );
    }

    pub(crate) fn unary<Req, Resp, F, Fut>(&mut self, name: &str, f: F)
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            false,
            Arc::new(move |ctx, req, _sink| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = decode(&req)?;
                    let resp = f(ctx, req).await?;
                    encode(&resp).map(Some)
                })
            }),
        );
    }

    pub(crate) fn streaming_raw<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(CallContext, Vec<u8>, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            true,
            Arc::new(move |ctx, req, sink| {
                let fut = f(ctx, req, sink);
                Box::pin(async move { fut.await.map(|()| None) })
            }),
        );
    }

    pub(crate) fn streaming<Req, F, Fut>(&mut self, name: &str, f: F)
    where
        Req: DeserializeOwned + Send + 'static,
        F: Fn(CallContext, Req, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            true,
            Arc::new(move |ctx, req, sink| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = decode(&req)?;
                    f(ctx, req, sink).await.map(|()| None)
                })
            }),
        );
    }
}
