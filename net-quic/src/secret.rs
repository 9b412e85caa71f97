//! The per-node endpoint secret behind fast restart detection.
//!
//! A QUIC peer that restarts loses its connections; the other side learns of it at once only
//! if the restarted endpoint answers stray packets with a *stateless reset* that the other side
//! accepts. That needs the same stateless-reset key and connection-id generator key before and
//! after the restart (quinn picks both at random by default, so a restart is noticed only at
//! the idle timeout). Both keys are derived here from one 32-byte secret with HKDF-SHA256,
//! computed by the ring provider through rustls, so no other crypto library is involved.

use std::sync::Arc;

use rustls::crypto::tls13::{Hkdf, OkmBlock};

/// A 32-byte secret from which an endpoint derives its stateless-reset and connection-id keys.
/// Keep it stable across restarts of one node and distinct between nodes; see
/// [`ClusterIdentity::endpoint_secret`](crate::ClusterIdentity::endpoint_secret).
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecret([u8; 32]);

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointSecret(..)")
    }
}

const SALT: &[u8] = b"cmud-kv endpoint secret v1";

fn hkdf() -> &'static dyn Hkdf {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.hkdf_provider,
        // The constant is a TLS 1.3 suite by definition; this arm only satisfies the match.
        #[allow(unreachable_patterns)]
        _ => unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    }
}

fn expand(ikm: &[u8], info: &[u8]) -> OkmBlock {
    hkdf().extract_from_secret(Some(SALT), ikm).expand_block(&[info])
}

impl EndpointSecret {
    /// A secret from raw bytes (for example read from a node's data directory).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EndpointSecret(bytes)
    }

    /// The 32 bytes.
    pub(crate) fn into_bytes(self) -> [u8; 32] {
        self.0
    }

    /// HKDF-SHA256 of `ikm` with a fixed salt and `label` as info.
    pub(crate) fn derive(ikm: &[u8], label: &[u8]) -> Self {
        let okm = expand(ikm, label);
        let mut out = [0u8; 32];
        // SHA-256 output is exactly 32 bytes.
        out.copy_from_slice(&okm.as_ref()[..32]);
        EndpointSecret(out)
    }

    /// The stateless-reset key for `quinn::EndpointConfig::new`.
    pub(crate) fn reset_key(&self) -> Arc<dyn quinn::crypto::HmacKey> {
        Arc::new(ResetKey { key: expand(&self.0, b"quic stateless reset key"), hkdf: hkdf() })
    }

    /// The key of `quinn_proto::HashedConnectionIdGenerator::from_key`.
    pub(crate) fn cid_key(&self) -> u64 {
        let okm = expand(&self.0, b"quic connection id key");
        let mut word = [0u8; 8];
        word.copy_from_slice(&okm.as_ref()[..8]);
        u64::from_le_bytes(word)
    }
}

/// HMAC-SHA256 keyed by an HKDF output block, in the shape quinn wants for reset tokens.
struct ResetKey {
    key: OkmBlock,
    hkdf: &'static dyn Hkdf,
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let tag = tag.as_ref();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let tag = tag.as_ref();
        // Compare without an early exit, so timing does not reveal the matching prefix.
        let diff = tag.iter().zip(signature).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 && tag.len() == signature.len() { Ok(()) } else { Err(quinn::crypto::CryptoError) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_label_separated() {
        let a = EndpointSecret::derive(b"ca key", b"node-a");
        assert_eq!(a, EndpointSecret::derive(b"ca key", b"node-a"));
        assert_ne!(a, EndpointSecret::derive(b"ca key", b"node-b"));
        assert_ne!(a, EndpointSecret::derive(b"other key", b"node-a"));
        assert_eq!(a.cid_key(), a.clone().cid_key());
        assert_eq!(format!("{a:?}"), "EndpointSecret(..)");
    }

    #[test]
    fn reset_key_signs_and_verifies() {
        let key = EndpointSecret::from_bytes([7; 32]).reset_key();
        let mut sig = vec![0; key.signature_len()];
        key.sign(b"connection id", &mut sig);
        assert!(key.verify(b"connection id", &sig).is_ok());
        assert!(key.verify(b"connection iD", &sig).is_err());
        assert!(key.verify(b"connection id", &sig[..16]).is_err());
        let mut other = vec![0; 32];
        EndpointSecret::from_bytes([8; 32]).reset_key().sign(b"connection id", &mut other);
        assert_ne!(sig, other);
    }
}
