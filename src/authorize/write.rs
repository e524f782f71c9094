//! The Kubernetes side of authorize: checking, before anyone logs in, that the person may
//! write what the login produces; then storing the client credentials (when asked), the
//! refresh token with its login time, and the credential.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use secrecy::{ExposeSecret, SecretString};

use crate::crd::EagleEyeCredential;
use crate::secrets::{
    CHAIN_START_ESTIMATED, CHAIN_STARTED_AT, LOGIN_TIME, OWNER, TOKEN_FINGERPRINT, TOKEN_ISSUED_AT,
    opaque,
};
use crate::token::ClientCredentials;

use super::error::AuthorizeError;
use super::plan::{CredentialChange, Plan};

/// Field manager of the credential fields authorize applies.
pub const FIELD_MANAGER: &str = "eagle-eye-authorize";

/// One permission authorize needs in the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
}

const fn secrets(verb: &'static str) -> Access {
    Access {
        verb,
        group: "",
        resource: "secrets",
    }
}

const fn credentials(verb: &'static str) -> Access {
    Access {
        verb,
        group: crate::crd::GROUP,
        resource: "eagleeyecredentials",
    }
}

/// What the writes after the login need, given what already exists. `client_secret` is
/// `Some(exists)` when the client credentials are to be stored.
pub fn needed_access(
    plan: &Plan,
    refresh_secret_exists: bool,
    client_secret: Option<bool>,
) -> Vec<Access> {
    let write = |exists: bool| secrets(if exists { "patch" } else { "create" });
    let mut needed = vec![write(refresh_secret_exists)];
    if let Some(exists) = client_secret
        && plan.client.name != plan.refresh.name
    {
        needed.push(write(exists));
    }
    match plan.credential {
        // Server-side apply of a new object is a patch that creates.
        CredentialChange::Create => needed.extend([credentials("create"), credentials("patch")]),
        CredentialChange::Update => needed.push(credentials("patch")),
        CredentialChange::Unchanged => {}
    }
    needed.dedup();
    needed
}

/// Asks the API server whether the current user may do each of `needed`; a refusal names
/// the user and everything missing. When the review itself is not possible, the writes
/// will tell.
pub async fn check_access(
    client: &Client,
    namespace: &str,
    needed: &[Access],
) -> Result<(), AuthorizeError> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for access in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some(access.verb.to_owned()),
                    group: Some(access.group.to_owned()),
                    resource: Some(access.resource.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => denied.push(format!("{} {}", access.verb, access.resource)),
            Err(e) => {
                tracing::debug!(error = %e, "access review not possible; the writes will tell");
                return Ok(());
            }
        }
    }
    if denied.is_empty() {
        return Ok(());
    }
    Err(AuthorizeError::Forbidden {
        who: whoami(client).await,
        verbs: denied.join(", "),
        namespace: namespace.to_owned(),
    })
}

/// The user name the API server sees, for error messages.
pub async fn whoami(client: &Client) -> String {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = SelfSubjectReview::default();
    match reviews.create(&PostParams::default(), &review).await {
        Ok(r) => r
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .map(|u| format!("user {u:?}"))
            .unwrap_or_else(|| "the current kubeconfig user".into()),
        Err(_) => "the current kubeconfig user".into(),
    }
}

/// Secret data plus annotations to set (`Some`) or remove (`None`).
pub struct SecretUpdate {
    pub data: BTreeMap<String, ByteString>,
    pub annotations: BTreeMap<String, Option<String>>,
}

/// The new refresh token under its key, the login time the controller reads for the 90-day
/// deadline, and the operator's bookkeeping about the old token removed.
pub fn refresh_token_update(
    key: &str,
    token: &SecretString,
    login_time: Timestamp,
    credential: &str,
) -> SecretUpdate {
    let mut annotations: BTreeMap<String, Option<String>> = [
        CHAIN_STARTED_AT,
        CHAIN_START_ESTIMATED,
        TOKEN_ISSUED_AT,
        TOKEN_FINGERPRINT,
    ]
    .into_iter()
    .map(|k| (k.to_owned(), None))
    .collect();
    annotations.insert(LOGIN_TIME.into(), Some(login_time.to_string()));
    annotations.insert(OWNER.into(), Some(credential.to_owned()));
    SecretUpdate {
        data: [(
            key.to_owned(),
            ByteString(token.expose_secret().as_bytes().to_vec()),
        )]
        .into(),
        annotations,
    }
}

pub fn client_update(id_key: &str, secret_key: &str, creds: &ClientCredentials) -> SecretUpdate {
    SecretUpdate {
        data: [
            (id_key.to_owned(), ByteString(creds.id.as_bytes().to_vec())),
            (
                secret_key.to_owned(),
                ByteString(creds.secret.expose_secret().as_bytes().to_vec()),
            ),
        ]
        .into(),
        annotations: BTreeMap::new(),
    }
}

impl SecretUpdate {
    /// A JSON merge patch: only these keys and annotations change; the rest of the Secret
    /// (other keys, labels, annotations) stays as it is.
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "data": self.data });
        if !self.annotations.is_empty() {
            body["metadata"] = serde_json::json!({ "annotations": self.annotations });
        }
        body
    }

    /// The Secret to create when there is none to patch: the annotations set, none removed.
    pub fn new_secret(&self, name: &str) -> Secret {
        let annotations = self
            .annotations
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        opaque(name, self.data.iter().map(|(k, v)| (k, &v.0)), annotations)
    }
}

/// Patches the Secret, or creates it when it does not exist. A patch without a
/// resourceVersion is meant: what a person stores now wins over anything stored before.
pub async fn store(
    api: &Api<Secret>,
    name: &str,
    update: &SecretUpdate,
) -> Result<(), kube::Error> {
    let patch = Patch::Merge(update.merge_patch());
    match api.patch(name, &PatchParams::default(), &patch).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    match api
        .create(&PostParams::default(), &update.new_secret(name))
        .await
    {
        Ok(_) => Ok(()),
        // Created meanwhile by someone else: patch that one.
        Err(kube::Error::Api(s)) if s.code == 409 => api
            .patch(name, &PatchParams::default(), &patch)
            .await
            .map(drop),
        Err(e) => Err(e),
    }
}

/// Creates the credential or sets the fields authorize owns. Conflicts with another field
/// manager are not forced: they surface as an error naming the manager.
pub async fn apply_credential(
    api: &Api<EagleEyeCredential>,
    plan: &Plan,
) -> Result<(), kube::Error> {
    api.patch(
        &plan.name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(plan.credential_apply()),
    )
    .await
    .map(drop)
}

/// A read refused or failed: say what could not be read and, when it is permission, what
/// to ask for.
pub fn read_error(what: String, namespace: &str, source: kube::Error) -> AuthorizeError {
    match &source {
        kube::Error::Api(s) if s.code == 403 => AuthorizeError::Input(format!(
            "{what}: the API server refused it ({}). Ask a cluster administrator for get, create \
             and patch on secrets and eagleeyecredentials in namespace {namespace:?}",
            s.message
        )),
        _ => AuthorizeError::Kube {
            what,
            error: source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::plan::{Plan, Wanted};

    fn plan(change: CredentialChange) -> Plan {
        let mut plan = Plan::resolve(
            &Wanted {
                name: "een".into(),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        plan.credential = change;
        plan
    }

    #[test]
    fn a_first_login_needs_to_create_secrets_and_the_credential() {
        let needed = needed_access(&plan(CredentialChange::Create), false, Some(false));
        assert_eq!(
            needed,
            [
                secrets("create"),
                credentials("create"),
                credentials("patch")
            ]
        );
    }

    #[test]
    fn a_relogin_needs_only_to_patch_the_refresh_token_secret() {
        let needed = needed_access(&plan(CredentialChange::Unchanged), true, None);
        assert_eq!(needed, [secrets("patch")]);
        let needed = needed_access(&plan(CredentialChange::Update), true, Some(true));
        assert_eq!(needed, [secrets("patch"), credentials("patch")]);
    }

    #[test]
    fn the_refresh_token_patch_sets_the_login_time_and_drops_stale_bookkeeping() {
        let t: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let update = refresh_token_update("refresh_token", &SecretString::from("rt-1"), t, "een");
        let patch = update.merge_patch();
        assert_eq!(
            patch["data"]["refresh_token"], "cnQtMQ==",
            "base64 of the token"
        );
        let a = &patch["metadata"]["annotations"];
        assert_eq!(a[LOGIN_TIME], "2026-11-28T12:00:00Z");
        assert_eq!(a[OWNER], "een");
        for stale in [
            TOKEN_FINGERPRINT,
            TOKEN_ISSUED_AT,
            CHAIN_STARTED_AT,
            CHAIN_START_ESTIMATED,
        ] {
            assert!(a[stale].is_null(), "{stale} is removed");
        }
        assert_eq!(patch.as_object().unwrap().len(), 2, "nothing else changes");
        let created = update.new_secret("een-refresh-token");
        let annotations = created.metadata.annotations.unwrap();
        assert_eq!(annotations.len(), 2);
        assert_eq!(annotations[LOGIN_TIME], "2026-11-28T12:00:00Z");
        assert_eq!(created.type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn the_client_patch_touches_only_the_two_keys() {
        let creds = ClientCredentials {
            id: "id".into(),
            secret: SecretString::from("s"),
        };
        let patch = client_update("cid", "csec", &creds).merge_patch();
        assert_eq!(
            patch,
            serde_json::json!({"data": {"cid": "aWQ=", "csec": "cw=="}})
        );
    }
}
