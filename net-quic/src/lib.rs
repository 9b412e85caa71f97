//! QUIC transport between replica servers.
//!
//! Not implemented yet: this crate is a placeholder in the workspace so the dependency graph of
//! the design (`replica-node` → `net-quic`) is in place. It exports nothing.
