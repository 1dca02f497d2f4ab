//! The methods one end serves: names to handlers, with the duplicate-id check. Both the
//! server's and the client's builders register through this table.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::{CallContext, InlineContext, ItemSink, ItemStream, Items, NotifyContext};
use crate::rpc::inspect::INSPECT_METHOD;
use crate::rpc::obs::MethodObs;
use crate::rpc::{decode, encode, encode_into, method_id, Code, IdMap, RpcError};

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

/// A handler the reader runs to its end as it reads the request: the request's body in,
/// the response written into the buffer given (empty, from the connection's pool).
pub(crate) type InlineHandler =
    Arc<dyn Fn(&InlineContext, &[u8], &mut Vec<u8>) -> Result<(), RpcError> + Send + Sync>;

/// How a method's handler runs.
pub(crate) enum Run {
    /// As a future: answered on the reader if its first poll finishes it, else in a task.
    Task(Handler),
    /// On the reader, synchronously ([`Methods::unary_inline_raw`]).
    Inline(InlineHandler),
}

/// A notification handler as the engine runs it: raw body in, nothing out.
pub(crate) type NotifyHandler = Arc<dyn Fn(NotifyContext, Vec<u8>) -> BoxFuture<()> + Send + Sync>;

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
    pub(crate) run: Run,
    pub(crate) obs: MethodObs,
}

/// The methods an end serves, by [`method_id`]. Filled by
/// [`ServerBuilder`](crate::ServerBuilder) and [`ClientBuilder`](crate::ClientBuilder).
pub(crate) struct Methods {
    routes: IdMap<Route, u32>,
    /// Notification handlers by [`method_id`] of their names, with the names.
    notifications: IdMap<(String, NotifyHandler), u32>,
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
            notifications: IdMap::default(),
            metrics,
        }
    }

    /// The method with id `id`.
    pub(crate) fn get(&self, id: u32) -> Option<&Route> {
        self.routes.get(&id)
    }

    /// The handler of the notification with id `id`.
    pub(crate) fn notification(&self, id: u32) -> Option<NotifyHandler> {
        self.notifications.get(&id).map(|(_, h)| h.clone())
    }

    /// Registers a notification handler on raw bytes. Panics on a name sharing an id with
    /// another notification's (notifications and methods have separate names).
    pub(crate) fn on_notify_raw<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(NotifyContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = method_id(name);
        if let Some((other, _)) = self.notifications.get(&id) {
            assert!(
                other == name,
                "notification names {other:?} and {name:?} have the same id; rename one"
            );
        }
        let handler: NotifyHandler = Arc::new(move |ctx, body| Box::pin(f(ctx, body)));
        self.notifications.insert(id, (name.to_owned(), handler));
    }

    /// Registers a typed notification handler (default codec). A body that does not
    /// decode is dropped (counted as a bad request).
    pub(crate) fn on_notify<T, F, Fut>(&mut self, name: &str, f: F)
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(NotifyContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        self.on_notify_raw(name, move |ctx, body| {
            let f = f.clone();
            async move {
                if let Ok(v) = decode::<T>(&body) {
                    f(ctx, v).await;
                }
            }
        });
    }

    /// Registers a handler. Panics on a name taken by the built-in method or sharing an
    /// id with another (programming errors, found at start-up).
    fn add(&mut self, name: &str, shape: Shape, handler: Handler) {
        self.add_route(name, shape, Run::Task(handler));
    }

    fn add_route(&mut self, name: &str, shape: Shape, run: Run) {
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
                run,
            },
        );
    }

    /// A unary method whose handler runs on the connection's reader, as soon as the
    /// request is read: no task, no future, no allocation of the engine's.
    pub(crate) fn unary_inline_raw<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&InlineContext, &[u8], &mut Vec<u8>) -> Result<(), RpcError> + Send + Sync + 'static,
    {
        self.add_route(name, Shape::Unary, Run::Inline(Arc::new(f)));
    }

    /// [`unary_inline_raw`](Self::unary_inline_raw) with typed request and response.
    pub(crate) fn unary_inline<Req, Resp, F>(&mut self, name: &str, f: F)
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(&InlineContext, Req) -> Result<Resp, RpcError> + Send + Sync + 'static,
    {
        self.unary_inline_raw(name, move |ctx, req, out| {
            encode_into(&f(ctx, decode(req)?)?, out)
        });
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
