//! The wake-up protocol seen from outside: sleepers are woken (no lost wake-ups under a
//! long park-mode ping-pong), a spinning stream makes no wake-up system call, and an empty
//! channel makes `recv` wait instead of returning "nothing".
#![cfg(not(shmrpc_loom))]

use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig, RecvError, WaitStrategy};

fn watchdog(secs: u64, what: &'static str) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(secs)).is_err() {
            eprintln!("watchdog: {what} hung for {secs}s");
            std::process::exit(101);
        }
    });
    tx
}

#[test]
fn park_mode_ping_pong_never_loses_a_wake_up() {
    let done = watchdog(60, "park ping-pong");
    let cfg = ChannelConfig::default()
        .with_capacity(4096)
        .with_wait(WaitStrategy::Park);
    let (mut a, b) = channel::pair(&cfg).unwrap();
    const N: u64 = 20_000;
    let echo = std::thread::spawn(move || {
        let (mut tx, mut rx) = b.split();
        for _ in 0..N {
            let m = rx.recv().unwrap();
            let v = u64::from_le_bytes(m[..8].try_into().unwrap());
            drop(m);
            tx.send(&(v * 3).to_le_bytes()).unwrap();
        }
        (tx.producer().wakes(), rx.consumer().wakes())
    });
    for i in 0..N {
        a.send(&i.to_le_bytes()).unwrap();
        let r = a.recv().unwrap();
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), i * 3);
    }
    let (echo_wakes, _) = echo.join().unwrap();
    // Both sides sleep between messages, so replies had to wake us: the protocol's slow
    // path really ran (a test of the fast path only would prove nothing about wake-ups).
    assert!(echo_wakes > 0, "the echo side never had to wake the caller");
    assert!(a.sender().producer().wakes() > 0);
    done.send(()).unwrap();
}

#[test]
fn a_spinning_stream_makes_no_wake_up_calls() {
    let done = watchdog(60, "spin stream");
    let cfg = ChannelConfig::default()
        .with_capacity(1 << 16)
        .with_wait(WaitStrategy::Spin);
    let (a, b) = channel::pair(&cfg).unwrap();
    const N: u64 = 1_000_000;
    let reader = std::thread::spawn(move || {
        let (_tx, mut rx) = b.split();
        let mut next = 0u64;
        while next < N {
            rx.recv_batch(256, |_, m| {
                assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), next);
                next += 1;
            })
            .unwrap();
        }
        rx.consumer().wakes()
    });
    let (mut tx, _rx) = a.split();
    for i in 0..N {
        tx.send(&i.to_le_bytes()).unwrap();
    }
    let consumer_wakes = reader.join().unwrap();
    assert_eq!(
        tx.producer().wakes(),
        0,
        "producer issued wake-ups to a spinning consumer"
    );
    assert_eq!(
        consumer_wakes, 0,
        "consumer issued wake-ups to a spinning producer"
    );
    done.send(()).unwrap();
}

#[test]
fn recv_on_an_empty_channel_waits_instead_of_returning_nothing() {
    let done = watchdog(30, "empty recv");
    for wait in [
        WaitStrategy::Park,
        WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(20),
        },
        WaitStrategy::Spin,
    ] {
        let (mut a, mut b) = channel::pair(&ChannelConfig::default().with_wait(wait)).unwrap();
        assert!(matches!(
            a.recv_timeout(Duration::from_millis(30)),
            Err(RecvError::TimedOut)
        ));
        // A message sent later, while the receiver already waits, is delivered.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.send(b"late").unwrap();
            b
        });
        let m = a.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(&*m, b"late");
        drop(m);
        drop(t.join().unwrap());
        // The peer end is gone (dropped): the receiver sees Closed, not a hang.
        assert!(matches!(a.recv(), Err(RecvError::Closed)));
    }
    done.send(()).unwrap();
}

#[test]
fn async_tasks_in_one_current_thread_runtime_wake_each_other() {
    let done = watchdog(60, "async current_thread");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for wait in [
            WaitStrategy::Park,
            WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(20),
            },
        ] {
            let (mut a, mut b) = channel::pair(&ChannelConfig::default().with_wait(wait)).unwrap();
            let server = tokio::spawn(async move {
                loop {
                    let v = match b.recv_async().await {
                        Ok(m) => u32::from_le_bytes(m[..4].try_into().unwrap()),
                        Err(RecvError::Closed) => return,
                        Err(e) => panic!("{e}"),
                    };
                    b.send_async(&(v + 7).to_le_bytes()).await.unwrap();
                }
            });
            for i in 0..2_000u32 {
                a.send_async(&i.to_le_bytes()).await.unwrap();
                let r = a.recv_async().await.unwrap();
                assert_eq!(u32::from_le_bytes(r[..4].try_into().unwrap()), i + 7);
            }
            drop(a);
            server.await.unwrap();
        }
    });
    done.send(()).unwrap();
}
