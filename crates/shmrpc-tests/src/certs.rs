//! Certificates made in memory for the TLS tests: a CA, and servers and clients it signs
//! (valid, or expired). Every test makes its own, so no key is shared between tests and
//! none is ever written to disk.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

/// A certificate authority: its own certificate (to trust) and the key it signs with.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM): what a peer trusts.
    pub pem: String,
}

/// Whether a certificate is valid now or expired long ago.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 1975 to 4096 (rcgen's defaults).
    Valid,
    /// Valid only during the year 2000.
    Expired,
}

impl Ca {
    /// A new CA named `name`, with a fresh key.
    ///
    /// # Panics
    /// If rcgen cannot make the key or the certificate (a bug of this helper).
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A certificate signed by this CA for `names` (DNS names or IP addresses), usable by a
    /// server and by a client.
    ///
    /// # Panics
    /// If rcgen cannot make the key or the certificate.
    pub fn issue(&self, names: &[&str], validity: Validity) -> Identity {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_pem_and_differ_between_cas() {
        let (a, b) = (Ca::new("a"), Ca::new("b"));
        assert!(
            a.pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{}",
            a.pem
        );
        assert_ne!(a.pem, b.pem);
        let id = a.issue(&["localhost"], Validity::Valid);
        assert!(id.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(id.key_pem.contains("PRIVATE KEY"));
        assert_ne!(
            id.cert_pem,
            a.issue(&["localhost"], Validity::Expired).cert_pem
        );
    }
}
