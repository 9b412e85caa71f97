//! CMUD, a multi-user dungeon whose whole state lives in the replicated key-value store.
//!
//! Players climb Undergraduate → Masters → PhD → PostDoc → Professor → Retired by mining coins,
//! buying hardware and wearing down their rank's shared problem together (design section 6).
//! The game is stateless between commands: every fact is a key of the store, so any number of
//! sessions on any number of servers play in one world.
//!
//! This crate is the game as a library, and the `cmud` binary around it.
//!
//! - [`rules`]: ranks, hardware, problems, the map and the dice, as pure data.
//! - [`keys`]: the key schema and name validation.
//! - [`store`]: the [`Store`] trait (get, put, delete, list) with [`MemStore`] and an
//!   implementation for the real [`Client`](replica_node::client::Client).
//! - [`ledger`]: counters that concurrent sessions cannot lose (per-session ledgers summed by
//!   `LIST`); [`problem`]: the shared problems, reset by epochs; [`chat`]: messages and the feed.
//! - [`cmd`]: commands as values: parse → apply → [`Reply`].
//! - [`session`]: the phases of a session as types (login → playing ⇄ battle), and [`Game`].
//!
//! What it does not do: print, read the clock or draw entropy. The binary passes the time in
//! (`now_ms`), seeds the dice (`--seed`), renders replies and paces the story (`--story-ms`).

pub mod chat;
pub mod cmd;
pub mod keys;
pub mod ledger;
pub mod player;
pub mod problem;
pub mod reply;
pub mod rules;
pub mod session;
pub mod store;
pub mod story;

pub use chat::{Feed, Message};
pub use cmd::{BattleCommand, Command, ParseError};
pub use keys::{Name, NameError, SessionId};
pub use ledger::{Holdings, Ledger};
pub use player::{Ctx, Player};
pub use reply::{Item, Line, Reply, Tone};
pub use rules::{Hardware, Place, Rank};
pub use session::{Game, Phase};
pub use store::{MemStore, Store, StoreError};
