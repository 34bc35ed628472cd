//! The relay's side of TLS: its certificate and key (generated on first start or given by
//! the operator, checked to belong together), reloadable while it runs, and the server
//! configuration (TLS 1.3 only, ALPN `sealpost/1`). Pins and client trust are in
//! `sealpost_client::tls`, shared with clients.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sealpost_client::tls::{
    TlsError, io_err, key_pin_from, key_pin_of, pin_of, provider, read_pem_chain, write_private,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures with the relay's own certificate and key, each naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or parsing a file, or a configuration rustls or quinn refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Certificate generation failed.
    #[error("generating the self-signed certificate failed: {0}")]
    Generate(String),
    /// The private key is not the one the certificate was issued for: a relay serving this
    /// pair would report ready and fail every handshake (clients see a bad signature).
    #[error(
        "{key} is not the private key of the certificate in {cert} ({why}); clients could not \
         complete a handshake with this pair: give the key that was issued with this certificate"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What the check found.
        why: String,
    },
}

impl From<rustls::Error> for CertError {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(TlsError::Config(e))
    }
}

/// A PEM file that holds nothing usable.
fn pem(path: &Path, what: String) -> CertError {
    CertError::Tls(TlsError::Pem {
        path: path.to_owned(),
        what,
    })
}

/// A certificate chain and its private key, checked to belong together.
pub struct Identity {
    /// End-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The files it was read from, for error messages.
    files: (PathBuf, PathBuf),
}

impl Identity {
    /// The pin of the whole end-entity certificate.
    pub fn pin(&self) -> [u8; 32] {
        pin_of(&self.chain[0])
    }

    /// The key pin of the end-entity certificate (it parsed when the identity was loaded).
    pub fn key_pin(&self) -> Result<[u8; 32], TlsError> {
        key_pin_from(&self.chain[0], &self.files.0)
    }
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| pem(path, format!("not a PEM key file: {e}")))?
        .ok_or_else(|| pem(path, "no PRIVATE KEY block found".into()))
}

/// Loads a certificate chain and its key, and checks that the key is the certificate's: the
/// key's public half must equal the end-entity certificate's SubjectPublicKeyInfo. Serving,
/// reloading and `check-config` all come through here, so a mismatched pair is refused at
/// each of them instead of being served to clients that cannot verify it.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, CertError> {
    let identity = Identity {
        chain: read_pem_chain(cert)?,
        key: read_pem_key(key)?,
        files: (cert.to_owned(), key.to_owned()),
    };
    certified(&identity)?;
    Ok(identity)
}

/// Loads the self-signed identity kept in `dir`, generating it on first use.
/// Returns the identity and whether it was generated now.
pub fn load_or_generate(dir: &Path) -> Result<(Identity, bool), CertError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if generated_pair_present(dir)? {
        return Ok((load_identity(&cert_path, &key_path)?, false));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_owned(),
        "sealpost-relay".to_owned(),
    ])
    .map_err(|e| CertError::Generate(e.to_string()))?;
    write_private(&key_path, ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, ck.cert.pem()).map_err(io_err(&cert_path))?;
    Ok((load_identity(&cert_path, &key_path)?, true))
}

/// Whether the generated pair (`cert.pem` and `key.pem` in `dir`) is there: `true` if both
/// are, `false` if neither is (the relay generates them), an error naming the missing half if
/// only one is. Generating then would overwrite the half that is left, and with it the pin
/// every invitation carries, so the start and `check-config` both refuse and say what to do.
pub fn generated_pair_present(dir: &Path) -> Result<bool, CertError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let (missing, present) = match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok(true),
        (false, false) => return Ok(false),
        (true, false) => (key_path, cert_path),
        (false, true) => (cert_path, key_path),
    };
    Err(pem(
        &missing,
        format!(
            "missing while {} exists; restore it, or remove both to have a new \
             certificate generated (which invalidates every invitation)",
            present.display()
        ),
    ))
}

/// The server's certificate, replaceable while the relay runs (certificate rotation without
/// a restart): new handshakes use the new one, established connections keep theirs.
#[derive(Debug)]
pub struct CertSlot {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertSlot {
    /// A slot holding `identity`.
    pub fn new(identity: Identity) -> Result<Arc<Self>, CertError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(Arc::new(certified(&identity)?)),
        }))
    }

    /// Replaces the certificate; an identity whose key does not load or does not belong to
    /// the certificate leaves the old one in use.
    pub fn replace(&self, identity: Identity) -> Result<(), CertError> {
        let new = Arc::new(certified(&identity)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The pin of the certificate in use.
    pub fn pin(&self) -> [u8; 32] {
        pin_of(&self.current.read().unwrap_or_else(|p| p.into_inner()).cert[0])
    }

    /// The key pin of the certificate in use.
    pub fn key_pin(&self) -> Result<[u8; 32], TlsError> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        key_pin_of(&current.cert[0]).map_err(TlsError::Config)
    }
}

/// The signing key for `identity`, refused unless it is the end-entity certificate's key.
fn certified(identity: &Identity) -> Result<rustls::sign::CertifiedKey, CertError> {
    let (cert, key) = &identity.files;
    let mismatch = |why: String| CertError::KeyMismatch {
        cert: cert.clone(),
        key: key.clone(),
        why,
    };
    let signer = provider()
        .key_provider
        .load_private_key(identity.key.clone_key())
        .map_err(|e| pem(key, format!("the private key does not load: {e}")))?;
    let ck = rustls::sign::CertifiedKey::new(identity.chain.clone(), signer);
    // rustls compares the key's SubjectPublicKeyInfo with the certificate's. "Unknown" (a key
    // type that cannot state its public half) is refused too: ring's keys all can, and a
    // pair that cannot be checked is not one to serve silently.
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(
            mismatch("the certificate names a different public key".into()),
        ),
        Err(rustls::Error::InconsistentKeys(_)) => Err(mismatch(
            "the key's public half cannot be determined".into(),
        )),
        Err(e) => Err(pem(
            cert,
            format!("the first certificate does not parse: {e}"),
        )),
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The server side: TLS 1.3 only, ALPN `sealpost/1`, the certificate from `slot`.
pub fn server_crypto_reloadable(
    slot: Arc<CertSlot>,
) -> Result<quinn::crypto::rustls::QuicServerConfig, CertError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![sealpost_core::ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| CertError::Tls(TlsError::Quic(e.to_string())))
}

/// The server side: TLS 1.3 only, ALPN `sealpost/1`.
pub fn server_crypto(
    identity: Identity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, CertError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    cfg.alpn_protocols = vec![sealpost_core::ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| CertError::Tls(TlsError::Quic(e.to_string())))
}
