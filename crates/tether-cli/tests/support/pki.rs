//! Certificates for the tests over TLS, made with `rcgen` in a temporary
//! directory: a CA of their own and a server certificate it signed, for
//! `localhost` and `127.0.0.1`. Include with
//! `#[path = "support/pki.rs"] mod pki;`.

use std::path::PathBuf;

/// A CA and a server certificate signed by it, as PEM files (`ca.pem`,
/// `cert.pem`, `key.pem`) and as DER; the files live as long as this.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The server's certificate (DER).
    pub cert_der: Vec<u8>,
    /// The server's private key (PKCS#8 DER).
    pub key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own (the directory's): another test CA is another issuer.
        let name = dir.path().file_name().unwrap().to_string_lossy().into_owned();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("tether test CA {name}"));
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("cert.pem", cert.pem()),
            ("key.pem", key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki {
            dir,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// The CA's certificate (what a client trusts).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The server's private key.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}
