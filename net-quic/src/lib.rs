//! QUIC transport between replica servers.
//!
//! What it does:
//! - **Identity** ([`ClusterIdentity`], [`NodeIdentity`]): a cluster CA kept in the cluster
//!   directory (created on first start, safely even when several nodes start at once), node
//!   certificates minted from it with the node id as DNS name, and rustls configurations that
//!   make every connection mutually authenticated by that CA with the stock webpki verifiers.
//!   Peers are identified by certificate ([`PeerConnection::peer_node_id`]), never by address:
//!   a node dials an address and learns from the certificate who answered.
//! - **Endpoint** ([`PeerEndpoint`], [`PeerConnection`]): one UDP socket per node that both
//!   accepts and dials, with keep-alive and idle timeout on both sides, optional stable reset
//!   keys so a restarted peer is noticed at once ([`EndpointSecret`]), and reconnection with
//!   exponential backoff ([`Backoff`]).
//! - **Framing** ([`FrameSender`], [`FrameReceiver`]): length-prefixed rmp-serde messages on
//!   long-lived unidirectional streams of two priority classes ([`StreamClass`]), with a
//!   maximum frame size, payload byte counters, and a graceful finish
//!   ([`FrameSender::finish_and_wait`]) because closing a connection discards unsent data.
//! - **Link emulator** (feature `linkem`, tests and benches only): a UDP relay adding delay,
//!   jitter, loss, duplication, reordering and partitions.
//!
//! What it deliberately does not do: decide which node dials which, or replace a duplicate
//! connection (the gateway knows the join order and owns the one-connection-per-peer rule);
//! pace bulk transfers (priorities are strict but a saturating bulk stream still delays
//! control messages: the sender paces); define message types (frames are generic).
//!
//! Everything runs on the caller's tokio runtime, `current_thread` included.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use net_quic::{ClusterIdentity, EndpointOptions, PeerEndpoint, StreamClass};
//! let cluster = ClusterIdentity::load_or_create("cluster".as_ref())?;
//! let me = cluster.mint_node("1a2b3c4d5e6f")?;
//! let options = EndpointOptions {
//!     secret: Some(cluster.endpoint_secret("127.0.0.1:6000")),
//!     ..EndpointOptions::default()
//! };
//! let endpoint = PeerEndpoint::bind("127.0.0.1:6000".parse()?, &me, &options)?;
//! let peer = endpoint.connect("127.0.0.1:7000".parse()?, None).await?; // whichever node is there
//! println!("connected to node {}", peer.peer_node_id());
//! let mut control = peer.open_stream::<String>(StreamClass::Control).await?;
//! control.send(&"hello".to_owned()).await?;
//! control.finish_and_wait().await?;
//! # Ok(()) }
//! ```

mod backoff;
mod der;
mod endpoint;
mod frame;
mod identity;
#[cfg(feature = "linkem")]
mod linkem;
mod rng;
mod secret;

pub use backoff::Backoff;
pub use endpoint::{
    CloseReason, Closed, ConnectError, EndpointError, EndpointOptions, PeerConnection, PeerEndpoint,
};
pub use frame::{
    DEFAULT_MAX_FRAME, EncodedFrames, FRAME_HEADER_LEN, FrameError, FrameReceiver, FrameSender, StreamClass,
    decode_frame, encode_frame, frame_len,
};
pub use identity::{
    ALPN, ANY_NODE_NAME, CA_CERT_FILE, CA_KEY_FILE, ClusterIdentity, IdentityError, MAX_NODE_ID_LEN,
    NODE_CERT_FILE, NODE_KEY_FILE, NodeIdentity, PeerIdError, issued_node_id, node_id_from_cert,
    validate_node_id,
};
#[cfg(feature = "linkem")]
pub use linkem::{LinkConfig, LinkEmulator, LinkStats};
pub use secret::EndpointSecret;
