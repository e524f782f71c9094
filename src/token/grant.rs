//! The token response: its validation, and the API base host it names.
//!
//! A response is trusted only after every field we hand on has been checked, because the
//! access token and the API host go straight to workloads.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use super::extract::{self, Carried};

/// Longest access or refresh token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest access-token life accepted (the vendor documents 12 h and has been seen at 7 days).
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_SCOPE_BYTES: usize = 1024;

/// A validated token response. Debug redacts both tokens.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: SecretString,
    pub expires_in: Duration,
    /// Absent when the server did not send one (keep using the current refresh token).
    pub refresh_token: Option<SecretString>,
    pub api: ApiBase,
    /// The granted scope; the requested one when the server omitted it (RFC 6749 §5.1).
    pub scope: String,
    /// Always `"Bearer"` (the only type accepted).
    pub token_type: String,
}

/// Where API calls go, from the response's `httpsBaseUrl`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiBase {
    /// Lower-case DNS name or IP literal (IPv6 without brackets).
    pub hostname: String,
    pub port: u16,
}

impl ApiBase {
    /// `https://host`, plus `:port` unless it is 443.
    pub fn base_url(&self) -> String {
        let host = if self.hostname.contains(':') {
            format!("[{}]", self.hostname)
        } else {
            self.hostname.clone()
        };
        if self.port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", self.port)
        }
    }
}

/// Why a success answer was refused, with the refresh token it carried when one could be
/// found: the server has then most likely rotated the one sent, so it must be stored.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub problem: Problem,
    pub refresh_token: Option<SecretString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// `field` names the JSON member and `problem` says what is wrong, never the value.
    Malformed {
        field: &'static str,
        problem: &'static str,
    },
    /// A valid API host, but not one `allowed_api_hosts` lets through.
    HostNotAllowed { host: String },
}

fn malformed(field: &'static str, problem: &'static str) -> Problem {
    Problem::Malformed { field, problem }
}

/// One entry of `allowed_api_hosts`: an exact host, or `*.domain` for any name under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Option<Self> {
        match pattern.strip_prefix("*.") {
            Some(domain) => match normalize_host(domain)? {
                Host::Dns(domain) => Some(HostPattern::Subdomains(domain)),
                Host::Ip(_) => None,
            },
            None => {
                let bare = pattern
                    .strip_prefix('[')
                    .and_then(|p| p.strip_suffix(']'))
                    .unwrap_or(pattern);
                Some(HostPattern::Exact(normalize_host(bare)?.into_string()))
            }
        }
    }

    /// Whether a URL's host is this one, or below this `*.domain`.
    pub fn matches_url_host(&self, host: &url::Host<&str>) -> bool {
        let host = match host {
            url::Host::Domain(name) => match normalize_host(name) {
                Some(host) => host,
                None => return false,
            },
            url::Host::Ipv4(ip) => Host::Ip(IpAddr::V4(*ip)),
            url::Host::Ipv6(ip) => Host::Ip(IpAddr::V6(*ip)),
        };
        self.matches(&host)
    }

    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(exact), host) => *exact == host.to_canonical(),
            (HostPattern::Subdomains(domain), Host::Dns(name)) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            (HostPattern::Subdomains(_), Host::Ip(_)) => false,
        }
    }
}

enum Host {
    Dns(String),
    Ip(IpAddr),
}

impl Host {
    fn to_canonical(&self) -> String {
        match self {
            Host::Dns(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    fn into_string(self) -> String {
        match self {
            Host::Dns(name) => name,
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

/// A bare DNS name (LDH labels) or IP literal, normalised; `None` for anything else
/// (schemes, paths, ports, userinfo, whitespace, brackets, trailing dots).
fn normalize_host(input: &str) -> Option<Host> {
    if let Ok(ip) = input.parse::<IpAddr>() {
        return Some(Host::Ip(ip));
    }
    if input.is_empty() || input.len() > 253 {
        return None;
    }
    let name = input.to_ascii_lowercase();
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    // URL parsers read a name ending in a numeric label ("127.1") as an IPv4 address.
    let last_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (labels_ok && !last_numeric).then_some(Host::Dns(name))
}

fn is_token_char(b: u8) -> bool {
    // Visible ASCII: the token must be usable as-is in an Authorization header.
    (0x21..=0x7e).contains(&b)
}

/// Whether `raw` is plausible as a token: the problem in words otherwise.
pub(crate) fn check_token(raw: &[u8]) -> Result<(), &'static str> {
    if raw.is_empty() {
        Err("is empty")
    } else if raw.len() > MAX_TOKEN_BYTES {
        Err("is too long")
    } else if !raw.iter().all(|&b| is_token_char(b)) {
        Err("has characters outside visible ASCII")
    } else {
        Ok(())
    }
}

fn take_token(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<SecretString>, Problem> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) => {
            let token = SecretString::from(token);
            let raw = token.expose_secret();
            check_token(raw.as_bytes())
                .map(|()| Some(token))
                .map_err(|problem| malformed(field, problem))
        }
        Some(_) => Err(malformed(field, "is not a string")),
    }
}

fn expires_in(value: Option<&Value>) -> Result<Duration, Problem> {
    let field = "expires_in";
    let secs = match value {
        None | Some(Value::Null) => return Err(malformed(field, "is missing")),
        Some(Value::Number(n)) => n.as_u64(),
        // Some servers quote numbers; accept plain digits only.
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        Some(_) => None,
    }
    .ok_or(malformed(field, "is not a whole number of seconds"))?;
    let duration = Duration::from_secs(secs);
    if secs == 0 {
        Err(malformed(field, "is zero"))
    } else if duration > MAX_EXPIRES_IN {
        Err(malformed(field, "is longer than 30 days"))
    } else {
        Ok(duration)
    }
}

fn api_base(value: Option<&Value>, allowed: &[HostPattern]) -> Result<ApiBase, Problem> {
    let obj = match value {
        Some(Value::Object(obj)) => obj,
        None | Some(Value::Null) => return Err(malformed("httpsBaseUrl", "is missing")),
        Some(_) => return Err(malformed("httpsBaseUrl", "is not an object")),
    };
    let host = match obj.get("hostname") {
        Some(Value::String(h)) => normalize_host(h).ok_or(malformed(
            "httpsBaseUrl.hostname",
            "is not a bare host name",
        ))?,
        None | Some(Value::Null) => return Err(malformed("httpsBaseUrl.hostname", "is missing")),
        Some(_) => return Err(malformed("httpsBaseUrl.hostname", "is not a string")),
    };
    if !allowed.is_empty() && !allowed.iter().any(|p| p.matches(&host)) {
        // Safe to show: a bare host name or IP, checked character by character above.
        return Err(Problem::HostNotAllowed {
            host: host.into_string(),
        });
    }
    let port = match obj.get("port") {
        // The vendor always sends it; if it ever does not, it is an https URL.
        None | Some(Value::Null) => 443,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or(malformed("httpsBaseUrl.port", "is not in 1..=65535"))?,
        Some(_) => return Err(malformed("httpsBaseUrl.port", "is not a number")),
    };
    Ok(ApiBase {
        hostname: host.into_string(),
        port,
    })
}

fn scope(value: Option<&Value>, requested: &str) -> Result<String, Problem> {
    match value {
        None | Some(Value::Null) => Ok(requested.to_owned()),
        // RFC 6749 §3.3 scope tokens, space separated.
        Some(Value::String(s))
            if s.len() <= MAX_SCOPE_BYTES
                && s.bytes()
                    .all(|b| b == b' ' || (is_token_char(b) && b != b'"' && b != b'\\')) =>
        {
            Ok(s.clone())
        }
        Some(Value::String(_)) => Err(malformed("scope", "is not a list of scope tokens")),
        Some(_) => Err(malformed("scope", "is not a string")),
    }
}

/// Parses and validates a success body of the token endpoint.
pub(crate) fn parse_grant(
    body: &[u8],
    requested_scope: &str,
    allowed_api_hosts: &[HostPattern],
) -> Result<TokenGrant, Rejected> {
    // The refresh token first, and by a reader that needs no valid JSON: if anything else is
    // wrong, the server has still rotated the one sent, and the new one must be stored.
    let carried = extract::refresh_token(body);
    let carried_token = carried.token();
    let reject = |problem| Rejected {
        problem,
        refresh_token: carried_token.clone(),
    };
    // serde_json's own messages can quote the input, so they are dropped.
    let mut obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err(reject(malformed("body", "is not a JSON object"))),
        Err(_) => return Err(reject(malformed("body", "is not JSON"))),
    };
    // serde_json's reading is a second opinion: a token is only handed on when both agree
    // (they differ on repeated members, where serde_json keeps the last).
    let refused = |problem| Rejected {
        problem: malformed("refresh_token", problem),
        refresh_token: None,
    };
    let refresh_token = match (carried, take_token(&mut obj, "refresh_token")) {
        (Carried::Absent, Ok(None)) => None,
        (Carried::Token(ours), Ok(Some(theirs)))
            if ours.expose_secret() == theirs.expose_secret() =>
        {
            Some(ours)
        }
        (Carried::Unusable(problem), _) => return Err(refused(problem)),
        (_, Err(problem)) => {
            return Err(Rejected {
                problem,
                refresh_token: None,
            });
        }
        _ => return Err(refused("is read two different ways")),
    };
    let keep = |problem| Rejected {
        problem,
        refresh_token: refresh_token.clone(),
    };
    let access_token = take_token(&mut obj, "access_token")
        .map_err(keep)?
        .ok_or_else(|| keep(malformed("access_token", "is missing")))?;
    match obj.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        None | Some(Value::Null) => return Err(keep(malformed("token_type", "is missing"))),
        Some(_) => return Err(keep(malformed("token_type", "is not Bearer"))),
    }
    Ok(TokenGrant {
        access_token,
        expires_in: expires_in(obj.get("expires_in")).map_err(keep)?,
        api: api_base(obj.get("httpsBaseUrl"), allowed_api_hosts).map_err(keep)?,
        scope: scope(obj.get("scope"), requested_scope).map_err(keep)?,
        refresh_token,
        token_type: "Bearer".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    impl Rejected {
        fn field(&self) -> &'static str {
            match &self.problem {
                Problem::Malformed { field, .. } => field,
                Problem::HostNotAllowed { .. } => "httpsBaseUrl.hostname",
            }
        }
    }

    fn vendor_example() -> Value {
        json!({
            "access_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYTBmNjFhYiJ9.sig-_",
            "expires_in": 43198,
            "httpsBaseUrl": {"hostname": "api.c001.eagleeyenetworks.com", "port": 443},
            "refresh_token": "w1P0nwA7NEZmo5tEd76cco3y5bi4Js6QNgZsXnFNBDRep",
            "scope": "vms.all",
            "token_type": "Bearer"
        })
    }

    fn eagle_eye_only() -> Vec<HostPattern> {
        vec![HostPattern::parse("*.eagleeyenetworks.com").unwrap()]
    }

    fn parse_with(value: Value, allowed: &[HostPattern]) -> Result<TokenGrant, Rejected> {
        parse_grant(value.to_string().as_bytes(), "vms.all", allowed)
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = vendor_example();
        body[field] = value;
        body
    }

    fn rejected_field(body: Value) -> &'static str {
        parse_with(body, &eagle_eye_only()).unwrap_err().field()
    }

    #[test]
    fn vendor_example_response_is_accepted() {
        let grant = parse_with(vendor_example(), &eagle_eye_only()).unwrap();
        assert_eq!(grant.expires_in, Duration::from_secs(43198));
        assert_eq!(
            grant.api.base_url(),
            "https://api.c001.eagleeyenetworks.com"
        );
        assert_eq!(grant.scope, "vms.all");
        assert_eq!(grant.token_type, "Bearer");
        assert!(grant.access_token.expose_secret().starts_with("eyJ"));
        assert!(
            grant
                .refresh_token
                .unwrap()
                .expose_secret()
                .starts_with("w1P0")
        );
    }

    #[test]
    fn missing_refresh_token_and_scope_are_allowed() {
        let mut body = vendor_example();
        body.as_object_mut().unwrap().remove("refresh_token");
        body.as_object_mut().unwrap().remove("scope");
        let grant = parse_with(body, &[]).unwrap();
        assert!(grant.refresh_token.is_none());
        assert_eq!(grant.scope, "vms.all");
    }

    #[test]
    fn token_type_is_case_insensitive_bearer_only() {
        assert!(parse_with(with("token_type", json!("bearer")), &[]).is_ok());
        assert_eq!(
            rejected_field(with("token_type", json!("mac"))),
            "token_type"
        );
        let mut body = vendor_example();
        body.as_object_mut().unwrap().remove("token_type");
        assert_eq!(rejected_field(body), "token_type");
    }

    #[test]
    fn bad_tokens_are_refused_without_quoting_them() {
        for bad in [
            json!(""),
            json!(42),
            json!("a".repeat(MAX_TOKEN_BYTES + 1)),
            json!("tok en"),
        ] {
            let err = parse_with(with("access_token", bad), &[]).unwrap_err();
            assert_eq!(err.field(), "access_token");
        }
        assert_eq!(
            rejected_field(with("refresh_token", json!(""))),
            "refresh_token"
        );
        let err = parse_with(with("access_token", json!("secret\u{7f}")), &[]).unwrap_err();
        assert!(!format!("{err:?}").contains("secret"));
    }

    #[test]
    fn expires_in_must_be_between_one_second_and_thirty_days() {
        for bad in [
            json!(0),
            json!(-5),
            json!(1.5),
            json!("soon"),
            json!(30 * 86400 + 1),
            Value::Null,
        ] {
            assert_eq!(rejected_field(with("expires_in", bad)), "expires_in");
        }
        let grant = parse_with(with("expires_in", json!("900")), &[]).unwrap();
        assert_eq!(grant.expires_in, Duration::from_secs(900));
        assert!(parse_with(with("expires_in", json!(30 * 86400)), &[]).is_ok());
    }

    #[test]
    fn api_host_must_be_a_bare_name_or_ip() {
        for bad in [
            "https://api.eagleeyenetworks.com",
            "api.eagleeyenetworks.com/x",
            "api.eagleeyenetworks.com:8443",
            "user@api.eagleeyenetworks.com",
            "api .eagleeyenetworks.com",
            " api.eagleeyenetworks.com",
            "api.eagleeyenetworks.com.",
            "[::1]",
            "127.1",
            "",
        ] {
            let body = with("httpsBaseUrl", json!({"hostname": bad, "port": 443}));
            let err = parse_with(body, &[]).unwrap_err();
            assert_eq!(err.field(), "httpsBaseUrl.hostname", "{bad:?}");
        }
        let body = with("httpsBaseUrl", json!({"hostname": "::1", "port": 8443}));
        assert_eq!(
            parse_with(body, &[]).unwrap().api.base_url(),
            "https://[::1]:8443"
        );
    }

    #[test]
    fn api_host_must_match_the_allow_list() {
        let host = |h: &str| with("httpsBaseUrl", json!({"hostname": h, "port": 443}));
        assert!(parse_with(host("API.C002.EagleEyeNetworks.com"), &eagle_eye_only()).is_ok());
        for bad in [
            "eagleeyenetworks.com",
            "evil.com",
            "eagleeyenetworks.com.evil.com",
            "xeagleeyenetworks.com",
        ] {
            let err = parse_with(host(bad), &eagle_eye_only()).unwrap_err();
            assert_eq!(
                err.problem,
                Problem::HostNotAllowed {
                    host: bad.to_owned()
                }
            );
        }
        let loopback = [
            HostPattern::parse("127.0.0.1").unwrap(),
            HostPattern::parse("[::1]").unwrap(),
        ];
        assert!(parse_with(host("127.0.0.1"), &loopback).is_ok());
        assert!(parse_with(host("0:0::1"), &loopback).is_ok());
        assert!(parse_with(host("127.0.0.2"), &loopback).is_err());
        assert!(
            parse_with(host("evil.com"), &[]).is_ok(),
            "empty list allows any host"
        );
    }

    #[test]
    fn host_patterns_are_validated() {
        for bad in [
            "*",
            "*.",
            "a*.b.com",
            "https://x.com",
            "x.com:443",
            "*.127.0.0.1",
            "",
        ] {
            assert!(HostPattern::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn api_port_must_be_in_range() {
        for bad in [json!(0), json!(65536), json!(-1), json!("443")] {
            let body = with(
                "httpsBaseUrl",
                json!({"hostname": "api.eagleeyenetworks.com", "port": bad}),
            );
            assert_eq!(rejected_field(body), "httpsBaseUrl.port");
        }
        let body = with(
            "httpsBaseUrl",
            json!({"hostname": "api.eagleeyenetworks.com"}),
        );
        assert_eq!(parse_with(body, &[]).unwrap().api.port, 443);
        assert_eq!(
            rejected_field(with("httpsBaseUrl", json!("api.x.com"))),
            "httpsBaseUrl"
        );
    }

    fn carried(body: &[u8]) -> Option<String> {
        let err = parse_grant(body, "vms.all", &eagle_eye_only()).unwrap_err();
        err.refresh_token.map(|t| t.expose_secret().to_owned())
    }

    #[test]
    fn every_unusable_answer_that_carries_a_refresh_token_hands_it_on() {
        let rt = vendor_example()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let text = |v: Value| v.to_string().into_bytes();
        let mut odd_bytes = text(vendor_example());
        let at = odd_bytes.len() - 1;
        odd_bytes.splice(at..at, *b",\"note\":\"\xff\xfe\"");
        let mut deep = text(vendor_example());
        deep.splice(
            at..at,
            [&b",\"x\":"[..], &[b'['; 5000], &[b']'; 5000]].concat(),
        );
        let mut trailing = text(vendor_example());
        trailing.extend_from_slice(b"<html>");
        for body in [
            text(with("access_token", json!(""))),
            text(with("access_token", json!("a b"))),
            text(with("expires_in", json!("soon"))),
            text(with("expires_in", json!(0))),
            text(with("token_type", json!("mac"))),
            text(with("scope", json!(["vms.all"]))),
            text(with("httpsBaseUrl", json!({"hostname": "evil.com"}))),
            text(with("httpsBaseUrl", json!({"hostname": "a/b"}))),
            odd_bytes,
            deep,
            trailing,
        ] {
            let shown = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(carried(&body).as_deref(), Some(rt.as_str()), "{shown}");
        }
    }

    #[test]
    fn a_refresh_token_read_two_ways_is_not_handed_on() {
        let rt = vendor_example()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = vendor_example().to_string();
        let twice = body.replacen('{', r#"{"refresh_token":"other-token","#, 1);
        let err = parse_grant(twice.as_bytes(), "vms.all", &[]).unwrap_err();
        assert_eq!(err.field(), "refresh_token");
        assert!(err.refresh_token.is_none());
        let agreeing = body.replacen('{', &format!(r#"{{"refresh_token":"{rt}","#), 1);
        let grant = parse_grant(agreeing.as_bytes(), "vms.all", &[]).unwrap();
        assert_eq!(grant.refresh_token.unwrap().expose_secret(), rt);
    }

    #[test]
    fn a_token_of_exactly_the_longest_length_is_accepted() {
        let longest = "a".repeat(MAX_TOKEN_BYTES);
        let grant = parse_with(with("refresh_token", json!(longest)), &[]).unwrap();
        assert_eq!(
            grant.refresh_token.unwrap().expose_secret().len(),
            MAX_TOKEN_BYTES
        );
        assert_eq!(
            rejected_field(with(
                "refresh_token",
                json!("a".repeat(MAX_TOKEN_BYTES + 1))
            )),
            "refresh_token"
        );
    }

    #[test]
    fn non_json_and_non_object_bodies_are_refused() {
        for body in [
            &b"<html>hello</html>"[..],
            b"[1,2]",
            b"",
            b"{\"access_token\": \"x\"",
        ] {
            assert_eq!(
                parse_grant(body, "vms.all", &[]).unwrap_err().field(),
                "body"
            );
        }
    }

    #[test]
    fn odd_scopes_are_refused() {
        assert_eq!(rejected_field(with("scope", json!("vms.all\nx"))), "scope");
        assert_eq!(rejected_field(with("scope", json!(["vms.all"]))), "scope");
        assert_eq!(
            parse_with(with("scope", json!("vms.all openid")), &[])
                .unwrap()
                .scope,
            "vms.all openid"
        );
    }

    #[test]
    fn base_url_omits_the_default_port() {
        let base = |h: &str, port| {
            ApiBase {
                hostname: h.into(),
                port,
            }
            .base_url()
        };
        assert_eq!(
            base("api.c001.eagleeyenetworks.com", 443),
            "https://api.c001.eagleeyenetworks.com"
        );
        assert_eq!(
            base("api.c001.eagleeyenetworks.com", 8443),
            "https://api.c001.eagleeyenetworks.com:8443"
        );
        assert_eq!(base("127.0.0.1", 80), "https://127.0.0.1:80");
        assert_eq!(base("2001:db8::1", 443), "https://[2001:db8::1]");
        assert_eq!(base("2001:db8::1", 9000), "https://[2001:db8::1]:9000");
    }
}
