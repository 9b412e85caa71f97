//! The replica server.
//!
//! Not implemented yet: this crate is a placeholder in the workspace. It exports nothing.
