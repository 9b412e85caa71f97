//! What can go wrong with a query.

use std::io;
use std::net::SocketAddr;

use resp::ProtocolError;

/// A query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the command (`-ERR ...`). Not retried: another server would refuse it
    /// too.
    #[error("server error: {0}")]
    Server(String),
    /// No attempt got a reply: every address tried failed to connect or lost the connection.
    #[error("no server answered; tried {}", describe_attempts(.attempts))]
    Unavailable {
        /// Each address tried, in order, with its failure.
        attempts: Vec<(SocketAddr, io::Error)>,
    },
    /// The server's reply violates the protocol.
    #[error("protocol error from {addr}: {source}")]
    Protocol {
        /// The server that sent it.
        addr: SocketAddr,
        /// What was wrong.
        source: ProtocolError,
    },
    /// A well-formed reply of the wrong shape for the command.
    #[error("unexpected reply to {command}: {reply}")]
    UnexpectedReply {
        /// The command sent.
        command: &'static str,
        /// The reply, abbreviated.
        reply: String,
    },
    /// A router was given no addresses.
    #[error("no server addresses given")]
    NoServers,
    /// [`Client::command`](crate::Client::command) was called without arguments.
    #[error("empty command")]
    EmptyCommand,
}

fn describe_attempts(attempts: &[(SocketAddr, io::Error)]) -> String {
    let parts: Vec<String> = attempts.iter().map(|(addr, e)| format!("{addr} ({e})")).collect();
    parts.join(", ")
}

impl ClientError {
    /// Whether the error means no server could be reached (as opposed to a refused or
    /// misunderstood command).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}

/// Why one attempt failed.
pub(crate) enum Failure {
    /// The connection failed: try elsewhere.
    Io(io::Error),
    /// The server spoke nonsense: give up.
    Protocol(ProtocolError),
    /// The server refused the connection's password (or wants one): give up, as for any
    /// error reply.
    Refused(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}
