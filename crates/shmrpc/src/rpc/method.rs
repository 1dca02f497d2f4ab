//! Typed method descriptors (see [`Unary`]).

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use super::{
    method_id, BlockingClient, CallContext, CallOptions, CallStream, Client, ClientBuilder,
    ClientStreamCall, InlineContext, ItemSender, ItemSink, ItemWriter, Items, NotifyContext, Peer,
    RpcError, ServerBuilder,
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

/// A client-streaming method: its name, the type `Req` of the items the caller streams,
/// and its response type `Resp`.
///
/// Declare it once as a `const` shared by both ends; see [`Unary`].
///
/// ```
/// use shmrpc::{Bidi, CallOptions, Client, ClientConfig, ClientStreaming, Server};
///
/// pub const SUM: ClientStreaming<u64, u64> = ClientStreaming::new("sum");
/// pub const SHOUT: Bidi<String, String> = Bidi::new("shout");
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-cstream-{}", std::process::id());
/// let server = Server::builder()
///     .client_stream_method(SUM, |_ctx, mut items| async move {
///         let mut total = 0;
///         while let Some(n) = items.next().await {
///             total += n?;
///         }
///         Ok(total)
///     })
///     .bidi_method(SHOUT, |_ctx, mut words, sink| async move {
///         while let Some(w) = words.next().await {
///             sink.send(&w?.to_uppercase()).await?;
///         }
///         Ok(())
///     })
///     .bind(&name)?;
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::connect(&name, ClientConfig::default()).await?;
/// let mut sum = client.invoke_client_stream(SUM, CallOptions::default()).await?;
/// for n in 1..=4 {
///     sum.send(&n).await?;
/// }
/// assert_eq!(sum.finish().await?, 10);
///
/// let (mut words, mut shouted) = client.invoke_bidi(SHOUT, CallOptions::default()).await?;
/// words.send(&"to".to_string()).await?;
/// assert_eq!(shouted.next().await.transpose()?.as_deref(), Some("TO"));
/// words.send(&"be".to_string()).await?;
/// words.finish().await?;
/// assert_eq!(shouted.next().await.transpose()?.as_deref(), Some("BE"));
/// assert!(shouted.next().await.is_none());
///
/// drop(client);
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
pub struct ClientStreaming<Req, Resp> {
    name: &'static str,
    _types: PhantomData<fn(Req) -> Resp>,
}

/// A bidirectional method: its name, the type `Item` of the items the caller streams, and
/// the type `Out` of the items the callee streams back.
///
/// Declare it once as a `const` shared by both ends; see [`ClientStreaming`].
pub struct Bidi<Item, Out> {
    name: &'static str,
    _types: PhantomData<fn(Item) -> Out>,
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
descriptor!(ClientStreaming);
descriptor!(Bidi);

/// A notification: its name and body type `T`. One-way, answered by nothing; either end
/// sends it ([`Client::send_notification`], [`Peer::send_notification`],
/// [`BlockingClient::send_notification`]) to the other, which handles it
/// ([`ServerBuilder::notify_method`], [`ClientBuilder::notify_method`]).
///
/// Declare it once as a `const` shared by both ends, as a [`Unary`].
pub struct Notification<T> {
    name: &'static str,
    _types: PhantomData<fn(T)>,
}

impl<T> Notification<T> {
    /// The notification called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _types: PhantomData,
        }
    }

    /// The notification's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The id carried in frames ([`method_id`] of the name).
    pub const fn id(&self) -> u32 {
        method_id(self.name)
    }
}

impl<T> Clone for Notification<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Notification<T> {}

impl<T> fmt::Debug for Notification<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Notification").field(&self.name).finish()
    }
}

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

    /// Sends items that are ready together, several to a frame where they fit (see
    /// [`ItemSink::send_all`]).
    ///
    /// # Errors
    /// As [`ItemSink::send_all`].
    pub async fn send_all<I>(&self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: Borrow<Item>,
    {
        self.inner.send_all_with(items, encode_borrowed).await
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

/// The sending half of a call to a [`Bidi`] method: an [`ItemSender`] that takes only the
/// method's item type.
pub struct TypedSender<Item> {
    inner: ItemSender,
    _item: PhantomData<fn(Item)>,
}

impl<Item> fmt::Debug for TypedSender<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<Item: Serialize> TypedSender<Item> {
    /// Sends one item (waiting for the callee's credit if it is behind).
    ///
    /// # Errors
    /// As [`ItemSender::send`].
    pub async fn send(&mut self, item: &Item) -> Result<(), RpcError> {
        self.inner.send(item).await
    }

    /// Sends items that are ready together, several to a frame (see
    /// [`ItemSender::send_all`]).
    ///
    /// # Errors
    /// As [`ItemSender::send_all`].
    pub async fn send_all<I>(&mut self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: Borrow<Item>,
    {
        self.inner.send_all_with(items, encode_borrowed).await
    }

    /// Ends the stream.
    ///
    /// # Errors
    /// As [`ItemSender::finish`].
    pub async fn finish(&mut self) -> Result<(), RpcError> {
        self.inner.finish().await
    }

    /// The untyped sender underneath.
    pub fn into_untyped(self) -> ItemSender {
        self.inner
    }
}

/// A call to a [`ClientStreaming`] method: it sends items of the method's item type, then
/// gets its response type.
pub struct TypedClientStream<Req, Resp> {
    inner: ClientStreamCall,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> fmt::Debug for TypedClientStream<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> TypedClientStream<Req, Resp> {
    /// Sends one item.
    ///
    /// # Errors
    /// As [`ClientStreamCall::send`].
    pub async fn send(&mut self, item: &Req) -> Result<(), RpcError> {
        self.inner.send(item).await
    }

    /// Sends items that are ready together, several to a frame (see
    /// [`ItemSender::send_all`]).
    ///
    /// # Errors
    /// As [`ItemSender::send_all`].
    pub async fn send_all<I>(&mut self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: Borrow<Req>,
    {
        self.inner
            .sender_mut()
            .send_all_with(items, encode_borrowed)
            .await
    }

    /// Ends the stream and waits for the response.
    ///
    /// # Errors
    /// As [`ClientStreamCall::finish`].
    pub async fn finish(self) -> Result<Resp, RpcError> {
        self.inner.finish().await
    }

    /// Cancels the call now (same as dropping it).
    pub fn cancel(self) {}

    /// The untyped call underneath.
    pub fn into_untyped(self) -> ClientStreamCall {
        self.inner
    }
}

/// A typed bidirectional handler as an untyped one: its sink takes only the out type.
fn typed_bidi<Item, Out, F, Fut>(f: F) -> impl Fn(CallContext, Items<Item>, ItemSink) -> Fut
where
    F: Fn(CallContext, Items<Item>, Sink<Out>) -> Fut,
{
    move |ctx, items, sink| {
        f(
            ctx,
            items,
            Sink {
                inner: sink,
                _item: PhantomData,
            },
        )
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

            /// Registers an inline handler of a typed unary method: a plain function run
            /// on the connection's reader as the request is read (see
            /// [`ServerBuilder::unary_inline_raw`] for when that suits).
            ///
            /// # Panics
            /// As [`unary_raw`](Self::unary_raw).
            pub fn inline_method<Req, Resp, F>(self, method: Unary<Req, Resp>, f: F) -> Self
            where
                Req: DeserializeOwned,
                Resp: Serialize,
                F: Fn(&InlineContext, Req) -> Result<Resp, RpcError> + Send + Sync + 'static,
            {
                self.unary_inline(method.name(), f)
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

            /// Registers the handler of a typed client-streaming method: it reads the
            /// caller's items of the method's item type and returns its response type.
            ///
            /// # Panics
            /// As [`unary_raw`](Self::unary_raw).
            pub fn client_stream_method<Req, Resp, F, Fut>(
                self,
                method: ClientStreaming<Req, Resp>,
                f: F,
            ) -> Self
            where
                Req: DeserializeOwned + 'static,
                Resp: Serialize + Send + 'static,
                F: Fn(CallContext, Items<Req>) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
            {
                self.client_streaming(method.name(), f)
            }

            /// Registers the handler of a typed bidirectional method: it reads the
            /// caller's items of the method's item type and sends items of its out type;
            /// returning `Ok` ends its stream.
            ///
            /// # Panics
            /// As [`unary_raw`](Self::unary_raw).
            pub fn bidi_method<Item, Out, F, Fut>(self, method: Bidi<Item, Out>, f: F) -> Self
            where
                Item: DeserializeOwned + 'static,
                Out: Serialize + 'static,
                F: Fn(CallContext, Items<Item>, Sink<Out>) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
            {
                self.bidi(method.name(), typed_bidi(f))
            }

            /// Registers the handler of a typed notification (see
            /// [`on_notify`](Self::on_notify)).
            ///
            /// # Panics
            /// As [`on_notify_raw`](Self::on_notify_raw).
            pub fn notify_method<T, F, Fut>(self, notification: Notification<T>, f: F) -> Self
            where
                T: DeserializeOwned + Send + 'static,
                F: Fn(NotifyContext, T) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = ()> + Send + 'static,
            {
                self.on_notify(notification.name(), f)
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

            /// Calls a typed client-streaming method: send its items, then `finish` for
            /// the response. Dropping the call before its response cancels it.
            ///
            /// # Errors
            /// As [`call_client_stream`](Self::call_client_stream).
            pub async fn invoke_client_stream<Req, Resp>(
                &self,
                method: ClientStreaming<Req, Resp>,
                opts: CallOptions,
            ) -> Result<TypedClientStream<Req, Resp>, RpcError>
            where
                Req: Serialize,
                Resp: DeserializeOwned,
            {
                let inner = self.call_client_stream(method.name(), opts).await?;
                Ok(TypedClientStream {
                    inner,
                    _types: PhantomData,
                })
            }

            /// Calls a typed bidirectional method: its sending half and its receiving
            /// half, usable from different tasks. Dropping both before the end cancels
            /// the call; dropping the sender ends its stream.
            ///
            /// # Errors
            /// As [`call_bidi`](Self::call_bidi).
            pub async fn invoke_bidi<Item, Out>(
                &self,
                method: Bidi<Item, Out>,
                opts: CallOptions,
            ) -> Result<(TypedSender<Item>, TypedStream<Out>), RpcError>
            where
                Item: Serialize,
                Out: DeserializeOwned,
            {
                let (sender, receiver) = self.call_bidi(method.name(), opts).await?.split();
                Ok((
                    TypedSender {
                        inner: sender,
                        _item: PhantomData,
                    },
                    TypedStream {
                        inner: receiver,
                        _item: PhantomData,
                    },
                ))
            }
        }
    };
}

typed_calls!(Client);
typed_calls!(Peer);

/// Typed notifications, the same on a [`Client`] and a [`Peer`].
macro_rules! typed_notifications {
    ($sender:ty) => {
        impl $sender {
            /// Sends a typed notification (see [`notify`](Self::notify)).
            ///
            /// # Errors
            /// As [`notify`](Self::notify).
            pub async fn send_notification<T: Serialize>(
                &self,
                notification: Notification<T>,
                body: &T,
            ) -> Result<(), RpcError> {
                self.notify(notification.name(), body).await
            }
        }
    };
}

typed_notifications!(Client);
typed_notifications!(Peer);

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

    /// Sends a typed notification (see [`notify`](Self::notify)).
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    pub fn send_notification<T: Serialize>(
        &self,
        notification: Notification<T>,
        body: &T,
    ) -> Result<(), RpcError> {
        self.notify(notification.name(), body)
    }
}

/// Appends `item` encoded with the default codec: how the typed senders write each item
/// of a batch.
fn encode_borrowed<Item: Serialize, B: Borrow<Item>>(
    item: B,
    out: &mut ItemWriter<'_>,
) -> Result<(), RpcError> {
    out.encode(item.borrow())
}
