//! Helpers shared by the integration tests: temporary cluster directories, endpoints on
//! loopback, connected pairs, and a message type with an efficient byte payload.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use net_quic::{ClusterIdentity, EndpointOptions, PeerConnection, PeerEndpoint};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use tempfile::TempDir;

/// A fresh, empty directory under the system temp dir whose name carries `tag`, removed on drop.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("net-quic-{tag}-")).tempdir().expect("temporary directory")
}

/// A fresh cluster CA in its own temporary directory.
pub fn cluster(tag: &str) -> (TempDir, ClusterIdentity) {
    let dir = temp_dir(tag);
    let cluster = ClusterIdentity::load_or_create(dir.path()).expect("CA created");
    (dir, cluster)
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An endpoint of node `node_id` on 127.0.0.1 with an OS-chosen port.
pub fn endpoint(cluster: &ClusterIdentity, node_id: &str) -> PeerEndpoint {
    endpoint_with(cluster, node_id, &EndpointOptions::default())
}

pub fn endpoint_with(cluster: &ClusterIdentity, node_id: &str, options: &EndpointOptions) -> PeerEndpoint {
    let identity = cluster.mint_node(node_id).expect("node certificate");
    PeerEndpoint::bind(loopback(), &identity, options).expect("endpoint binds")
}

/// `client` dials `server` (at `addr`, normally its own address) while `server` accepts;
/// returns (client side, server side).
pub async fn connect_pair_via(
    client: &PeerEndpoint,
    server: &PeerEndpoint,
    addr: SocketAddr,
) -> (PeerConnection, PeerConnection) {
    let (dialled, accepted) = tokio::join!(client.connect(addr, Some(server.node_id())), server.accept());
    let dialled = dialled.expect("client connects");
    let accepted = accepted.expect("endpoint open").expect("server accepts");
    assert_eq!(dialled.peer_node_id(), server.node_id());
    assert_eq!(accepted.peer_node_id(), client.node_id());
    (dialled, accepted)
}

pub async fn connect_pair(client: &PeerEndpoint, server: &PeerEndpoint) -> (PeerConnection, PeerConnection) {
    connect_pair_via(client, server, server.local_addr().unwrap()).await
}

/// Runs `fut` with a deadline, so a broken test fails instead of hanging.
pub async fn within<F: std::future::Future>(limit: Duration, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut).await.expect("timed out")
}

/// Bytes serialized as one MessagePack `bin` (a plain `Vec<u8>` would be an array of
/// integers: bigger and much slower).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// A stand-in for the gateway's peer messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Delta { seq: u64, key: String, value: Option<String> },
    Chunk { index: u32, data: Blob },
    Ping(u64),
    Pong(u64),
}

pub fn delta(seq: u64) -> Msg {
    Msg::Delta { seq, key: format!("key-{seq}"), value: Some(format!("value-{seq}")) }
}
