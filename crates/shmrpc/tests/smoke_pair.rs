use shmrpc::channel::{self, ChannelConfig, RecvError, TryRecvError};

#[test]
fn thread_ping_pong_and_close() {
    let (mut a, mut b) = channel::pair(&ChannelConfig::default().with_capacity(4096)).unwrap();
    let t = std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let msg = match b.recv() {
                Ok(m) => m,
                Err(RecvError::Closed) => break n,
                Err(e) => panic!("{e}"),
            };
            let v = u64::from_le_bytes(msg[..8].try_into().unwrap());
            drop(msg);
            b.send(&(v + 1).to_le_bytes()).unwrap();
            n += 1;
        }
    });
    for i in 0..10_000u64 {
        a.send(&i.to_le_bytes()).unwrap();
        let r = a.recv().unwrap();
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), i + 1);
    }
    let (tx, mut rx) = a.split();
    drop(tx);
    assert_eq!(t.join().unwrap(), 10_000);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Closed)));
}

#[test]
fn a_refused_second_bind_does_not_disturb_the_live_listener() {
    use shmrpc::channel::{BindError, Listener};
    let name = format!("bind-twice-{}", std::process::id());
    let cfg = ChannelConfig::default().with_capacity(4096);
    let live = Listener::bind(&name, cfg.clone()).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            Listener::bind(&name, cfg.clone()),
            Err(BindError::AddrInUse(_))
        ));
    }
    let client = std::thread::spawn({
        let name = name.clone();
        let cfg = cfg.clone();
        move || {
            let mut c = channel::connect(&name, &cfg).unwrap();
            c.send(b"first client").unwrap();
            c
        }
    });
    // The first connection the live listener sees is the real client, not a probe.
    let mut server = live.accept().unwrap();
    assert_eq!(&*server.recv().unwrap(), b"first client");
    drop(client.join().unwrap());
    let sock = live.path().to_owned();
    drop(server);
    drop(live);
    assert!(!sock.exists(), "socket file left behind");
    assert!(
        !sock.with_extension("lock").exists(),
        "lock file left behind"
    );
}
