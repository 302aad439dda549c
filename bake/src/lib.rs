//! Slipway bake.
