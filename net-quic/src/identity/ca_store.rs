//! The cluster CA's files: created once, crash-safely and race-free (the first process to link
//! the key owns the CA), and read back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::{CA_CERT_FILE, CA_KEY_FILE, CA_NAME_PREFIX, IdentityError};

/// The CA's parameters: a function of its common name only, so a reloaded CA is rebuilt from
/// the stored name and key, and minted certificates name the stored subject as their issuer.
pub(super) fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // Validity: rcgen's default (1975 to 4096). The CA lives as long as the cluster; nodes'
    // certificates carry real validity periods.
    params
}

/// Generates a CA and tries to publish it in `dir`. Returns whether this call won (`false`:
/// another process published first); the caller loads whatever is there.
pub(super) fn create_ca(dir: &Path) -> Result<bool, IdentityError> {
    let key = KeyPair::generate()?;
    // The cluster id: 8 bytes of the new public key (the x coordinate is random).
    let cluster_id: String =
        key.public_key_raw().iter().skip(1).take(8).map(|b| format!("{b:02x}")).collect();
    let cert = ca_params(&format!("{CA_NAME_PREFIX} {cluster_id}")).self_signed(&key)?;
    let key_tmp = TempFile::write(dir, CA_KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
    let cert_tmp = TempFile::write(dir, CA_CERT_FILE, cert.pem().as_bytes(), 0o644)?;
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    // The key is the commit point: whoever links it first owns the CA. `hard_link` fails
    // rather than overwrite, so a published file is never replaced or seen half-written.
    match fs::hard_link(&key_tmp.path, &key_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err(&key_path, e)),
    }
    match fs::hard_link(&cert_tmp.path, &cert_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Someone outside this protocol wrote a lone ca.pem meanwhile: withdraw our key so
            // the directory is as we found it, and let loading report the half-present CA.
            let _ = fs::remove_file(&key_path);
            return Ok(false);
        }
        Err(e) => return Err(io_err(&cert_path, e)),
    }
    sync_dir(dir);
    tracing::info!(dir = %dir.display(), "created a new cluster CA");
    Ok(true)
}

/// A temporary file in the cluster directory, removed on drop (after it has been linked).
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<TempFile, IdentityError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let unique =
            format!(".{name}.tmp-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = dir.join(unique);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        set_mode(&mut options, mode);
        let mut file = options.open(&path).map_err(|e| io_err(&path, e))?;
        let temp = TempFile { path };
        file.write_all(contents).map_err(|e| io_err(&temp.path, e))?;
        file.sync_all().map_err(|e| io_err(&temp.path, e))?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
pub(super) fn set_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
pub(super) fn set_mode(_options: &mut OpenOptions, _mode: u32) {}

#[cfg(unix)]
pub(super) fn warn_if_key_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "cluster CA key is readable by other users");
    }
}

#[cfg(not(unix))]
pub(super) fn warn_if_key_readable(_path: &Path) {}

/// Makes the new directory entries durable; best effort (not every platform can open a
/// directory), since losing them in a crash only means a new CA on the next start.
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(super) fn io_err(path: &Path, source: io::Error) -> IdentityError {
    IdentityError::Io { path: path.to_owned(), source }
}
