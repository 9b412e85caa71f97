//! Blocking client library for the store.
//!
//! A [`Client`] speaks RESP to the query actors of one or more servers. It asks its [`Router`]
//! for an address before every query, keeps a small pool of idle connections per address, and
//! when a connection fails (refused, reset, timed out) it retries the query on the router's next
//! address, up to [`Router::len`] attempts. It is `Send + Sync` and cheap to clone: any number of
//! threads may run queries on it at once, each on its own pooled connection.
//!
//! ```no_run
//! use replica_client::{Client, RoundRobin};
//!
//! # fn main() -> Result<(), replica_client::ClientError> {
//! let servers = ["127.0.0.1:6001".parse().unwrap(), "127.0.0.1:6002".parse().unwrap()];
//! let client = Client::new(RoundRobin::new(servers)?);
//! client.put("player:ada", "42 coins")?;
//! assert_eq!(client.get("player:ada")?.as_deref(), Some(&b"42 coins"[..]));
//! for (key, value) in client.list("player:")? {
//!     println!("{key:?} = {value:?}");
//! }
//! assert!(client.delete("player:ada")?);
//! # Ok(())
//! # }
//! ```
//!
//! Retried queries may run twice when the first attempt reached the server but its reply was
//! lost. `put` is harmless to repeat; a repeated `delete` reports `false` for a key the first
//! attempt deleted.
//!
//! The crate: `router` ([`Router`], [`Fixed`], [`RoundRobin`]: which server a query goes to),
//! `client` ([`Client`], [`ClientBuilder`]: the pool, routing and failover), `conn` (one
//! connection: connect, send, read a reply), `error` ([`ClientError`]); [`Value`] is a reply of
//! [`Client::command`]. The `kv` binary (feature `cli`) is the command-line client.

#![warn(missing_docs)]

mod client;
mod conn;
mod error;
mod router;

pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IDLE, DEFAULT_READ_TIMEOUT, parse_info,
};
pub use error::ClientError;
/// A RESP reply, as [`Client::command`] returns it.
pub use resp::Value;
pub use router::{DEFAULT_HOLD_OFF, Fixed, RoundRobin, Router};
