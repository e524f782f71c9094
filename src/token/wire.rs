//! The request side of the wire format: client authentication, form bodies,
//! and the `Retry-After` header of error answers.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use url::form_urlencoded;

/// Longest wait honoured from `Retry-After`; anything longer is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Authorization: Basic …` the RFC 6749 §2.3.1 way: form-url-encode the client id and
/// secret each, join them with `:`, then base64. Marked sensitive so hyper never logs it.
pub(crate) fn basic_auth(client_id: &str, secret: &SecretString) -> HeaderValue {
    // Held as secrets so these copies are wiped when dropped.
    let joined = SecretString::from(format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(secret.expose_secret())
    ));
    let header = SecretString::from(format!(
        "Basic {}",
        STANDARD.encode(joined.expose_secret().as_bytes())
    ));
    // Invariant: "Basic " followed by base64 is visible ASCII, always a valid header value.
    let mut value =
        HeaderValue::from_str(header.expose_secret()).expect("base64 text is a valid header value");
    value.set_sensitive(true);
    value
}

fn form_encode(raw: &str) -> String {
    form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

pub(crate) fn refresh_form(scope: &str, refresh_token: &SecretString) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("scope", scope)
        .append_pair("refresh_token", refresh_token.expose_secret())
        .finish()
}

pub(crate) fn code_form(scope: &str, code: &SecretString, redirect_uri: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("scope", scope)
        .append_pair("code", code.expose_secret())
        .append_pair("redirect_uri", redirect_uri)
        .finish()
}

pub(crate) fn revoke_form(refresh_token: &SecretString) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("token", refresh_token.expose_secret())
        .append_pair("token_type_hint", "refresh_token")
        .finish()
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to `now`.
/// Dates in the past give zero; unparseable values give `None`.
pub(crate) fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time".
        Duration::from_secs(value.parse().unwrap_or(u64::MAX))
    } else {
        // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is valid RFC 2822; the obsolete
        // RFC 850 and asctime forms are not supported.
        // The weekday is dropped: it is optional in RFC 2822 and a wrong one (which jiff
        // rightly rejects) should not lose the date.
        let date = match value.split_once(", ") {
            Some((day, rest)) if day.len() == 3 => rest,
            _ => value,
        };
        let at = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(date)
            .ok()?;
        let secs = at.as_second().saturating_sub(now.as_second());
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded_basic(value: &HeaderValue) -> String {
        let text = value.to_str().unwrap();
        let b64 = text.strip_prefix("Basic ").unwrap();
        String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret_before_base64() {
        let secret = SecretString::from("p+a%s:s/w rd");
        let value = basic_auth("client:id", &secret);
        assert!(value.is_sensitive());
        assert_eq!(decoded_basic(&value), "client%3Aid:p%2Ba%25s%3As%2Fw+rd");
    }

    #[test]
    fn basic_auth_of_plain_credentials_matches_the_vendor_example() {
        // The guide's example header is base64("clientId:clientSecret").
        let value = basic_auth("clientId", &SecretString::from("clientSecret"));
        assert_eq!(
            value.to_str().unwrap(),
            "Basic Y2xpZW50SWQ6Y2xpZW50U2VjcmV0"
        );
    }

    #[test]
    fn forms_are_url_encoded_bodies_without_query_parameters() {
        let rt = SecretString::from("a+b/c=d&e");
        assert_eq!(
            refresh_form("vms.all", &rt),
            "grant_type=refresh_token&scope=vms.all&refresh_token=a%2Bb%2Fc%3Dd%26e"
        );
        let code = SecretString::from("AbC");
        assert_eq!(
            code_form("vms.all", &code, "http://127.0.0.1:3333"),
            "grant_type=authorization_code&scope=vms.all&code=AbC&redirect_uri=http%3A%2F%2F127.0.0.1%3A3333"
        );
        assert_eq!(
            revoke_form(&rt),
            "token=a%2Bb%2Fc%3Dd%26e&token_type_hint=refresh_token"
        );
    }

    #[test]
    fn retry_after_accepts_delta_seconds() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "-1", "1.5", "soon", "12 s"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        let later = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now);
        assert_eq!(later, Some(Duration::from_secs(60)));
        let past = parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now);
        assert_eq!(past, Some(Duration::ZERO));
        let far = parse_retry_after("Tue, 21 Oct 2025 07:00:00 GMT", now);
        assert_eq!(far, Some(MAX_RETRY_AFTER));
        let wrong_weekday = parse_retry_after("Mon, 21 Oct 2015 07:28:00 GMT", now);
        assert_eq!(wrong_weekday, Some(Duration::from_secs(60)));
        assert_eq!(
            parse_retry_after("Wed, 32 Oct 2015 07:28:00 GMT", now),
            None
        );
    }
}
