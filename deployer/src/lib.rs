//! Slipway deployer.
