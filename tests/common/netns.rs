//! A second "host" on this machine: a network namespace joined to a gateway namespace by one
//! veth link, so a test can cut a process off silently (`link set down`: packets dropped, no
//! reset, no error) and give the link back. The replica's only way to Postgres is that link: a
//! relay listening in the gateway namespace forwards to the test database. The test reaches the
//! replica's HTTP port through a second relay that connects from inside the replica's namespace,
//! so it keeps watching the replica while the link is down. Traffic stays on loopback and inside
//! the namespaces the test made (SCALE.md); they are deleted on drop. Needs root and iproute2.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;

/// The gateway's address on the link (the replica's database host).
pub const GATEWAY: &str = "10.201.0.1";
const REPLICA: &str = "10.201.0.2";

/// Whether namespaces can be made here (root, `ip`); `false` means skip, unless `CI` is set,
/// where it is a failure (CI runs as root).
pub fn available() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = format!("network namespaces need root and iproute2 (root: {root}, ip: {ip})");
    assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
    eprintln!("skipping: {why}");
    false
}

/// The two namespaces and the link between them.
pub struct Link {
    pub gateway: String,
    pub replica: String,
    gateway_end: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Link {
    pub fn create() -> Self {
        let tag = format!("nl{}", std::process::id());
        let link = Link { gateway: format!("{tag}gw"), replica: format!("{tag}r"), gateway_end: format!("{tag}g") };
        let replica_end = format!("{tag}r");
        ip(&["netns", "add", &link.gateway]);
        ip(&["netns", "add", &link.replica]);
        ip(&[
            "link",
            "add",
            &link.gateway_end,
            "netns",
            &link.gateway,
            "type",
            "veth",
            "peer",
            "name",
            &replica_end,
            "netns",
            &link.replica,
        ]);
        ip(&["-n", &link.gateway, "addr", "add", &format!("{GATEWAY}/24"), "dev", &link.gateway_end]);
        ip(&["-n", &link.replica, "addr", "add", &format!("{REPLICA}/24"), "dev", &replica_end]);
        for (ns, dev) in [(&link.gateway, &link.gateway_end), (&link.replica, &replica_end)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        link
    }

    /// Takes the link down (a silent cut) or brings it back.
    pub fn set(&self, up: bool) {
        ip(&["-n", &self.gateway, "link", "set", &self.gateway_end, if up { "up" } else { "down" }]);
    }

    /// Relays `GATEWAY:port` in the gateway namespace to `target` (reached from here).
    pub fn expose_to_replica(&self, port: u16, target: SocketAddr) {
        let listener = in_netns(&self.gateway, || TcpListener::bind((GATEWAY, port))).expect("bind in the gateway");
        relay(listener, move || TcpStream::connect(target));
    }

    /// A local address relayed to `127.0.0.1:port` inside the replica's namespace.
    pub fn reach_replica(&self, port: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local relay");
        let addr = listener.local_addr().expect("relay address");
        let ns = self.replica.clone();
        relay(listener, move || in_netns(&ns, || TcpStream::connect(("127.0.0.1", port))));
        addr
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.replica, &self.gateway] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The first address `host:port` resolves to.
pub fn resolve(host: &str, port: u16) -> SocketAddr {
    (host, port).to_socket_addrs().expect("resolve").next().expect("an address")
}

/// Runs `f` on a thread inside network namespace `ns`: the sockets it makes live there for
/// good, whichever thread uses them afterwards.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/var/run/netns/{ns}"))?;
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    })
}

/// Forwards every connection accepted on `listener` to a stream `connect` opens, both ways,
/// on threads of its own (for the rest of the test process).
fn relay(listener: TcpListener, connect: impl Fn() -> io::Result<TcpStream> + Send + Sync + 'static) {
    let connect = Arc::new(connect);
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let connect = connect.clone();
            std::thread::spawn(move || {
                if let Ok(outbound) = connect() {
                    pipe(inbound, outbound);
                }
            });
        }
    });
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a_read), Ok(mut b_write)) = (a.try_clone(), b.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut a_read, &mut b_write);
        let _ = b_write.shutdown(Shutdown::Write);
    });
    let (mut a_write, mut b_read) = (a, b);
    let _ = io::copy(&mut b_read, &mut a_write);
    let _ = a_write.shutdown(Shutdown::Write);
    let _ = up.join();
}
