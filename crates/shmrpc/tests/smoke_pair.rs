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
