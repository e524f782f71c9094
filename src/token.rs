//! Client for the Eagle Eye Networks OAuth2 token endpoint (`/oauth2/token`, `/oauth2/revoke`).
//!
//! It speaks HTTP and the vendor's JSON and knows nothing of Kubernetes. Every answer is
//! size-capped, time-boxed and validated before a [`TokenGrant`] is handed out, and no error
//! carries response text, tokens or secrets.

mod error;
mod grant;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use secrecy::SecretString;
use url::Url;

pub use error::{ErrorClass, OAuthErrorCode, Operation, TokenError};
pub use grant::{ApiBase, MAX_EXPIRES_IN, MAX_TOKEN_BYTES, TokenGrant};
pub use wire::MAX_RETRY_AFTER;

use grant::HostPattern;

/// The API hosts the vendor uses; the default allow-list.
pub const EAGLE_EYE_API_HOSTS: &str = "*.eagleeyenetworks.com";

/// Error answers are read only this far to find an RFC 6749 `error` code.
const ERROR_BODY_LIMIT: usize = 8 * 1024;

/// The application's OAuth2 client credentials. Debug shows the id, never the secret.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub id: String,
    pub secret: SecretString,
}

/// Settings of a [`TokenClient`].
#[derive(Debug, Clone)]
pub struct TokenClientOptions {
    /// Limit for a whole call: connect, send, and read the full answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Answers longer than this are refused without being read further.
    pub max_response_bytes: usize,
    /// Extra PEM CA certificates trusted besides the system roots (private or test CAs).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Hosts a token response may name as the API base: exact names or IPs, or `*.domain`
    /// for any name below `domain` (not `domain` itself). Empty allows any host.
    pub allowed_api_hosts: Vec<String>,
    /// Allow `http://` auth URLs (tests and sandboxes only); otherwise they are refused.
    pub allow_http: bool,
}

impl Default for TokenClientOptions {
    /// Production settings: 30 s per call, 10 s to connect, 64 KiB answers, https only,
    /// and API hosts limited to [`EAGLE_EYE_API_HOSTS`].
    fn default() -> Self {
        TokenClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            extra_ca_pem: None,
            allowed_api_hosts: vec![EAGLE_EYE_API_HOSTS.to_owned()],
            allow_http: false,
        }
    }
}

/// Calls the token endpoint. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    timeout: Duration,
    max_response_bytes: usize,
    allowed_api_hosts: Vec<HostPattern>,
    allow_http: bool,
}

impl TokenClient {
    pub fn new(options: TokenClientOptions) -> Result<Self, TokenError> {
        let config = |msg: String| TokenError::Config(msg);
        if options.timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(config("timeouts must be longer than zero".into()));
        }
        if options.max_response_bytes == 0 {
            return Err(config("max_response_bytes must be more than zero".into()));
        }
        let allowed_api_hosts = options
            .allowed_api_hosts
            .iter()
            .map(|p| {
                HostPattern::parse(p).ok_or_else(|| {
                    config(format!(
                        "allowed_api_hosts entry {p:?} is not a host, IP or *.domain pattern"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            // A redirect would re-send the credentials elsewhere; a moved endpoint is a
            // settings problem for a person to fix.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!options.allow_http)
            .user_agent(concat!("eagle-eye-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &options.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| config("extra_ca_pem is not a PEM certificate bundle".into()))?;
            if certs.is_empty() {
                return Err(config("extra_ca_pem holds no certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
        Ok(TokenClient {
            http,
            settings: Arc::new(Settings {
                timeout: options.timeout,
                max_response_bytes: options.max_response_bytes,
                allowed_api_hosts,
                allow_http: options.allow_http,
            }),
        })
    }

    /// Trades a refresh token for a new access token (and, when rotating, a new refresh
    /// token that replaces the one sent, which is then dead).
    pub async fn refresh(
        &self,
        auth_base: &Url,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let form = wire::refresh_form(scope, refresh_token);
        self.grant(Operation::Refresh, auth_base, creds, form, scope)
            .await
    }

    /// Trades an authorization code (Phase 1 login) for the first tokens. `redirect_uri`
    /// must be the exact string used in the authorize request.
    pub async fn exchange_code(
        &self,
        auth_base: &Url,
        creds: &ClientCredentials,
        code: &SecretString,
        redirect_uri: &str,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let form = wire::code_form(scope, code, redirect_uri);
        self.grant(Operation::ExchangeCode, auth_base, creds, form, scope)
            .await
    }

    /// Revokes a refresh token (and the access token issued from it).
    pub async fn revoke(
        &self,
        auth_base: &Url,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<(), TokenError> {
        let form = wire::revoke_form(refresh_token);
        self.call(Operation::Revoke, auth_base, "revoke", creds, form)
            .await
            .map(drop)
    }

    async fn grant(
        &self,
        operation: Operation,
        auth_base: &Url,
        creds: &ClientCredentials,
        form: String,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let body = self
            .call(operation, auth_base, "token", creds, form)
            .await?;
        grant::parse_grant(&body, scope, &self.settings.allowed_api_hosts).map_err(|m| {
            TokenError::MalformedResponse {
                operation,
                field: m.field,
                problem: m.problem,
                refresh_token: m.refresh_token,
            }
        })
    }

    /// POSTs `form` to `{auth_base}/oauth2/{leaf}` and returns a success answer's body.
    async fn call(
        &self,
        operation: Operation,
        auth_base: &Url,
        leaf: &str,
        creds: &ClientCredentials,
        form: String,
    ) -> Result<Vec<u8>, TokenError> {
        let url = wire::endpoint(auth_base, leaf, self.settings.allow_http)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let started = Instant::now();
        // reqwest's own timeout covers the body too; this outer one also bounds our
        // reading loop, whatever the transport does.
        let result = tokio::time::timeout(
            self.settings.timeout,
            self.send(operation, url, creds, form),
        )
        .await
        .unwrap_or(Err(TokenError::Timeout { operation }));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => {
                tracing::debug!(%operation, %host, elapsed_ms, "token endpoint call succeeded")
            }
            Err(err) => tracing::debug!(
                %operation, %host, elapsed_ms, reason = err.reason(), error = %err,
                "token endpoint call failed"
            ),
        }
        result
    }

    async fn send(
        &self,
        operation: Operation,
        url: Url,
        creds: &ClientCredentials,
        form: String,
    ) -> Result<Vec<u8>, TokenError> {
        let mut response = self
            .http
            .post(url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(AUTHORIZATION, wire::basic_auth(&creds.id, &creds.secret))
            .body(form)
            .send()
            .await
            .map_err(|e| TokenError::from_reqwest(operation, e))?;
        let status = response.status();
        if status.is_success() {
            let limit = self.settings.max_response_bytes;
            return match read_capped(&mut response, limit).await {
                Ok(Some(body)) => Ok(body),
                Ok(None) => Err(TokenError::ResponseTooLarge { operation, limit }),
                Err(e) => Err(TokenError::from_reqwest(operation, e)),
            };
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| wire::parse_retry_after(v, jiff::Timestamp::now()));
        // The body only serves to find an OAuth error code: any trouble reading it just
        // means there is none.
        let limit = ERROR_BODY_LIMIT.min(self.settings.max_response_bytes);
        let error_code = match read_capped(&mut response, limit).await {
            Ok(Some(body)) => OAuthErrorCode::from_body(&body),
            _ => None,
        };
        Err(TokenError::Status {
            operation,
            status: status.as_u16(),
            error_code,
            retry_after,
        })
    }
}

/// Reads the body chunk by chunk; `None` as soon as it would pass `limit` bytes.
async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// An error with its causes. Only for errors that carry no request data (a reqwest builder
/// error, before any URL or request exists).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_with_default_options_builds() {
        TokenClient::new(TokenClientOptions::default()).unwrap();
    }

    #[test]
    fn bad_allow_list_entries_are_config_errors() {
        let options = TokenClientOptions {
            allowed_api_hosts: vec!["https://api.eagleeyenetworks.com".into()],
            ..TokenClientOptions::default()
        };
        let err = TokenClient::new(options).unwrap_err();
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::ClientConfig, "Config")
        );
    }

    #[test]
    fn extra_ca_must_hold_certificates() {
        for pem in [b"not a pem".to_vec(), Vec::new()] {
            let options = TokenClientOptions {
                extra_ca_pem: Some(pem),
                ..TokenClientOptions::default()
            };
            assert!(matches!(
                TokenClient::new(options),
                Err(TokenError::Config(_))
            ));
        }
    }

    #[tokio::test]
    async fn http_auth_url_is_refused_before_any_request() {
        // Nothing listens on port 9: a request would fail with Connect, not Config.
        let client = TokenClient::new(TokenClientOptions::default()).unwrap();
        let creds = ClientCredentials {
            id: "id".into(),
            secret: SecretString::from("secret"),
        };
        let base = Url::parse("http://127.0.0.1:9").unwrap();
        let err = client
            .refresh(&base, &creds, &SecretString::from("rt"), "vms.all")
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Config(_)), "{err:?}");
        let err = client
            .revoke(&base, &creds, &SecretString::from("rt"))
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Config(_)), "{err:?}");
    }

    /// A plain-HTTP server that answers every connection with `head`, then streams `chunk`
    /// forever as a chunked body (or nothing more, when `chunk` is empty, leaving it hanging).
    async fn endless_server(head: &'static str, chunk: &'static [u8]) -> Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if chunk.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let frame =
                        [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                    // Ends when the client hangs up.
                    while socket.write_all(&frame).await.is_ok() {}
                });
            }
        });
        url
    }

    fn lax_client(timeout: Duration) -> TokenClient {
        TokenClient::new(TokenClientOptions {
            allow_http: true,
            timeout,
            max_response_bytes: 4096,
            ..TokenClientOptions::default()
        })
        .unwrap()
    }

    fn creds() -> ClientCredentials {
        ClientCredentials {
            id: "id".into(),
            secret: SecretString::from("secret"),
        }
    }

    #[tokio::test]
    async fn an_endless_body_without_length_is_cut_at_the_cap() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let base = endless_server(head, &[b'A'; 1000]).await;
        let err = lax_client(Duration::from_secs(10))
            .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ResponseTooLarge");
    }

    #[tokio::test]
    async fn a_body_that_stops_midway_times_out() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    content-length: 100\r\n\r\n{\"access_token\":";
        let base = endless_server(head, b"").await;
        let started = Instant::now();
        let err = lax_client(Duration::from_millis(500))
            .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "Timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn an_endless_error_body_still_yields_the_status() {
        let head = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 30\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let base = endless_server(head, &[b'x'; 1000]).await;
        let err = lax_client(Duration::from_secs(10))
            .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
            .await
            .unwrap_err();
        assert_eq!((err.status(), err.reason()), (Some(503), "ServerError"));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_transient_connect_error() {
        let options = TokenClientOptions {
            allow_http: true,
            ..TokenClientOptions::default()
        };
        let client = TokenClient::new(options).unwrap();
        let creds = ClientCredentials {
            id: "id".into(),
            secret: SecretString::from("secret"),
        };
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = client
            .refresh(&base, &creds, &SecretString::from("rt"), "vms.all")
            .await
            .unwrap_err();
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::Transient, "Connect")
        );
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
}
