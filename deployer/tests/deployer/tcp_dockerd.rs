//! dockerd's API on a loopback TCP port (socat to its socket): a docker host Slipway reaches
//! only through that API, as it reaches one on another machine. Stopped when dropped.
//! (The API tests compile this file in too.)

use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct TcpDockerd {
    child: Child,
    /// `tcp://127.0.0.1:<port>`.
    pub address: String,
}

impl TcpDockerd {
    pub fn start() -> TcpDockerd {
        let port = crate::ports::free_port();
        let child = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg("UNIX-CONNECT:/var/run/docker.sock")
            .spawn()
            .expect("socat runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TcpDockerd {
            child,
            address: format!("tcp://127.0.0.1:{port}"),
        }
    }
}

impl Drop for TcpDockerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
