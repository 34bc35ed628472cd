//! TLS for sealpost clients (and the parts the relay shares): TLS 1.3 only, ALPN
//! `sealpost/1`, ring as the crypto provider; pins of a relay's certificate and the client's
//! ways to trust it: a pinned SHA-256 of the certificate's public key (SubjectPublicKeyInfo),
//! the older pin of the whole certificate, or CA roots. The relay's own certificate handling
//! (loading, generating, reloading) is in the relay's `tls` module.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration rejected: {0}")]
    Quic(String),
    /// A pin string is not 64 hex digits.
    #[error("certificate pin must be 64 hex digits (SHA-256), got {0:?}")]
    BadPin(String),
}

/// Maps an I/O error on `path` to [`TlsError::Io`].
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
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

/// The key pin of the end-entity certificate in the PEM file `cert`, read without the
/// private key: a client on the relay's machine pins the relay without reading its key file
/// (owner-only, and not the client's to read).
pub fn key_pin_of_file(cert: &Path) -> Result<[u8; 32], TlsError> {
    key_pin_from(&read_pem_chain(cert)?[0], cert)
}

/// [`key_pin_of`], naming the file the certificate came from when it does not parse.
pub fn key_pin_from(cert: &CertificateDer<'_>, file: &Path) -> Result<[u8; 32], TlsError> {
    key_pin_of(cert).map_err(|e| TlsError::Pem {
        path: file.to_owned(),
        what: format!("the first certificate does not parse: {e}"),
    })
}

/// The certificates of the PEM file `path`, end-entity first (at least one).
pub fn read_pem_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
    /// `None`: any certificate (its handshake signature is still checked).
    pin: Option<[u8; 32]>,
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
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = if self.key {
            key_pin_of(end_entity)?
        } else {
            pin_of(end_entity)
        };
        // The pin is a public value (a hash of public data), so a plain comparison is fine.
        if got == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            self.check
                .mismatch
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Err(rustls::Error::General(format!(
                "relay {} pin {} does not match the expected {}",
                if self.key { "key" } else { "certificate" },
                hex::encode(got),
                hex::encode(pin)
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

/// A client side that accepts any relay certificate (checking only that the handshake is
/// signed by the certificate's key). For a forwarding relay's connections to destination
/// relays: what it passes on is sealed to the destination's forwarding key, and the answer
/// is sealed under a key only that destination can derive, so TLS need not authenticate the
/// destination for the sender's sake (docs/FORWARDING.md).
pub fn client_crypto_any_key() -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier {
            pin: None,
            key: true,
            check: Arc::new(PinCheck::default()),
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![sealpost_core::ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))
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
    let pinned = |pin: Option<[u8; 32]>, key: bool| {
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
            .with_custom_certificate_verifier(pinned(Some(*pin), false))
            .with_no_client_auth(),
        Trust::KeyPin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(pinned(Some(*pin), true))
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
