//! spec.target.template: extra target keys rendered from a fixed set of fields. The syntax
//! is substitution only, `{{ .field }}`: no functions, no conditionals, nothing that reads a
//! file or the environment, so a tenant's template can do nothing but rearrange the values
//! the target Secret publishes anyway. Errors name the key and the field, never a value.

use std::collections::BTreeMap;

use crate::crd::EagleEyeCredential;

/// The fields a template may name.
pub const FIELDS: [&str; 6] = [
    "accessToken",
    "tokenType",
    "baseUrl",
    "hostname",
    "port",
    "expiresAt",
];

/// Most fields one template may name.
pub const MAX_FIELDS: usize = 16;

/// The largest rendered value: far above any real use (a header, an env file, a JSON
/// document), far below what makes a Secret (1 MiB at most) a problem.
pub const MAX_RENDERED: usize = 64 * 1024;

/// The values a template renders from.
pub struct Values<'a> {
    pub access_token: &'a str,
    pub token_type: &'a str,
    pub base_url: &'a str,
    pub hostname: &'a str,
    pub port: &'a str,
    pub expires_at: &'a str,
}

impl Values<'_> {
    fn get(&self, field: &str) -> Option<&str> {
        Some(match field {
            "accessToken" => self.access_token,
            "tokenType" => self.token_type,
            "baseUrl" => self.base_url,
            "hostname" => self.hostname,
            "port" => self.port,
            "expiresAt" => self.expires_at,
            _ => return None,
        })
    }
}

/// One piece of a parsed template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'t> {
    Text(&'t str),
    Field(&'t str),
}

/// Parses `template`; the error says what is wrong and where, quoting only the template's
/// own syntax (a field name), never a value.
fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "`{{{{` at offset {} is never closed",
                offset + open
            ));
        };
        let inner = after[..close].trim();
        let field = inner.strip_prefix('.').filter(|f| FIELDS.contains(f));
        let Some(field) = field else {
            let shown: String = inner.chars().take(40).collect();
            return Err(format!(
                "unknown field {shown:?} at offset {}; a template may use only {}",
                offset + open,
                FIELDS.map(|f| format!("{{{{ .{f} }}}}")).join(", ")
            ));
        };
        pieces.push(Piece::Field(field));
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// What is wrong with `cr`'s templates, key by key (empty when nothing is).
pub fn problems(cr: &EagleEyeCredential) -> Vec<String> {
    let own = crate::target::own_keys(cr);
    cr.spec
        .target
        .template
        .iter()
        .filter_map(|(key, template)| {
            if own.contains(&key) {
                return Some(format!(
                    "key {key:?} is also one of spec.target.keys: choose another name"
                ));
            }
            // What the API server refuses as a Secret's key would fail every publish, the
            // one after a rotation included (the CRD refuses it too; this guards a CRD
            // applied by hand without the rule).
            if !crate::target::is_data_key(key) {
                return Some(format!(
                    "key {key:?} is not a Secret key (letters, digits, '-', '_' and '.'; not '.' and not starting with '..')"
                ));
            }
            match parse(template) {
                Err(e) => Some(format!("key {key:?}: {e}")),
                Ok(p) if p.iter().filter(|p| matches!(p, Piece::Field(_))).count() > MAX_FIELDS => {
                    Some(format!("key {key:?}: more than {MAX_FIELDS} fields"))
                }
                Ok(_) => None,
            }
        })
        .collect()
}

/// The keys rendered from `cr`'s templates; a template with a problem (see [`problems`]) or
/// rendering past [`MAX_RENDERED`] is left out.
pub fn render(cr: &EagleEyeCredential, values: &Values<'_>) -> BTreeMap<String, String> {
    let bad = problems(cr);
    cr.spec
        .target
        .template
        .iter()
        .filter(|(key, _)| !bad.iter().any(|p| p.starts_with(&format!("key {key:?}"))))
        .filter_map(|(key, template)| {
            let mut out = String::new();
            for piece in parse(template).ok()? {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Field(f) => out.push_str(values.get(f)?),
                }
                if out.len() > MAX_RENDERED {
                    return None;
                }
            }
            Some((key.clone(), out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.secret-part";

    fn values() -> Values<'static> {
        Values {
            access_token: TOKEN,
            token_type: "Bearer",
            base_url: "https://api.c001.eagleeyenetworks.com",
            hostname: "api.c001.eagleeyenetworks.com",
            port: "443",
            expires_at: "2026-12-06T21:00:00Z",
        }
    }

    #[test]
    fn a_key_no_secret_may_hold_is_a_problem_and_is_not_rendered() {
        for key in [".", "..", "..data", "a/b", ""] {
            let cr = with(&[(key, "{{ .accessToken }}"), ("ok", "{{ .tokenType }}")]);
            assert_eq!(problems(&cr).len(), 1, "key {key:?}");
            assert_eq!(
                render(&cr, &values()).keys().collect::<Vec<_>>(),
                ["ok"],
                "key {key:?}"
            );
        }
    }

    fn with(templates: &[(&str, &str)]) -> EagleEyeCredential {
        let mut cr = crate::target::tests::credential();
        cr.spec.target.template = templates
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cr
    }

    #[test]
    fn fields_are_substituted_and_everything_else_is_kept_as_written() {
        let cr = with(&[
            ("Authorization", "{{ .tokenType }} {{.accessToken}}"),
            (
                "env",
                "EEN_TOKEN={{ .accessToken }}\nEEN_URL={{ .baseUrl }}\n",
            ),
            (
                "json",
                r#"{"host":"{{ .hostname }}","port":{{ .port }},"expires":"{{ .expiresAt }}"}"#,
            ),
            ("plain", "no fields, { braces } and $HOME and `ls`"),
        ]);
        assert!(problems(&cr).is_empty());
        let out = render(&cr, &values());
        assert_eq!(out["Authorization"], format!("Bearer {TOKEN}"));
        assert_eq!(
            out["env"],
            format!("EEN_TOKEN={TOKEN}\nEEN_URL=https://api.c001.eagleeyenetworks.com\n")
        );
        let json: serde_json::Value = serde_json::from_str(&out["json"]).unwrap();
        assert_eq!(json["port"], 443);
        assert_eq!(out["plain"], "no fields, { braces } and $HOME and `ls`");
    }

    #[test]
    fn an_unknown_field_or_unclosed_braces_is_reported_by_key_and_left_out() {
        let cr = with(&[
            ("good", "{{ .accessToken }}"),
            ("typo", "Bearer {{ .acessToken }}"),
            ("env", "{{ env \"HOME\" }}"),
            ("open", "x {{ .accessToken"),
        ]);
        let p = problems(&cr);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.contains("\"typo\"") && m.contains(".acessToken"))
        );
        assert!(
            p.iter()
                .any(|m| m.contains("\"open\"") && m.contains("never closed"))
        );
        let out = render(&cr, &values());
        assert_eq!(out.keys().collect::<Vec<_>>(), ["good"]);
    }

    #[test]
    fn no_problem_message_carries_a_value() {
        let cr = with(&[
            ("a", "{{ .nope }}"),
            ("access_token", "{{ .accessToken }}"),
            ("b", "{{"),
        ]);
        let all = problems(&cr).join("\n");
        assert!(all.contains("spec.target.keys"), "{all}");
        for v in [TOKEN, "Bearer", "eagleeyenetworks", "443"] {
            assert!(!all.contains(v), "{all}");
        }
    }

    #[test]
    fn a_key_of_the_operators_own_is_never_overwritten_by_a_template() {
        let cr = with(&[("access_token", "stolen {{ .accessToken }}")]);
        assert_eq!(problems(&cr).len(), 1);
        assert!(render(&cr, &values()).is_empty());
    }

    #[test]
    fn a_rendering_past_the_bound_is_left_out() {
        let big = "{{ .accessToken }}".repeat(MAX_RENDERED / TOKEN.len() + 1);
        let cr = with(&[("big", &big)]);
        assert!(render(&cr, &values()).is_empty());
    }
}
