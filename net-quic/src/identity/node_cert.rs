//! Node certificates issued ahead of time, so that servers need not hold the CA key (design
//! 4.4): the operator keeps `ca.key` and runs `replica-node issue-cert`, which writes `ca.pem`,
//! `node.pem` and `node.key` into a directory of their own; a server started with that
//! directory as its `--cluster-dir` proves that one node and can mint nothing.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::ca_store::{io_err, set_mode, sync_dir, warn_if_key_readable};
use super::{CA_CERT_FILE, ClusterIdentity, IdentityError, NodeIdentity, node_id_from_cert, provider};
use crate::secret::EndpointSecret;

/// File name of a node certificate issued ahead of time (PEM), in a cluster directory without
/// the CA key.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of that node's private key (PKCS#8 PEM, mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// The node id of the certificate issued ahead of time in `dir`, if `dir` holds one (read
/// from its name; [`ClusterIdentity::load_or_create`] verifies it). Lets a server learn its
/// id before it opens anything else.
pub fn issued_node_id(dir: &Path) -> Result<Option<String>, IdentityError> {
    let path = dir.join(NODE_CERT_FILE);
    if !path.try_exists().map_err(|e| io_err(&path, e))? {
        return Ok(None);
    }
    let pem = fs::read(&path).map_err(|e| io_err(&path, e))?;
    let cert = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| IdentityError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    let id = node_id_from_cert(&cert)
        .map_err(|e| IdentityError::NodeCert { dir: dir.to_owned(), reason: e.to_string() })?;
    Ok(Some(id))
}

impl ClusterIdentity {
    /// Loads a directory holding `ca.pem` and a node certificate and key instead of the CA key:
    /// the certificate must be signed by that CA, name one node, and match the key.
    pub(super) fn load_issued(dir: &Path) -> Result<ClusterIdentity, IdentityError> {
        let bad = |reason: String| IdentityError::NodeCert { dir: dir.to_owned(), reason };
        let ca_path = dir.join(CA_CERT_FILE);
        let ca_pem = fs::read(&ca_path).map_err(|e| io_err(&ca_path, e))?;
        let ca_cert = CertificateDer::from_pem_slice(&ca_pem)
            .map_err(|e| IdentityError::Corrupt { path: ca_path.clone(), reason: e.to_string() })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert.clone())
            .map_err(|e| IdentityError::Corrupt { path: ca_path.clone(), reason: e.to_string() })?;
        let roots = Arc::new(roots);

        let cert_path = dir.join(NODE_CERT_FILE);
        let key_path = dir.join(NODE_KEY_FILE);
        let cert_pem = fs::read(&cert_path).map_err(|e| io_err(&cert_path, e))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| IdentityError::Corrupt { path: cert_path.clone(), reason: e.to_string() })?;
        let key_pem = fs::read(&key_path).map_err(|e| io_err(&key_path, e))?;
        warn_if_key_readable(&key_path);
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| IdentityError::Corrupt { path: key_path.clone(), reason: e.to_string() })?;
        let PrivateKeyDer::Pkcs8(key) = key else {
            return Err(bad(format!("{NODE_KEY_FILE} is not a PKCS#8 key")));
        };
        let parsed = ParsedCertificate::try_from(&cert).map_err(|e| bad(format!("{NODE_CERT_FILE}: {e}")))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            bad(format!("{NODE_CERT_FILE} is not signed by {CA_CERT_FILE}, or has expired ({e})"))
        })?;
        let node_id = node_id_from_cert(&cert).map_err(|e| bad(format!("{NODE_CERT_FILE}: {e}")))?;
        let key_der = key.secret_pkcs8_der().to_vec();
        let node = NodeIdentity {
            endpoint_secret: EndpointSecret::derive(&key_der, node_id.as_bytes()),
            node_id,
            cert_chain: vec![cert],
            key_der: key_der.clone(),
            roots: roots.clone(),
        };
        // rustls refuses a key that does not belong to the certificate.
        node.server_config()
            .map_err(|e| bad(format!("{NODE_KEY_FILE} does not fit {NODE_CERT_FILE}: {e}")))?;
        Ok(ClusterIdentity {
            dir: dir.to_owned(),
            created: false,
            ca_cert,
            secret_der: key_der,
            issuer: None,
            roots,
            issued: Some(node),
        })
    }

    /// Issues a certificate for `node_id` and writes what a server needs into `out` (created if
    /// absent): `ca.pem`, `node.pem` and `node.key` (mode 0600). Never overwrites a file: an
    /// existing one is an error, and nothing is left half-written.
    pub fn issue_node_files(&self, node_id: &str, out: &Path) -> Result<(), IdentityError> {
        let (cert, key) = self.sign_node(node_id)?;
        fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
        let ca_pem =
            fs::read(self.dir.join(CA_CERT_FILE)).map_err(|e| io_err(&self.dir.join(CA_CERT_FILE), e))?;
        let files: [(&str, Vec<u8>, u32); 3] = [
            (NODE_KEY_FILE, key.serialize_pem().into_bytes(), 0o600),
            (NODE_CERT_FILE, cert.pem().into_bytes(), 0o644),
            (CA_CERT_FILE, ca_pem, 0o644),
        ];
        for (name, _, _) in &files {
            let path = out.join(name);
            if path.try_exists().map_err(|e| io_err(&path, e))? {
                return Err(io_err(&path, io::Error::new(io::ErrorKind::AlreadyExists, "exists already")));
            }
        }
        let mut written = Vec::new();
        for (name, bytes, mode) in files {
            let path = out.join(name);
            let result = (|| {
                let mut options = OpenOptions::new();
                options.write(true).create_new(true);
                set_mode(&mut options, mode);
                let mut f = options.open(&path)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })();
            if let Err(e) = result {
                for p in written {
                    let _ = fs::remove_file(p);
                }
                let _ = fs::remove_file(&path);
                return Err(io_err(&path, e));
            }
            written.push(path);
        }
        sync_dir(out);
        Ok(())
    }
}
