//! Typed method descriptors (see [`Unary`]).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use super::{
    method_id, BlockingClient, CallContext, CallOptions, CallStream, Client, ClientBuilder,
    ItemSink, Peer, RpcError, ServerBuilder,
};

/// A unary method: its name, request type `Req` and response type `Resp`.
///
/// A descriptor names a method together with its request and response (or item) types,
/// declared once and used by both the server ([`ServerBuilder::method`]) and
/// the client ([`Client::invoke`]), so the two ends agree by type instead of by a string
/// and a pair of turbofish annotations.
///
/// ```
/// use shmrpc::{CallOptions, Client, ClientConfig, Server, Streaming, Unary};
///
/// // Shared by both sides (in a crate or module both depend on).
/// pub const ADD: Unary<(u64, u64), u64> = Unary::new("add");
/// pub const COUNT: Streaming<u32, u32> = Streaming::new("count");
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-method-{}", std::process::id());
/// let server = Server::builder()
///     .method(ADD, |_ctx, (a, b)| async move { Ok(a + b) })
///     .stream_method(COUNT, |_ctx, n, sink| async move {
///         for i in 0..n {
///             sink.send(&i).await?;
///         }
///         Ok(())
///     })
///     .bind(&name)?;
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::connect(&name, ClientConfig::default()).await?;
/// assert_eq!(client.invoke(ADD, &(2, 3), CallOptions::default()).await?, 5);
/// let mut items = client.invoke_stream(COUNT, &3, CallOptions::default()).await?;
/// let mut got = Vec::new();
/// while let Some(i) = items.next().await {
///     got.push(i?);
/// }
/// assert_eq!(got, [0, 1, 2]);
///
/// drop((items, client));
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
///
/// A client that sends the wrong request type does not compile:
///
/// ```compile_fail,E0308
/// use shmrpc::{CallOptions, Client, Unary};
///
/// const ADD: Unary<(u64, u64), u64> = Unary::new("add");
///
/// async fn f(client: Client) {
///     // The request is a `(u64, u64)`, not a string.
///     let _ = client.invoke(ADD, &"1 + 2".to_string(), CallOptions::default()).await;
/// }
/// ```
///
/// Nor does a handler that returns the wrong response type:
///
/// ```compile_fail,E0271
/// use shmrpc::{Server, Unary};
///
/// const ADD: Unary<(u64, u64), u64> = Unary::new("add");
///
/// // The response is a `u64`, not a string.
/// let _ = Server::builder().method(ADD, |_ctx, (a, b)| async move { Ok(format!("{}", a + b)) });
/// ```
pub struct Unary<Req, Resp> {
    name: &'static str,
    // `fn(Req) -> Resp`: the descriptor holds no value of either type, and is `Send`,
    // `Sync` and `Copy` whatever they are.
    _types: PhantomData<fn(Req) -> Resp>,
}

/// A server-streaming method: its name, request type `Req` and item type `Item`.
///
/// Declare it once as a `const` shared by server and client; see [`Unary`].
pub struct Streaming<Req, Item> {
    name: &'static str,
    _types: PhantomData<fn(Req) -> Item>,
}

macro_rules! descriptor {
    ($t:ident) => {
        impl<A, B> $t<A, B> {
            /// The method called `name`.
            pub const fn new(name: &'static str) -> Self {
                Self {
                    name,
                    _types: PhantomData,
                }
            }

            /// The method's name.
            pub const fn name(&self) -> &'static str {
                self.name
            }

            /// The method id carried in frames ([`method_id`] of the name).
            pub const fn id(&self) -> u32 {
                method_id(self.name)
            }
        }

        impl<A, B> Clone for $t<A, B> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<A, B> Copy for $t<A, B> {}

        impl<A, B> fmt::Debug for $t<A, B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($t)).field(&self.name).finish()
            }
        }
    };
}

descriptor!(Unary);
descriptor!(Streaming);

/// Where the handler of a [`Streaming`] method sends its items: an [`ItemSink`] that takes
/// only the method's item type.
pub struct Sink<Item> {
    inner: ItemSink,
    _item: PhantomData<fn(Item)>,
}

impl<Item> Clone for Sink<Item> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _item: PhantomData,
        }
    }
}

impl<Item> fmt::Debug for Sink<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<Item: Serialize> Sink<Item> {
    /// Sends one item to the caller (waiting for the caller's credit if it is behind).
    ///
    /// # Errors
    /// As [`ItemSink::send`].
    pub async fn send(&self, item: &Item) -> Result<(), RpcError> {
        self.inner.send(item).await
    }

    /// The untyped sink underneath.
    pub fn untyped(&self) -> &ItemSink {
        &self.inner
    }
}

/// The items of a call to a [`Streaming`] method, decoded as the method's item type.
pub struct TypedStream<Item> {
    inner: CallStream,
    _item: PhantomData<fn() -> Item>,
}

impl<Item> fmt::Debug for TypedStream<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<Item: DeserializeOwned> TypedStream<Item> {
    /// The next item; `None` at the end of the stream.
    ///
    /// # Errors
    /// As [`CallStream::next`].
    pub async fn next(&mut self) -> Option<Result<Item, RpcError>> {
        self.inner.next::<Item>().await
    }

    /// Cancels the call now (same as dropping the stream).
    pub fn cancel(self) {}

    /// The untyped stream underneath.
    pub fn into_untyped(self) -> CallStream {
        self.inner
    }
}

/// A typed streaming handler as an untyped one: its sink takes only the item type.
fn typed_sink<Req, Item, F, Fut>(f: F) -> impl Fn(CallContext, Req, ItemSink) -> Fut
where
    F: Fn(CallContext, Req, Sink<Item>) -> Fut,
{
    move |ctx, req, sink| {
        f(
            ctx,
            req,
            Sink {
                inner: sink,
                _item: PhantomData,
            },
        )
    }
}

/// Typed registration ([`Unary`], [`Streaming`]), the same on both builders.
macro_rules! typed_registration {
    ($builder:ty) => {
        impl $builder {
            /// Registers the handler of a typed unary method: it takes the method's request
            /// type and returns its response type.
            ///
            /// # Panics
            /// As [`unary_raw`](Self::unary_raw).
            pub fn method<Req, Resp, F, Fut>(self, method: Unary<Req, Resp>, f: F) -> Self
            where
                Req: DeserializeOwned + Send + 'static,
                Resp: Serialize + Send + 'static,
                F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
            {
                self.unary(method.name(), f)
            }

            /// Registers the handler of a typed streaming method: it takes the method's
            /// request type and sends items of its item type; returning `Ok` ends the
            /// stream.
            ///
            /// # Panics
            /// As [`unary_raw`](Self::unary_raw).
            pub fn stream_method<Req, Item, F, Fut>(
                self,
                method: Streaming<Req, Item>,
                f: F,
            ) -> Self
            where
                Req: DeserializeOwned + Send + 'static,
                Item: Serialize + 'static,
                F: Fn(CallContext, Req, Sink<Item>) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
            {
                self.streaming(method.name(), typed_sink(f))
            }
        }
    };
}

typed_registration!(ServerBuilder);
typed_registration!(ClientBuilder);

/// Typed calls ([`Unary`], [`Streaming`]), the same on a [`Client`] and a [`Peer`].
macro_rules! typed_calls {
    ($caller:ty) => {
        impl $caller {
            /// Calls a typed unary method.
            ///
            /// # Errors
            /// As [`call`](Self::call).
            pub async fn invoke<Req, Resp>(
                &self,
                method: Unary<Req, Resp>,
                req: &Req,
                opts: CallOptions,
            ) -> Result<Resp, RpcError>
            where
                Req: Serialize,
                Resp: DeserializeOwned,
            {
                self.call(method.name(), req, opts).await
            }

            /// Calls a typed streaming method. Dropping the stream before its end cancels
            /// the call on the callee.
            ///
            /// # Errors
            /// As [`call_stream`](Self::call_stream).
            pub async fn invoke_stream<Req, Item>(
                &self,
                method: Streaming<Req, Item>,
                req: &Req,
                opts: CallOptions,
            ) -> Result<TypedStream<Item>, RpcError>
            where
                Req: Serialize,
                Item: DeserializeOwned,
            {
                let inner = self.call_stream(method.name(), req, opts).await?;
                Ok(TypedStream {
                    inner,
                    _item: PhantomData,
                })
            }
        }
    };
}

typed_calls!(Client);
typed_calls!(Peer);

impl BlockingClient {
    /// Calls a typed unary method.
    ///
    /// # Errors
    /// As [`Client::invoke`].
    pub fn invoke<Req, Resp>(
        &self,
        method: Unary<Req, Resp>,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        self.call(method.name(), req, timeout)
    }

    /// Calls a typed streaming method and collects every item, in order.
    ///
    /// # Errors
    /// As [`Client::invoke_stream`], or the first error in the stream.
    pub fn invoke_stream_collect<Req, Item>(
        &self,
        method: Streaming<Req, Item>,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Vec<Item>, RpcError>
    where
        Req: Serialize,
        Item: DeserializeOwned,
    {
        let body = super::encode(req)?;
        self.call_stream_collect(method.name(), &body, timeout)?
            .iter()
            .map(|b| super::decode(b))
            .collect()
    }
}
