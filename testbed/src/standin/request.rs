//! Reading the parts of a token request the way a Spring Authorization Server does: content
//! negotiation, the form body, and HTTP Basic client credentials with each part form-decoded
//! (RFC 6749 §2.3.1), which differs from the vendor's samples for secrets like `a+b%2F c`.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// A request part that cannot be read at all: Spring answers `invalid_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Whether an `Accept` header admits `application/json`. A missing header does not: the vendor
/// tells clients to send it, and the stand-in is strict so that a client which forgets it fails.
pub fn accepts_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|range| {
        let mut pieces = range.split(';');
        let media = pieces
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let refused = pieces.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && matches!(media.as_str(), "application/json" | "application/*" | "*/*")
    })
}

/// Whether a `Content-Type` is `application/x-www-form-urlencoded`, parameters allowed.
pub fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let media = ct.split(';').next().unwrap_or_default().trim();
        media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
/// A stray `%` or bytes that are not UTF-8 are malformed, as Java's `URLDecoder` finds them.
pub fn form_decode(component: &str) -> Result<String, Malformed> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(Malformed)?;
                let hex = std::str::from_utf8(hex).map_err(|_| Malformed)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| Malformed)?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Malformed)
}

/// Client credentials from an `Authorization` header. `Ok(None)` when there is no Basic header
/// (the client did not authenticate); `Err` when the Basic header cannot be read.
pub fn basic_credentials(
    authorization: Option<&str>,
) -> Result<Option<(String, String)>, Malformed> {
    let Some((scheme, encoded)) = authorization.and_then(|h| h.trim().split_once(' ')) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    // Java's decoder, which Spring uses, accepts base64 with or without padding.
    let engine = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let decoded = engine.decode(encoded.trim()).map_err(|_| Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or(Malformed)?;
    Ok(Some((form_decode(id)?, form_decode(secret)?)))
}

/// A parsed form body whose parameters may each appear at most once.
// No Debug: it holds tokens and codes.
#[derive(Default)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        let pairs = url::form_urlencoded::parse(body).into_owned().collect();
        Self { pairs }
    }

    /// The value of `name`; Spring refuses a parameter sent twice.
    pub fn single(&self, name: &str) -> Result<Option<&str>, Malformed> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        match values.next() {
            Some(_) => Err(Malformed),
            None => Ok(first),
        }
    }

    /// Like [`Form::single`], but a missing or empty value is malformed too.
    pub fn required(&self, name: &str) -> Result<&str, Malformed> {
        self.single(name)?
            .filter(|v| !v.is_empty())
            .ok_or(Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

    #[test]
    fn accept_admits_json_ranges_and_refuses_the_rest() {
        for ok in [
            "application/json",
            "*/*",
            "application/*",
            "text/html, application/json;q=0.5",
        ] {
            assert!(accepts_json(Some(ok)), "{ok}");
        }
        assert!(accepts_json(Some("Application/JSON; charset=UTF-8")));
        for refused in ["text/html", "application/xml", "application/json;q=0", ""] {
            assert!(!accepts_json(Some(refused)), "{refused}");
        }
        assert!(!accepts_json(None));
    }

    #[test]
    fn content_type_must_be_a_form() {
        assert!(is_form(Some("application/x-www-form-urlencoded")));
        assert!(is_form(Some(
            "application/x-www-form-urlencoded;charset=UTF-8"
        )));
        assert!(!is_form(Some("application/json")));
        assert!(!is_form(None));
    }

    #[test]
    fn form_decode_follows_form_rules() {
        assert_eq!(form_decode("a+b%2F%20c:d/e").unwrap(), "a b/ c:d/e");
        assert_eq!(form_decode("%C3%A9").unwrap(), "é");
        assert_eq!(form_decode("50%"), Err(Malformed));
        assert_eq!(form_decode("%zz"), Err(Malformed));
        assert_eq!(form_decode("%FF"), Err(Malformed));
    }

    #[test]
    fn basic_splits_at_the_first_colon_then_decodes_each_part() {
        let header = format!("Basic {}", STANDARD.encode("my%3Aid:a%2Bb%252F+c%3Ad:e"));
        let (id, secret) = basic_credentials(Some(&header)).unwrap().unwrap();
        assert_eq!(id, "my:id");
        assert_eq!(secret, "a+b%2F c:d:e");
    }

    #[test]
    fn basic_accepts_missing_padding_and_any_scheme_case() {
        let header = format!("basic {}", STANDARD_NO_PAD.encode("id:s"));
        assert_eq!(
            basic_credentials(Some(&header)),
            Ok(Some(("id".to_owned(), "s".to_owned())))
        );
    }

    #[test]
    fn basic_header_absent_or_other_scheme_is_no_credentials() {
        assert_eq!(basic_credentials(None), Ok(None));
        assert_eq!(basic_credentials(Some("Bearer abc")), Ok(None));
    }

    #[test]
    fn unreadable_basic_header_is_malformed() {
        assert_eq!(basic_credentials(Some("Basic !!!")), Err(Malformed));
        let no_colon = format!("Basic {}", STANDARD.encode("idsecret"));
        assert_eq!(basic_credentials(Some(&no_colon)), Err(Malformed));
    }

    #[test]
    fn form_refuses_duplicates_and_requires_values() {
        let form = Form::parse(b"grant_type=refresh_token&scope=vms.all&scope=x&code=");
        assert_eq!(form.single("grant_type"), Ok(Some("refresh_token")));
        assert_eq!(form.single("scope"), Err(Malformed));
        assert_eq!(form.single("missing"), Ok(None));
        assert_eq!(form.required("code"), Err(Malformed));
    }
}
