//! The `docker_host` setting: which dockerd Slipway talks to, checked when the config is read.

/// dockerd's address when neither `docker_host` nor `DOCKER_HOST` names one.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Checks a `docker_host` value: `unix:///absolute/path` or `tcp://host:port`.
pub fn check_address(address: &str) -> Result<(), String> {
    let expected = "expected `unix:///path/to/docker.sock` or `tcp://host:port`";
    if let Some(path) = address.strip_prefix("unix://") {
        if path.starts_with('/') && path.len() > 1 {
            return Ok(());
        }
        return Err(format!(
            "{expected}; the socket path must be absolute, got {address:?}"
        ));
    }
    if let Some(authority) = address.strip_prefix("tcp://") {
        if let Some((host, port)) = authority.rsplit_once(':') {
            if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Ok(());
            }
        }
        return Err(format!("{expected}; got {address:?}"));
    }
    Err(format!("{expected}, got {address:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unix_sockets_or_tcp_host_and_port() {
        assert!(check_address("unix:///var/run/docker.sock").is_ok());
        assert!(check_address("tcp://127.0.0.1:2375").is_ok());
        assert!(check_address("tcp://docker.internal:2376").is_ok());
        for bad in [
            "/var/run/docker.sock",
            "unix://relative.sock",
            "unix://",
            "tcp://127.0.0.1",
            "tcp://:2375",
            "tcp://host:port",
            "tcp://host:2375/path",
            "ssh://user@host",
            "",
        ] {
            let error = check_address(bad).expect_err(bad);
            assert!(error.contains("unix:///path/to/docker.sock"), "{error}");
        }
    }
}
