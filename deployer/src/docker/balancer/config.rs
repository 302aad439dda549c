//! The load balancer's configuration file, rendered from its settings and the servers it
//! routes to (pure). HAProxy reads it only when it starts or reloads: every change at run
//! time goes through the runtime API, and the file is rewritten after each so that a restarted
//! load balancer comes back with the same routing.

use std::fmt::Write;
use std::net::SocketAddr;

use super::{Server, Slot, SLOTS};

/// Where the load balancer's directory is mounted inside its container.
pub const MOUNT: &str = "/etc/slipway-lb";
/// The map naming the live slot (`live <slot>`), inside the container.
pub const MAP: &str = "/etc/slipway-lb/live.map";
/// The runtime API's socket, inside the container.
pub const SOCKET: &str = "/etc/slipway-lb/admin.sock";
/// The certificate and key of TLS termination, inside the container.
pub const TLS_PEM: &str = "/etc/slipway-lb/tls.pem";
/// The backend that answers while no fleet is live.
pub const NOTHING_LIVE: &str = "none";

/// What the configuration file says besides its servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub listen: SocketAddr,
    pub tls: bool,
    pub max_request_body_bytes: u64,
    pub health_path: String,
    /// The owner of the runtime API's socket (the uid Slipway runs as).
    pub socket_uid: u32,
}

/// What every server gets: a health check every second, down after two failures, up after two
/// passes (HAProxy's defaults are 2 s, 3 and 2); and idle connections kept for reuse, as a
/// server from the configuration file has by default and one added at run time has not (it
/// would open a connection per request, at a third of the throughput).
pub const SERVER_OPTIONS: &str =
    "check inter 1s fall 2 rise 2 pool-max-conn -1 pool-purge-delay 5s";

/// The whole configuration file.
pub fn render(settings: &Rendered, servers: &[Server]) -> String {
    let mut out = String::new();
    let listen = settings.listen;
    let _ = write!(
        out,
        "# Written by Slipway; changes are lost at its next write.\n\
         global\n\
         \x20 stats socket {SOCKET} mode 600 uid {uid} level admin expose-fd listeners\n\
         \x20 log stdout format raw local0\n\
         \x20 maxconn 8000\n\
         \x20 # A second HAProxy binding the same address must fail, not share its traffic; a\n\
         \x20 # reload hands the listening sockets over through the runtime socket instead.\n\
         \x20 noreuseport\n\
         \n\
         defaults\n\
         \x20 mode http\n\
         \x20 log global\n\
         \x20 option httplog\n\
         \x20 option forwardfor\n\
         \x20 option redispatch\n\
         \x20 retries 2\n\
         \x20 timeout connect 2s\n\
         \x20 timeout client 60s\n\
         \x20 timeout server 60s\n\
         \x20 timeout http-request 30s\n\
         \x20 timeout tunnel 1h\n\
         \n\
         frontend web\n",
        uid = settings.socket_uid,
    );
    match settings.tls {
        true => {
            let _ = writeln!(
                out,
                "  bind {listen} ssl crt {TLS_PEM} alpn h2,http/1.1\n  \
                 http-request set-header X-Forwarded-Proto https"
            );
        }
        false => {
            let _ = writeln!(
                out,
                "  bind {listen}\n  http-request set-header X-Forwarded-Proto http"
            );
        }
    }
    let _ = write!(
        out,
        "  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  \
         http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {limit} }}\n  \
         use_backend %[str(live),map({MAP},{NOTHING_LIVE})]\n\
         \n\
         backend {NOTHING_LIVE}\n  \
         http-request return status 503 content-type text/plain string \"no release is live\\n\"\n",
        limit = settings.max_request_body_bytes,
    );
    for slot in SLOTS {
        let _ = write!(
            out,
            "\nbackend {slot}\n  balance roundrobin\n  option httpchk GET {path}\n",
            path = settings.health_path,
        );
        for server in servers.iter().filter(|s| s.slot == slot) {
            let _ = writeln!(out, "  {}", server_line(server));
        }
    }
    out
}

/// A server as the configuration file declares it (its admin state follows it).
fn server_line(server: &Server) -> String {
    let state = if server.draining { " disabled" } else { "" };
    format!(
        "server {} {} {SERVER_OPTIONS}{state}",
        server.name, server.addr
    )
}

/// The map file: the live slot, or nothing.
pub fn map_file(live: Option<Slot>) -> String {
    match live {
        Some(slot) => format!("live {slot}\n"),
        None => String::new(),
    }
}

/// The live slot a map file names.
pub fn live_in_map(map: &str) -> Option<Slot> {
    map.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "live").then_some(())?;
        Slot::parse(words.next()?)
    })
}

/// The servers of the slots in a configuration file [`render`] wrote.
pub fn servers_in(text: &str) -> Vec<Server> {
    let mut slot = None;
    let mut servers = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("backend ") {
            slot = Slot::parse(name.trim());
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(slot), Some("server"), Some(name), Some(addr)) =
            (slot, words.next(), words.next(), words.next())
        else {
            continue;
        };
        if let Ok(addr) = addr.parse() {
            servers.push(Server {
                slot,
                name: name.to_owned(),
                addr,
                draining: line.ends_with(" disabled"),
            });
        }
    }
    servers
}

/// Whether `raw` may appear in the file as a health path (it is checked by the config, but a
/// space or quote here would change what HAProxy reads).
pub fn valid_health_path(raw: &str) -> bool {
    raw.starts_with('/')
        && raw
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tls: bool) -> Rendered {
        Rendered {
            listen: "127.0.0.1:8080".parse().unwrap(),
            tls,
            max_request_body_bytes: 1000,
            health_path: "/health".to_owned(),
            socket_uid: 0,
        }
    }

    #[test]
    fn servers_go_to_their_slot_with_health_checks() {
        let servers = [
            Server {
                slot: Slot::A,
                name: "dev-v1-0".to_owned(),
                addr: "10.0.0.2:8000".parse().unwrap(),
                draining: false,
            },
            Server {
                slot: Slot::B,
                name: "dev-v2-0".to_owned(),
                addr: "10.0.0.3:8000".parse().unwrap(),
                draining: true,
            },
        ];
        let text = render(&settings(false), &servers);
        assert_eq!(servers_in(&text), servers, "read back as written");
        let a = text.find("backend a\n").unwrap();
        let b = text.find("backend b\n").unwrap();
        let v1 = text
            .find("server dev-v1-0 10.0.0.2:8000 check inter 1s fall 2 rise 2 pool-max-conn -1 pool-purge-delay 5s\n")
            .unwrap();
        let v2 = text
            .find("server dev-v2-0 10.0.0.3:8000 check inter 1s fall 2 rise 2 pool-max-conn -1 pool-purge-delay 5s disabled\n")
            .unwrap();
        assert!(a < v1 && v1 < b && b < v2, "{text}");
        assert!(text.contains("option httpchk GET /health"));
        assert!(text.contains("bind 127.0.0.1:8080\n"));
        assert!(text.contains("gt 1000 }"));
        assert!(!text.contains("ssl"));
    }

    #[test]
    fn tls_binds_with_the_certificate_and_offers_http2() {
        let text = render(&settings(true), &[]);
        assert!(
            text.contains("bind 127.0.0.1:8080 ssl crt /etc/slipway-lb/tls.pem alpn h2,http/1.1\n")
        );
        assert!(text.contains("X-Forwarded-Proto https"));
    }

    #[test]
    fn the_map_names_the_live_slot() {
        assert_eq!(map_file(Some(Slot::B)), "live b\n");
        assert_eq!(live_in_map(&map_file(Some(Slot::B))), Some(Slot::B));
        assert_eq!(live_in_map(&map_file(None)), None);
        assert_eq!(map_file(None), "");
    }

    #[test]
    fn health_paths_that_would_change_the_file_are_refused() {
        assert!(valid_health_path("/health?full=1"));
        assert!(!valid_health_path("/a b"));
        assert!(!valid_health_path("/a\"b"));
        assert!(!valid_health_path("health"));
    }
}
