//! What an authorize run will touch, decided before anyone logs in: which Secrets and keys,
//! which auth server and scope, and whether the credential is created, changed or left as
//! it is. Pure: flags and the existing credential in, a plan out.

use url::Url;

use crate::crd::{DEFAULT_AUTH_URL, EagleEyeCredential};
use crate::token::{AuthPolicy, AuthUrl, AuthUrlError, EAGLE_EYE_AUTH_HOSTS};

/// What the person asked for on the command line (all optional but the name).
#[derive(Clone, Debug)]
pub struct Wanted {
    pub name: String,
    pub client_secret: Option<String>,
    pub refresh_token_secret: Option<String>,
    pub auth_url: Option<String>,
    pub scope: Option<String>,
    pub allow_insecure_http: bool,
    /// `--allowed-auth-hosts`: where the credential's authUrl may send the person. An auth
    /// URL given on the command line is the person's own choice and is not held to it.
    pub allowed_auth_hosts: Vec<String>,
}

impl Default for Wanted {
    fn default() -> Self {
        Wanted {
            name: String::new(),
            client_secret: None,
            refresh_token_secret: None,
            auth_url: None,
            scope: None,
            allow_insecure_http: false,
            allowed_auth_hosts: vec![EAGLE_EYE_AUTH_HOSTS.to_owned()],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSecretPlan {
    pub name: String,
    pub id_key: String,
    pub secret_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshSecretPlan {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialChange {
    Create,
    Update,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub client: ClientSecretPlan,
    pub refresh: RefreshSecretPlan,
    pub auth_url: Url,
    pub scope: String,
    pub credential: CredentialChange,
}

impl Plan {
    /// Flags win; otherwise the existing credential's settings; otherwise the defaults
    /// (`<name>-client`, `<name>-refresh-token`, the real auth server, `vms.all`).
    pub fn resolve(wanted: &Wanted, existing: Option<&EagleEyeCredential>) -> Result<Plan, String> {
        let name = &wanted.name;
        let spec = existing.map(|cr| &cr.spec);
        let client_name = wanted
            .client_secret
            .clone()
            .or_else(|| spec.map(|s| s.client_secret_ref.name.clone()))
            .unwrap_or_else(|| format!("{name}-client"));
        let (id_key, secret_key) = match spec.map(|s| &s.client_secret_ref) {
            Some(r) if r.name == client_name => {
                (r.client_id_key.clone(), r.client_secret_key.clone())
            }
            _ => ("client_id".to_owned(), "client_secret".to_owned()),
        };
        let refresh_name = wanted
            .refresh_token_secret
            .clone()
            .or_else(|| spec.map(|s| s.refresh_token_secret_ref.name.clone()))
            .unwrap_or_else(|| format!("{name}-refresh-token"));
        let refresh_key = match spec.map(|s| &s.refresh_token_secret_ref) {
            Some(r) if r.name == refresh_name => r.key.clone(),
            _ => "refresh_token".to_owned(),
        };
        let auth_url = wanted
            .auth_url
            .clone()
            .or_else(|| spec.map(|s| s.auth_url.clone()))
            .unwrap_or_else(|| DEFAULT_AUTH_URL.to_owned());
        let scope = wanted
            .scope
            .clone()
            .or_else(|| spec.map(|s| s.scope.clone()))
            .unwrap_or_else(|| "vms.all".to_owned());
        if scope.trim().is_empty() {
            return Err("--scope must not be empty".into());
        }
        // Whoever may edit the credential chooses its authUrl: it must be an allowed host,
        // or the login page (and the client secret, at the code exchange) could be theirs.
        let policy = AuthPolicy::new(&wanted.allowed_auth_hosts, wanted.allow_insecure_http)?;
        let (policy, from_credential) = match &wanted.auth_url {
            Some(_) => (policy.without_host_list(), false),
            None => (policy, spec.is_some()),
        };
        let parsed_auth_url = AuthUrl::parse(&auth_url, &policy)
            .map_err(|e| match e {
                AuthUrlError::HostNotAllowed { .. } | AuthUrlError::PortNotAllowed { .. }
                    if from_credential =>
                {
                    format!(
                        "{e}. It is the credential's authUrl, which anyone who may edit the \
                         credential can change: if it is the right auth server, pass it with \
                         --auth-url (or add its host and port to --allowed-auth-hosts)"
                    )
                }
                e => e.to_string(),
            })?
            .into_url();
        let credential = match spec {
            None => CredentialChange::Create,
            Some(s)
                if s.client_secret_ref.name == client_name
                    && s.refresh_token_secret_ref.name == refresh_name
                    && same_url(&s.auth_url, &parsed_auth_url)
                    && s.scope == scope =>
            {
                CredentialChange::Unchanged
            }
            Some(_) => CredentialChange::Update,
        };
        Ok(Plan {
            name: name.clone(),
            client: ClientSecretPlan {
                name: client_name,
                id_key,
                secret_key,
            },
            refresh: RefreshSecretPlan {
                name: refresh_name,
                key: refresh_key,
            },
            auth_url: parsed_auth_url,
            scope,
            credential,
        })
    }

    /// The credential fields authorize sets, as a server-side apply body. Only these fields
    /// become ours; everything else on an existing credential stays with its owner.
    pub fn credential_apply(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "metadata": {"name": self.name},
            "spec": {
                "clientSecretRef": {
                    "name": self.client.name,
                    "clientIdKey": self.client.id_key,
                    "clientSecretKey": self.client.secret_key,
                },
                "refreshTokenSecretRef": {"name": self.refresh.name, "key": self.refresh.key},
                "authUrl": auth_url_text(&self.auth_url),
                "scope": self.scope,
            }
        })
    }
}

/// The auth URL as the credential stores it: without the slash a URL parser adds to a bare
/// host, so that the default reads exactly as the CRD's default.
pub fn auth_url_text(url: &Url) -> String {
    let text = url.as_str();
    if url.path() == "/" {
        text.trim_end_matches('/').to_owned()
    } else {
        text.to_owned()
    }
}

/// Whether the credential's auth URL is this one, however each spells a bare host.
fn same_url(existing: &str, url: &Url) -> bool {
    Url::parse(existing).is_ok_and(|e| auth_url_text(&e) == auth_url_text(url))
}

/// Another credential in the namespace that already refreshes this refresh-token Secret:
/// two credentials spending one rotating token destroy it.
pub fn other_claimant<'a>(
    credentials: &'a [EagleEyeCredential],
    name: &str,
    refresh_secret: &str,
) -> Option<&'a str> {
    credentials
        .iter()
        .filter(|cr| cr.metadata.name.as_deref() != Some(name))
        .find(|cr| cr.spec.refresh_token_secret_ref.name == refresh_secret)
        .and_then(|cr| cr.metadata.name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(spec: serde_json::Value) -> EagleEyeCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "metadata": {"name": "een"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn wanted() -> Wanted {
        Wanted {
            name: "een".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_credential_gets_default_names_and_the_real_auth_server() {
        let plan = Plan::resolve(&wanted(), None).unwrap();
        assert_eq!(plan.client.name, "een-client");
        assert_eq!(
            (plan.client.id_key.as_str(), plan.client.secret_key.as_str()),
            ("client_id", "client_secret")
        );
        assert_eq!(plan.refresh.name, "een-refresh-token");
        assert_eq!(plan.refresh.key, "refresh_token");
        assert_eq!(auth_url_text(&plan.auth_url), DEFAULT_AUTH_URL);
        assert_eq!(plan.scope, "vms.all");
        assert_eq!(plan.credential, CredentialChange::Create);
    }

    #[test]
    fn an_existing_credential_keeps_its_secrets_keys_and_server() {
        let cr = existing(serde_json::json!({
            "clientSecretRef": {"name": "c", "clientIdKey": "id", "clientSecretKey": "sec"},
            "refreshTokenSecretRef": {"name": "r", "key": "rt"},
            "authUrl": "https://auth.example.com",
        }));
        let w = Wanted {
            allowed_auth_hosts: vec!["auth.example.com".into()],
            ..wanted()
        };
        let plan = Plan::resolve(&w, Some(&cr)).unwrap();
        assert_eq!(
            plan.client,
            ClientSecretPlan {
                name: "c".into(),
                id_key: "id".into(),
                secret_key: "sec".into()
            }
        );
        assert_eq!(
            plan.refresh,
            RefreshSecretPlan {
                name: "r".into(),
                key: "rt".into()
            }
        );
        assert_eq!(auth_url_text(&plan.auth_url), "https://auth.example.com");
        assert_eq!(plan.credential, CredentialChange::Unchanged);
    }

    #[test]
    fn a_trailing_slash_on_the_auth_url_is_no_change() {
        let cr = existing(serde_json::json!({
            "clientSecretRef": {"name": "c"},
            "refreshTokenSecretRef": {"name": "r"},
            "authUrl": "https://127.0.0.1:8443",
        }));
        let w = Wanted {
            auth_url: Some("https://127.0.0.1:8443/".into()),
            ..wanted()
        };
        let plan = Plan::resolve(&w, Some(&cr)).unwrap();
        assert_eq!(plan.credential, CredentialChange::Unchanged);
    }

    #[test]
    fn flags_that_differ_from_the_existing_credential_update_it() {
        let cr = existing(serde_json::json!({
            "clientSecretRef": {"name": "c", "clientIdKey": "id"},
            "refreshTokenSecretRef": {"name": "r", "key": "rt"},
        }));
        let w = Wanted {
            refresh_token_secret: Some("r2".into()),
            ..wanted()
        };
        let plan = Plan::resolve(&w, Some(&cr)).unwrap();
        assert_eq!(plan.credential, CredentialChange::Update);
        assert_eq!(
            plan.refresh.key, "refresh_token",
            "a new Secret gets the default key"
        );
        assert_eq!(plan.client.id_key, "id");
        let body = plan.credential_apply();
        assert_eq!(body["spec"]["refreshTokenSecretRef"]["name"], "r2");
        assert_eq!(body["spec"]["authUrl"], DEFAULT_AUTH_URL);
        assert_eq!(body["metadata"]["name"], "een");
    }

    #[test]
    fn http_auth_urls_need_the_insecure_flag_and_a_loopback_host() {
        let with = |url: &str, allow| {
            Plan::resolve(
                &Wanted {
                    auth_url: Some(url.into()),
                    allow_insecure_http: allow,
                    ..wanted()
                },
                None,
            )
        };
        let err = with("http://127.0.0.1:9000", false).unwrap_err();
        assert!(err.contains("--allow-insecure-http"), "{err}");
        assert!(with("https://auth.example.com#f", false).is_err());
        assert!(with("https://u:p@auth.example.com", false).is_err());
        assert!(with("http://127.0.0.1:9000", true).is_ok());
        assert!(with("http://auth.example.com", true).is_err());
        assert!(with("https://auth.example.com?x=1", false).is_err());
        assert!(with("auth.example.com", false).is_err());
    }

    #[test]
    fn a_credential_auth_url_outside_the_allow_list_is_refused_unless_given_on_the_command_line() {
        let cr = existing(serde_json::json!({
            "clientSecretRef": {"name": "c"},
            "refreshTokenSecretRef": {"name": "r"},
            "authUrl": "https://phish.example.com/login",
        }));
        let err = Plan::resolve(&wanted(), Some(&cr)).unwrap_err();
        assert!(err.contains("phish.example.com"), "{err}");
        assert!(
            err.contains("--auth-url") && err.contains("--allowed-auth-hosts"),
            "{err}"
        );
        // The person names it: their choice.
        let w = Wanted {
            auth_url: Some("https://phish.example.com/login".into()),
            ..wanted()
        };
        let plan = Plan::resolve(&w, Some(&cr)).unwrap();
        assert_eq!(plan.credential, CredentialChange::Unchanged);
        // Or allows its host.
        let w = Wanted {
            allowed_auth_hosts: vec!["*.example.com".into()],
            ..wanted()
        };
        assert!(Plan::resolve(&w, Some(&cr)).is_ok());
        // Even given on the command line, the URL itself must still be sound.
        let w = Wanted {
            auth_url: Some("http://phish.example.com".into()),
            allow_insecure_http: true,
            ..wanted()
        };
        assert!(Plan::resolve(&w, None).is_err());
    }

    #[test]
    fn a_bad_allow_list_entry_is_refused() {
        let w = Wanted {
            allowed_auth_hosts: vec!["https://auth.example.com".into()],
            ..wanted()
        };
        let err = Plan::resolve(&w, None).unwrap_err();
        assert!(err.contains("--allowed-auth-hosts"), "{err}");
    }

    #[test]
    fn an_empty_scope_is_refused() {
        let w = Wanted {
            scope: Some(" ".into()),
            ..wanted()
        };
        assert!(Plan::resolve(&w, None).is_err());
    }

    #[test]
    fn another_credential_using_the_refresh_token_secret_is_found() {
        let mut other = existing(serde_json::json!({
            "clientSecretRef": {"name": "c"},
            "refreshTokenSecretRef": {"name": "shared"},
        }));
        other.metadata.name = Some("other".into());
        let mine = existing(serde_json::json!({
            "clientSecretRef": {"name": "c"},
            "refreshTokenSecretRef": {"name": "shared"},
        }));
        let all = [mine, other];
        assert_eq!(other_claimant(&all, "een", "shared"), Some("other"));
        assert_eq!(other_claimant(&all, "een", "mine"), None);
        assert_eq!(other_claimant(&all[..1], "een", "shared"), None);
    }
}
