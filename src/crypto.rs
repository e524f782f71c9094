//! The one cryptography provider for TLS: ring, kube's own default. It is a fraction of
//! aws-lc's code, and the operator's binary is mapped almost whole, so its size is RSS
//! (docs/scale.md, sixth round).

/// Makes ring rustls's process-wide provider, which every reqwest client takes (reqwest is
/// built without one of its own). Call before building an HTTP client; calling it again does
/// nothing.
pub fn install() {
    // An error only says a provider is installed already: in this process, that is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
