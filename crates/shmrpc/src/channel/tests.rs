//! The channel's own unit tests: one process, both ends from [`pair`], so each property is
//! checked without sockets or helper processes (the cross-process tests live in
//! `crates/shmrpc-tests`).

use std::time::Duration;

use super::*;

fn small() -> ChannelConfig {
    ChannelConfig::default()
        .with_capacity(4096)
        .with_wait(WaitStrategy::Park)
}

#[test]
fn messages_arrive_in_order_each_way() {
    let (mut a, mut b) = pair(&small()).unwrap();
    for i in 0u32..100 {
        a.send(&i.to_le_bytes()).unwrap();
        let got = b.recv().unwrap();
        assert_eq!(&*got, &i.to_le_bytes());
        drop(got);
        b.send(&(i * 2).to_le_bytes()).unwrap();
        assert_eq!(&*a.recv().unwrap(), &(i * 2).to_le_bytes());
    }
}

#[test]
fn an_empty_channel_says_empty_and_recv_waits_for_the_message() {
    let (mut a, mut b) = pair(&small()).unwrap();
    assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)));
    // recv blocks until the sender's message lands; it never returns "nothing".
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        a.send(b"late").unwrap();
        a
    });
    assert_eq!(&*b.recv_timeout(Duration::from_secs(30)).unwrap(), b"late");
    drop(sender.join().unwrap());
}

#[test]
fn a_full_ring_refuses_try_send_and_frees_space_when_read() {
    let (mut a, mut b) = pair(&small()).unwrap();
    let msg = [7u8; 1000];
    let mut sent = 0;
    while a.try_send(&msg).is_ok() {
        sent += 1;
    }
    assert!(
        sent >= 3,
        "a 4 KiB ring holds several 1000-byte messages, held {sent}"
    );
    assert!(matches!(a.try_send(&msg), Err(TrySendError::Full)));
    drop(b.recv().unwrap());
    a.try_send(&msg).expect("space freed by the read");
}

#[test]
fn a_message_larger_than_the_ring_is_refused_at_once() {
    let (mut a, _b) = pair(&small()).unwrap();
    let max = a.sender().max_message();
    assert!(max < 4096);
    let err = a.send(&vec![0u8; max + 1]).unwrap_err();
    assert!(
        matches!(err, SendError::TooLarge { len, max: m } if len == max + 1 && m == max),
        "{err:?}"
    );
    a.send(&vec![1u8; max]).expect("the largest message fits");
}

#[test]
fn closing_drains_then_reports_closed() {
    let (mut a, mut b) = pair(&small()).unwrap();
    a.send(b"one").unwrap();
    a.send(b"two").unwrap();
    drop(a);
    assert_eq!(&*b.recv().unwrap(), b"one");
    assert_eq!(&*b.recv().unwrap(), b"two");
    assert!(matches!(b.recv(), Err(RecvError::Closed)));
    assert!(matches!(b.send(b"x"), Err(SendError::Closed)));
}

#[test]
fn a_timed_receive_times_out_on_a_silent_peer() {
    let (_a, mut b) = pair(&small()).unwrap();
    assert!(matches!(
        b.recv_timeout(Duration::from_millis(10)),
        Err(RecvError::TimedOut)
    ));
}

#[test]
fn async_ends_exchange_messages_between_tasks() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut a, mut b) = pair(&small()).unwrap();
        let echo = tokio::spawn(async move {
            for _ in 0..50 {
                let m = b.recv_async().await.unwrap().to_vec();
                b.send_async(&m).await.unwrap();
            }
        });
        for i in 0u64..50 {
            a.send_async(&i.to_le_bytes()).await.unwrap();
            assert_eq!(&*a.recv_async().await.unwrap(), &i.to_le_bytes());
        }
        echo.await.unwrap();
    });
}

#[test]
fn a_hello_is_checked_field_by_field() {
    let mut good = [0u8; 32];
    good[..8].copy_from_slice(b"SHMRPCH1");
    good[8..12].copy_from_slice(&HANDSHAKE_VERSION.to_le_bytes());
    good[12..16].copy_from_slice(&1u32.to_le_bytes());
    good[16..24].copy_from_slice(&4096u64.to_le_bytes());
    good[24..32].copy_from_slice(&4096u64.to_le_bytes());
    let hello = Hello::parse(&good).unwrap();
    assert_eq!(hello.capacities, [4096, 4096]);

    let bad = |edit: &dyn Fn(&mut [u8; 32])| {
        let mut h = good;
        edit(&mut h);
        Hello::parse(&h).unwrap_err().to_string()
    };
    assert!(bad(&|h| h[0] = b'X').contains("magic"));
    assert!(bad(&|h| h[8..12].copy_from_slice(&99u32.to_le_bytes())).contains("version 99"));
    assert!(bad(&|h| h[12..16].copy_from_slice(&0u32.to_le_bytes())).contains("side 0"));
    assert!(bad(&|h| h[16..24].copy_from_slice(&1000u64.to_le_bytes())).contains("capacity 1000"));
    assert!(Hello::parse(&good[..31])
        .unwrap_err()
        .to_string()
        .contains("31 bytes"));
}

#[test]
fn a_long_message_received_lengthens_the_next_spin_by_its_copies() {
    let spin = Duration::from_micros(50);
    let cfg = ChannelConfig::default()
        .with_capacity(4 << 20)
        .with_wait(WaitStrategy::SpinThenPark { spin });
    let (a, b) = pair(&cfg).unwrap();
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    let long = vec![7u8; 1 << 20];
    // By each way of receiving: a blocking receive, a try, and (below) an async one.
    tx.send(&long).unwrap();
    assert_eq!(rx.recv().unwrap().len(), long.len());
    let after_long = rx.spin_budget().unwrap();
    assert!(
        after_long >= spin + Duration::from_micros(200),
        "after 1 MiB the next wait spins through its copies: {after_long:?}"
    );
    tx.send(b"short").unwrap();
    assert_eq!(&*rx.try_recv().unwrap(), b"short");
    assert!(
        rx.spin_budget().unwrap() < spin + Duration::from_micros(1),
        "a short message adds next to nothing"
    );
    tx.send(&long).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let len = rt.block_on(async { rx.recv_async().await.map(|m| m.len()) });
    assert_eq!(len.unwrap(), long.len());
    assert_eq!(rx.spin_budget(), Some(after_long));
}
