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
    const UNKNOWN: &str = "the auth server may have spent the code and issued the login, but \
        its answer was lost on the way: log in again (run authorize again; a code works only \
        once). If it keeps happening, look at what sits between here and the auth server (a \
        proxy or firewall cutting connections, a slow link)";
    let hint = match (err.oauth_error(), err.status(), err.class()) {
        (Some("invalid_client" | "unauthorized_client"), _, _) => CLIENT.to_owned(),
        (Some("invalid_scope"), _, _) | (_, Some(403), _) => SCOPE.to_owned(),
        (None, Some(401), ErrorClass::Reauthorize) => format!("{CODE}{BARE_401}"),
        (_, _, ErrorClass::Reauthorize) => CODE.to_owned(),
        (_, _, ErrorClass::ClientConfig) => CONFIG.to_owned(),
        (_, _, ErrorClass::Transient) => TRANSIENT.to_owned(),
        (_, _, ErrorClass::OutcomeUnknown) => UNKNOWN.to_owned(),
        (_, _, ErrorClass::RefusedByConfig) => format!(
            "if that host is right for this Eagle Eye account, add it to --allowed-api-hosts \
             (EAGLE_EYE_ALLOWED_API_HOSTS) here and in the operator's settings (it checks every \
             answer against its own list), and run authorize again (a new login is needed); \
             {NOT_EAGLE_EYE}"
        ),
    };
    format!("{err}: {hint}. Nothing was stored")
}

/// The other reading of an answer naming an API host outside the allowed ones.
const NOT_EAGLE_EYE: &str = "if it is not, the answer did not come from Eagle Eye (a \
    misrouted or spoofed response): find out what answers for the auth URL";

/// The login was stored from an answer that was otherwise unusable (`err` carried its
/// refresh token): what was wrong, and what it means for the credential. Never the token.
pub(super) fn stored_from_unusable_answer(err: &TokenError) -> String {
    let consequence = match err.class() {
        ErrorClass::RefusedByConfig => format!(
            "The operator checks answers against its own --allowed-api-hosts \
             (EAGLE_EYE_ALLOWED_API_HOSTS): unless they allow that host, it refuses them the \
             same way and stops refreshing this credential (its status says so). If that host \
             is right for this Eagle Eye account, add it there within 14 days (an unused \
             refresh token dies); {NOT_EAGLE_EYE}"
        ),
        ErrorClass::OutcomeUnknown => "The answer broke off after the refresh token; the \
            operator will refresh it to get the access token and API host it needs"
            .to_owned(),
        _ => "The operator will refresh it; should the auth server keep answering like this \
            (a proxy altering answers, a server fault), its refreshes fail the same way and the \
            credential's status says so"
            .to_owned(),
    };
    format!(
        "the login was stored, but the auth server's answer was unusable: {err}. Do not log in \
         again: the refresh token it carried is the one stored. {consequence}"
    )
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
    fn a_lost_answer_says_the_code_may_be_spent_and_to_log_in_again() {
        let err = AuthorizeError::Exchange(TokenError::OutcomeUnknown {
            operation: Operation::ExchangeCode,
            detail: "no answer came in time",
            refresh_token: None,
        });
        let text = err.to_string();
        assert!(text.contains("may have spent the code"), "{text}");
        assert!(text.contains("log in again"), "{text}");
        assert!(text.contains("Nothing was stored"), "{text}");
    }

    #[test]
    fn a_disallowed_api_host_points_at_the_allowed_hosts_of_both_command_and_operator() {
        let err = AuthorizeError::Exchange(TokenError::ApiHostNotAllowed {
            operation: Operation::ExchangeCode,
            host: "api.c099.eagleeyenetworks.com".into(),
            refresh_token: None,
        });
        let text = err.to_string();
        assert!(text.contains("\"api.c099.eagleeyenetworks.com\""), "{text}");
        assert!(text.contains("--allowed-api-hosts"), "{text}");
        assert!(text.contains("the operator's settings"), "{text}");
        assert!(text.contains("spoofed"), "{text}");
        assert!(text.contains("Nothing was stored"), "{text}");
    }

    #[test]
    fn a_stored_login_from_an_unusable_answer_says_so_without_the_token() {
        let rt = || Some(secrecy::SecretString::from("n3w-t0ken"));
        let op = Operation::ExchangeCode;
        for (err, says) in [
            (
                TokenError::ResponseTooLarge {
                    operation: op,
                    limit: 65536,
                    refresh_token: rt(),
                },
                "exceeds 65536 bytes",
            ),
            (
                TokenError::MalformedResponse {
                    operation: op,
                    field: "body",
                    problem: "is not JSON",
                    refresh_token: rt(),
                },
                "the operator will refresh it",
            ),
            (
                TokenError::ApiHostNotAllowed {
                    operation: op,
                    host: "api.foreign.example".into(),
                    refresh_token: rt(),
                },
                "--allowed-api-hosts",
            ),
            (
                TokenError::OutcomeUnknown {
                    operation: op,
                    detail: "the connection closed before the answer was complete",
                    refresh_token: rt(),
                },
                "broke off after the refresh token",
            ),
        ] {
            let text = stored_from_unusable_answer(&err);
            assert!(text.starts_with("the login was stored"), "{text}");
            assert!(text.contains("Do not log in again"), "{text}");
            assert!(text.to_lowercase().contains(says), "{text}");
            assert!(!text.contains("Nothing was stored"), "{text}");
            assert!(!text.contains("n3w-t0ken"), "{text}");
        }
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
