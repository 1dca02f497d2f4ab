//! Reopening never wipes, exactly one of many racing processes creates, and each kind of
//! bad segment is refused with the error that names what differs.
// Raw segment words and the ring take-over after a peer's death are `unsafe`; each is
// allowed where it happens.
#![deny(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shmrpc::lowlevel::ring::{self, AttachError, End, PeekError, RING_MAGIC};
use shmrpc::lowlevel::sys::segment::testing::{damage, Damage};
use shmrpc::lowlevel::sys::segment::{SEGMENT_LAYOUT_VERSION, SEGMENT_MAGIC};
use shmrpc::lowlevel::sys::{OpenError, OpenOrCreateError, Segment, SEGMENT_HEADER_SIZE};
use shmrpc_tests::{
    field, field_parse, segment_file, spawn_peer, with_watchdog, PeerCommand, StreamChecker,
    TestNames, RING_SEGMENT_KIND, RING_WRITER_PROFILE,
};

const WAIT: Duration = Duration::from_secs(10);

/// Ring header offsets (see `shmrpc::lowlevel::ring`): write_pos @128, read_pos @256.
const WRITE_POS: usize = 128;
const READ_POS: usize = 256;

/// The 32- and 64-bit words at `off` of `seg`: ring header words, or words of a segment
/// without rings, which are only ever accessed atomically.
#[allow(unsafe_code)]
fn load32(seg: &Segment, off: usize) -> u32 {
    // SAFETY: see above: nothing in this process accesses the word non-atomically.
    unsafe { seg.atomic_u32(off) }
        .unwrap()
        .load(Ordering::Acquire)
}

#[allow(unsafe_code)]
fn word64(seg: &Segment, off: usize) -> &std::sync::atomic::AtomicU64 {
    // SAFETY: as in `load32`.
    unsafe { seg.atomic_u64(off) }.unwrap()
}

/// Reads everything available from `c` into `check`; returns how many records it read.
fn drain(c: &mut ring::Consumer, check: &mut StreamChecker) -> u64 {
    let mut n = 0;
    loop {
        match c.try_read_batch(64, |tag, p| check.accept(tag, p)) {
            Ok(k) => n += k as u64,
            Err(PeekError::Empty) => return n,
            Err(e) => panic!("reading the reopened ring: {e}"),
        }
    }
}

#[test]
fn reopening_from_another_process_finds_the_data_and_positions_intact() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("reopen");
        let (cap, n, seed) = (64 * 1024, 300u64, 42u64);
        let mut peer = spawn_peer!(PeerCommand::RingWriter {
            name: name.clone(),
            cap,
            n,
            seed,
        });
        let ready = peer.expect("ready", WAIT);
        let peer_pos: u64 = field_parse(&ready, "write_pos");
        assert!(peer_pos > 0);

        let (seg, created) =
            Segment::open_or_create_with(&name, ring::ring_size(cap), RING_SEGMENT_KIND, |_| {
                Err("the initialiser must not run on an existing segment".into())
            })
            .expect("open_or_create");
        assert!(!created, "open_or_create created a segment that existed");
        assert!(!seg.unlinks_on_drop(), "an opener must not own the name");
        assert_eq!(seg.kind(), RING_SEGMENT_KIND);
        assert_eq!(seg.len(), ring::ring_size(cap));
        assert_eq!(load32(&seg, 0), RING_MAGIC, "ring header wiped");
        assert_eq!(
            word64(&seg, WRITE_POS).load(Ordering::Acquire),
            peer_pos,
            "write_pos differs from what the writer reported"
        );
        assert_eq!(word64(&seg, READ_POS).load(Ordering::Acquire), 0);

        // All N records are there, intact and in order; nothing more.
        let seg = Arc::new(seg);
        let mut c = ring::consumer(&seg, 0, cap).expect("attach consumer");
        assert_eq!(c.position(), 0);
        let mut check = StreamChecker::new(seed, RING_WRITER_PROFILE);
        assert_eq!(drain(&mut c, &mut check), n);
        assert_eq!(check.error, None);
        assert_eq!(check.next, n);
        assert_eq!(c.position(), peer_pos);
        assert!(
            matches!(c.try_peek(), Err(PeekError::Empty)),
            "detached ≠ closed"
        );

        // A producer re-attached in the writer continues where the first one stopped.
        peer.send("more 50");
        let more = peer.expect("wrote", WAIT);
        assert_eq!(drain(&mut c, &mut check), 50);
        assert_eq!(check.error, None);
        assert_eq!(c.position(), field_parse::<u64>(&more, "write_pos"));
        c.detach();

        // Our handle never removes the name; the creator does when it exits.
        drop(seg);
        assert!(
            segment_file(&name).exists(),
            "an opener removed the segment"
        );
        peer.send("exit");
        peer.assert_exits_ok(WAIT);
        names.assert_clean();
    });
}

/// The peer's pid if `r` was refused because it holds `end`.
fn holder(r: Result<(), AttachError>, end: End) -> u32 {
    match r {
        Err(AttachError::AlreadyAttached { end: e, holder_pid }) if e == end => holder_pid,
        other => panic!("attaching the {end} another process holds gave {other:?}"),
    }
}

#[test]
#[allow(unsafe_code)]
fn each_process_is_refused_the_end_the_other_holds() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("claim");
        let cap = 4096;
        let seg = Segment::create_with(&name, ring::ring_size(cap), RING_SEGMENT_KIND, |s| {
            ring::init(s, 0, cap).map_err(|e| e.to_string())
        })
        .expect("create");
        let seg = Arc::new(seg);
        let mut c = ring::consumer(&seg, 0, cap).expect("consumer");
        let mut peer = spawn_peer!(PeerCommand::RingClaim {
            name: name.clone(),
            cap,
            end: End::Producer,
        });
        peer.expect("ready", WAIT);

        // We are refused the producer, the peer the consumer: each error names the other.
        let producer = || ring::producer(&seg, 0, cap).map(drop);
        assert_eq!(holder(producer(), End::Producer), peer.pid());
        peer.send("try consumer");
        let line = peer.expect("refused", WAIT);
        assert_eq!(field(&line, "end"), Some("consumer"), "{line}");
        assert_eq!(field_parse::<u32>(&line, "holder"), std::process::id());
        // A second producer in the peer is refused too, naming the peer itself.
        peer.send("try producer");
        let line = peer.expect("refused", WAIT);
        assert_eq!(field_parse::<u32>(&line, "holder"), peer.pid(), "{line}");

        // A peer that exits releases its end.
        peer.send("exit");
        peer.assert_exits_ok(WAIT);
        ring::producer(&seg, 0, cap)
            .expect("attach after the holder exited")
            .detach();

        // A killed peer cannot release: its claim refuses us (naming the dead process)
        // until it is taken over.
        let mut peer = spawn_peer!(PeerCommand::RingClaim {
            name: name.clone(),
            cap,
            end: End::Producer,
        });
        peer.expect("ready", WAIT);
        let dead = peer.pid();
        peer.kill();
        assert_eq!(holder(producer(), End::Producer), dead);
        // SAFETY: the holder was SIGKILLed and reaped by `kill` (so its exit is observed
        // here); it never touches the ring again, and no producer of ours is attached.
        let mut p = unsafe { ring::take_over_producer(&seg, 0, cap) }.expect("take over");
        p.try_push(7, b"after the take-over").unwrap();
        let r = c.try_peek().expect("record from the new producer");
        assert_eq!((r.tag(), &*r), (7, &b"after the take-over"[..]));
        drop(r);
        drop((p, c, seg));
        names.assert_clean();
    });
}

#[test]
fn processes_racing_open_or_create_exactly_one_creates() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        for round in 0..5 {
            let name = names.name("race");
            let mut peers: Vec<_> = (0..8)
                .map(|_| {
                    spawn_peer!(PeerCommand::RaceOpen {
                        name: name.clone(),
                        size: 4096,
                    })
                })
                .collect();
            for p in &mut peers {
                p.expect("ready", WAIT);
            }
            for p in &mut peers {
                p.send("go");
            }
            let results: Vec<(u32, bool, u64, bool)> = peers
                .iter_mut()
                .map(|p| {
                    let line = p.expect("result", WAIT);
                    (
                        p.pid(),
                        field_parse(&line, "created"),
                        field_parse(&line, "stamp"),
                        field_parse(&line, "unlinks"),
                    )
                })
                .collect();
            let creators: Vec<_> = results.iter().filter(|r| r.1).collect();
            assert_eq!(creators.len(), 1, "round {round}: {results:?}");
            let creator = creators[0].0;
            for r in &results {
                // Everyone sees the creator's initialiser: they all mapped one segment.
                assert_eq!(r.2, u64::from(creator), "round {round}: {results:?}");
                assert_eq!(r.3, r.1, "only the creator owns the name: {results:?}");
            }
            // Openers leave first; the creator removes the name when it exits.
            let (owner, others): (Vec<_>, Vec<_>) =
                peers.into_iter().partition(|p| p.pid() == creator);
            for mut p in others {
                p.send("exit");
                p.assert_exits_ok(WAIT);
            }
            assert!(segment_file(&name).exists());
            for mut p in owner {
                p.send("exit");
                p.assert_exits_ok(WAIT);
            }
            assert!(!segment_file(&name).exists(), "round {round}: name left");
        }
        names.assert_clean();
    });
}

/// Damages one header field, checks that `open` and `open_or_create` both refuse with
/// the expected error, repairs it, and checks that nothing was wiped.
fn refused_then_repaired(
    seg: &Segment,
    name: &str,
    bad: Damage,
    good: Damage,
    expect: impl Fn(&OpenError) -> bool,
) {
    damage(seg, bad);
    let e = Segment::open(name).expect_err("opened a damaged segment");
    assert!(expect(&e), "{bad:?}: wrong error {e:?}");
    match Segment::open_or_create(name, seg.len()) {
        Err(OpenOrCreateError::Open(e)) => assert!(expect(&e), "{bad:?}: wrong error {e:?}"),
        other => panic!("{bad:?}: open_or_create gave {:?}", other.map(|(_, c)| c)),
    }
    damage(seg, good);
    let again = Segment::open(name).expect("open after repair");
    assert_eq!(
        word64(&again, 64).load(Ordering::Acquire),
        0xfeed_f00d,
        "a refused open wiped the payload"
    );
}

#[test]
fn bad_magic_version_and_size_give_their_specific_errors() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("damaged");
        let size = 8192;
        let seg = Segment::create(&name, size).unwrap();
        word64(&seg, 64).store(0xfeed_f00d, Ordering::Release);
        let file = (size + SEGMENT_HEADER_SIZE) as u64;

        let wrong_magic = u64::from_le_bytes(*b"NOTOURS!");
        refused_then_repaired(
            &seg,
            &name,
            Damage::Magic(wrong_magic),
            Damage::Magic(SEGMENT_MAGIC),
            |e| {
                matches!(e, OpenError::BadMagic { found, expected }
                if *found == wrong_magic && *expected == SEGMENT_MAGIC)
            },
        );
        let v = SEGMENT_LAYOUT_VERSION + 1;
        refused_then_repaired(
            &seg,
            &name,
            Damage::Version(v),
            Damage::Version(SEGMENT_LAYOUT_VERSION),
            |e| {
                matches!(e, OpenError::VersionMismatch { found, expected }
                if *found == v && *expected == SEGMENT_LAYOUT_VERSION)
            },
        );
        for recorded in [file + 4096, file - 8, 0] {
            refused_then_repaired(
                &seg,
                &name,
                Damage::Size(recorded),
                Damage::Size(file),
                |e| {
                    matches!(e, OpenError::SizeMismatch { header, file: f }
                    if *header == recorded && *f == file)
                },
            );
        }
        drop(seg);
        names.assert_clean();
    });
}

#[test]
fn foreign_owner_and_open_mode_give_their_specific_errors() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("perms");
        let seg = Segment::create(&name, 4096).unwrap();
        let path = segment_file(&name);
        assert_eq!(seg.path(), Some(path.as_path()));
        let me = shmrpc::lowlevel::sys::names::uid();

        // Another user's file (we run as root in CI, so we can hand it over).
        let other = if me == 4242 { 4243 } else { 4242 };
        std::os::unix::fs::chown(&path, Some(other), None).expect("chown (needs root)");
        let e = Segment::open(&name).expect_err("opened a foreign segment");
        assert!(
            matches!(e, OpenError::WrongOwner { found, expected } if found == other && expected == me),
            "{e:?}"
        );
        let e = Segment::open_or_create(&name, 4096)
            .map(|_| ())
            .expect_err("foreign");
        assert!(
            matches!(e, OpenOrCreateError::Open(OpenError::WrongOwner { .. })),
            "{e:?}"
        );
        std::os::unix::fs::chown(&path, Some(me), None).unwrap();

        // Group or others may read or write it.
        for mode in [0o640, 0o604, 0o660, 0o606, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Segment::open(&name).expect_err("opened a segment with an open mode");
            assert!(
                matches!(e, OpenError::WrongMode(m) if m == mode),
                "mode {mode:o}: {e:?}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Segment::open(&name).expect("open after repair");
        drop(seg);
        names.assert_clean();
    });
}
