//! HAProxy's runtime API over its Unix socket: one command per connection (the socket's
//! non-interactive mode, which answers and closes), and the parsing of what it answers. A
//! load balancer on a docker host reached over TCP gets the same commands through an exec
//! (see `access.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{config, Server, Slot};
use crate::error::TargetError;

/// At most this much of one answer is read (a `show stat` of two full slots is a few KiB).
const MAX_ANSWER: u64 = 4 << 20;
/// How long one command may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime API of one load balancer.
#[derive(Clone, Debug)]
pub struct Runtime {
    socket: PathBuf,
}

impl Runtime {
    pub fn new(socket: &Path) -> Runtime {
        Runtime {
            socket: socket.to_owned(),
        }
    }

    /// Sends one command and returns its answer.
    pub async fn query(&self, command: &str) -> Result<String, TargetError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.take(MAX_ANSWER).read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| TargetError::refused(action(command), "no answer within 5 s"))?
            .map_err(|error| TargetError::platform(action(command), error))
    }
}

pub(super) fn action(command: &str) -> String {
    format!("load balancer command `{command}`")
}

/// The slot `show map` says is live (its lines are the map file's, after an entry id).
pub fn live_slot(map: &str) -> Option<Slot> {
    map.lines().find_map(|line| {
        let line = line.trim_start();
        let entry = line.split_once(' ').map_or("", |(_, rest)| rest);
        config::live_in_map(entry)
    })
}

/// The servers `show servers state` lists in the two slots.
pub fn servers(state: &str) -> Vec<Server> {
    let mut header: Vec<&str> = Vec::new();
    let mut servers = Vec::new();
    for line in state.lines() {
        if let Some(names) = line.strip_prefix("# ") {
            header = names.split_whitespace().collect();
            continue;
        }
        let values: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| {
            let index = header.iter().position(|h| *h == name)?;
            values.get(index).copied()
        };
        let (Some(slot), Some(name), Some(addr), Some(port), Some(admin)) = (
            field("be_name").and_then(Slot::parse),
            field("srv_name"),
            field("srv_addr"),
            field("srv_port"),
            field("srv_admin_state"),
        ) else {
            continue;
        };
        let Ok(addr) = format!("{addr}:{port}").parse::<SocketAddr>() else {
            continue;
        };
        // Bit 0x01 forced maintenance, 0x08 forced drain: not taking new connections.
        let admin: u32 = admin.parse().unwrap_or(0);
        servers.push(Server {
            slot,
            name: name.to_owned(),
            addr,
            draining: admin & 0x09 != 0,
        });
    }
    servers
}

/// One line of `show stat`: a proxy (frontend or backend) or a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatRow {
    /// The frontend or backend (`web`, a slot, `none`).
    pub proxy: String,
    /// `FRONTEND`, `BACKEND` or a server's name.
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, `OPEN`, ... with HAProxy's transition counts cut off.
    pub status: String,
    /// The last health check: `L7OK`, `L7STS`, `L4CON`, `INI` (not checked yet), ...
    pub check_status: String,
    /// The HTTP status the last health check got, if any.
    pub check_code: String,
    /// What the last health check found, in HAProxy's words.
    pub check_desc: String,
    /// Connections open now.
    pub current_sessions: u64,
    /// Connections since start.
    pub total_sessions: u64,
    /// HTTP requests since start (frontends and backends).
    pub requests: u64,
    /// Responses with a 5xx status since start.
    pub responses_5xx: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The rows of `show stat` (CSV with a `# ` header line).
pub fn stat_rows(csv: &str) -> Vec<StatRow> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|l| l.strip_prefix("# ")) else {
        return Vec::new();
    };
    let header: Vec<&str> = header.split(',').collect();
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split(',').collect();
        let text = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .and_then(|i| values.get(i))
                .map_or(String::new(), |v| (*v).to_owned())
        };
        let number = |name: &str| text(name).parse().unwrap_or(0);
        let status = text("status");
        let status = status.split_whitespace().next().unwrap_or("").to_owned();
        // Frontends count requests in req_tot; backends and servers count responses.
        let requests = match text("req_tot").parse() {
            Ok(n) => n,
            Err(_) => [
                "hrsp_1xx",
                "hrsp_2xx",
                "hrsp_3xx",
                "hrsp_4xx",
                "hrsp_5xx",
                "hrsp_other",
            ]
            .iter()
            .map(|h| number(h))
            .sum(),
        };
        rows.push(StatRow {
            proxy: text("pxname"),
            name: text("svname"),
            status,
            check_status: text("check_status").trim_start_matches("* ").to_owned(),
            check_code: text("check_code"),
            check_desc: text("last_chk"),
            current_sessions: number("scur"),
            total_sessions: number("stot"),
            requests,
            responses_5xx: number("hrsp_5xx"),
            bytes_in: number("bin"),
            bytes_out: number("bout"),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_slot_is_read_from_the_map() {
        assert_eq!(live_slot("0x55e945fcc210 live b\n\n"), Some(Slot::B));
        assert_eq!(live_slot("\n"), None);
        assert_eq!(live_slot("0x1 live elsewhere\n"), None);
    }

    #[test]
    fn servers_state_gives_slot_name_address_and_drain() {
        let state = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
                     3 none 1 x 10.0.0.9 2 0 1\n\
                     4 a 2 dev-v1-0 10.213.1.2 2 0 1\n\
                     5 b 1 dev-v2-0 10.213.1.3 2 8 1\n";
        // srv_port is missing from this header: no server can be read.
        assert!(servers(state).is_empty());
        let state = state.replace("srv_uweight", "srv_uweight srv_port");
        let state = state.replace(" 1\n", " 1 8000\n");
        let found = servers(&state);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].slot, Slot::A);
        assert_eq!(found[0].name, "dev-v1-0");
        assert_eq!(found[0].addr.to_string(), "10.213.1.2:8000");
        assert!(!found[0].draining);
        assert!(found[1].draining);
    }

    #[test]
    fn stat_rows_read_status_checks_and_counters() {
        let csv = "# pxname,svname,scur,stot,bin,bout,status,check_status,check_code,last_chk,req_tot,hrsp_5xx\n\
                   web,FRONTEND,3,10,100,200,OPEN,,,,12,1\n\
                   a,dev-v1-0,1,5,50,90,UP 1/2,L7OK,200,,,0\n\
                   a,dev-v1-1,0,0,0,0,DOWN,* L7STS,500,HTTP status check returned code <3C>500<3E>,,2\n";
        let rows = stat_rows(csv);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].requests, 12);
        assert_eq!(rows[0].current_sessions, 3);
        assert_eq!(rows[1].status, "UP");
        assert_eq!(rows[1].check_status, "L7OK");
        assert_eq!(rows[2].status, "DOWN");
        assert_eq!(rows[2].check_status, "L7STS");
        assert_eq!(rows[2].check_code, "500");
        assert_eq!(rows[2].responses_5xx, 2);
    }
}
