//! Waiting out a dependency's outage in a background loop: retries back off (doubling, with a
//! cap) and the log says when an outage begins and when it ends, not at every retry.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The first retry after a failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries: also the longest a recovered dependency stays unused.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// One dependency's outages as one loop sees them.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    doing: &'static str,
    since: Option<Instant>,
    next_wait: Duration,
}

impl Outage {
    /// `what` names the dependency ("dockerd"), `doing` what waits for it ("builds wait").
    pub fn new(what: &'static str, doing: &'static str) -> Outage {
        Outage {
            what,
            doing,
            since: None,
            next_wait: FIRST_RETRY,
        }
    }

    /// Records a failure and returns how long to wait before trying again. The first
    /// failure of an outage is logged; later ones only at debug level.
    pub fn failed(&mut self, error: &dyn Display) -> Duration {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(dependency = self.what, %error, "{} is unavailable; {} and retry with backoff", self.what, self.doing);
        } else {
            tracing::debug!(dependency = self.what, %error, "still unavailable");
        }
        let wait = self.next_wait;
        self.next_wait = (self.next_wait * 2).min(MAX_RETRY);
        wait
    }

    /// Records a success; logs the end of an outage and returns true if one was under way.
    pub fn recovered(&mut self) -> bool {
        self.next_wait = FIRST_RETRY;
        let Some(since) = self.since.take() else {
            return false;
        };
        tracing::info!(dependency = self.what, down_for = ?since.elapsed(), "{} is available again", self.what);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_on_recovery() {
        let mut outage = Outage::new("dockerd", "builds wait");
        let waits: Vec<u64> = (0..6).map(|_| outage.failed(&"down").as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert!(outage.recovered(), "an outage was under way");
        assert!(!outage.recovered(), "and is over");
        assert_eq!(outage.failed(&"down again"), FIRST_RETRY);
    }
}
