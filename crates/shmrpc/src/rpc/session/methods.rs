//! The methods one end serves: names to handlers, with the duplicate-id check. Both the
//! server's and the client's builders register through this table.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::{CallContext, ItemSink, ItemStream, Items};
use crate::rpc::inspect::INSPECT_METHOD;
use crate::rpc::obs::MethodObs;
use crate::rpc::{decode, encode, method_id, Code, IdMap, RpcError};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A handler as the engine runs it: raw request in (and the caller's items, for a method
/// that takes them), the response (`Some`) or the end of its stream (`None`) out.
pub(crate) type Handler = Arc<
    dyn Fn(
            CallContext,
            Vec<u8>,
            ItemSink,
            Option<ItemStream>,
        ) -> BoxFuture<Result<Option<Vec<u8>>, RpcError>>
        + Send
        + Sync,
>;

/// The id of the built-in [`INSPECT_METHOD`], answered by every end.
pub(crate) const INSPECT_ID: u32 = method_id(INSPECT_METHOD);

/// What a method's caller and callee send each other besides the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One response.
    Unary,
    /// The callee streams items.
    ServerStream,
    /// The caller streams items; one response.
    ClientStream,
    /// Both stream items.
    Bidi,
}

impl Shape {
    /// Whether the callee sends items (and gets credit for them).
    pub(crate) fn sends_items(self) -> bool {
        matches!(self, Shape::ServerStream | Shape::Bidi)
    }

    /// Whether the caller sends items (and the callee queues them).
    pub(crate) fn takes_items(self) -> bool {
        matches!(self, Shape::ClientStream | Shape::Bidi)
    }
}

/// A method: its name, its shape, and its handler.
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) shape: Shape,
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
    fn add(&mut self, name: &str, shape: Shape, handler: Handler) {
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
                shape,
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
            Shape::Unary,
            Arc::new(move |ctx, req, _sink, _items| {
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
            Shape::Unary,
            Arc::new(move |ctx, req, _sink, _items| {
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
            Shape::ServerStream,
            Arc::new(move |ctx, req, sink, _items| {
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
            Shape::ServerStream,
            Arc::new(move |ctx, req, sink, _items| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = decode(&req)?;
                    f(ctx, req, sink).await.map(|()| None)
                })
            }),
        );
    }

    pub(crate) fn client_streaming_raw<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(CallContext, ItemStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            Shape::ClientStream,
            Arc::new(move |ctx, _req, _sink, items| match items {
                Some(items) => {
                    let fut = f(ctx, items);
                    Box::pin(async move { fut.await.map(Some) })
                }
                None => Box::pin(async { Err(no_items()) }),
            }),
        );
    }

    pub(crate) fn client_streaming<Item, Resp, F, Fut>(&mut self, name: &str, f: F)
    where
        Item: DeserializeOwned + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(CallContext, Items<Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.client_streaming_raw(name, move |ctx, items| {
            let fut = f(ctx, Items::new(items));
            async move { encode(&fut.await?) }
        });
    }

    pub(crate) fn bidi_raw<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(CallContext, ItemStream, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            Shape::Bidi,
            Arc::new(move |ctx, _req, sink, items| match items {
                Some(items) => {
                    let fut = f(ctx, items, sink);
                    Box::pin(async move { fut.await.map(|()| None) })
                }
                None => Box::pin(async { Err(no_items()) }),
            }),
        );
    }

    pub(crate) fn bidi<Item, F, Fut>(&mut self, name: &str, f: F)
    where
        Item: DeserializeOwned + 'static,
        F: Fn(CallContext, Items<Item>, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        self.bidi_raw(name, move |ctx, items, sink| {
            f(ctx, Items::new(items), sink)
        });
    }
}

/// The engine gives every call of a method that takes items its queue; never seen.
fn no_items() -> RpcError {
    RpcError::new(Code::Protocol, "no item stream for a streaming call")
}
