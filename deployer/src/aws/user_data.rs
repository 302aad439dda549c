//! The launch template's user data that gives AMI instances the application's configuration
//! in the environment: a script, run once at first boot, that writes
//! `/etc/default/<package>` (mode 0600) for the package's systemd unit to read.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The application's variables for the instances of one environment.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceEnvironment {
    /// The Debian package whose `/etc/default/` file is written.
    pub package: String,
    /// Names and values; a value never holds a newline or NUL (the config refuses them).
    pub variables: BTreeMap<String, String>,
}

/// Names only: the values may be secrets.
impl fmt::Debug for InstanceEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceEnvironment")
            .field("package", &self.package)
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl InstanceEnvironment {
    /// Where the instances find the variables.
    pub fn path(&self) -> String {
        format!("/etc/default/{}", self.package)
    }

    /// The first-boot script, as cloud-init runs it.
    pub fn script(&self) -> String {
        let path = self.path();
        let mut script = format!(
            "#!/bin/sh\n# Written by Slipway: the application's configuration in this environment.\nset -e\numask 077\ncat > {path} <<'SLIPWAY_END'\n"
        );
        for (name, value) in &self.variables {
            // Single quotes, as sh and systemd's EnvironmentFile read them.
            script.push_str(&format!("{name}='{}'\n", value.replace('\'', "'\\''")));
        }
        script.push_str(&format!("SLIPWAY_END\nchmod 0600 {path}\n"));
        script
    }

    /// The script as EC2 takes it.
    pub fn user_data(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.script())
    }

    /// Tells launch template versions with different configurations apart without
    /// showing it: the first 16 hex digits of the script's SHA-256.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.script().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_writes_the_package_defaults_file_with_quoted_values() {
        let environment = InstanceEnvironment {
            package: "hello".into(),
            variables: BTreeMap::from([
                ("LOG_LEVEL".to_owned(), "info".to_owned()),
                ("PASSWORD".to_owned(), "it's $ecret".to_owned()),
            ]),
        };
        let script = environment.script();
        assert!(script.contains("cat > /etc/default/hello <<'SLIPWAY_END'\nLOG_LEVEL='info'\nPASSWORD='it'\\''s $ecret'\nSLIPWAY_END\n"), "{script}");
        assert!(!format!("{environment:?}").contains("ecret"));
        assert_eq!(environment.fingerprint().len(), 16);
    }
}
