//! Slipway.
