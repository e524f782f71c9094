//! Where a token call goes.

use std::fmt;

use url::Url;

/// Where a call goes: what one connection pool serves, and what a hung server holds up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    scheme: String,
    host: String,
    port: u16,
}

impl Destination {
    /// The destination of a URL: its scheme, its host as the URL parser normalised it
    /// (lower case, IPv6 in brackets), and its port, the scheme's default when none is given.
    pub fn of(url: &Url) -> Destination {
        Destination {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Destination {
    /// Safe to show: scheme, host and port carry no userinfo, path or query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}
