//! The node's description: the line it prints when ready and what `--join` takes
//! (contract: design 4.4).

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// What a node prints when it is ready, and what `--join` takes: the contract of design 4.4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// The node's unique id.
    pub node: String,
    /// The peer (QUIC) address.
    pub peer: String,
    /// The client addresses, one per query actor, in actor order.
    pub clients: Vec<String>,
}

impl Description {
    /// The single-line JSON form.
    pub fn to_line(&self) -> String {
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(self).expect("a description serializes")
    }

    /// The client addresses, resolved.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.clients.iter().filter_map(|a| a.to_socket_addrs().ok()?.next()).collect()
    }

    /// Parses a description line (as a node prints it), or `@FILE` holding one, and checks it:
    /// a valid node id, a resolvable peer address, client addresses of the form `HOST:PORT`.
    pub fn parse(arg: &str) -> Result<Description, String> {
        let text = match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?,
            None => arg.to_owned(),
        };
        let line = text.lines().map(str::trim).find(|l| !l.is_empty()).ok_or("empty description")?;
        let desc: Description = serde_json::from_str(line).map_err(|e| {
            format!("not a node description ({e}); expected {{\"node\": ID, \"peer\": \"HOST:PORT\", \"clients\": [...]}}")
        })?;
        net_quic::validate_node_id(&desc.node).map_err(|e| format!("bad node id {:?}: {e}", desc.node))?;
        desc.peer_addr()?;
        for c in &desc.clients {
            if c.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(format!("bad client address {c:?}: expected HOST:PORT"));
            }
        }
        Ok(desc)
    }

    /// The peer address, resolved.
    pub fn peer_addr(&self) -> Result<SocketAddr, String> {
        self.peer
            .to_socket_addrs()
            .map_err(|e| format!("bad peer address {:?}: {e}", self.peer))?
            .next()
            .ok_or_else(|| format!("peer address {:?} resolves to nothing", self.peer))
    }
}
