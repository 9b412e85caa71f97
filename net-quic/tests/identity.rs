//! The cluster CA on disk: created once, reused, safe under concurrent starts, clear errors
//! when broken; node certificates that name their node.

mod common;

use std::sync::{Arc, Barrier};

use common::temp_dir;
use net_quic::{CA_CERT_FILE, CA_KEY_FILE, ClusterIdentity, IdentityError, node_id_from_cert};

#[test]
fn ca_is_created_once_and_reused() {
    let dir = temp_dir("ca-reuse");
    let nested = dir.path().join("cluster");
    let first = ClusterIdentity::load_or_create(&nested).unwrap();
    assert!(first.created(), "this call made the CA");
    let pem = std::fs::read(nested.join(CA_CERT_FILE)).unwrap();
    let key = std::fs::read(nested.join(CA_KEY_FILE)).unwrap();

    let second = ClusterIdentity::load_or_create(&nested).unwrap();
    assert!(!second.created(), "this one found it");
    assert_eq!(first.ca_cert_der(), second.ca_cert_der());
    assert_eq!(std::fs::read(nested.join(CA_CERT_FILE)).unwrap(), pem);
    assert_eq!(std::fs::read(nested.join(CA_KEY_FILE)).unwrap(), key);
    assert_eq!(
        first.endpoint_secret("127.0.0.1:6000"),
        second.endpoint_secret("127.0.0.1:6000"),
        "endpoint secrets survive a restart"
    );
    assert_ne!(first.endpoint_secret("127.0.0.1:6000"), second.endpoint_secret("127.0.0.1:6001"));

    // No temporary files are left behind.
    let mut names: Vec<_> =
        std::fs::read_dir(&nested).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [CA_KEY_FILE, CA_CERT_FILE]);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(nested.join(CA_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    }
}

#[test]
fn an_existing_empty_directory_gets_a_ca() {
    let dir = temp_dir("ca-empty");
    assert!(dir.path().is_dir());
    let created = ClusterIdentity::load_or_create(dir.path()).unwrap();
    let loaded = ClusterIdentity::load(dir.path()).unwrap();
    assert_eq!(created.ca_cert_der(), loaded.ca_cert_der());
}

#[test]
fn concurrent_load_or_create_ends_with_one_ca() {
    for round in 0..3 {
        let dir = temp_dir(&format!("ca-race-{round}"));
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let barrier = barrier.clone();
                let path = dir.path().to_owned();
                std::thread::spawn(move || {
                    barrier.wait();
                    ClusterIdentity::load_or_create(&path).unwrap()
                })
            })
            .collect();
        let cas: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let on_disk = ClusterIdentity::load(dir.path()).unwrap();
        for ca in &cas {
            assert_eq!(ca.ca_cert_der(), on_disk.ca_cert_der());
        }
        assert_eq!(cas.iter().filter(|ca| ca.created()).count(), 1, "exactly one creator");
        // Every node's certificate verifies against the one CA: mint from each, check names.
        for (i, ca) in cas.iter().enumerate() {
            let node = ca.mint_node(&format!("{i}")).unwrap();
            assert_eq!(node_id_from_cert(node.cert_der()).unwrap(), format!("{i}"));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary files left");
    }
}

#[test]
fn half_present_ca_is_a_clear_error() {
    let dir = temp_dir("ca-half");
    ClusterIdentity::load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
    let err = ClusterIdentity::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::HalfPresent { present: "ca.key", missing: "ca.pem", .. }), "{err}");
    assert!(err.to_string().contains("half-present"), "{err}");
    // Nothing was replaced.
    assert!(!dir.path().join(CA_CERT_FILE).exists());
}

#[test]
fn corrupt_or_mismatched_ca_is_a_clear_error() {
    let dir = temp_dir("ca-corrupt");
    let other = temp_dir("ca-other");
    ClusterIdentity::load_or_create(dir.path()).unwrap();
    ClusterIdentity::load_or_create(other.path()).unwrap();
    let good_pem = std::fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
    let good_key = std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap();

    std::fs::write(dir.path().join(CA_CERT_FILE), b"not a certificate").unwrap();
    let err = ClusterIdentity::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(&err, IdentityError::Corrupt { path, .. } if path.ends_with(CA_CERT_FILE)), "{err}");

    std::fs::write(dir.path().join(CA_CERT_FILE), &good_pem).unwrap();
    std::fs::write(dir.path().join(CA_KEY_FILE), &good_key[..good_key.len() / 2]).unwrap();
    let err = ClusterIdentity::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(&err, IdentityError::Corrupt { path, .. } if path.ends_with(CA_KEY_FILE)), "{err}");

    // A key from another cluster: parses, but signs certificates the CA does not vouch for.
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    let err = ClusterIdentity::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Unusable { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    std::fs::write(dir.path().join(CA_KEY_FILE), &good_key).unwrap();
    ClusterIdentity::load_or_create(dir.path()).unwrap();
}

#[test]
fn node_certificates_name_their_node() {
    let dir = temp_dir("ca-mint");
    let ca = ClusterIdentity::load_or_create(dir.path()).unwrap();
    let node = ca.mint_node("1a2b3c4d5e6f").unwrap();
    assert_eq!(node.node_id(), "1a2b3c4d5e6f");
    assert_eq!(node_id_from_cert(node.cert_der()).unwrap(), "1a2b3c4d5e6f");
    // Fresh keys every time.
    assert_ne!(ca.mint_node("1a2b3c4d5e6f").unwrap().cert_der(), node.cert_der());
    for bad in ["", "1A2B", "a.b", "*", "zz", &"a".repeat(64)] {
        assert!(matches!(ca.mint_node(bad), Err(IdentityError::InvalidNodeId(_))), "{bad:?}");
    }
    // The CA certificate itself names no node.
    assert!(node_id_from_cert(ca.ca_cert_der()).is_err());
    node.server_config().unwrap();
    node.client_config().unwrap();
}

/// A directory from `issue_node_files` (no CA key) proves its one node, mints no other, and
/// is refused when its certificate is from another CA or its key is not the certificate's.
#[test]
fn an_issued_node_directory_proves_its_node_and_nothing_else() {
    use net_quic::{NODE_KEY_FILE, issued_node_id};
    let dir = temp_dir("issued");
    let ca = ClusterIdentity::load_or_create(&dir.path().join("ca")).unwrap();
    let out = dir.path().join("node");
    ca.issue_node_files("00000000000b", &out).unwrap();
    assert!(!out.join(CA_KEY_FILE).exists());
    assert_eq!(issued_node_id(&out).unwrap().as_deref(), Some("00000000000b"));
    let node = ClusterIdentity::load_or_create(&out).unwrap();
    assert!(!node.created());
    assert_eq!(node.issued_node(), Some("00000000000b"));
    assert_eq!(node.ca_cert_der(), ca.ca_cert_der(), "the same trust anchor");
    let me = node.mint_node("00000000000b").unwrap();
    assert_eq!(node_id_from_cert(me.cert_der()).unwrap(), "00000000000b");
    assert!(matches!(node.mint_node("00000000000c"), Err(IdentityError::NoCaKey { .. })));
    assert_eq!(
        ClusterIdentity::load_or_create(&out).unwrap().endpoint_secret("x"),
        node.endpoint_secret("x"),
        "stable across restarts"
    );
    // Files are never overwritten.
    assert!(ca.issue_node_files("00000000000d", &out).is_err());
    assert_eq!(issued_node_id(&out).unwrap().as_deref(), Some("00000000000b"));

    // A certificate of another cluster's CA beside this CA certificate: refused.
    let other = ClusterIdentity::load_or_create(&dir.path().join("other")).unwrap();
    let foreign = dir.path().join("foreign");
    other.issue_node_files("00000000000e", &foreign).unwrap();
    std::fs::copy(out.join(CA_CERT_FILE), foreign.join(CA_CERT_FILE)).unwrap();
    let err = ClusterIdentity::load_or_create(&foreign).unwrap_err();
    assert!(matches!(err, IdentityError::NodeCert { .. }), "{err}");
    // A key that is not the certificate's: refused.
    let mixed = dir.path().join("mixed");
    ca.issue_node_files("00000000000f", &mixed).unwrap();
    std::fs::remove_file(mixed.join(NODE_KEY_FILE)).unwrap();
    std::fs::copy(out.join(NODE_KEY_FILE), mixed.join(NODE_KEY_FILE)).unwrap();
    let err = ClusterIdentity::load_or_create(&mixed).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}
