//! Real runs against dockerd; filled in below.
