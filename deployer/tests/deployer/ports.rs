//! Loopback ports for what a test starts to listen later (a load balancer, moto, a proxy to
//! dockerd). Shared by the deployer's tests and Slipway's API tests.

/// A loopback port nothing listens on now, for something a test starts to bind later (a load
/// balancer, a registry, a second server). It comes from below the kernel's ephemeral range
/// (32768 and up): a port from `bind(0)` is in that range, where any outgoing connection of the
/// tests running beside this one may take it before its user binds it. Each call gives a port
/// no earlier call in this run gave, starting at an offset of the process id so that two test
/// processes rarely try the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() * 97;
    for _ in 0..COUNT {
        let port = FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}
