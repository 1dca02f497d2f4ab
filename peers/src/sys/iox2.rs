//! iceoryx2 0.10: round trips over a request/response service (`request_response::<[u8],
//! [u8]>`), streams over a publish/subscribe service (`publish_subscribe::<[u8]>`), one
//! service of each per message size (`initial_max_slice_len` = the size, so nothing is
//! reallocated while measuring). Messages are written with `loan_slice_uninit` +
//! `write_from_slice` and read in place from the shared memory.
//!
//! Modes:
//! - `busy-poll`: both sides poll `receive()` in a loop (request/response has no built-in
//!   wake-up; this is what iceoryx2's own latency figures do). Each waiting side burns its
//!   core.
//! - `event`: the same services plus one event service per direction; the sender calls
//!   `notify()` after each `send()` and the receiver, when `receive()` finds nothing, sleeps
//!   in `Listener::timed_wait` (a Unix datagram socket underneath).
//!
//! Everything runs under this run's own root directory and file prefix, so the run's files
//! can be checked and removed afterwards (iceoryx2 leaves its global management segment in
//! /dev/shm even after every node is dropped).

use std::hint::spin_loop;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use iceoryx2::port::client::Client as IoxClient;
use iceoryx2::port::listener::Listener as IoxListener;
use iceoryx2::port::notifier::Notifier as IoxNotifier;
use iceoryx2::port::publisher::Publisher as IoxPublisher;
use iceoryx2::port::server::Server as IoxServer;
use iceoryx2::port::subscriber::Subscriber as IoxSubscriber;
use iceoryx2::prelude::*;

use super::{check, message, Child, Lead, RunEnv, SetupCtl, Variant, SIZES};
use crate::pattern::{self, REPLY};

type S = ipc::Service;
type Cli = IoxClient<S, [u8], (), [u8], ()>;
type Srv = IoxServer<S, [u8], (), [u8], ()>;
type Pub = IoxPublisher<S, [u8], ()>;
type Sub = IoxSubscriber<S, [u8], ()>;
type RrService =
    iceoryx2::service::port_factory::request_response::PortFactory<S, [u8], (), [u8], ()>;
type PsService = iceoryx2::service::port_factory::publish_subscribe::PortFactory<S, [u8], ()>;
type EvService = iceoryx2::service::port_factory::event::PortFactory<S>;

/// Longest sleep in one `timed_wait` (the loop around it re-checks for data; the
/// watchdog bounds the whole case).
const NAP: Duration = Duration::from_millis(100);

/// Samples a subscriber may hold queued: about 8 MiB in flight, between 8 and 1024
/// samples (shmrpc's big ring is 8 MiB too).
fn sub_buffer(size: usize) -> usize {
    ((8 << 20) / size).clamp(8, 1024)
}

/// The iceoryx2 configuration of this run: its own root directory and file prefix.
pub fn config(env: &RunEnv) -> Result<Config> {
    let mut cfg = Config::default();
    cfg.global.prefix = FileName::new(env.iox_prefix().as_bytes())
        .map_err(|e| anyhow!("iceoryx2 prefix: {e:?}"))?;
    let root = format!("{}/", env.iox_root().display());
    cfg.global.set_root_path(
        &Path::new(root.as_bytes()).map_err(|e| anyhow!("iceoryx2 root path: {e:?}"))?,
    );
    Ok(cfg)
}

fn node(env: &RunEnv) -> Result<Node<S>> {
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .config(&config(env)?)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<S>()
        .map_err(|e| anyhow!("iceoryx2 node: {e:?}"))
}

fn name(env: &RunEnv, v: Variant, what: &str) -> Result<ServiceName> {
    let s = format!("peers/{}/{}/{what}", env.tag, v.mode());
    ServiceName::new(&s).map_err(|e| anyhow!("service name {s}: {e:?}"))
}

/// The ports of one side. Field order is drop order: ports, then services, then the node.
struct Side {
    event: bool,
    /// Samples sent again because `send` reached no subscriber.
    resent: u64,
    /// Per size (index in [`SIZES`]): client (lead) or server (child).
    clients: Vec<Cli>,
    servers: Vec<Srv>,
    /// Per size: publisher (lead) or subscriber (child).
    pubs: Vec<Pub>,
    subs: Vec<Sub>,
    /// Event mode: wakes the peer / is woken.
    notifier: Option<IoxNotifier<S>>,
    listener: Option<IoxListener<S>>,
    _services: Services,
    _node: Node<S>,
}

#[derive(Default)]
struct Services {
    rr: Vec<RrService>,
    ps: Vec<PsService>,
    ev: Vec<EvService>,
}

fn services(node: &Node<S>, env: &RunEnv, v: Variant) -> Result<Services> {
    let mut s = Services::default();
    for size in SIZES {
        let rr = node
            .service_builder(&name(env, v, &format!("rr-{size}"))?)
            .request_response::<[u8], [u8]>()
            .max_clients(1)
            .max_servers(1)
            .open_or_create()
            .map_err(|e| anyhow!("request/response service ({size} B): {e:?}"))?;
        s.rr.push(rr);
        let ps = node
            .service_builder(&name(env, v, &format!("ps-{size}"))?)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(sub_buffer(size))
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
            .map_err(|e| anyhow!("publish/subscribe service ({size} B): {e:?}"))?;
        s.ps.push(ps);
    }
    if v == Variant::Iox2Event {
        for dir in ["to-child", "to-lead"] {
            let ev = node
                .service_builder(&name(env, v, &format!("ev-{dir}"))?)
                .event()
                .open_or_create()
                .map_err(|e| anyhow!("event service {dir}: {e:?}"))?;
            s.ev.push(ev);
        }
    }
    Ok(s)
}

fn size_index(size: usize) -> Result<usize> {
    SIZES
        .iter()
        .position(|&s| s == size)
        .with_context(|| format!("no iceoryx2 service for {size} B"))
}

/// The child makes its ports first (server, subscriber, listener), so that the lead's
/// first request or sample finds them connected.
pub fn child(v: Variant, env: &RunEnv) -> Result<Box<dyn Child>> {
    let node = node(env)?;
    let svc = services(&node, env, v)?;
    let mut servers = Vec::new();
    let mut subs = Vec::new();
    for (i, size) in SIZES.into_iter().enumerate() {
        servers.push(
            svc.rr[i]
                .server_builder()
                .initial_max_slice_len(size)
                .create()
                .map_err(|e| anyhow!("server ({size} B): {e:?}"))?,
        );
        subs.push(
            svc.ps[i]
                .subscriber_builder()
                .buffer_size(sub_buffer(size))
                .create()
                .map_err(|e| anyhow!("subscriber ({size} B): {e:?}"))?,
        );
    }
    let (notifier, listener) = if v == Variant::Iox2Event {
        let l = svc.ev[0].listener_builder().create();
        let n = svc.ev[1].notifier_builder().create();
        (
            Some(n.map_err(|e| anyhow!("notifier: {e:?}"))?),
            Some(l.map_err(|e| anyhow!("listener: {e:?}"))?),
        )
    } else {
        (None, None)
    };
    Ok(Box::new(Side {
        event: v == Variant::Iox2Event,
        resent: 0,
        clients: Vec::new(),
        servers,
        pubs: Vec::new(),
        subs,
        notifier,
        listener,
        _services: svc,
        _node: node,
    }))
}

/// The lead waits for the child's ports, then makes its own (client, publisher, notifier).
pub fn lead(v: Variant, env: &RunEnv, ctl: &mut dyn SetupCtl) -> Result<Box<dyn Lead>> {
    ctl.start("-")?;
    ctl.finish()?;
    let node = node(env)?;
    let svc = services(&node, env, v)?;
    let mut clients = Vec::new();
    let mut pubs = Vec::new();
    for (i, size) in SIZES.into_iter().enumerate() {
        clients.push(
            svc.rr[i]
                .client_builder()
                .initial_max_slice_len(size)
                .create()
                .map_err(|e| anyhow!("client ({size} B): {e:?}"))?,
        );
        pubs.push(
            svc.ps[i]
                .publisher_builder()
                .initial_max_slice_len(size)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()
                .map_err(|e| anyhow!("publisher ({size} B): {e:?}"))?,
        );
    }
    let (notifier, listener) = if v == Variant::Iox2Event {
        let n = svc.ev[0].notifier_builder().create();
        let l = svc.ev[1].listener_builder().create();
        (
            Some(n.map_err(|e| anyhow!("notifier: {e:?}"))?),
            Some(l.map_err(|e| anyhow!("listener: {e:?}"))?),
        )
    } else {
        (None, None)
    };
    Ok(Box::new(Side {
        event: v == Variant::Iox2Event,
        resent: 0,
        clients,
        servers: Vec::new(),
        pubs,
        subs: Vec::new(),
        notifier,
        listener,
        _services: svc,
        _node: node,
    }))
}

impl Side {
    /// Event mode: wakes the peer.
    fn wake(&self) -> Result<()> {
        if let Some(n) = &self.notifier {
            n.notify().map_err(|e| anyhow!("notify: {e:?}"))?;
        }
        Ok(())
    }

    /// Nothing to receive: spin once (busy-poll) or sleep until woken (event).
    fn idle(&self) -> Result<()> {
        match &self.listener {
            Some(l) if self.event => {
                l.timed_wait(|_| {}, NAP)
                    .map_err(|e| anyhow!("timed_wait: {e:?}"))?;
            }
            _ => spin_loop(),
        }
        Ok(())
    }
}

impl Lead for Side {
    fn rtt(&mut self, size: usize, n: u64, seed0: u64, samples: &mut Vec<u64>) -> Result<()> {
        let client = &self.clients[size_index(size)?];
        let mut src = vec![0u8; size];
        for i in 0..n {
            let seed = seed0 + i;
            pattern::fill(&mut src, seed);
            let t0 = Instant::now();
            let req = client
                .loan_slice_uninit(size)
                .map_err(|e| anyhow!("loan request: {e:?}"))?
                .write_from_slice(&src);
            let pending = req.send().map_err(|e| anyhow!("send request: {e:?}"))?;
            if pending.number_of_server_connections() == 0 {
                bail!("iceoryx2: the request reached no server");
            }
            self.wake()?;
            loop {
                if let Some(r) = pending
                    .receive()
                    .map_err(|e| anyhow!("receive response: {e:?}"))?
                {
                    check("iceoryx2 reply", r.payload(), size, seed ^ REPLY)?;
                    break;
                }
                self.idle()?;
            }
            drop(pending);
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        Ok(())
    }

    fn stream(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let publisher = &self.pubs[size_index(size)?];
        let mut src = vec![0u8; size];
        for i in 0..n {
            pattern::fill(&mut src, seed0 + i);
            // With `RetryUntilDelivered`, `send` still returns 0 recipients now and then when
            // the subscriber's queue is full (its used-chunk list, we believe): the sample is
            // dropped, not queued. A user has to send it again; so do we, and count it.
            let mut tries = 0u32;
            loop {
                let sample = publisher
                    .loan_slice_uninit(size)
                    .map_err(|e| anyhow!("loan sample: {e:?}"))?
                    .write_from_slice(&src);
                let delivered = sample.send().map_err(|e| anyhow!("send sample: {e:?}"))?;
                self.wake()?;
                if delivered > 0 {
                    break;
                }
                self.resent += 1;
                tries += 1;
                if tries > 1_000_000 {
                    bail!("iceoryx2: sample {i} reached no subscriber in {tries} sends");
                }
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    fn fallbacks(&self) -> u64 {
        self.resent
    }

    fn close(self: Box<Self>) -> Result<()> {
        drop(self);
        Ok(())
    }
}

impl Child for Side {
    fn echo(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let server = &self.servers[size_index(size)?];
        let mut reply = message(size, 0);
        for i in 0..n {
            let seed = seed0 + i;
            pattern::fill(&mut reply, seed ^ REPLY);
            loop {
                if let Some(req) = server
                    .receive()
                    .map_err(|e| anyhow!("receive request: {e:?}"))?
                {
                    check("iceoryx2 request", req.payload(), size, seed)?;
                    req.loan_slice_uninit(size)
                        .map_err(|e| anyhow!("loan response: {e:?}"))?
                        .write_from_slice(&reply)
                        .send()
                        .map_err(|e| anyhow!("send response: {e:?}"))?;
                    drop(req);
                    self.wake()?;
                    break;
                }
                self.idle()?;
            }
        }
        Ok(())
    }

    fn sink(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let sub = &self.subs[size_index(size)?];
        let mut i = 0;
        while i < n {
            match sub
                .receive()
                .map_err(|e| anyhow!("receive sample: {e:?}"))?
            {
                Some(s) => {
                    check("iceoryx2 stream", s.payload(), size, seed0 + i)?;
                    i += 1;
                }
                None => self.idle()?,
            }
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        drop(self);
        Ok(())
    }
}
