//! ipc-channel (Servo), the raw-bytes channel: `ipc::bytes_channel()` one per direction,
//! exchanged through an `IpcOneShotServer`. `IpcBytesSender::send(&[u8])` (no serde
//! encoding), `IpcBytesReceiver::recv() -> Vec<u8>` (a fresh buffer per message).

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use super::{check, message, Child, Lead, SetupCtl};
use crate::pattern::{self, REPLY};

/// What the child hands the lead: the sender of lead → child and the receiver of
/// child → lead.
type Boot = (IpcBytesSender, IpcBytesReceiver);

struct Ipc {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
}

/// The lead opens a one-shot server; the child connects and sends its channel ends.
pub fn lead(ctl: &mut dyn SetupCtl) -> Result<Box<dyn Lead>> {
    let (server, name) = IpcOneShotServer::<Boot>::new().context("IpcOneShotServer::new")?;
    ctl.start(&name)?;
    let (_boot_rx, (tx, rx)) = server
        .accept()
        .map_err(|e| anyhow!("IpcOneShotServer::accept: {e:?}"))?;
    ctl.finish()?;
    Ok(Box::new(Ipc { tx, rx }))
}

/// The child makes both channels and sends the lead its ends.
pub fn child(name: &str) -> Result<Box<dyn Child>> {
    let boot: IpcSender<Boot> =
        IpcSender::connect(name.to_owned()).context("IpcSender::connect")?;
    let (to_child_tx, to_child_rx) = ipc::bytes_channel().context("bytes_channel")?;
    let (to_lead_tx, to_lead_rx) = ipc::bytes_channel().context("bytes_channel")?;
    boot.send((to_child_tx, to_lead_rx))
        .map_err(|e| anyhow!("sending the channel ends: {e:?}"))?;
    Ok(Box::new(Ipc {
        tx: to_lead_tx,
        rx: to_child_rx,
    }))
}

impl Ipc {
    fn recv(&self) -> Result<Vec<u8>> {
        self.rx
            .recv()
            .map_err(|e| anyhow!("ipc-channel recv: {e:?}"))
    }
}

impl Lead for Ipc {
    fn rtt(&mut self, size: usize, n: u64, seed0: u64, samples: &mut Vec<u64>) -> Result<()> {
        let mut src = vec![0u8; size];
        for i in 0..n {
            let seed = seed0 + i;
            pattern::fill(&mut src, seed);
            let t0 = Instant::now();
            self.tx.send(&src).context("ipc-channel send")?;
            let reply = self.recv()?;
            check("ipc-channel reply", &reply, size, seed ^ REPLY)?;
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        Ok(())
    }

    fn stream(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let mut src = vec![0u8; size];
        for i in 0..n {
            pattern::fill(&mut src, seed0 + i);
            self.tx.send(&src).context("ipc-channel send")?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl Child for Ipc {
    fn echo(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let mut reply = message(size, 0);
        for i in 0..n {
            let seed = seed0 + i;
            pattern::fill(&mut reply, seed ^ REPLY);
            let req = self.recv()?;
            check("ipc-channel request", &req, size, seed)?;
            self.tx.send(&reply).context("ipc-channel send")?;
        }
        Ok(())
    }

    fn sink(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        for i in 0..n {
            let m = self.recv()?;
            check("ipc-channel stream", &m, size, seed0 + i)?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
