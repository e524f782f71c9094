//! Finds the refresh token in a success answer that cannot be used as a whole: cut at the
//! read ceiling, holding bytes that are not UTF-8, or failing validation elsewhere. The server
//! has most likely rotated the token it was sent, so the new one must reach the caller.
//!
//! One pass over the bytes with a few counters and flags: no recursion, and no allocation but
//! one token-sized buffer, so hostile bodies (deep nesting, huge strings, many keys) cost
//! time linear in their length and nothing more.

use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;

use super::grant::{MAX_TOKEN_BYTES, check_token};

const KEY: &[u8] = b"refresh_token";

/// What a body says about the `refresh_token` member of its top-level object.
pub(crate) enum Carried {
    /// No such member, or only `null`.
    Absent,
    /// A plausible token, the same wherever the member appears.
    Token(SecretString),
    /// The member is there but cannot be used; the problem, in words, never the value.
    Unusable(&'static str),
}

impl Carried {
    pub fn token(&self) -> Option<SecretString> {
        match self {
            Carried::Token(token) => Some(token.clone()),
            Carried::Absent | Carried::Unusable(_) => None,
        }
    }
}

/// One appearance of the member.
#[derive(PartialEq, Eq)]
enum Occurrence {
    Null,
    Text(Decoded),
    NotString,
    /// The body ended inside the value.
    Cut,
}

/// A JSON string with its escapes resolved, kept up to a limit.
#[derive(Default, PartialEq, Eq)]
struct Decoded {
    bytes: Zeroizing<Vec<u8>>,
    /// Longer than the limit: `bytes` holds only the start.
    too_long: bool,
    /// An escape that is not JSON, or that stands for a character outside ASCII.
    bad_escape: bool,
}

/// The `refresh_token` member of the top-level object of `body`, read as far as the body
/// goes. Only a body that starts (after white space) with `{` is looked at.
pub(crate) fn refresh_token(body: &[u8]) -> Carried {
    let mut scan = Scanner::default();
    let mut i = skip_white(body, 0);
    if body.get(i) != Some(&b'{') {
        return Carried::Absent;
    }
    i += 1;
    scan.depth = 1;
    scan.expect_key = true;
    while i < body.len() {
        i = scan.step(body, i);
        if scan.done {
            break;
        }
    }
    scan.verdict()
}

#[derive(Default)]
struct Scanner {
    /// 1 inside the top-level object, more inside its values.
    depth: usize,
    /// At depth 1, the next string is a member name.
    expect_key: bool,
    /// At depth 1, the name just read was `refresh_token` (until its value is read).
    pending: bool,
    /// At depth 1, a `:` was read and the value has not started yet.
    in_value: bool,
    first: Option<Occurrence>,
    disagree: bool,
    /// The top-level object has closed, or the body ended inside the member's value.
    done: bool,
}

impl Scanner {
    /// Reads the token starting at `i`; returns where the next one starts.
    fn step(&mut self, body: &[u8], i: usize) -> usize {
        let top = self.depth == 1;
        match body[i] {
            b'"' => {
                let is_value = top && self.in_value && self.pending;
                let is_key = top && self.expect_key;
                // Names need only be compared with "refresh_token": one byte more is enough.
                let limit = if is_value {
                    MAX_TOKEN_BYTES
                } else if is_key {
                    KEY.len()
                } else {
                    0
                };
                let (next, decoded) = read_string(body, i + 1, limit);
                let closed = next.is_some();
                if is_value {
                    self.record(if closed {
                        Occurrence::Text(decoded)
                    } else {
                        Occurrence::Cut
                    });
                } else if is_key {
                    self.pending = closed && !decoded.too_long && !decoded.bad_escape && {
                        decoded.bytes.as_slice() == KEY
                    };
                    self.expect_key = false;
                } else if top {
                    // A stray string: whatever name came before it has lost its value.
                    self.in_value = false;
                    self.pending = false;
                }
                match next {
                    Some(next) => next,
                    None => {
                        self.done = true;
                        body.len()
                    }
                }
            }
            b'{' | b'[' => {
                if top && self.in_value && self.pending {
                    self.record(Occurrence::NotString);
                }
                if top {
                    self.in_value = false;
                    self.pending = false;
                }
                self.depth = self.depth.saturating_add(1);
                i + 1
            }
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.done = true;
                }
                i + 1
            }
            b',' if top => {
                self.expect_key = true;
                self.pending = false;
                self.in_value = false;
                i + 1
            }
            b':' if top => {
                self.in_value = !self.expect_key;
                i + 1
            }
            b' ' | b'\t' | b'\n' | b'\r' => i + 1,
            _ => {
                // A literal (number, true, false, null), stray bytes, or a `,` or `:` below
                // the top level: at least one byte, up to the next delimiter.
                let end = body[i + 1..]
                    .iter()
                    .position(|b| b",:{}[]\" \t\n\r".contains(b))
                    .map_or(body.len(), |n| i + 1 + n);
                if top && self.in_value && self.pending {
                    let literal = &body[i..end];
                    self.record(if literal == b"null" {
                        Occurrence::Null
                    } else {
                        Occurrence::NotString
                    });
                }
                if top {
                    self.in_value = false;
                    self.pending = false;
                }
                end
            }
        }
    }

    fn record(&mut self, occurrence: Occurrence) {
        self.pending = false;
        self.in_value = false;
        if occurrence == Occurrence::Cut {
            // Nothing past the end can be read, and a token cut short is no token.
            self.done = true;
        }
        match &self.first {
            None => self.first = Some(occurrence),
            Some(first) => self.disagree |= *first != occurrence,
        }
    }

    fn verdict(self) -> Carried {
        if self.disagree {
            return Carried::Unusable("appears more than once with different values");
        }
        match self.first {
            None | Some(Occurrence::Null) => Carried::Absent,
            Some(Occurrence::NotString) => Carried::Unusable("is not a string"),
            Some(Occurrence::Cut) => Carried::Unusable("is cut off"),
            Some(Occurrence::Text(decoded)) => {
                if decoded.too_long {
                    return Carried::Unusable("is too long");
                }
                if decoded.bad_escape {
                    return Carried::Unusable("has characters outside visible ASCII");
                }
                if let Err(problem) = check_token(&decoded.bytes) {
                    return Carried::Unusable(problem);
                }
                // `check_token` allowed visible ASCII only, which is always UTF-8.
                match std::str::from_utf8(&decoded.bytes) {
                    Ok(text) => Carried::Token(SecretString::from(text)),
                    Err(_) => Carried::Unusable("has characters outside visible ASCII"),
                }
            }
        }
    }
}

fn skip_white(body: &[u8], mut i: usize) -> usize {
    while body
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Reads a JSON string whose content starts at `i`, resolving escapes into at most `limit`
/// bytes. Returns where the string ends (after its closing quote), or `None` when the body
/// ends first.
fn read_string(body: &[u8], mut i: usize, limit: usize) -> (Option<usize>, Decoded) {
    let mut out = Decoded::default();
    let push = |out: &mut Decoded, byte: u8| {
        if out.bytes.len() < limit {
            out.bytes.push(byte);
        } else {
            out.too_long = true;
        }
    };
    while i < body.len() {
        match body[i] {
            b'"' => return (Some(i + 1), out),
            b'\\' => {
                let Some(&escaped) = body.get(i + 1) else {
                    return (None, out);
                };
                i += 2;
                let byte = match escaped {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        let Some(hex) = body.get(i..i + 4) else {
                            return (None, out);
                        };
                        i += 4;
                        match std::str::from_utf8(hex)
                            .ok()
                            .and_then(|h| u16::from_str_radix(h, 16).ok())
                        {
                            Some(code) if code < 0x80 => code as u8,
                            _ => {
                                out.bad_escape = true;
                                continue;
                            }
                        }
                    }
                    _ => {
                        out.bad_escape = true;
                        continue;
                    }
                };
                push(&mut out, byte);
            }
            byte => {
                push(&mut out, byte);
                i += 1;
            }
        }
    }
    (None, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use secrecy::ExposeSecret;
    use serde_json::json;

    const TOKEN: &str = "w1P0nwA7NEZmo5tEd76cco3y5bi4Js6QNgZsXnFNBDRep";

    fn token_in(body: &[u8]) -> Option<String> {
        match refresh_token(body) {
            Carried::Token(t) => Some(t.expose_secret().to_owned()),
            Carried::Absent | Carried::Unusable(_) => None,
        }
    }

    fn problem_in(body: &[u8]) -> Option<&'static str> {
        match refresh_token(body) {
            Carried::Unusable(problem) => Some(problem),
            Carried::Absent | Carried::Token(_) => None,
        }
    }

    fn vendor_body() -> Vec<u8> {
        json!({
            "access_token": "eyJhbGciOiJSUzI1NiJ9.e30.sig",
            "expires_in": 43198,
            "httpsBaseUrl": {"hostname": "api.c001.eagleeyenetworks.com", "port": 443},
            "refresh_token": TOKEN,
            "scope": "vms.all",
            "token_type": "Bearer"
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_token_of_a_well_formed_answer_is_found() {
        assert_eq!(token_in(&vendor_body()).as_deref(), Some(TOKEN));
        let spaced = format!("\r\n {{ \"refresh_token\" :\t\"{TOKEN}\" }}");
        assert_eq!(token_in(spaced.as_bytes()).as_deref(), Some(TOKEN));
    }

    #[test]
    fn escapes_are_resolved_in_names_and_values() {
        let body = br#"{"refresh\u005ftoken":"a\/b\u002Dc"}"#;
        assert_eq!(token_in(body).as_deref(), Some("a/b-c"));
    }

    #[test]
    fn a_token_before_odd_bytes_or_a_cut_is_found() {
        let mut body = br#"{"refresh_token":"rt-1","scope":"#.to_vec();
        body.extend_from_slice(b"\"\xc3\x28\xff\" , \x00\x01 }");
        assert_eq!(token_in(&body).as_deref(), Some("rt-1"));
        let body = br#"{"refresh_token":"rt-1","access_token":"AAAAAAAA"#;
        assert_eq!(token_in(body).as_deref(), Some("rt-1"));
    }

    #[test]
    fn a_token_cut_off_by_the_end_of_the_body_is_unusable() {
        for body in [
            &br#"{"refresh_token":"rt-1"#[..],
            br#"{"refresh_token":"rt\"#,
            br#"{"refresh_token":"rt\u00"#,
        ] {
            assert_eq!(problem_in(body), Some("is cut off"), "{body:?}");
        }
    }

    #[test]
    fn only_a_member_of_the_top_level_object_counts() {
        for body in [
            &br#"{"nested":{"refresh_token":"rt-1"}}"#[..],
            br#"{"list":["refresh_token","rt-1"]}"#,
            br#"{"a":"refresh_token","b":"rt-1"}"#,
            br#"{"refresh_token_x":"rt-1"}"#,
            br#"[{"refresh_token":"rt-1"}]"#,
            br#"{"a":"{\"refresh_token\":\"rt-1\"}"}"#,
            br#"{} {"refresh_token":"rt-1"}"#,
            b"<html>\"refresh_token\":\"rt-1\"</html>",
            b"",
        ] {
            assert!(
                matches!(refresh_token(body), Carried::Absent),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn repeated_members_must_agree() {
        let same = br#"{"refresh_token":"rt-1","x":1,"refresh_token":"rt-1"}"#;
        assert_eq!(token_in(same).as_deref(), Some("rt-1"));
        for body in [
            &br#"{"refresh_token":"rt-1","refresh_token":"rt-2"}"#[..],
            br#"{"refresh_token":"rt-1","refresh_token":null}"#,
            br#"{"refresh_token":"rt-1","refresh_token":{"a":1}}"#,
            br#"{"refresh_token":"rt-1","refresh_token":"rt-1x"}"#,
        ] {
            assert_eq!(
                problem_in(body),
                Some("appears more than once with different values"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn implausible_tokens_are_unusable_and_null_is_absent() {
        let cases: [(&[u8], &str); 7] = [
            (br#"{"refresh_token":""}"#, "is empty"),
            (br#"{"refresh_token":"a b"}"#, "has characters"),
            (br#"{"refresh_token":"a\nb"}"#, "has characters"),
            (br#"{"refresh_token":"caf\u00e9"}"#, "has characters"),
            (b"{\"refresh_token\":\"caf\xc3\xa9\"}", "has characters"),
            (br#"{"refresh_token":42}"#, "is not a string"),
            (br#"{"refresh_token":["rt"]}"#, "is not a string"),
        ];
        for (body, problem) in cases {
            let found = problem_in(body).unwrap_or("none");
            assert!(found.starts_with(problem), "{found} for {body:?}");
        }
        assert!(matches!(
            refresh_token(br#"{"refresh_token":null}"#),
            Carried::Absent
        ));
        let long = format!(
            r#"{{"refresh_token":"{}"}}"#,
            "a".repeat(MAX_TOKEN_BYTES + 1)
        );
        assert_eq!(problem_in(long.as_bytes()), Some("is too long"));
        let longest = format!(r#"{{"refresh_token":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES));
        assert!(token_in(longest.as_bytes()).is_some());
    }

    #[test]
    fn hostile_bodies_cost_no_more_than_their_length() {
        // Nesting far beyond any recursion limit, before and after the member.
        let deep = 1_000_000;
        let mut body = b"{\"a\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', deep));
        body.extend(std::iter::repeat_n(b']', deep));
        body.extend_from_slice(br#","refresh_token":"rt-1","b":"#);
        body.extend(std::iter::repeat_n(b'{', deep));
        assert_eq!(token_in(&body).as_deref(), Some("rt-1"));
        // More closers than openers end the object; nothing underflows.
        assert!(matches!(refresh_token(b"{]]]]}}}}"), Carried::Absent));
        // A huge string value for the member is refused without being kept whole.
        let mut body = br#"{"refresh_token":""#.to_vec();
        body.extend(std::iter::repeat_n(b'A', 4 << 20));
        body.extend_from_slice(b"\"}");
        assert_eq!(problem_in(&body), Some("is too long"));
        // Many members with the same name and value.
        let mut body = b"{".to_vec();
        for _ in 0..50_000 {
            body.extend_from_slice(br#""refresh_token":"rt-1","#);
        }
        body.extend_from_slice(b"\"x\":1}");
        assert_eq!(token_in(&body).as_deref(), Some("rt-1"));
    }

    /// A random JSON value, `depth` levels deep at most, from a small alphabet that makes
    /// name clashes with "refresh_token" likely.
    fn random_value(rng: &mut impl Rng, depth: u32) -> serde_json::Value {
        let words = ["refresh_token", "rt", "a\"b", "x\\y", "é", "", "{", "]"];
        match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => serde_json::Value::Null,
            1 => json!(rng.random_range(-5..5)),
            2 => json!(words[rng.random_range(0..words.len())]),
            3 => json!(rng.random_bool(0.5)),
            4 => (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
            _ => serde_json::Value::Object(
                (0..rng.random_range(0..4))
                    .map(|_| {
                        let key = words[rng.random_range(0..words.len())].to_owned();
                        (key, random_value(rng, depth - 1))
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn on_generated_json_the_scanner_agrees_with_serde() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for _ in 0..5_000 {
            let mut value = random_value(&mut rng, 4);
            if !value.is_object() {
                value = json!({ "v": value });
            }
            if rng.random_bool(0.5) {
                value["refresh_token"] = json!(format!("rt-{}", rng.random_range(0..1000)));
            }
            let text = value.to_string();
            let expected = match value.get("refresh_token") {
                None | Some(serde_json::Value::Null) => "absent".to_owned(),
                Some(serde_json::Value::String(s)) if check_token(s.as_bytes()).is_ok() => {
                    s.clone()
                }
                Some(_) => "unusable".to_owned(),
            };
            let found = match refresh_token(text.as_bytes()) {
                Carried::Absent => "absent".to_owned(),
                Carried::Token(t) => t.expose_secret().to_owned(),
                Carried::Unusable(_) => "unusable".to_owned(),
            };
            assert_eq!(found, expected, "{text}");
        }
    }

    #[test]
    fn on_generated_garbage_the_scanner_finds_only_plausible_tokens() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces: [&[u8]; 12] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\\",
            b":",
            b",",
            b"\"refresh_token\"",
            b"rt",
            b"\xff",
            b" ",
        ];
        for _ in 0..20_000 {
            let mut body = Vec::new();
            for _ in 0..rng.random_range(0..40) {
                body.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
            if let Carried::Token(t) = refresh_token(&body) {
                assert!(check_token(t.expose_secret().as_bytes()).is_ok());
            }
            // Cut anywhere: a body that is a prefix never panics either.
            let cut = rng.random_range(0..=body.len());
            let _ = refresh_token(&body[..cut]);
        }
    }
}
