//! The loopback QUIC bulk rate: the anchor of the join target ("state transfer at ≥ 50 % of
//! the loopback QUIC bulk rate", design section 7).
//!
//! The approach of net-quic's `bulk_rate` test (`net-quic/tests/transport.rs`), through the
//! crate's public API: two [`PeerEndpoint`]s of one cluster on loopback, one connection, one
//! [`StreamClass::Bulk`] stream carrying ~1 MiB frames of opaque bytes, timed from opening the
//! stream until the receiver has read the last frame. It runs in two shapes:
//!
//! - [`Shape::OneThread`]: both endpoints on one `current_thread` runtime, exactly as the test;
//! - [`Shape::TwoThreads`]: each endpoint on its own thread and runtime, as the gateways of two
//!   nodes run (each node's gateway is one `current_thread` runtime on its own thread).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use net_quic::{ClusterIdentity, EndpointOptions, NodeIdentity, PeerConnection, PeerEndpoint, StreamClass};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::harness::{loopback, temp_dir};

/// Bytes serialized as one MessagePack `bin` (a `Vec<u8>` would be an array of integers).
#[derive(Debug, Clone)]
struct Blob(Vec<u8>);

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

/// The frame type, shaped like the test's `Msg::Chunk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    Chunk { index: u32, data: Blob },
}

/// Where the two endpoints run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Both on one `current_thread` runtime (net-quic's `bulk_rate` test).
    OneThread,
    /// Each on its own thread and `current_thread` runtime (two nodes' gateways).
    TwoThreads,
}

/// One bulk transfer.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// How the endpoints ran.
    pub shape: Shape,
    /// Frame payload bytes received (as the framing layer counts them).
    pub bytes: u64,
    /// Frames sent.
    pub frames: usize,
    /// Bytes of opaque data per frame.
    pub frame: usize,
    /// From opening the stream until the last frame was read.
    pub elapsed: Duration,
}

impl Bulk {
    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// The test's sizes: 100 MB in frames of 1 MiB less a little framing headroom.
pub const TOTAL: usize = 100 * 1000 * 1000;
/// Bytes of opaque data per frame.
pub const FRAME: usize = 1024 * 1024 - 64;

/// Sends `total` bytes in frames of `frame` bytes over one Bulk stream on loopback.
pub fn run(shape: Shape, total: usize, frame: usize) -> anyhow::Result<Bulk> {
    let dir = temp_dir("bulk");
    let cluster = ClusterIdentity::load_or_create(dir.path()).context("cluster CA")?;
    let a = cluster.mint_node("a1").context("certificate")?;
    let b = cluster.mint_node("b2").context("certificate")?;
    let frames = total.div_ceil(frame);
    let (bytes, elapsed) = match shape {
        Shape::OneThread => one_thread(&a, &b, frames, frame)?,
        Shape::TwoThreads => two_threads(&a, b, frames, frame)?,
    };
    anyhow::ensure!(bytes >= total as u64, "received {bytes} bytes of {total}");
    Ok(Bulk { shape, bytes, frames, frame, elapsed })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn send(conn: &PeerConnection, frames: usize, frame: usize) -> anyhow::Result<()> {
    let chunk = Msg::Chunk { index: 0, data: Blob(vec![0x5a; frame]) };
    let mut tx = conn.open_stream::<Msg>(StreamClass::Bulk).await?;
    for _ in 0..frames {
        tx.send(&chunk).await?;
    }
    tx.finish_and_wait().await?;
    Ok(())
}

/// Reads every frame of the peer's first stream; returns the frame count and payload bytes.
async fn receive(conn: &PeerConnection) -> anyhow::Result<(usize, u64)> {
    let mut rx = conn.accept_stream::<Msg>().await?;
    let mut n = 0;
    while let Some(Msg::Chunk { .. }) = rx.recv().await? {
        n += 1;
    }
    Ok((n, rx.bytes_received()))
}

fn one_thread(
    a: &NodeIdentity,
    b: &NodeIdentity,
    frames: usize,
    frame: usize,
) -> anyhow::Result<(u64, Duration)> {
    runtime()?.block_on(async {
        let options = EndpointOptions::default();
        let ea = PeerEndpoint::bind(loopback(), a, &options)?;
        let eb = PeerEndpoint::bind(loopback(), b, &options)?;
        let (dialled, accepted) = tokio::join!(ea.connect(eb.local_addr()?, Some(eb.node_id())), eb.accept());
        let ab = dialled?;
        let ba = accepted.context("endpoint closed")??;
        let start = Instant::now();
        let (sent, received) = tokio::join!(send(&ab, frames, frame), receive(&ba));
        let elapsed = start.elapsed();
        sent?;
        let (n, bytes) = received?;
        anyhow::ensure!(n == frames, "received {n} frames of {frames}");
        Ok((bytes, elapsed))
    })
}

fn two_threads(
    a: &NodeIdentity,
    b: NodeIdentity,
    frames: usize,
    frame: usize,
) -> anyhow::Result<(u64, Duration)> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::Builder::new().name("bulk-rx".into()).spawn(move || {
        runtime()?.block_on(async {
            let eb = PeerEndpoint::bind(loopback(), &b, &EndpointOptions::default())?;
            addr_tx.send(eb.local_addr()?)?;
            let ba = eb.accept().await.context("endpoint closed")??;
            let (n, bytes) = receive(&ba).await?;
            let end = Instant::now();
            anyhow::ensure!(n == frames, "received {n} frames of {frames}");
            Ok::<_, anyhow::Error>((bytes, end))
        })
    })?;
    let rt = runtime()?;
    let (start, sent, received) = rt.block_on(async {
        let ea = PeerEndpoint::bind(loopback(), a, &EndpointOptions::default())?;
        let addr = addr_rx.recv().context("receiver thread failed")?;
        let ab = ea.connect(addr, Some("b2")).await?;
        let start = Instant::now();
        let sent = send(&ab, frames, frame).await;
        // This runtime keeps driving the connection (acknowledgements, the stream's end) until
        // the receiver is done: a sender that stopped polling could leave the receiver waiting
        // for its idle timeout.
        let received = tokio::task::spawn_blocking(move || receiver.join()).await?;
        drop((ab, ea));
        Ok::<_, anyhow::Error>((start, sent, received))
    })?;
    let (bytes, end) = received.map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    sent?;
    Ok((bytes, end - start))
}
