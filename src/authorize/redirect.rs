//! The browser side of Phase 1 as pure logic: the redirect URI (kept as the exact string the
//! vendor's whitelist compares), the authorize URL, the `state` value, and the checks on the
//! answer that comes back to the redirect URI.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use secrecy::SecretString;
use url::Url;

use crate::token::OAuthErrorCode;

/// The vendor's example, and what most applications have whitelisted.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:3333";

/// A redirect URI as the person gave it. `raw` is sent unchanged: the whitelist is a string
/// comparison, and a URL parser would add a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectUri {
    raw: String,
    /// Where to listen for the answer; `None` when the URI is not a plain-http loopback
    /// address (the answer must then be pasted).
    listen: Option<SocketAddr>,
    /// The path the answer arrives on.
    path: String,
}

impl RedirectUri {
    pub fn parse(raw: &str) -> Result<RedirectUri, String> {
        if raw.trim() != raw || raw.is_empty() {
            return Err("must not be empty or have spaces around it".into());
        }
        let url = Url::parse(raw).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must start with http:// or https://".into());
        }
        if url.fragment().is_some() {
            return Err("must not have a #fragment".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".into());
        }
        let listen = match (url.scheme(), url.host()) {
            ("http", Some(host)) => loopback(&host).map(|ip| {
                // Invariant: `url` has an http scheme, which has a known default port.
                SocketAddr::new(ip, url.port_or_known_default().unwrap_or(80))
            }),
            _ => None,
        };
        Ok(RedirectUri {
            raw: raw.to_owned(),
            listen,
            path: url.path().to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

fn loopback(host: &url::Host<&str>) -> Option<IpAddr> {
    match host {
        url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        url::Host::Ipv4(ip) if ip.is_loopback() => Some(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) if *ip == Ipv6Addr::LOCALHOST => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// A fresh unguessable `state` value (256 bits, URL-safe).
pub fn new_state() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `{auth_base}/oauth2/authorize?scope=…&client_id=…&response_type=code&redirect_uri=…&state=…`,
/// the parameters in the order of the vendor's guide.
pub fn authorize_url(
    auth_base: &Url,
    client_id: &str,
    scope: &str,
    redirect: &RedirectUri,
    state: &str,
) -> Result<Url, String> {
    let mut url = auth_base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| "the auth URL cannot be a base URL".to_string())?
        .pop_if_empty()
        .extend(["oauth2", "authorize"]);
    url.query_pairs_mut()
        .append_pair("scope", scope)
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect.as_str())
        .append_pair("state", state);
    Ok(url)
}

/// Why an answer at the redirect URI was not a usable login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error(
        "the login answer does not carry the state value this run sent: it comes from an older \
         authorize run, another program, or a forged link. Nothing was stored. Run authorize \
         again and use only the URL it prints"
    )]
    StateMismatch,
    #[error(
        "Eagle Eye ended the login with error {}{}",
        .0.as_ref().map(|c| c.as_str()).unwrap_or("(not an OAuth error code)"),
        denied_hint(.0.as_ref())
    )]
    Denied(Option<OAuthErrorCode>),
    #[error("the login answer has no code parameter")]
    MissingCode,
    #[error("the login answer repeats the {0} parameter")]
    Repeated(&'static str),
}

fn denied_hint(code: Option<&OAuthErrorCode>) -> &'static str {
    match code.map(OAuthErrorCode::as_str) {
        Some("access_denied") => ": the person declined access; run authorize again and approve",
        Some("invalid_scope") => ": the application is not allowed this scope (--scope)",
        Some("unauthorized_client") => {
            ": the application may not use the authorization-code grant; ask Eagle Eye support"
        }
        _ => "",
    }
}

/// Checks the query of the request that reached the redirect URI and returns its code.
/// The state is checked first: an answer that is not ours is not trusted for anything else.
pub fn check_callback(query: &str, expected_state: &str) -> Result<SecretString, CallbackError> {
    let mut state = None;
    let mut code = None;
    let mut error = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let (slot, name) = match key.as_ref() {
            "state" => (&mut state, "state"),
            "code" => (&mut code, "code"),
            "error" => (&mut error, "error"),
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            // This run sends one state: a repeated one is not its answer.
            if name == "state" {
                return Err(CallbackError::StateMismatch);
            }
            return Err(CallbackError::Repeated(name));
        }
    }
    if !state
        .as_deref()
        .is_some_and(|s| constant_time_eq(s.as_bytes(), expected_state.as_bytes()))
    {
        return Err(CallbackError::StateMismatch);
    }
    if let Some(error) = error {
        return Err(CallbackError::Denied(OAuthErrorCode::parse(&error)));
    }
    match code {
        Some(code) if !code.is_empty() => Ok(SecretString::from(code)),
        _ => Err(CallbackError::MissingCode),
    }
}

/// The query part of what a person pasted: the whole redirected URL as the browser's address
/// bar shows it, or just its `?code=…&state=…` part.
pub fn pasted_query(pasted: &str) -> &str {
    let text = pasted.trim();
    let query = match text.split_once('?') {
        Some((_, query)) => query,
        None => text,
    };
    query.split_once('#').map_or(query, |(q, _)| q)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn the_vendor_example_listens_on_loopback_port_3333_and_is_sent_unchanged() {
        let r = RedirectUri::parse(DEFAULT_REDIRECT_URI).unwrap();
        assert_eq!(r.as_str(), "http://127.0.0.1:3333");
        assert_eq!(r.listen_addr(), Some("127.0.0.1:3333".parse().unwrap()));
        assert_eq!(r.path(), "/");
    }

    #[test]
    fn a_trailing_slash_or_a_path_is_kept_exactly() {
        let r = RedirectUri::parse("http://127.0.0.1:3333/").unwrap();
        assert_eq!(r.as_str(), "http://127.0.0.1:3333/");
        let r = RedirectUri::parse("http://localhost:8080/callback").unwrap();
        assert_eq!(r.as_str(), "http://localhost:8080/callback");
        assert_eq!(r.listen_addr(), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(r.path(), "/callback");
        let r = RedirectUri::parse("http://[::1]:4000").unwrap();
        assert_eq!(r.listen_addr(), Some("[::1]:4000".parse().unwrap()));
    }

    #[test]
    fn non_loopback_or_https_redirects_cannot_be_listened_on() {
        for uri in [
            "https://127.0.0.1:3333",
            "https://app.example.com/oauth",
            "http://10.0.0.5:3333",
        ] {
            assert_eq!(
                RedirectUri::parse(uri).unwrap().listen_addr(),
                None,
                "{uri}"
            );
        }
    }

    #[test]
    fn malformed_redirect_uris_are_refused() {
        for bad in [
            "",
            " http://127.0.0.1:3333",
            "127.0.0.1:3333",
            "ftp://127.0.0.1",
            "http://127.0.0.1:3333/#x",
            "http://u:p@127.0.0.1:3333",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authorize_url_has_the_vendor_parameters_in_order() {
        let r = RedirectUri::parse(DEFAULT_REDIRECT_URI).unwrap();
        let base = Url::parse("https://auth.eagleeyenetworks.com").unwrap();
        let url = authorize_url(&base, "my client", "vms.all", &r, "st4te").unwrap();
        assert_eq!(
            url.as_str(),
            "https://auth.eagleeyenetworks.com/oauth2/authorize?scope=vms.all&client_id=my+client\
             &response_type=code&redirect_uri=http%3A%2F%2F127.0.0.1%3A3333&state=st4te"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs[3],
            ("redirect_uri".into(), "http://127.0.0.1:3333".into())
        );
    }

    #[test]
    fn authorize_url_keeps_a_base_path_and_drops_a_trailing_slash() {
        let r = RedirectUri::parse(DEFAULT_REDIRECT_URI).unwrap();
        let base = Url::parse("https://127.0.0.1:8443/").unwrap();
        let url = authorize_url(&base, "c", "vms.all", &r, "s").unwrap();
        assert!(
            url.as_str()
                .starts_with("https://127.0.0.1:8443/oauth2/authorize?")
        );
        let base = Url::parse("https://proxy.example.com/een/").unwrap();
        let url = authorize_url(&base, "c", "vms.all", &r, "s").unwrap();
        assert_eq!(url.path(), "/een/oauth2/authorize");
    }

    #[test]
    fn states_are_long_unique_and_url_safe() {
        let (a, b) = (new_state(), new_state());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn a_matching_state_yields_the_code() {
        let code = check_callback("code=AbC%2Bd&state=s1", "s1").unwrap();
        assert_eq!(code.expose_secret(), "AbC+d");
    }

    #[test]
    fn a_missing_or_different_state_is_a_mismatch_even_with_a_code() {
        for query in [
            "code=x",
            "code=x&state=s2",
            "code=x&state=",
            "code=x&state=s1x",
        ] {
            assert_eq!(
                check_callback(query, "s1").unwrap_err(),
                CallbackError::StateMismatch,
                "{query}"
            );
        }
    }

    #[test]
    fn an_oauth_error_is_reported_only_with_our_state() {
        let err = check_callback("error=access_denied&state=s1", "s1").unwrap_err();
        assert!(err.to_string().contains("access_denied"), "{err}");
        assert!(err.to_string().contains("declined"), "{err}");
        let err = check_callback("error=access_denied&state=other", "s1").unwrap_err();
        assert_eq!(err, CallbackError::StateMismatch);
        let err = check_callback("error=%3Cscript%3E&state=s1", "s1").unwrap_err();
        assert!(!err.to_string().contains("script"), "{err}");
    }

    #[test]
    fn repeated_or_missing_parameters_are_refused() {
        assert_eq!(
            check_callback("state=s1", "s1").unwrap_err(),
            CallbackError::MissingCode
        );
        assert_eq!(
            check_callback("code=&state=s1", "s1").unwrap_err(),
            CallbackError::MissingCode
        );
        assert_eq!(
            check_callback("code=a&code=b&state=s1", "s1").unwrap_err(),
            CallbackError::Repeated("code")
        );
        // One state is sent: two, even both ours, are not this run's answer.
        assert_eq!(
            check_callback("code=a&state=s1&state=s1", "s1").unwrap_err(),
            CallbackError::StateMismatch
        );
    }

    #[test]
    fn pasted_urls_and_bare_queries_give_the_same_query() {
        for pasted in [
            "http://127.0.0.1:3333/?code=c&state=s\n",
            "  http://127.0.0.1:3333?code=c&state=s#frag ",
            "?code=c&state=s",
            "code=c&state=s",
        ] {
            assert_eq!(pasted_query(pasted), "code=c&state=s", "{pasted:?}");
        }
    }
}
