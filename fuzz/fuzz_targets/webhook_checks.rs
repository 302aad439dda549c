//! What every push parsed from a delivery must satisfy, whatever the bytes were.

use crate::webhook::{Delivery, MAX_BRANCH_BYTES};

/// Parses `data` as the delivery `event` and checks that anything accepted is safe to act on.
pub fn parse_and_check(event: &str, data: &[u8]) {
    // The repository is read before the signature check, so it must never panic either.
    let _ = crate::webhook::repository_of(data);
    let Ok(Delivery::Push(push)) = crate::webhook::parse(event, data) else {
        return;
    };
    for change in push.refs {
        assert!(!change.branch.is_empty() && change.branch.len() <= MAX_BRANCH_BYTES);
        assert!(!change.branch.starts_with('-'));
        assert!(!change.branch.chars().any(char::is_control));
        if let Some(commit) = change.commit {
            assert!(matches!(commit.len(), 40 | 64), "{commit:?}");
            assert!(commit
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
}
