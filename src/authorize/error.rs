//! What can stop a Phase 1 login, each with what the person should do about it. Messages name
//! Secrets, keys, URLs and client IDs, never a secret value, code or token.

use std::net::SocketAddr;

use crate::token::{ErrorClass, TokenError};

use super::redirect::CallbackError;

#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("--redirect-uri {uri:?} {problem}")]
    BadRedirectUri { uri: String, problem: String },
    #[error(
        "--redirect-uri {uri:?} is not a plain-http loopback address (127.0.0.1, [::1] or \
         localhost), so this program cannot receive the login answer itself: add --paste and \
         paste the address the browser ends up on"
    )]
    CannotListen { uri: String },
    #[error(
        "cannot listen on {addr} for the login answer: the port is already in use by another \
         program. Stop that program and run authorize again, or use --paste (headless mode), or \
         another redirect URI that Eagle Eye has whitelisted for your application (--redirect-uri)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr} for the login answer: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("auth URL {url:?} {problem}")]
    BadAuthUrl { url: String, problem: String },
    #[error(
        "the auth server refused the authorize request (HTTP {status}) before anyone logged in: \
         the redirect URI sent, {redirect_uri:?}, is not on the OAuth whitelist of client ID \
         {client_id:?} (or the client ID is unknown). The whitelist compares strings exactly: \
         http://127.0.0.1:3333, http://localhost:3333 and http://127.0.0.1:3333/ are three \
         different entries. Ask Eagle Eye Networks support to whitelist exactly {redirect_uri:?} \
         for this application, or pass an already whitelisted one with --redirect-uri"
    )]
    RedirectRefused {
        status: u16,
        redirect_uri: String,
        client_id: String,
    },
    #[error(
        "cannot reach the auth server at {url}: {detail}{}",
        tls_hint(.detail)
    )]
    AuthServerUnreachable { url: String, detail: String },
    #[error(transparent)]
    Callback(#[from] CallbackError),
    #[error(
        "no login answer reached {redirect_uri} within {waited}. If the browser showed an error \
         about the redirect URI, ask Eagle Eye Networks support to whitelist exactly \
         {redirect_uri:?}; if the browser runs on another machine, use --paste"
    )]
    NoAnswer {
        redirect_uri: String,
        waited: String,
    },
    #[error("reading the pasted address from standard input: {0}")]
    Paste(String),
    #[error("{}", exchange_message(.0))]
    Exchange(TokenError),
    #[error(
        "the token response holds no refresh token: Eagle Eye gives none to a public client \
         (an application without a client secret). Register a confidential application (with \
         a client secret) in the Eagle Eye Developer Portal and use its credentials. Nothing \
         was stored"
    )]
    NoRefreshToken,
    #[error("{0}")]
    Input(String),
    #[error(
        "you ({who}) may not {verbs} in namespace {namespace:?}, which authorize needs \
         before anyone logs in. Ask a cluster administrator for a Role granting that (or use a \
         kubeconfig context that has it, --context)"
    )]
    Forbidden {
        who: String,
        verbs: String,
        namespace: String,
    },
    // Only the API's status code and reason: the patch sent carries the tokens, and an
    // admission webhook could quote it back in its message.
    #[error("{what}: {reason}", reason = crate::secrets::kube_reason(error))]
    Kube { what: String, error: kube::Error },
}

fn tls_hint(detail: &str) -> &'static str {
    if detail.contains("TLS") || detail.contains("certificate") {
        " (a TLS-inspecting proxy needs its CA passed with --auth-ca-file)"
    } else {
        ""
    }
}

/// The code exchange failed: what that means for the person at the keyboard.
fn exchange_message(err: &TokenError) -> String {
    const CLIENT: &str = "the auth server refused the client ID or client secret: check them \
        (the client Secret, or EAGLE_EYE_CLIENT_ID / EAGLE_EYE_CLIENT_SECRET) and run authorize again";
    const SCOPE: &str = "the application is not allowed the requested scope (--scope)";
    const CODE: &str = "the authorization code was refused: it expired (codes live 5 minutes), \
        was already used, or was issued for another client or redirect URI. Run authorize again \
        and finish the login within 5 minutes";
    const BARE_401: &str = " (a bare 401 can also mean a wrong client ID or secret)";
    const CONFIG: &str =
        "check --auth-url, --scope and the client credentials, and run authorize again";
    const TRANSIENT: &str = "the auth server or the network failed; run authorize again (the \
        code may have been spent, so a new login is needed)";
    let hint = match (err.oauth_error(), err.status(), err.class()) {
        (Some("invalid_client" | "unauthorized_client"), _, _) => CLIENT.to_owned(),
        (Some("invalid_scope"), _, _) | (_, Some(403), _) => SCOPE.to_owned(),
        (None, Some(401), ErrorClass::Reauthorize) => format!("{CODE}{BARE_401}"),
        (_, _, ErrorClass::Reauthorize) => CODE.to_owned(),
        (_, _, ErrorClass::ClientConfig) => CONFIG.to_owned(),
        (
            _,
            _,
            ErrorClass::Transient | ErrorClass::OutcomeUnknown | ErrorClass::RefusedByConfig,
        ) => TRANSIENT.to_owned(),
    };
    format!("{err}: {hint}. Nothing was stored")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{OAuthErrorCode, Operation};

    fn status(code: u16, oauth: Option<&str>) -> AuthorizeError {
        AuthorizeError::Exchange(TokenError::Status {
            operation: Operation::ExchangeCode,
            status: code,
            error_code: oauth.and_then(OAuthErrorCode::parse),
            retry_after: None,
        })
    }

    #[test]
    fn a_refused_or_expired_code_asks_for_a_quicker_new_login() {
        for err in [status(400, Some("invalid_grant")), status(401, None)] {
            let text = err.to_string();
            assert!(text.contains("expired (codes live 5 minutes)"), "{text}");
            assert!(text.contains("Nothing was stored"), "{text}");
        }
    }

    #[test]
    fn wrong_client_credentials_point_at_the_client_secret() {
        for err in [
            status(401, Some("invalid_client")),
            status(400, Some("invalid_client")),
        ] {
            let text = err.to_string();
            assert!(text.contains("client ID or client secret"), "{text}");
        }
    }

    #[test]
    fn a_forbidden_scope_names_the_scope_flag() {
        let text = status(403, None).to_string();
        assert!(text.contains("--scope"), "{text}");
    }

    #[test]
    fn server_failures_say_to_try_again() {
        let text = status(503, None).to_string();
        assert!(text.contains("run authorize again"), "{text}");
    }

    #[test]
    fn tls_failures_mention_the_ca_flag() {
        let err = AuthorizeError::AuthServerUnreachable {
            url: "https://auth.example".into(),
            detail: "TLS certificate rejected".into(),
        };
        assert!(err.to_string().contains("--auth-ca-file"));
    }
}
