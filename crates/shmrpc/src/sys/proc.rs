//! Process identity and liveness, robust against pid reuse; the owner of a loopback TCP
//! connection.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use rustix::process::{getpid, test_kill_process, Pid};

/// A process as recorded in a shared header: its pid and its start time (clock ticks since
/// boot, from `/proc/<pid>/stat`), so that a recycled pid is not mistaken for the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks after boot; 0 if it could not be read.
    pub start_time: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> Self {
        let pid = getpid().as_raw_nonzero().get() as u32;
        Self {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this process still exists. A pid that exists but started at another time
    /// than recorded is a different process (the pid was reused): dead.
    pub fn is_alive(&self) -> bool {
        let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        match test_kill_process(pid) {
            // EPERM: it exists but belongs to someone else.
            Ok(()) | Err(rustix::io::Errno::PERM) => {}
            Err(_) => return false,
        }
        match (self.start_time, start_time(self.pid)) {
            (0, _) => true,
            (recorded, Some(now)) => recorded == now,
            // It vanished between the two checks.
            (_, None) => false,
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (`starttime`). The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; starttime is field 22, i.e. the 20th of these.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The uid that owns the TCP socket of this host whose local address is `local` and whose
/// remote address is `remote` (from `/proc/net/tcp` or `/proc/net/tcp6`): for a connection
/// accepted from a loopback peer, the peer's uid, as `SO_PEERCRED` tells for a Unix
/// socket. `None` if no such socket is listed (the peer closed it meanwhile).
pub fn tcp_socket_uid(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let table = match local {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines()
        .skip(1)
        .find_map(|line| tcp_line_uid(line, local, remote))
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st queues timer retr uid ...`, addresses
/// as hex `ADDR:PORT`, the address in the kernel's byte order (little-endian words here).
fn tcp_line_uid(line: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let mut f = line.split_ascii_whitespace();
    let (l, r) = (f.nth(1)?, f.next()?);
    if parse_proc_addr(l)? != local || parse_proc_addr(r)? != remote {
        return None;
    }
    // After `rem` come st, tx:rx queues, tr:when, retrnsmt, then uid.
    f.nth(4)?.parse().ok()
}

fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok()?;
        Some(w.to_le_bytes())
    };
    match addr.len() {
        8 => Some(SocketAddr::new(Ipv4Addr::from(word(0)?).into(), port)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4 peer of a dual-stack listener is listed in its mapped form; the
            // addresses the caller has are canonical.
            Some(SocketAddr::new(v6.to_canonical(), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_parsed() {
        let v4 = "   3: 0100007F:1F90 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000  1000        0 123 1 0 20 4 30 10 -1";
        let l: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let r: SocketAddr = "127.0.0.1:54178".parse().unwrap();
        assert_eq!(tcp_line_uid(v4, l, r), Some(1000));
        assert_eq!(tcp_line_uid(v4, r, l), None, "local and remote swapped");
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1";
        let l6: SocketAddr = "[::1]:8080".parse().unwrap();
        let r6: SocketAddr = "[::1]:54178".parse().unwrap();
        assert_eq!(tcp_line_uid(v6, l6, r6), Some(0));
        for bad in [
            "",
            "sl local",
            "  1: zz:1 0100007F:1 01 0:0 0:0 0 5",
            "  1: 0100007F:1F90",
        ] {
            assert_eq!(tcp_line_uid(bad, l, r), None, "{bad:?}");
        }
    }

    #[test]
    fn the_owner_of_a_live_loopback_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, from) = listener.accept().unwrap();
        let me = rustix::process::geteuid().as_raw();
        // Seen from the server: the client's socket, local = the client's address.
        let uid = tcp_socket_uid(from, listener.local_addr().unwrap());
        assert_eq!(uid, Some(me));
        assert_eq!(client.local_addr().unwrap(), from);
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_socket_uid(nobody, from), None);
    }

    #[test]
    fn current_process_is_alive_and_has_a_start_time() {
        let me = ProcessId::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_dead() {
        let mut me = ProcessId::current();
        me.start_time += 1;
        assert!(!me.is_alive());
    }

    #[test]
    fn an_exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = ProcessId {
            pid: child.id(),
            start_time: 0,
        };
        child.wait().unwrap();
        assert!(!pid.is_alive());
    }
}
