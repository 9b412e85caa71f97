//! Just enough DER to read two fields of a certificate: the DNS names of its subject
//! alternative names, and its subject common name.
//!
//! rustls verifies a name against a certificate but does not list the names, and a full X.509
//! parser is a large dependency for two fields. The walk below only reads; every length is
//! checked, so any input gives `None` or a result, never a panic. Callers confirm what they
//! read with webpki (`verify_server_name`, or a probe certificate verified against the CA), so
//! a mistake here cannot admit a wrong peer.

/// OID 2.5.29.17 (subjectAltName), DER-encoded content bytes.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
/// OID 2.5.4.3 (commonName).
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
/// `[0] EXPLICIT Version` in TBSCertificate.
const VERSION: u8 = 0xa0;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IA5String` (implicit, primitive) in GeneralName.
const DNS_NAME: u8 = 0x82;

/// Splits one tag-length-value off `input`: `(tag, value, rest)`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur in certificates
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((tag, value, rest))
}

/// Expects one element with `tag` at the start of `input`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match tlv(input)? {
        (t, value, rest) if t == tag => Some((value, rest)),
        _ => None,
    }
}

/// The DNS names of the subject alternative name extension of a DER certificate: empty if it
/// has none, `None` if the structure is malformed.
pub(crate) fn dns_names(cert: &[u8]) -> Option<Vec<&str>> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    let extensions = loop {
        if tbs.is_empty() {
            return Some(Vec::new());
        }
        let (tag, value, rest) = tlv(tbs)?;
        if tag == EXTENSIONS {
            break value;
        }
        tbs = rest;
    };
    let (mut extensions, _) = expect(extensions, SEQUENCE)?;
    let mut names = Vec::new();
    while !extensions.is_empty() {
        let (extension, rest) = expect(extensions, SEQUENCE)?;
        extensions = rest;
        let (oid, mut fields) = expect(extension, OID)?;
        if oid != SAN_OID {
            continue;
        }
        if let Some((BOOLEAN, _, rest)) = tlv(fields) {
            fields = rest; // `critical`
        }
        let (octets, _) = expect(fields, OCTET_STRING)?;
        let (mut general_names, _) = expect(octets, SEQUENCE)?;
        while !general_names.is_empty() {
            let (tag, value, rest) = tlv(general_names)?;
            general_names = rest;
            if tag == DNS_NAME {
                names.push(std::str::from_utf8(value).ok()?);
            }
        }
    }
    Some(names)
}

/// The first common name in the subject of a DER certificate, if any.
pub(crate) fn subject_common_name(cert: &[u8]) -> Option<&str> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    if let Some((VERSION, _, rest)) = tlv(tbs) {
        tbs = rest;
    }
    let (_serial, tbs) = expect(tbs, INTEGER)?;
    let (_signature, tbs) = expect(tbs, SEQUENCE)?;
    let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
    let (_validity, tbs) = expect(tbs, SEQUENCE)?;
    let (mut subject, _) = expect(tbs, SEQUENCE)?;
    while !subject.is_empty() {
        let (mut rdn, rest) = expect(subject, SET)?;
        subject = rest;
        while !rdn.is_empty() {
            let (attribute, rest) = expect(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = expect(attribute, OID)?;
            if oid == CN_OID {
                return match tlv(value)? {
                    (UTF8_STRING | PRINTABLE_STRING, text, _) => std::str::from_utf8(text).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rcgen_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![
            "abc.example".to_owned(),
            "127.0.0.1".to_owned(),
            "def.example".to_owned(),
        ])
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(dns_names(cert.der()).unwrap(), ["abc.example", "def.example"]);

        assert_eq!(subject_common_name(cert.der()), Some("rcgen self signed cert"));

        let mut bare = rcgen::CertificateParams::default();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        bare.distinguished_name.push(rcgen::DnType::OrganizationName, "org");
        bare.distinguished_name.push(rcgen::DnType::CommonName, "the name");
        let bare = bare.self_signed(&key).unwrap();
        assert_eq!(dns_names(bare.der()).unwrap(), Vec::<&str>::new());
        assert_eq!(subject_common_name(bare.der()), Some("the name"));
    }

    #[test]
    fn never_panics_on_truncations_and_bit_flips() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["abc.example".to_owned()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        for len in 0..der.len() {
            let _ = dns_names(&der[..len]);
            let _ = subject_common_name(&der[..len]);
        }
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut flipped = der.clone();
                flipped[i] ^= 1 << bit;
                let _ = dns_names(&flipped);
                let _ = subject_common_name(&flipped);
            }
        }
        assert_eq!(tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(tlv(&[0x30, 0x80]), None);
        assert_eq!(tlv(&[0x1f, 0x00]), None);
    }
}
