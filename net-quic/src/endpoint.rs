//! The QUIC endpoint of a node: one UDP socket that both accepts and dials peers, and the
//! authenticated connections it yields.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::frame::{DEFAULT_MAX_FRAME, FrameError, FrameReceiver, FrameSender, StreamClass};
use crate::identity::{
    ANY_NODE_NAME, IdentityError, NodeIdentity, PeerIdError, node_dns_name, peer_node_id, validate_node_id,
};
use crate::secret::EndpointSecret;

/// Transport settings of an endpoint, applied to both its client and server side (quinn uses
/// the smaller idle timeout of the two peers, and keep-alive is per side).
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// A connection with no packet from the peer for this long is dead. Default 15 s.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without traffic, so an idle link stays open.
    /// Default 5 s, a third of the idle timeout.
    pub keep_alive: Duration,
    /// How long [`PeerEndpoint::connect`] waits for the handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Largest frame payload on streams of this endpoint's connections. Default
    /// [`DEFAULT_MAX_FRAME`] (4 MiB).
    pub max_frame: usize,
    /// Bytes a peer may send on one stream ahead of the reader. The default, 8 MiB, keeps a
    /// bulk stream going at 16 MB/s on a 500 ms round trip (quinn's own default is 1.25 MB).
    pub stream_receive_window: u32,
    /// Bytes this side buffers for sending across all streams of a connection. Default 16 MiB.
    pub send_window: u64,
    /// Congestion window at the start of a connection, in bytes. Servers of one cluster talk
    /// over a few long-lived links with long round trips, where QUIC's default (about 12 KiB)
    /// makes a fresh connection crawl through slow start for several round trips: a 130 KB
    /// snapshot took four round trips. Default 1 MiB.
    pub initial_window: u64,
    /// Source of the stateless-reset and connection-id keys. With the same secret after a
    /// restart, peers learn of the restart from the first packet they send (a stateless
    /// reset) instead of at the idle timeout. `None`: random keys (quinn's default).
    pub secret: Option<EndpointSecret>,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            idle_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            stream_receive_window: 8 * 1024 * 1024,
            send_window: 16 * 1024 * 1024,
            initial_window: 1024 * 1024,
            secret: None,
        }
    }
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not called from within a tokio runtime.
    #[error("PeerEndpoint::bind must be called within a tokio runtime")]
    NoRuntime,
    /// The UDP socket could not be bound or registered.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The node's TLS configuration is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// quinn rejected the TLS configuration (for example, no TLS 1.3 suite usable by QUIC).
    #[error("QUIC TLS configuration: {0}")]
    Crypto(String),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Option(String),
}

/// Why a connection could not be established (dialled or accepted).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The expected node id is malformed.
    #[error(transparent)]
    InvalidNodeId(#[from] IdentityError),
    /// quinn refused to start the connection (endpoint stopping, bad address, ...).
    #[error("cannot start connection: {0}")]
    Start(#[from] quinn::ConnectError),
    /// The handshake failed: unreachable peer, certificate not signed by the cluster CA,
    /// certificate for another node than expected, wrong ALPN, or a timeout inside quinn.
    #[error("handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// No handshake within [`EndpointOptions::connect_timeout`].
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer's certificate does not name a node.
    #[error(transparent)]
    PeerIdentity(#[from] PeerIdError),
    /// The peer authenticated as a different node than expected.
    #[error("expected node {expected}, but the peer is node {actual}")]
    WrongPeer {
        /// The node dialled.
        expected: String,
        /// The node that answered.
        actual: String,
    },
    /// The handshake task panicked or was cancelled (endpoint dropped).
    #[error("handshake task failed: {0}")]
    Task(String),
}

/// Why a connection is closed, sent to the peer as the application error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Orderly close: nothing more to say.
    Normal,
    /// The peer violated the protocol (bad frame, unknown stream class).
    Protocol,
    /// A newer connection to the same peer replaces this one.
    Replaced,
    /// This node is shutting down.
    Shutdown,
    /// The peer is not (or no longer) a member of the cluster.
    Refused,
    /// The connection leads back to the node that dialled it.
    Loop,
}

const CLOSE_REASONS: [CloseReason; 6] = [
    CloseReason::Normal,
    CloseReason::Protocol,
    CloseReason::Replaced,
    CloseReason::Shutdown,
    CloseReason::Refused,
    CloseReason::Loop,
];

impl CloseReason {
    /// The application error code on the wire.
    pub const fn code(self) -> u32 {
        match self {
            CloseReason::Normal => 0,
            CloseReason::Protocol => 1,
            CloseReason::Replaced => 2,
            CloseReason::Shutdown => 3,
            CloseReason::Refused => 4,
            CloseReason::Loop => 5,
        }
    }

    /// The reason phrase on the wire.
    pub const fn phrase(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::Protocol => "protocol violation",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::Shutdown => "shutting down",
            CloseReason::Refused => "not a member of the cluster",
            CloseReason::Loop => "connected to itself",
        }
    }

    /// The reason a peer gave for closing, if it is one of ours.
    fn from_error(error: &quinn::ConnectionError) -> Option<CloseReason> {
        let quinn::ConnectionError::ApplicationClosed(close) = error else {
            return None;
        };
        CLOSE_REASONS.into_iter().find(|r| quinn::VarInt::from_u32(r.code()) == close.error_code)
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The application's reason, when one side closed it with one of ours (`None`: a timeout,
    /// a reset, a transport error).
    pub reason: Option<CloseReason>,
    /// The peer answered with a stateless reset: its process restarted (or forgot the
    /// connection).
    pub reset: bool,
    description: String,
}

impl Closed {
    fn new(error: &quinn::ConnectionError) -> Self {
        Closed {
            reason: CloseReason::from_error(error),
            reset: matches!(error, quinn::ConnectionError::Reset),
            description: error.to_string(),
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

type Handshake = Result<PeerConnection, ConnectError>;

/// A node's QUIC endpoint: accepts connections from peers and dials them, on one UDP socket.
/// Every connection is mutually authenticated by the cluster CA and knows its peer's node id.
///
/// Works on a `current_thread` tokio runtime; create it inside one.
#[derive(Debug)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    node_id: String,
    max_frame: usize,
    connect_timeout: Duration,
    /// Handshakes of accepted connections in progress, so one slow or silent client does not
    /// hold up the others.
    handshakes: Mutex<JoinSet<Handshake>>,
}

impl PeerEndpoint {
    /// Binds `addr` (port 0 picks a free port) and starts serving with `identity`.
    /// Must be called within a tokio runtime, which then drives the endpoint.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        options: &EndpointOptions,
    ) -> Result<PeerEndpoint, EndpointError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EndpointError::NoRuntime);
        }
        let transport = Arc::new(transport_config(options)?);

        let server_crypto = QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| EndpointError::Crypto(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());

        let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
            .map_err(|e| EndpointError::Crypto(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let mut endpoint_config = match &options.secret {
            Some(secret) => {
                let cid_key = secret.cid_key();
                let mut config = quinn::EndpointConfig::new(secret.reset_key());
                config.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                config
            }
            None => quinn::EndpointConfig::default(),
        };
        // Peers all speak QUIC v1; no version negotiation games.
        endpoint_config.supported_versions(vec![1]);

        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| EndpointError::Bind { addr, source })?;
        let endpoint =
            quinn::Endpoint::new(endpoint_config, Some(server_config), socket, Arc::new(quinn::TokioRuntime))
                .map_err(|source| EndpointError::Bind { addr, source })?;
        Ok(PeerEndpoint {
            endpoint,
            client_config,
            node_id: identity.node_id().to_owned(),
            max_frame: options.max_frame,
            connect_timeout: options.connect_timeout,
            handshakes: Mutex::new(JoinSet::new()),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Dials `addr`. With `expected_node_id`, the server there must be that node (the TLS
    /// server name is its certificate name); with `None`, any node of the cluster is taken, and
    /// [`PeerConnection::peer_node_id`] says which: a server is known by what its certificate
    /// proves, and the node at an address may have restarted under a new id. Either way a
    /// certificate the cluster CA did not sign is refused.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_node_id: Option<&str>,
    ) -> Result<PeerConnection, ConnectError> {
        let server_name = match expected_node_id {
            Some(id) => {
                validate_node_id(id)?;
                node_dns_name(id)
            }
            None => ANY_NODE_NAME.to_owned(),
        };
        let connecting = self.endpoint.connect_with(self.client_config.clone(), addr, &server_name)?;
        let connection = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        let actual = match peer_node_id(&connection) {
            Ok(id) => id,
            Err(e) => {
                close(&connection, CloseReason::Protocol);
                return Err(e.into());
            }
        };
        if let Some(expected) = expected_node_id
            && actual != expected
        {
            // Unreachable while the verifier checks the server name; a second line of defence.
            close(&connection, CloseReason::Protocol);
            return Err(ConnectError::WrongPeer { expected: expected.to_owned(), actual });
        }
        tracing::debug!(peer = %actual, %addr, "connected");
        Ok(PeerConnection::new(connection, actual, self.max_frame))
    }

    /// Dials until connected (as [`PeerEndpoint::connect`]), sleeping `backoff.next_delay()`
    /// between failed attempts, or until `shutdown` completes (then `None`). Calls `on_failure`
    /// with each failed attempt's error (the caller decides what to log). Resets `backoff` on
    /// success.
    pub async fn connect_with_backoff<F>(
        &self,
        addr: SocketAddr,
        expected_node_id: Option<&str>,
        backoff: &mut Backoff,
        shutdown: F,
        mut on_failure: impl FnMut(&ConnectError),
    ) -> Option<PeerConnection>
    where
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return None,
                result = self.connect(addr, expected_node_id) => match result {
                    Ok(connection) => {
                        backoff.reset();
                        return Some(connection);
                    }
                    Err(e) => on_failure(&e),
                },
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = &mut shutdown => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The next incoming connection whose handshake completed (`Ok`, with the peer's node id
    /// from its certificate) or failed (`Err`: log it and call again). `None` once the
    /// endpoint is closed. Handshakes run concurrently. Cancel-safe.
    pub async fn accept(&self) -> Option<Result<PeerConnection, ConnectError>> {
        let mut handshakes = self.handshakes.lock().await;
        loop {
            tokio::select! {
                Some(joined) = handshakes.join_next(), if !handshakes.is_empty() => {
                    return Some(joined.unwrap_or_else(|e| Err(ConnectError::Task(e.to_string()))));
                }
                incoming = self.endpoint.accept() => {
                    let incoming = incoming?;
                    let max_frame = self.max_frame;
                    handshakes.spawn(async move {
                        let connection = incoming.await?;
                        match peer_node_id(&connection) {
                            Ok(peer) => {
                                tracing::debug!(%peer, addr = %connection.remote_address(), "accepted");
                                Ok(PeerConnection::new(connection, peer, max_frame))
                            }
                            Err(e) => {
                                close(&connection, CloseReason::Protocol);
                                Err(e.into())
                            }
                        }
                    });
                }
            }
        }
    }

    /// Closes every connection at once (undelivered data is lost: finish streams first) and
    /// stops accepting.
    pub fn close(&self, reason: CloseReason) {
        self.endpoint.close(quinn::VarInt::from_u32(reason.code()), reason.phrase().as_bytes());
    }

    /// Waits until every connection is fully closed (after [`PeerEndpoint::close`], so the
    /// peers receive the close before the socket goes away).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

fn transport_config(options: &EndpointOptions) -> Result<quinn::TransportConfig, EndpointError> {
    if options.keep_alive >= options.idle_timeout {
        return Err(EndpointError::Option(format!(
            "keep_alive ({:?}) must be shorter than idle_timeout ({:?})",
            options.keep_alive, options.idle_timeout
        )));
    }
    let idle = quinn::IdleTimeout::try_from(options.idle_timeout)
        .map_err(|e| EndpointError::Option(format!("idle_timeout: {e}")))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(options.keep_alive))
        .stream_receive_window(quinn::VarInt::from_u32(options.stream_receive_window))
        .send_window(options.send_window)
        // One stream per class each way is the design; a few spare for replacements.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(16))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(options.initial_window);
    transport.congestion_controller_factory(Arc::new(cubic));
    Ok(transport)
}

fn close(connection: &quinn::Connection, reason: CloseReason) {
    connection.close(quinn::VarInt::from_u32(reason.code()), reason.phrase().as_bytes());
}

/// An established, mutually authenticated connection to a peer node. Cheap to clone (a
/// handle); the connection closes when [`PeerConnection::close`] is called or every handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    connection: quinn::Connection,
    peer_node_id: Arc<str>,
    max_frame: usize,
}

impl PeerConnection {
    fn new(connection: quinn::Connection, peer_node_id: String, max_frame: usize) -> Self {
        PeerConnection { connection, peer_node_id: peer_node_id.into(), max_frame }
    }

    /// The peer's node id, from its certificate.
    pub fn peer_node_id(&self) -> &str {
        &self.peer_node_id
    }

    /// The peer's current UDP address (informational only: identity is the certificate).
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// An id unique among this process's live connections (to tell an old connection to a
    /// peer from its replacement).
    pub fn stable_id(&self) -> usize {
        self.connection.stable_id()
    }

    /// Opens a stream of `class` for sending messages of type `T`.
    pub async fn open_stream<T: Serialize + ?Sized>(
        &self,
        class: StreamClass,
    ) -> Result<FrameSender<T>, FrameError> {
        FrameSender::open(&self.connection, class, self.max_frame).await
    }

    /// Accepts the next stream the peer opens, for receiving messages of type `T`; its class
    /// is [`FrameReceiver::class`].
    pub async fn accept_stream<T: DeserializeOwned>(&self) -> Result<FrameReceiver<T>, FrameError> {
        FrameReceiver::accept(&self.connection, self.max_frame).await
    }

    /// Closes the connection at once. Unacknowledged stream data is lost: call
    /// [`FrameSender::finish_and_wait`] on senders whose last messages matter, first.
    pub fn close(&self, reason: CloseReason) {
        close(&self.connection, reason);
    }

    /// Waits until the connection is closed, by either side or by a timeout; returns why.
    pub async fn closed(&self) -> Closed {
        Closed::new(&self.connection.closed().await)
    }

    /// Whether the connection has closed (by either side or by a timeout).
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// The underlying quinn connection, for tests that must write bytes no well-behaved peer
    /// would (malformed streams). Not part of the supported interface.
    #[doc(hidden)]
    pub fn quinn_connection(&self) -> &quinn::Connection {
        &self.connection
    }
}
