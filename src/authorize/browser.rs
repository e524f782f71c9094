//! The browser's part: the authorize request tried once beforehand (so that a redirect URI
//! missing from the whitelist is reported here, not as a page in a browser the program
//! cannot see), and opening the URL where a desktop browser is available.

use std::process::{Command, Stdio};
use std::time::Duration;

use url::Url;

use crate::token::error_chain;

use super::error::AuthorizeError;

/// Sends the authorize request without following its redirect. The auth server checks the
/// client ID and redirect URI before showing its login page and answers 400 when either is
/// not registered; a login page or a redirect means both passed. A code handed out to this
/// request (a server with no login step) is never used.
pub async fn preflight(
    url: &Url,
    extra_ca_pem: Option<&[u8]>,
    allow_http: bool,
    client_id: &str,
    redirect_uri: &str,
) -> Result<(), AuthorizeError> {
    let unreachable = |detail: String| AuthorizeError::AuthServerUnreachable {
        url: format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
            + &url.port().map(|p| format!(":{p}")).unwrap_or_default(),
        detail,
    };
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!allow_http)
        .timeout(Duration::from_secs(20))
        .user_agent(concat!("eagle-eye-operator/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|_| AuthorizeError::Input("--auth-ca-file is not a PEM bundle".into()))?;
        builder = builder.tls_certs_merge(certs);
    }
    let http = builder
        .build()
        .map_err(|e| unreachable(format!("cannot build an HTTP client: {e}")))?;
    let response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e.without_url())))?;
    match response.status().as_u16() {
        400 | 401 => Err(AuthorizeError::RedirectRefused {
            status: response.status().as_u16(),
            redirect_uri: redirect_uri.to_owned(),
            client_id: client_id.to_owned(),
        }),
        404 => Err(AuthorizeError::BadAuthUrl {
            url: url.origin().ascii_serialization(),
            problem: "has no /oauth2/authorize endpoint (HTTP 404): check --auth-url".into(),
        }),
        status @ 500.. => Err(unreachable(format!(
            "it answered HTTP {status} to the authorize request; try again later"
        ))),
        _ => Ok(()),
    }
}

/// Opens `url` in the desktop's browser, when there is a desktop. Returns whether a browser
/// was started; the URL is printed either way.
pub fn open(url: &Url) -> bool {
    let (program, args): (&str, &[&str]) = if cfg!(target_os = "macos") {
        ("open", &[])
    } else if cfg!(windows) {
        ("rundll32", &["url.dll,FileProtocolHandler"])
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        ("xdg-open", &[])
    } else {
        // Without a display, xdg-open would start a text browser in this terminal.
        return false;
    };
    Command::new(program)
        .args(args)
        .arg(url.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .is_ok()
}
