//! TLS for the stand-in: a CA generated per instance signs a server certificate for
//! `localhost` and the address it listens on (`127.0.0.1`, or the node's host address that
//! pods reach), so a test trusts exactly this stand-in and nothing else.
//! Crypto is aws-lc-rs, chosen explicitly, so no process-wide rustls provider is needed.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The server side of TLS plus the CA certificate clients must trust.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub ca_pem: String,
}

/// Generates a fresh CA and server certificate and the rustls configuration serving them.
pub fn generate(ip: Ipv4Addr) -> io::Result<Tls> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(io::Error::other)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "eagle-eye-operator stand-in test CA");
    let ca_key = KeyPair::generate().map_err(io::Error::other)?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(io::Error::other)?;

    let mut params =
        CertificateParams::new(vec!["localhost".to_owned()]).map_err(io::Error::other)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(io::Error::other)?;
    let cert = params.signed_by(&key, &ca).map_err(io::Error::other)?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone(), ca.der().clone()], key_der)
        .map_err(io::Error::other)?;
    // The accept loop speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem: ca.pem(),
    })
}
