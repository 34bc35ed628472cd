//! TLS for sealpost: TLS 1.3 only, ALPN `sealpost/1`, ring as the crypto provider; the relay's
//! certificate (generated on first start or given by the operator) and the client's ways to
//! trust it: a pinned SHA-256 of the certificate's public key (SubjectPublicKeyInfo), the
//! older pin of the whole certificate, or CA roots.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sealpost_core::invitation::RelayTrust;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS set-up failures, each naming the file or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("generating the self-signed certificate failed: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration rejected: {0}")]
    Quic(String),
    /// A pin string is not 64 hex digits.
    #[error("certificate pin must be 64 hex digits (SHA-256), got {0:?}")]
    BadPin(String),
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The ring crypto provider, shared by server and client.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a whole DER certificate: the pin of version 1 invitations and of `--pin`.
pub fn pin_of(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha256(cert.as_ref())
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo (the whole SEQUENCE, algorithm
/// identifier included, as in the certificate): the key pin of version 2 invitations. A
/// renewed certificate for the same key has the same key pin.
pub fn key_pin_of(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(sha256(parsed.subject_public_key_info().as_ref()))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The CA roots a client trusts for invitations that ask for CA trust: Mozilla's, as compiled
/// into this build by the `webpki-roots` crate (the same on every platform and container,
/// with no dependence on the system's certificate store).
pub fn default_roots() -> Arc<rustls::RootCertStore> {
    Arc::new(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
}

/// Parses a pin written as 64 hex digits (colons allowed between bytes).
pub fn parse_pin(s: &str) -> Result<[u8; 32], TlsError> {
    let clean: String = s.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&clean, &mut out).map_err(|_| TlsError::BadPin(s.to_owned()))?;
    Ok(out)
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

/// The key pin of the end-entity certificate in the PEM file `cert`, read without the
/// private key: a client on the relay's machine pins the relay without reading its key file
/// (owner-only, and not the client's to read).
pub fn key_pin_of_file(cert: &Path) -> Result<[u8; 32], TlsError> {
    key_pin_from(&read_pem_chain(cert)?[0], cert)
}

/// [`key_pin_of`], naming the file the certificate came from when it does not parse.
fn key_pin_from(cert: &CertificateDer<'_>, file: &Path) -> Result<[u8; 32], TlsError> {
    key_pin_of(cert).map_err(|e| TlsError::Pem {
        path: file.to_owned(),
        what: format!("the first certificate does not parse: {e}"),
    })
}

fn read_pem_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a PEM certificate file: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(chain)
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a PEM key file: {e}"),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_owned(),
            what: "no PRIVATE KEY block found".into(),
        })
}

/// Loads a certificate chain and its key, and checks that the key is the certificate's: the
/// key's public half must equal the end-entity certificate's SubjectPublicKeyInfo. Serving,
/// reloading and `check-config` all come through here, so a mismatched pair is refused at
/// each of them instead of being served to clients that cannot verify it.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
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
pub fn load_or_generate(dir: &Path) -> Result<(Identity, bool), TlsError> {
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
    .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, ck.cert.pem()).map_err(io_err(&cert_path))?;
    Ok((load_identity(&cert_path, &key_path)?, true))
}

/// Whether the generated pair (`cert.pem` and `key.pem` in `dir`) is there: `true` if both
/// are, `false` if neither is (the relay generates them), an error naming the missing half if
/// only one is. Generating then would overwrite the half that is left, and with it the pin
/// every invitation carries, so the start and `check-config` both refuse and say what to do.
pub fn generated_pair_present(dir: &Path) -> Result<bool, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let (missing, present) = match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok(true),
        (false, false) => return Ok(false),
        (true, false) => (key_path, cert_path),
        (false, true) => (cert_path, key_path),
    };
    Err(TlsError::Pem {
        path: missing,
        what: format!(
            "missing while {} exists; restore it, or remove both to have a new \
             certificate generated (which invalidates every invitation)",
            present.display()
        ),
    })
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

/// The server's certificate, replaceable while the relay runs (certificate rotation without
/// a restart): new handshakes use the new one, established connections keep theirs.
#[derive(Debug)]
pub struct CertSlot {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertSlot {
    /// A slot holding `identity`.
    pub fn new(identity: Identity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(Arc::new(certified(&identity)?)),
        }))
    }

    /// Replaces the certificate; an identity whose key does not load or does not belong to
    /// the certificate leaves the old one in use.
    pub fn replace(&self, identity: Identity) -> Result<(), TlsError> {
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
fn certified(identity: &Identity) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let (cert, key) = &identity.files;
    let mismatch = |why: String| TlsError::KeyMismatch {
        cert: cert.clone(),
        key: key.clone(),
        why,
    };
    let signer = provider()
        .key_provider
        .load_private_key(identity.key.clone_key())
        .map_err(|e| TlsError::Pem {
            path: key.clone(),
            what: format!("the private key does not load: {e}"),
        })?;
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
        Err(e) => Err(TlsError::Pem {
            path: cert.clone(),
            what: format!("the first certificate does not parse: {e}"),
        }),
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
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![sealpost_core::ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))
}

/// The server side: TLS 1.3 only, ALPN `sealpost/1`.
pub fn server_crypto(
    identity: Identity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    cfg.alpn_protocols = vec![sealpost_core::ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))
}

/// How a client decides to trust a relay.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Accept exactly the certificate whose SHA-256 is this (version 1 invitations, `--pin`).
    Pin([u8; 32]),
    /// Accept any certificate whose SubjectPublicKeyInfo has this SHA-256 ([`key_pin_of`]).
    KeyPin([u8; 32]),
    /// Accept certificates that chain to these roots and match the server name.
    Roots(Arc<rustls::RootCertStore>),
}

impl Trust {
    /// The trust an invitation or mailbox file asks for; `roots` are the CA roots used when
    /// it asks for CA trust ([`default_roots`] outside tests).
    pub fn from_relay_trust(
        trust: RelayTrust,
        roots: impl FnOnce() -> Arc<rustls::RootCertStore>,
    ) -> Self {
        match trust {
            RelayTrust::CertificatePin(p) => Self::Pin(p),
            RelayTrust::KeyPin(p) => Self::KeyPin(p),
            RelayTrust::CaForHost => Self::Roots(roots()),
        }
    }
}

/// Whether a pin check failed during a handshake, so that the client can report a changed
/// relay certificate as such rather than as a generic TLS failure (the handshake error that
/// reaches the client is only a TLS alert).
#[derive(Debug, Default)]
pub struct PinCheck {
    mismatch: std::sync::atomic::AtomicBool,
}

impl PinCheck {
    /// True once the relay presented a certificate the pin does not match.
    pub fn mismatched(&self) -> bool {
        self.mismatch.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Accepts one end-entity certificate by its SHA-256 or its key's, and checks the handshake
/// signature made with it, so a pinned relay is as authenticated as a CA-verified one.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    /// Pin the SubjectPublicKeyInfo rather than the whole certificate.
    key: bool,
    check: Arc<PinCheck>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = if self.key {
            key_pin_of(end_entity)?
        } else {
            pin_of(end_entity)
        };
        // The pin is a public value (a hash of public data), so a plain comparison is fine.
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            self.check
                .mismatch
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Err(rustls::Error::General(format!(
                "relay {} pin {} does not match the expected {}",
                if self.key { "key" } else { "certificate" },
                hex::encode(got),
                hex::encode(self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "sealpost speaks TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client side for `trust`.
pub fn client_crypto(trust: &Trust) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    Ok(client_crypto_checked(trust)?.0)
}

/// [`client_crypto`], and what its pin check found (never set for CA trust).
pub fn client_crypto_checked(
    trust: &Trust,
) -> Result<(quinn::crypto::rustls::QuicClientConfig, Arc<PinCheck>), TlsError> {
    let provider = provider();
    let check = Arc::new(PinCheck::default());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let pinned = |pin: [u8; 32], key: bool| {
        Arc::new(PinVerifier {
            pin,
            key,
            check: check.clone(),
            provider: provider.clone(),
        })
    };
    let mut cfg = match trust {
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(pinned(*pin, false))
            .with_no_client_auth(),
        Trust::KeyPin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(pinned(*pin, true))
            .with_no_client_auth(),
        Trust::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![sealpost_core::ALPN.to_vec()];
    let cfg = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok((cfg, check))
}
