//! slipway-bake's `ami` settings module, and nothing else of the crate.

#[path = "../../../bake/src/ami/settings.rs"]
pub mod ami;
