//! A peer killed with SIGKILL: the survivor's waits end with `PeerGone` instead of hanging,
//! a dead owner's segment is reported stale and reclaimed on request, a dead listener's
//! socket file is replaced while a live one is refused, and nothing is left behind.
// Reading a segment word the peer wrote is `unsafe` (raw shared memory); it is allowed
// where it happens.
#![deny(unsafe_code)]

use std::sync::mpsc;
use std::time::Duration;

use shmrpc::channel::{
    self, BindError, ChannelConfig, Listener, RecvError, SendError, TryRecvError, TrySendError,
};
use shmrpc::lowlevel::sys::{Segment, SegmentStatus, StatusError};
use shmrpc_tests::{
    field, field_parse, parse_wait, segment_file, socket_file, spawn_peer, with_watchdog,
    PeerCommand, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);
const CAP: usize = 64 * 1024;

/// Checks a `peer flood` message: sequence number `seq` and its complement.
fn check_flood(seq: u64, m: &[u8]) {
    assert_eq!(m.len(), 16, "message {seq}: length");
    let got = u64::from_le_bytes(m[..8].try_into().unwrap());
    let not = u64::from_le_bytes(m[8..].try_into().unwrap());
    assert_eq!(
        (got, not),
        (seq, !seq),
        "message {seq} lost, reordered or corrupted"
    );
}

/// Reads 20,000 messages from a flooding peer, kills it, then keeps receiving with a
/// blocking `recv`: the messages already in the ring arrive in order, then `PeerGone`.
fn blocking_recv_mid_stream(wait: &str) {
    let mut names = TestNames::new();
    let name = names.name("flood");
    let mut peer = spawn_peer!(PeerCommand::Flood {
        name: name.clone(),
        wait: parse_wait(wait).unwrap(),
        cap: CAP,
    });
    peer.expect("ready", WAIT);
    let cfg = ChannelConfig::default().with_wait(parse_wait(wait).unwrap());
    let mut ep = channel::connect(&name, &cfg).expect("connect");
    let mut seq = 0u64;
    while seq < 20_000 {
        check_flood(seq, &ep.recv().expect("recv"));
        seq += 1;
    }
    peer.kill();
    let end = loop {
        match ep.recv() {
            Ok(m) => check_flood(seq, &m),
            Err(e) => break e,
        }
        seq += 1;
    };
    assert!(
        matches!(end, RecvError::PeerGone),
        "got {end:?} after {seq}"
    );
    assert!(!ep.receiver().peer_alive());
    assert!(matches!(ep.try_recv(), Err(TryRecvError::Empty)));
    drop(ep);
    names.assert_clean();
}

#[test]
fn blocking_recv_gets_peer_gone_when_the_sender_is_killed_mid_stream_spin_then_park() {
    with_watchdog(Duration::from_secs(30), || blocking_recv_mid_stream("stp"));
}

#[test]
fn blocking_recv_gets_peer_gone_when_the_sender_is_killed_mid_stream_spin() {
    with_watchdog(Duration::from_secs(30), || blocking_recv_mid_stream("spin"));
}

#[test]
fn blocking_recv_gets_peer_gone_when_the_sender_is_killed_mid_stream_park() {
    with_watchdog(Duration::from_secs(30), || blocking_recv_mid_stream("park"));
}

/// The same with `recv_async`; then, with the peer dead, a `send_async` into a full ring
/// (nobody will ever make room) also ends with `PeerGone`.
#[test]
fn async_recv_and_send_get_peer_gone_when_the_peer_is_killed() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("flood-async");
        let mut peer = spawn_peer!(PeerCommand::Flood {
            name: name.clone(),
            wait: parse_wait("stp").unwrap(),
            cap: CAP,
        });
        peer.expect("ready", WAIT);
        let mut ep = channel::connect(&name, &ChannelConfig::default()).expect("connect");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut seq = 0u64;
            let end = loop {
                if seq == 20_000 {
                    peer.kill();
                }
                match ep.recv_async().await {
                    Ok(m) => check_flood(seq, &m),
                    Err(e) => break e,
                }
                seq += 1;
            };
            assert!(seq >= 20_000, "{end:?} before the peer was killed ({seq})");
            assert!(
                matches!(end, RecvError::PeerGone),
                "got {end:?} after {seq}"
            );

            let msg = [9u8; 1000];
            let mut sent = 0;
            loop {
                match ep.try_send(&msg) {
                    Ok(()) => sent += 1,
                    Err(TrySendError::Full) => break,
                    Err(e) => panic!("try_send: {e}"),
                }
            }
            assert!(sent > 0);
            let e = ep
                .send_async(&msg)
                .await
                .expect_err("sent into a full ring");
            assert!(matches!(e, SendError::PeerGone), "got {e:?}");
        });
        drop(ep);
        names.assert_clean();
    });
}

/// Both halves blocked (a receive on an empty ring, a send on a full one), parked, when
/// the peer is killed: both wake with `PeerGone`.
#[test]
fn parked_receiver_and_sender_wake_with_peer_gone() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("sink");
        let mut peer = spawn_peer!(PeerCommand::Sink {
            name: name.clone(),
            wait: parse_wait("park").unwrap(),
            cap: 4096,
        });
        peer.expect("ready", WAIT);
        let cfg = ChannelConfig::default().with_wait(parse_wait("park").unwrap());
        let ep = channel::connect(&name, &cfg).expect("connect");
        peer.expect("accepted", WAIT);
        let (mut tx, mut rx) = ep.split();
        let msg = [3u8; 100];
        while tx.try_send(&msg).is_ok() {}
        assert!(matches!(tx.try_send(&msg), Err(TrySendError::Full)));

        let (res_tx, res) = mpsc::channel();
        let r2 = res_tx.clone();
        let recv = std::thread::spawn(move || {
            let e = rx
                .recv()
                .map(|_| ())
                .expect_err("received from a silent peer");
            let _ = r2.send(format!("recv: {e:?}"));
        });
        let send = std::thread::spawn(move || {
            let e = tx.send(&msg).expect_err("sent into a full ring");
            let _ = res_tx.send(format!("send: {e:?}"));
        });
        // Let both go to sleep (not needed for correctness: either way they must end).
        std::thread::sleep(Duration::from_millis(200));
        peer.kill();
        let mut got: Vec<String> = (0..2)
            .map(|_| {
                res.recv_timeout(WAIT)
                    .expect("a blocked call did not return")
            })
            .collect();
        got.sort();
        assert_eq!(got, ["recv: PeerGone", "send: PeerGone"]);
        recv.join().unwrap();
        send.join().unwrap();
        names.assert_clean();
    });
}

#[test]
fn a_killed_owners_segment_is_stale_and_reclaimed_only_when_asked() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("owner");
        let mut peer = spawn_peer!(PeerCommand::HoldSegment {
            name: name.clone(),
            size: 4096,
        });
        let ready = peer.expect("ready", WAIT);
        let pid: u32 = field_parse(&ready, "pid");
        assert_eq!(pid, peer.pid());

        match Segment::status(&name) {
            Ok(SegmentStatus::Live(p)) => assert_eq!(p.pid, pid),
            other => panic!("status of a live owner's segment: {other:?}"),
        }
        assert!(
            !Segment::reclaim_stale(&name).unwrap(),
            "reclaimed a live segment"
        );
        let seg = Segment::open(&name).expect("open");
        #[allow(unsafe_code)]
        let stamp = || {
            // SAFETY: no ring lives in this segment; its first word is only accessed
            // atomically (the peer's store, this load).
            unsafe { seg.atomic_u64(0) }
                .unwrap()
                .load(std::sync::atomic::Ordering::Acquire)
        };
        assert_eq!(stamp(), u64::from(pid));

        peer.kill(); // SIGKILL and reap: it cannot unlink anything
        assert!(
            segment_file(&name).exists(),
            "the name vanished with its owner"
        );
        match Segment::status(&name) {
            Ok(SegmentStatus::Stale(Some(p))) => assert_eq!(p.pid, pid),
            other => panic!("status after the owner was killed: {other:?}"),
        }
        // Status alone never removes anything.
        assert!(segment_file(&name).exists());
        assert!(
            Segment::reclaim_stale(&name).unwrap(),
            "stale segment not reclaimed"
        );
        assert!(!segment_file(&name).exists(), "reclaim left the file");
        assert!(matches!(
            Segment::status(&name),
            Err(StatusError::NotFound(_))
        ));
        // Our mapping outlives the name.
        assert_eq!(stamp(), u64::from(pid));
        drop(seg);
        names.assert_clean();
    });
}

#[test]
fn a_dead_listeners_socket_is_replaced_and_a_live_one_refused() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("listen");
        let path = socket_file(&name);
        let mut peer = spawn_peer!(PeerCommand::Listen { name: name.clone() });
        let ready = peer.expect("ready", WAIT);
        assert_eq!(field(&ready, "path"), Some(path.to_str().unwrap()));

        match Listener::bind(&name, ChannelConfig::default()) {
            Err(BindError::AddrInUse(p)) => assert_eq!(p, path),
            other => panic!("bind over a live listener: {other:?}"),
        }
        assert!(
            path.exists(),
            "refused bind removed the live listener's socket"
        );

        peer.kill();
        assert!(path.exists(), "expected a stale socket file after SIGKILL");
        let l = Listener::bind(&name, ChannelConfig::default()).expect("bind over stale");
        assert_eq!(l.path(), path);

        // The new listener works.
        let server = std::thread::spawn(move || {
            let mut ep = l.accept().expect("accept");
            let m = ep.recv().expect("server recv").to_vec();
            ep.send(&m).expect("server send");
            let _ = ep.recv(); // wait for the client to hang up
            drop(ep);
            l // dropped by the caller, after the check below
        });
        let mut ep = channel::connect(&name, &ChannelConfig::default()).expect("connect");
        ep.send(b"after the stale socket").unwrap();
        assert_eq!(&*ep.recv().unwrap(), b"after the stale socket");
        drop(ep);
        let l = server.join().unwrap();
        assert!(path.exists());
        drop(l);
        assert!(!path.exists(), "listener left its socket file");
        names.assert_clean();
    });
}
