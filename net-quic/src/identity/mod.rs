//! Cluster identity: the cluster CA on disk, node certificates minted from it, and the rustls
//! configurations that make every connection mutually authenticated by that CA.
//!
//! Peers are identified by certificate, never by address: a node's certificate carries one DNS
//! subject alternative name, `<node id>.cmud-kv.internal`, and [`peer_node_id`] reads it back
//! from an established connection.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod ca_store;
mod node_cert;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::der;
use crate::secret::EndpointSecret;
use ca_store::{ca_params, create_ca, io_err, warn_if_key_readable};
pub use node_cert::{NODE_CERT_FILE, NODE_KEY_FILE, issued_node_id};

/// The ALPN protocol both sides must offer; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"cmud-kv/1";

/// File name of the cluster CA certificate (PEM) inside the cluster directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key (PKCS#8 PEM, mode 0600) inside the cluster directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// DNS suffix of node names: node `1a2b` is `1a2b.cmud-kv.internal` in its certificate.
/// (`.internal` is reserved for private use, so no public name can collide.)
const NODE_DNS_SUFFIX: &str = ".cmud-kv.internal";
/// Prefix of the cluster CA's common name; a per-cluster id follows, so that a certificate
/// from another cluster fails with "unknown issuer" rather than "bad signature".
const CA_NAME_PREFIX: &str = "cmud-kv cluster CA";
/// How long `load_or_create` waits for a half-present CA to be completed by a concurrent
/// creator before calling it broken. Creation takes milliseconds; this is generous.
const HALF_PRESENT_WAIT: Duration = Duration::from_secs(3);
/// Longest node id: the id is one DNS label.
pub const MAX_NODE_ID_LEN: usize = 63;

/// Why the cluster identity could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Only one of `ca.pem` and `ca.key` exists (and no concurrent creator completed the pair).
    #[error(
        "half-present cluster CA in {dir}: {present} exists but {missing} does not; restore \
         {missing} or remove {present} to create a new CA (every node must then be restarted)"
    )]
    HalfPresent {
        /// The cluster directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that is missing.
        missing: &'static str,
    },
    /// A CA file exists but cannot be parsed.
    #[error("corrupt cluster CA file {path}: {reason}")]
    Corrupt {
        /// The unreadable file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA files parse but do not form a usable CA: the key does not match the certificate,
    /// or the certificate was not made by this crate.
    #[error("cluster CA in {dir} is unusable: {reason}")]
    Unusable {
        /// The cluster directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The cluster directory holds the CA certificate and a node certificate, not the CA key:
    /// it can prove this node, not mint certificates.
    #[error(
        "{dir} holds no CA key ({CA_KEY_FILE}), only the certificate of node {held}: it cannot \
         mint a certificate for node {wanted}"
    )]
    NoCaKey {
        /// The cluster directory.
        dir: PathBuf,
        /// The node whose certificate the directory holds.
        held: String,
        /// The node a certificate was asked for.
        wanted: String,
    },
    /// A node certificate or key issued ahead of time is not usable.
    #[error("node certificate in {dir} is unusable: {reason}")]
    NodeCert {
        /// The cluster directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A node id is not 1 to 63 lowercase hexadecimal digits.
    #[error("invalid node id {0:?}: expected 1 to 63 lowercase hex digits")]
    InvalidNodeId(String),
    /// Key or certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls rejected a configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Why the node id of a peer could not be established from its certificate.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdError {
    /// The connection has no peer certificate (handshake not complete, or not a TLS peer).
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The certificate names no node (no `<id>.cmud-kv.internal` DNS name), or several.
    #[error("peer certificate names no single node ({0} candidate names)")]
    NoNodeName(usize),
    /// The certificate could not be parsed, or webpki does not confirm the name.
    #[error("peer certificate rejected: {0}")]
    Invalid(String),
}

/// Checks that `node_id` is 1 to 63 lowercase hex digits (so it is a valid DNS label and
/// cannot smuggle dots or wildcards into a certificate name).
pub fn validate_node_id(node_id: &str) -> Result<(), IdentityError> {
    let ok = !node_id.is_empty()
        && node_id.len() <= MAX_NODE_ID_LEN
        && node_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok { Ok(()) } else { Err(IdentityError::InvalidNodeId(node_id.to_owned())) }
}

/// The DNS name that identifies `node_id` in certificates and as the TLS server name.
/// The caller must have validated the id.
pub(crate) fn node_dns_name(node_id: &str) -> String {
    format!("{node_id}{NODE_DNS_SUFFIX}")
}

/// The crypto provider of the whole crate: ring, passed explicitly to every rustls builder so
/// that no process-level default is needed (see the dependency notes on crypto providers).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster certificate authority, loaded from (or created in) the cluster directory.
///
/// Every node of a cluster shares the directory (or a copy of it) and mints its own
/// certificate with [`ClusterIdentity::mint_node`]. Whoever holds `ca.key` can join the
/// cluster: keep the directory private.
pub struct ClusterIdentity {
    dir: PathBuf,
    /// Whether this process created the CA (rather than loading one another made).
    created: bool,
    ca_cert: CertificateDer<'static>,
    /// PKCS#8 DER of the key secrets derive from ([`ClusterIdentity::endpoint_secret`]): the
    /// CA key, or, in a directory holding a node certificate instead, the node's key.
    secret_der: Vec<u8>,
    /// The CA key as an issuer; `None` in a directory holding a node certificate instead.
    issuer: Option<Issuer<'static, KeyPair>>,
    roots: Arc<RootCertStore>,
    /// The node certificate issued ahead of time (`replica-node issue-cert`), in a directory
    /// without the CA key.
    issued: Option<NodeIdentity>,
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("ClusterIdentity")
            .field("dir", &self.dir)
            .field("ca_cert_len", &self.ca_cert.len())
            .finish_non_exhaustive()
    }
}

impl ClusterIdentity {
    /// Loads the cluster CA from `dir/ca.pem` and `dir/ca.key`, creating the directory and a new
    /// CA if neither file exists. A directory holding `ca.pem` and a node certificate
    /// (`node.pem`, `node.key`, as `replica-node issue-cert` writes them) instead of the CA key
    /// loads as that node's identity: it can prove that node, not mint others.
    ///
    /// Safe when several processes start at once on the same directory: each candidate CA is
    /// written to temporary files and published with hard links, which never overwrite, key
    /// first; whoever publishes the key first wins and the others load the winner's CA (waiting
    /// up to a few seconds for its certificate to appear). A CA left half-present by a crash, a
    /// corrupt file or a key that does not match the certificate is a clear error, never
    /// silently replaced.
    pub fn load_or_create(dir: &Path) -> Result<ClusterIdentity, IdentityError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let deadline = Instant::now() + HALF_PRESENT_WAIT;
        loop {
            let cert_exists = cert_path.try_exists().map_err(|e| io_err(&cert_path, e))?;
            let key_exists = key_path.try_exists().map_err(|e| io_err(&key_path, e))?;
            match (cert_exists, key_exists) {
                (true, true) => return Self::load(dir),
                (false, false) => {
                    // Either we publish a CA, or someone else did first: load in both cases.
                    let won = create_ca(dir)?;
                    let mut identity = Self::load(dir)?;
                    identity.created = won;
                    return Ok(identity);
                }
                (true, false) if dir.join(NODE_CERT_FILE).exists() => return Self::load_issued(dir),
                (cert_exists, _) => {
                    if Instant::now() >= deadline {
                        let (present, missing) = if cert_exists {
                            (CA_CERT_FILE, CA_KEY_FILE)
                        } else {
                            (CA_KEY_FILE, CA_CERT_FILE)
                        };
                        return Err(IdentityError::HalfPresent { dir: dir.to_owned(), present, missing });
                    }
                    // A concurrent creator links the key, then the certificate.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Loads an existing CA from `dir` without ever creating one.
    pub fn load(dir: &Path) -> Result<ClusterIdentity, IdentityError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read(&cert_path).map_err(|e| io_err(&cert_path, e))?;
        let key_pem = fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, e))?;
        warn_if_key_readable(&key_path);
        Self::from_pem(dir, &cert_pem, &key_pem)
    }

    fn from_pem(dir: &Path, cert_pem: &[u8], key_pem: &str) -> Result<Self, IdentityError> {
        let ca_cert = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| IdentityError::Corrupt { path: dir.join(CA_CERT_FILE), reason: e.to_string() })?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| IdentityError::Corrupt { path: dir.join(CA_KEY_FILE), reason: e.to_string() })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert.clone())
            .map_err(|e| IdentityError::Corrupt { path: dir.join(CA_CERT_FILE), reason: e.to_string() })?;
        // The issuer of minted certificates must equal the CA's subject byte for byte: rebuild
        // it from the stored common name (the probe below checks the result).
        let common_name = der::subject_common_name(&ca_cert)
            .filter(|name| name.starts_with(CA_NAME_PREFIX))
            .ok_or_else(|| IdentityError::Unusable {
                dir: dir.to_owned(),
                reason: format!("{CA_CERT_FILE} is not a cluster CA made by this program"),
            })?
            .to_owned();
        let identity = ClusterIdentity {
            dir: dir.to_owned(),
            created: false,
            ca_cert,
            secret_der: key.serialize_der(),
            issuer: Some(Issuer::new(ca_params(&common_name), key)),
            roots: Arc::new(roots),
            issued: None,
        };
        identity.probe()?;
        Ok(identity)
    }

    /// Mints a throw-away node certificate and verifies it against the loaded CA certificate:
    /// proves that the key belongs to the certificate and that the issuer name matches.
    fn probe(&self) -> Result<(), IdentityError> {
        let unusable = |reason: String| IdentityError::Unusable { dir: self.dir.clone(), reason };
        let probe = self.mint_node("0")?;
        let parsed = ParsedCertificate::try_from(&probe.cert_chain[0])
            .map_err(|e| unusable(format!("probe certificate unparsable: {e}")))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &[],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            unusable(format!(
                "a certificate signed with {CA_KEY_FILE} does not verify against {CA_CERT_FILE} \
                 ({e}): the key does not match the certificate, or the CA was not created by \
                 this program"
            ))
        })
    }

    /// The cluster directory this CA was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether [`ClusterIdentity::load_or_create`] created this CA (a new cluster) rather than
    /// loading an existing one. A server told to join others that has just created a CA can
    /// never be admitted by them.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The CA certificate (DER), the trust anchor of the cluster.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// Mints a fresh key pair and a certificate for `node_id`, signed by the CA: SAN
    /// `<node_id>.cmud-kv.internal`, extended key usage server and client authentication,
    /// valid from a year ago (clock skew) to ten years ahead. Nothing is written to disk.
    ///
    /// In a directory holding a node certificate instead of the CA key, returns that node's
    /// identity if `node_id` is its id, and [`IdentityError::NoCaKey`] otherwise.
    pub fn mint_node(&self, node_id: &str) -> Result<NodeIdentity, IdentityError> {
        if let Some(node) = &self.issued {
            if node.node_id == node_id {
                return Ok(node.clone());
            }
            return Err(IdentityError::NoCaKey {
                dir: self.dir.clone(),
                held: node.node_id.clone(),
                wanted: node_id.to_owned(),
            });
        }
        let (cert, key) = self.sign_node(node_id)?;
        Ok(NodeIdentity {
            node_id: node_id.to_owned(),
            cert_chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            roots: self.roots.clone(),
            endpoint_secret: self.endpoint_secret(node_id),
        })
    }

    /// A fresh key pair and a certificate for `node_id` signed by the CA key.
    fn sign_node(&self, node_id: &str) -> Result<(rcgen::Certificate, KeyPair), IdentityError> {
        validate_node_id(node_id)?;
        let Some(issuer) = &self.issuer else {
            return Err(IdentityError::NoCaKey {
                dir: self.dir.clone(),
                held: self.issued.as_ref().map_or_else(String::new, |n| n.node_id.clone()),
                wanted: node_id.to_owned(),
            });
        };
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node_dns_name(node_id)])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let year = current_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let cert = params.signed_by(&key, issuer)?;
        Ok((cert, key))
    }

    /// The node certificate this directory holds instead of the CA key, if it does: the node
    /// id it proves.
    pub fn issued_node(&self) -> Option<&str> {
        self.issued.as_ref().map(|n| n.node_id.as_str())
    }

    /// A 32-byte key derived from the CA certificate and `label` (HKDF-SHA256), the same in
    /// every node of the cluster (each has the CA certificate): for keyed hashes the whole
    /// cluster must agree on, such as the digests that anti-entropy repair compares. Not a
    /// secret from the cluster's members.
    pub fn shared_key(&self, label: &str) -> [u8; 32] {
        EndpointSecret::derive(self.ca_cert.as_ref(), label.as_bytes()).into_bytes()
    }

    /// A secret derived from the CA key and `label` (HKDF-SHA256), the same in every process
    /// that loads this CA (in a directory holding a node certificate instead of the CA key:
    /// from that node's key, the same in every run of that node). Pass it in [`EndpointOptions::secret`](crate::EndpointOptions) so a
    /// restarted node keeps its stateless-reset and connection-id keys and its peers notice the
    /// restart at once. The label must be stable across restarts of one node and distinct
    /// between nodes: the node id if it is persisted, else the listen address `host:port`.
    pub fn endpoint_secret(&self, label: &str) -> EndpointSecret {
        EndpointSecret::derive(&self.secret_der, label.as_bytes())
    }
}

/// A node's certificate and key, and the rustls configurations built from them.
#[derive(Clone)]
pub struct NodeIdentity {
    node_id: String,
    cert_chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    roots: Arc<RootCertStore>,
    endpoint_secret: EndpointSecret,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("NodeIdentity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The node id this identity was minted for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_chain[0]
    }

    /// The endpoint secret derived from the CA key and this node id (see
    /// [`ClusterIdentity::endpoint_secret`]); stable across restarts if the node id is.
    pub fn endpoint_secret(&self) -> &EndpointSecret {
        &self.endpoint_secret
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// A TLS 1.3 server configuration that presents this node's certificate and requires
    /// every client to present a certificate signed by the cluster CA (stock webpki verifier).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// A TLS 1.3 client configuration that presents this node's certificate and verifies the
    /// server against the cluster CA ([`NodeVerifier`]): the server must be the node named by
    /// the server name, or, for [`ANY_NODE_NAME`], any node of the cluster (see
    /// [`PeerEndpoint::connect`](crate::PeerEndpoint)).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        let verifier = Arc::new(NodeVerifier { roots: self.roots.clone(), provider: provider() });
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.cert_chain.clone(), self.key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The server name a node dials when it accepts whichever node of the cluster answers (it
/// dials an address, not a node: the server there may have restarted under a new id).
pub const ANY_NODE_NAME: &str = "any-node.cmud-kv.internal";

/// Verifies a server certificate as the stock webpki verifier does (chain to the cluster CA,
/// validity, server-auth usage), then checks that it names the node asked for, or any single
/// node when the server name is [`ANY_NODE_NAME`]. The node id is then read from the
/// certificate, so a peer is always known by what its certificate proves.
#[derive(Debug)]
struct NodeVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let any = matches!(server_name, ServerName::DnsName(n) if n.as_ref() == ANY_NODE_NAME);
        if any {
            node_id_from_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        } else {
            verify_server_name(&cert, server_name)?;
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The node id of the peer of an established connection, read from the single
/// `<id>.cmud-kv.internal` DNS name of its certificate (which the handshake has already
/// verified against the cluster CA).
pub(crate) fn peer_node_id(connection: &quinn::Connection) -> Result<String, PeerIdError> {
    let identity = connection.peer_identity().ok_or(PeerIdError::NoCertificate)?;
    let chain =
        identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| PeerIdError::NoCertificate)?;
    let leaf = chain.first().ok_or(PeerIdError::NoCertificate)?;
    node_id_from_cert(leaf)
}

/// The node id named by a node certificate (DER). Does not check who signed it: use it on
/// certificates the TLS handshake has verified. Never panics, whatever the input.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<String, PeerIdError> {
    let names = der::dns_names(cert)
        .ok_or_else(|| PeerIdError::Invalid("malformed subject alternative names".into()))?;
    let candidates: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_suffix(NODE_DNS_SUFFIX))
        .filter(|id| validate_node_id(id).is_ok())
        .collect();
    let [node_id] = candidates[..] else {
        return Err(PeerIdError::NoNodeName(candidates.len()));
    };
    // Our DER walk found the name; let webpki, which verified the chain, confirm it.
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| PeerIdError::Invalid(e.to_string()))?;
    let server_name =
        ServerName::try_from(node_dns_name(node_id)).map_err(|e| PeerIdError::Invalid(e.to_string()))?;
    verify_server_name(&parsed, &server_name).map_err(|e| PeerIdError::Invalid(e.to_string()))?;
    Ok(node_id.to_owned())
}

/// The current calendar year, approximately (off by at most a day around new year, which the
/// one-year margin on `not_before` absorbs).
fn current_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // 365.2425 days per Gregorian year.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        for ok in ["0", "1a2b3c4d5e6f", &"f".repeat(63)] {
            validate_node_id(ok).unwrap();
        }
        for bad in ["", "1A2B", "1a.2b", "*", "g", " 1a", &"a".repeat(64), "é"] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn year_is_plausible() {
        assert!((2024..2200).contains(&current_year()));
    }
}
