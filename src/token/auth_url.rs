//! The auth server's base URL, parsed and checked once. The operator's `validate`,
//! `authorize` and the token client all go through [`AuthUrl::parse`] (and the CRD's CEL
//! rule mirrors it as far as CEL can), so a URL one of them accepts works in all of them,
//! and one they refuse is refused everywhere in the same words, before any secret is sent.
//!
//! No error quotes the URL: one that fails to parse, or carries userinfo, may hold a
//! password. Errors name the host only once the URL is known to carry none.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use url::Url;

use super::grant::HostPattern;

/// The vendor's auth server: the default of `--allowed-auth-hosts`.
pub const EAGLE_EYE_AUTH_HOSTS: &str = "auth.eagleeyenetworks.com";

/// The hosts plain http may go to with `--allow-insecure-http`: this machine only.
pub const LOOPBACK_HOSTS: &str = "127.0.0.1, ::1, localhost";

/// Where an auth URL may point: the allowed hosts and ports (`--allowed-auth-hosts`) and
/// whether plain http to a loopback host is allowed (`--allow-insecure-http`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// `None`: any host (a library default; the operator and `authorize` always set one).
    hosts: Option<Vec<AuthHost>>,
    allow_insecure_http: bool,
}

/// One `--allowed-auth-hosts` entry: `host[:port]`, `[v6][:port]` or `*.domain[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuthHost {
    host: HostPattern,
    /// `None`: only the default port of the URL's scheme (443 for https; 80 for the plain
    /// http `--allow-insecure-http` allows to loopback). A host that answers on 443 may
    /// have other ports that accept a connection and never answer, or another service.
    port: Option<u16>,
}

impl AuthHost {
    fn parse(entry: &str) -> Option<AuthHost> {
        let (host, port) = match entry.strip_prefix('[') {
            // `[v6]` or `[v6]:port`
            Some(rest) => {
                let (v6, after) = rest.split_once(']')?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':')?),
                };
                (v6, port)
            }
            // A bare IPv6 literal (`::1`) has no port: brackets are needed for one.
            None if entry.matches(':').count() > 1 => (entry, None),
            None => match entry.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (entry, None),
            },
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
            }
            Some(_) => return None,
        };
        // `[` and `]` only around an IPv6 literal.
        if entry.starts_with('[') && host.parse::<Ipv6Addr>().is_err() {
            return None;
        }
        Some(AuthHost {
            host: HostPattern::parse(host)?,
            port,
        })
    }

    fn allows(&self, url: &Url, host: &url::Host<&str>) -> bool {
        let port_ok = match self.port {
            // The URL parser leaves out a scheme's default port, written or not.
            None => url.port().is_none(),
            Some(port) => url.port_or_known_default() == Some(port),
        };
        port_ok && self.host.matches_url_host(host)
    }
}

impl AuthPolicy {
    /// `hosts` as `--allowed-auth-hosts` takes them: `host[:port]`, `[v6][:port]` or
    /// `*.domain[:port]`, hosts matched as `--allowed-api-hosts` matches them. An entry
    /// without a port allows only the scheme's default port (443 for https, 80 for plain
    /// http). An empty list allows no host at all.
    pub fn new<S: AsRef<str>>(hosts: &[S], allow_insecure_http: bool) -> Result<Self, String> {
        let hosts = hosts
            .iter()
            .map(|p| {
                let p = p.as_ref();
                AuthHost::parse(p).ok_or_else(|| {
                    format!(
                        "--allowed-auth-hosts entry {p:?} is not host[:port], [IPv6][:port] or *.domain[:port]"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthPolicy {
            hosts: Some(hosts),
            allow_insecure_http,
        })
    }

    /// Any host; plain http to loopback only when `allow_insecure_http`.
    pub fn any_host(allow_insecure_http: bool) -> Self {
        AuthPolicy {
            hosts: None,
            allow_insecure_http,
        }
    }

    pub fn allows_insecure_http(&self) -> bool {
        self.allow_insecure_http
    }

    /// How many auth destinations (scheme, host, port) the policy allows at most; `None`
    /// when unbounded (any host, or a `*.domain` entry).
    pub fn destinations(&self) -> Option<usize> {
        // An entry without a port allows the default port of https, and of plain http
        // when that is allowed.
        let schemes = if self.allow_insecure_http { 2 } else { 1 };
        self.hosts
            .as_ref()?
            .iter()
            .try_fold(0usize, |n, entry| match entry.host {
                HostPattern::Subdomains(_) => None,
                HostPattern::Exact(_) => Some(n.saturating_add(schemes)),
            })
    }

    /// The same policy, without the host allow-list (an auth URL a person gave on the
    /// command line is theirs to choose).
    pub fn without_host_list(&self) -> Self {
        AuthPolicy::any_host(self.allow_insecure_http)
    }

    /// `None` when allowed, else why not: the host is in no entry, or only with other ports.
    fn refusal(&self, url: &Url, host: &url::Host<&str>) -> Option<AuthUrlError> {
        let entries = self.hosts.as_ref()?;
        if entries.iter().any(|e| e.allows(url, host)) {
            return None;
        }
        let known_host = entries.iter().any(|e| e.host.matches_url_host(host));
        let host = host.to_string();
        Some(match known_host {
            true => AuthUrlError::PortNotAllowed {
                host,
                // Invariant: an http(s) URL always has a known default port.
                port: url.port_or_known_default().unwrap_or_default(),
            },
            false => AuthUrlError::HostNotAllowed { host },
        })
    }
}

/// Why an auth URL was refused. The words are the same wherever it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthUrlError {
    NotAUrl(url::ParseError),
    UserInfo,
    Query,
    Fragment,
    Scheme,
    NoHost,
    /// Plain http to a host other than loopback: refused even with the flag.
    HttpNotLoopback,
    /// Plain http to a loopback host, without `--allow-insecure-http`.
    HttpNeedsFlag,
    /// A host outside `--allowed-auth-hosts` (safe to show: the URL carries no userinfo).
    HostNotAllowed {
        host: String,
    },
    /// An allowed host on a port no `--allowed-auth-hosts` entry names for it.
    PortNotAllowed {
        host: String,
        port: u16,
    },
}

impl fmt::Display for AuthUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The parser's words never quote the input.
            AuthUrlError::NotAUrl(e) => write!(f, "auth URL is not a URL ({e})"),
            AuthUrlError::UserInfo => {
                write!(f, "auth URL must not contain a user name or password")
            }
            AuthUrlError::Query => write!(f, "auth URL must not have a query string (?…)"),
            AuthUrlError::Fragment => write!(f, "auth URL must not have a fragment (#…)"),
            AuthUrlError::Scheme => write!(f, "auth URL must be an https:// URL"),
            AuthUrlError::NoHost => write!(f, "auth URL has no host"),
            AuthUrlError::HttpNotLoopback => write!(
                f,
                "auth URL is plain http to a host other than loopback ({LOOPBACK_HOSTS}): \
                 only https:// is allowed there, even with --allow-insecure-http"
            ),
            AuthUrlError::HttpNeedsFlag => write!(
                f,
                "auth URL is plain http; it is refused unless --allow-insecure-http is given \
                 (loopback hosts only, for testing)"
            ),
            AuthUrlError::HostNotAllowed { host } => write!(
                f,
                "auth URL host {host} is not in --allowed-auth-hosts, so nothing is sent to it"
            ),
            AuthUrlError::PortNotAllowed { host, port } => write!(
                f,
                "auth URL port {port} of host {host} is not in --allowed-auth-hosts (an entry \
                 without a port allows only 443 for https, 80 for plain http; add {host}:{port} \
                 to allow it), so nothing is sent to it"
            ),
        }
    }
}

impl std::error::Error for AuthUrlError {}

/// A checked auth server base URL: https (or plain http to a loopback host when allowed),
/// a host the policy allows, no userinfo, query or fragment; a path prefix is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUrl(Url);

impl AuthUrl {
    pub fn parse(raw: &str, policy: &AuthPolicy) -> Result<AuthUrl, AuthUrlError> {
        // Before the parser: it drops an empty userinfo ("https://@host") without a trace.
        if authority(raw).contains('@') {
            return Err(AuthUrlError::UserInfo);
        }
        let url = Url::parse(raw).map_err(AuthUrlError::NotAUrl)?;
        Self::check(url, policy)
    }

    /// [`AuthUrl::parse`] of a URL parsed earlier.
    pub fn from_url(url: &Url, policy: &AuthPolicy) -> Result<AuthUrl, AuthUrlError> {
        Self::check(url.clone(), policy)
    }

    fn check(url: Url, policy: &AuthPolicy) -> Result<AuthUrl, AuthUrlError> {
        // First: every later message may name the host.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AuthUrlError::UserInfo);
        }
        if url.query().is_some() {
            return Err(AuthUrlError::Query);
        }
        if url.fragment().is_some() {
            return Err(AuthUrlError::Fragment);
        }
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(AuthUrlError::Scheme),
        };
        let host = match url.host() {
            Some(url::Host::Domain("")) | None => return Err(AuthUrlError::NoHost),
            Some(host) => host,
        };
        if !https {
            if !is_loopback(&host) {
                return Err(AuthUrlError::HttpNotLoopback);
            }
            if !policy.allow_insecure_http {
                return Err(AuthUrlError::HttpNeedsFlag);
            }
        }
        if let Some(refusal) = policy.refusal(&url, &host) {
            return Err(refusal);
        }
        Ok(AuthUrl(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn into_url(self) -> Url {
        self.0
    }

    /// The host as the URL names it (IPv6 in brackets).
    pub fn host(&self) -> String {
        self.0.host_str().unwrap_or_default().to_owned()
    }

    /// `{base}/oauth2/{leaf}`, whether or not the base ends with `/`.
    pub fn endpoint(&self, leaf: &str) -> Url {
        let mut url = self.0.clone();
        // Invariant: an http(s) URL with a host can always be a base.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["oauth2", leaf]);
        }
        url
    }

    /// The URL as a credential stores it: without the slash a URL parser adds to a bare
    /// host, so that the default reads exactly as the CRD's default.
    pub fn text(&self) -> String {
        let text = self.0.as_str();
        if self.0.path() == "/" {
            text.trim_end_matches('/').to_owned()
        } else {
            text.to_owned()
        }
    }
}

impl fmt::Display for AuthUrl {
    /// Safe to show: a checked URL carries no userinfo.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The authority of `raw` as written: after `scheme://`, up to the first `/`, `\`, `?` or `#`.
fn authority(raw: &str) -> &str {
    let rest = raw.split_once("://").map_or("", |(_, rest)| rest);
    rest.split(['/', '\\', '?', '#']).next().unwrap_or("")
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => *ip == Ipv4Addr::LOCALHOST,
        url::Host::Ipv6(ip) => *ip == Ipv6Addr::LOCALHOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor() -> AuthPolicy {
        AuthPolicy::new(&[EAGLE_EYE_AUTH_HOSTS], false).unwrap()
    }

    fn loopback(allow_http: bool) -> AuthPolicy {
        AuthPolicy::new(
            &["127.0.0.1:9000", "localhost:9000", "[::1]:9000"],
            allow_http,
        )
        .unwrap()
    }

    fn err(raw: &str, policy: &AuthPolicy) -> AuthUrlError {
        AuthUrl::parse(raw, policy).unwrap_err()
    }

    #[test]
    fn the_destinations_a_policy_allows_are_counted_unless_a_domain_allows_any_number() {
        let count =
            |hosts: &[&str], http: bool| AuthPolicy::new(hosts, http).unwrap().destinations();
        assert_eq!(count(&[EAGLE_EYE_AUTH_HOSTS], false), Some(1));
        assert_eq!(count(&["a.example", "b.example:8443"], false), Some(2));
        assert_eq!(
            count(&["127.0.0.1:4000", "localhost"], true),
            Some(4),
            "http and https"
        );
        assert_eq!(count(&["a.example", "*.example"], false), None);
        assert_eq!(AuthPolicy::any_host(false).destinations(), None);
    }

    #[test]
    fn the_vendor_url_is_accepted_by_default() {
        let url = AuthUrl::parse("https://auth.eagleeyenetworks.com", &vendor()).unwrap();
        assert_eq!(url.text(), "https://auth.eagleeyenetworks.com");
        assert_eq!(
            url.endpoint("token").as_str(),
            "https://auth.eagleeyenetworks.com/oauth2/token"
        );
    }

    #[test]
    fn a_query_string_is_refused() {
        for raw in [
            "https://auth.eagleeyenetworks.com?x=1",
            "https://auth.eagleeyenetworks.com/?",
        ] {
            assert_eq!(err(raw, &vendor()), AuthUrlError::Query, "{raw}");
        }
    }

    #[test]
    fn a_fragment_is_refused() {
        for raw in [
            "https://auth.eagleeyenetworks.com#f",
            "https://auth.eagleeyenetworks.com/#",
        ] {
            assert_eq!(err(raw, &vendor()), AuthUrlError::Fragment, "{raw}");
        }
    }

    #[test]
    fn userinfo_is_refused_without_quoting_it() {
        for raw in [
            "https://user:hunter2@auth.eagleeyenetworks.com",
            "https://user@auth.eagleeyenetworks.com",
            "https://:hunter2@auth.eagleeyenetworks.com",
            "https://@auth.eagleeyenetworks.com",
        ] {
            let e = err(raw, &vendor());
            assert_eq!(e, AuthUrlError::UserInfo, "{raw}");
            assert!(!e.to_string().contains("hunter2"));
        }
        // A URL that does not parse is not quoted either.
        let e = err("https://user:hunter2@[bad", &AuthPolicy::any_host(false));
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = err("https://[hunter2", &AuthPolicy::any_host(false));
        assert!(matches!(e, AuthUrlError::NotAUrl(_)), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn other_schemes_and_relative_urls_are_refused() {
        for raw in [
            "ftp://auth.eagleeyenetworks.com",
            "mailto:a@b",
            "file:///etc/passwd",
        ] {
            let e = AuthUrl::parse(raw, &AuthPolicy::any_host(true)).unwrap_err();
            assert!(
                matches!(e, AuthUrlError::Scheme | AuthUrlError::UserInfo),
                "{raw}: {e}"
            );
        }
        assert!(matches!(
            err("auth.eagleeyenetworks.com", &vendor()),
            AuthUrlError::NotAUrl(_)
        ));
    }

    #[test]
    fn plain_http_to_a_remote_host_is_refused_even_with_the_flag() {
        let any = AuthPolicy::any_host(true);
        for raw in [
            "http://auth.eagleeyenetworks.com",
            "http://10.0.0.1:8080",
            "http://127.0.0.2",
            "http://localhost.example.com",
            "http://[::2]",
        ] {
            assert_eq!(err(raw, &any), AuthUrlError::HttpNotLoopback, "{raw}");
        }
        let text = err("http://auth.eagleeyenetworks.com", &any).to_string();
        assert!(text.contains("--allow-insecure-http"), "{text}");
    }

    #[test]
    fn plain_http_to_loopback_needs_the_flag() {
        for raw in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://LOCALHOST:9000",
            "http://[::1]:9000",
        ] {
            let e = err(raw, &loopback(false));
            assert_eq!(e, AuthUrlError::HttpNeedsFlag, "{raw}");
            assert!(e.to_string().contains("--allow-insecure-http"));
            assert!(AuthUrl::parse(raw, &loopback(true)).is_ok(), "{raw}");
        }
    }

    #[test]
    fn ipv6_loopback_is_matched_in_either_spelling() {
        for pattern in ["::1", "[::1]"] {
            let policy = AuthPolicy::new(&[pattern, "[::1]:8443"], true).unwrap();
            let url = AuthUrl::parse("http://[::1]:8443/", &policy).unwrap();
            assert_eq!(url.host(), "[::1]");
            assert_eq!(
                url.endpoint("token").as_str(),
                "http://[::1]:8443/oauth2/token"
            );
            assert!(AuthUrl::parse("https://[0:0:0:0:0:0:0:1]", &policy).is_ok());
        }
    }

    #[test]
    fn a_path_prefix_is_kept_and_a_trailing_slash_is_no_change() {
        let any = AuthPolicy::any_host(false);
        let join = |raw: &str| {
            AuthUrl::parse(raw, &any)
                .unwrap()
                .endpoint("token")
                .to_string()
        };
        assert_eq!(join("https://h"), "https://h/oauth2/token");
        assert_eq!(join("https://h/"), "https://h/oauth2/token");
        assert_eq!(
            join("https://h:8443/prefix"),
            "https://h:8443/prefix/oauth2/token"
        );
        assert_eq!(join("https://h/prefix/"), "https://h/prefix/oauth2/token");
        let revoke = AuthUrl::parse("https://h/", &any)
            .unwrap()
            .endpoint("revoke");
        assert_eq!(revoke.as_str(), "https://h/oauth2/revoke");
        let text = |raw: &str| AuthUrl::parse(raw, &any).unwrap().text();
        assert_eq!(text("https://h/"), text("https://h"));
        assert_eq!(text("https://h"), "https://h");
        assert_eq!(text("https://h/prefix"), "https://h/prefix");
    }

    #[test]
    fn hosts_match_exactly_or_below_a_star_domain_whatever_the_case() {
        let policy =
            AuthPolicy::new(&["auth.eagleeyenetworks.com", "*.example.com"], false).unwrap();
        for ok in [
            "https://auth.eagleeyenetworks.com",
            "https://AUTH.EagleEyeNetworks.com/",
            "https://auth.eagleeyenetworks.com:443/x",
            "https://a.example.com",
            "https://a.b.Example.COM",
        ] {
            assert!(AuthUrl::parse(ok, &policy).is_ok(), "{ok}");
        }
        for bad in [
            "https://eagleeyenetworks.com",
            "https://evil.auth.eagleeyenetworks.com",
            "https://auth.eagleeyenetworks.com.evil.com",
            "https://example.com",
            "https://aexample.com",
            "https://127.0.0.1",
        ] {
            assert!(
                matches!(err(bad, &policy), AuthUrlError::HostNotAllowed { .. }),
                "{bad}"
            );
        }
        let text = err("https://Evil.COM/x", &policy).to_string();
        assert!(
            text.contains("evil.com") && text.contains("--allowed-auth-hosts"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_allow_list_allows_nothing_and_bad_entries_are_refused() {
        let none = AuthPolicy::new::<&str>(&[], false).unwrap();
        assert!(matches!(
            err("https://auth.eagleeyenetworks.com", &none),
            AuthUrlError::HostNotAllowed { .. }
        ));
        for bad in [
            "https://auth.eagleeyenetworks.com",
            "",
            "*.",
            "a b",
            "host:0",
            "host:65536",
            "host:",
            "host:https",
            "host:+443",
            "[auth.example.com]:443",
            "[::1]443",
            "https://host:443",
        ] {
            let e = AuthPolicy::new(&[bad], false).unwrap_err();
            assert!(e.contains("--allowed-auth-hosts"), "{e}");
        }
    }

    #[test]
    fn a_url_parsed_elsewhere_is_checked_the_same_way() {
        let url = Url::parse("https://h/?x=1").unwrap();
        assert_eq!(
            AuthUrl::from_url(&url, &AuthPolicy::any_host(false)).unwrap_err(),
            AuthUrlError::Query
        );
    }

    #[test]
    fn an_entry_without_a_port_allows_only_the_default_port_of_the_scheme() {
        let policy = AuthPolicy::new(&["auth.example.com", "127.0.0.1"], true).unwrap();
        for ok in [
            "https://auth.example.com",
            "https://auth.example.com:443/prefix",
            "http://127.0.0.1",
            "http://127.0.0.1:80",
        ] {
            assert!(AuthUrl::parse(ok, &policy).is_ok(), "{ok}");
        }
        for (bad, port) in [
            ("https://auth.example.com:8443", 8443),
            ("https://auth.example.com:80", 80),
            ("http://127.0.0.1:443", 443),
            ("http://127.0.0.1:9000", 9000),
        ] {
            assert_eq!(
                err(bad, &policy),
                AuthUrlError::PortNotAllowed {
                    host: bad
                        .split("//")
                        .nth(1)
                        .unwrap()
                        .split(':')
                        .next()
                        .unwrap()
                        .into(),
                    port
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn an_entry_with_a_port_allows_that_port_only() {
        let policy = AuthPolicy::new(
            &[
                "auth.example.com:8443",
                "*.corp.example:9443",
                "[::1]:9000",
                "localhost:9000",
            ],
            true,
        )
        .unwrap();
        for ok in [
            "https://auth.example.com:8443",
            "https://AUTH.example.com:8443/x/",
            "https://a.b.corp.example:9443",
            "http://[::1]:9000",
            "http://localhost:9000",
        ] {
            assert!(AuthUrl::parse(ok, &policy).is_ok(), "{ok}");
        }
        for bad in [
            "https://auth.example.com",
            "https://auth.example.com:443",
            "https://auth.example.com:8444",
            "https://a.corp.example",
            "http://[::1]:9001",
            "http://localhost",
        ] {
            assert!(
                matches!(err(bad, &policy), AuthUrlError::PortNotAllowed { .. }),
                "{bad}"
            );
        }
        // The https entry's port 443 is not plain http's default.
        let https_only = AuthPolicy::new(&["127.0.0.1:443"], true).unwrap();
        assert!(AuthUrl::parse("https://127.0.0.1", &https_only).is_ok());
        assert!(AuthUrl::parse("http://127.0.0.1", &https_only).is_err());
    }

    #[test]
    fn a_refused_port_names_the_flag_the_host_and_the_port() {
        let policy = AuthPolicy::new(&["auth.eagleeyenetworks.com"], false).unwrap();
        let text = err("https://auth.eagleeyenetworks.com:4443/", &policy).to_string();
        for part in [
            "--allowed-auth-hosts",
            "auth.eagleeyenetworks.com",
            "4443",
            "auth.eagleeyenetworks.com:4443",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        // A host in no entry is still named as such, whatever its port.
        assert!(matches!(
            err("https://evil.example:4443", &policy),
            AuthUrlError::HostNotAllowed { .. }
        ));
    }
}
