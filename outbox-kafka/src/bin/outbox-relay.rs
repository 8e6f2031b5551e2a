//! The relay as its own process (written once the relay engine lands).
fn main() {}
