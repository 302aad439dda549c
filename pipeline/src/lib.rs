//! Slipway pipelines.
