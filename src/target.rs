//! What the target Secret holds: a pure function of the credential and the token grant.
//! Workloads mount it; annotations carry what the schedule needs after a restart.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};

use crate::crd::EagleEyeCredential;
use crate::schedule::Published;
use crate::secrets;
use crate::spent;

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "eagle-eye-operator");
/// Label on target Secrets naming their credential.
pub const CREDENTIAL_LABEL: &str = "eagle-eye-operator.io/credential";
pub const ISSUED_AT: &str = "eagle-eye-operator.io/issued-at";
pub const EXPIRES_AT: &str = "eagle-eye-operator.io/expires-at";
pub const REFRESH_FINGERPRINT: &str = "eagle-eye-operator.io/refresh-token-fingerprint";

/// The access token and API location to publish.
pub struct Publication<'a> {
    pub access_token: &'a str,
    pub token_type: &'a str,
    pub hostname: &'a str,
    pub port: u16,
    pub base_url: &'a str,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub refresh_fingerprint: &'a str,
    pub spent_fingerprints: &'a [String],
}

pub fn target_name(cr: &EagleEyeCredential) -> String {
    cr.spec
        .target
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-token", cr.name_any()))
}

/// The whole target Secret, for server-side apply.
pub fn build(cr: &EagleEyeCredential, p: &Publication<'_>) -> Secret {
    let keys = &cr.spec.target.keys;
    let port = p.port.to_string();
    let expires = p.expires_at.to_string();
    let data = [
        (&keys.access_token, p.access_token),
        (&keys.base_url, p.base_url),
        (&keys.hostname, p.hostname),
        (&keys.port, port.as_str()),
        (&keys.expires_at, expires.as_str()),
        (&keys.token_type, p.token_type),
    ]
    .into_iter()
    .filter(|(k, _)| !k.is_empty());

    let mut labels = cr.spec.target.labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(CREDENTIAL_LABEL.into(), cr.name_any());
    let mut annotations = cr.spec.target.annotations.clone();
    annotations.insert(ISSUED_AT.into(), p.issued_at.to_string());
    annotations.insert(EXPIRES_AT.into(), expires.clone());
    annotations.insert(REFRESH_FINGERPRINT.into(), p.refresh_fingerprint.into());
    if !p.spent_fingerprints.is_empty() {
        annotations.insert(
            spent::ANNOTATION.into(),
            spent::render(p.spent_fingerprints),
        );
    }

    let mut secret = secrets::opaque(&target_name(cr), data, annotations);
    secret.metadata.namespace = cr.namespace();
    secret.metadata.labels = Some(labels);
    secret.metadata.owner_references = cr.controller_owner_ref(&()).map(|o| vec![o]);
    secret
}

/// What an existing target Secret publishes, from its annotations; `None` when it is
/// missing them (not written by this operator, or edited by hand).
pub fn published(secret: &Secret) -> Option<Published> {
    let a = secret.metadata.annotations.as_ref()?;
    // Times no token could have (a hand edit) make the annotations not ours at all: the
    // credential then refreshes and writes true ones.
    let plausible = |k: &str| {
        let t: jiff::Timestamp = a.get(k)?.parse().ok()?;
        let earliest = jiff::Timestamp::from_second(946_684_800).ok()?;
        let latest = jiff::Timestamp::from_second(32_503_680_000).ok()?; // 3000-01-01
        (earliest..=latest).contains(&t).then_some(t)
    };
    Some(Published {
        issued_at: plausible(ISSUED_AT)?,
        expires_at: plausible(EXPIRES_AT)?,
        refresh_fingerprint: a.get(REFRESH_FINGERPRINT)?.clone(),
        spent_fingerprints: spent::read(Some(a)),
    })
}

/// Whether `published` is a newer answer than one received at `received_at` that leaves
/// the refresh token `refresh_fp` current, with `spent` known dead beside it. By the chain
/// of tokens when it tells (one traded the other's token in), else by arrival. An older
/// answer is never published over a newer one: with rotating tokens, the older answer's
/// access token is dead.
pub fn supersedes(
    published: &Published,
    received_at: jiff::Timestamp,
    refresh_fp: &str,
    spent: &[String],
) -> bool {
    if published.spent_fingerprints.iter().any(|f| f == refresh_fp) {
        return true;
    }
    if spent.contains(&published.refresh_fingerprint) && published.refresh_fingerprint != refresh_fp
    {
        return false;
    }
    // Unrelated answers of one second: the one published stands.
    published.issued_at > received_at
        || (published.issued_at == received_at && published.refresh_fingerprint != refresh_fp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EagleEyeCredentialSpec;

    pub(crate) fn credential() -> EagleEyeCredential {
        let spec: EagleEyeCredentialSpec = serde_json::from_value(serde_json::json!({
            "clientSecretRef": {"name": "client"},
            "refreshTokenSecretRef": {"name": "refresh"},
        }))
        .unwrap();
        let mut cr = EagleEyeCredential::new("cam", spec);
        cr.metadata.namespace = Some("video".into());
        cr.metadata.uid = Some("uid-1".into());
        cr
    }

    fn publication() -> Publication<'static> {
        Publication {
            access_token: "at",
            token_type: "Bearer",
            hostname: "api.c001.eagleeyenetworks.com",
            port: 443,
            base_url: "https://api.c001.eagleeyenetworks.com",
            issued_at: "2026-11-28T12:00:00Z".parse().unwrap(),
            expires_at: "2026-11-29T00:00:00Z".parse().unwrap(),
            refresh_fingerprint: "00112233",
            spent_fingerprints: &[],
        }
    }

    #[test]
    fn target_secret_holds_the_default_keys_and_is_owned_by_the_credential() {
        let s = build(&credential(), &publication());
        assert_eq!(s.metadata.name.as_deref(), Some("cam-token"));
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "access_token",
                "base_url",
                "expires_at",
                "hostname",
                "port",
                "token_type"
            ]
        );
        let data = s.data.unwrap();
        assert_eq!(data["expires_at"].0, b"2026-11-29T00:00:00Z");
        assert_eq!(data["port"].0, b"443");
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("EagleEyeCredential", Some(true))
        );
    }

    #[test]
    fn renamed_and_omitted_keys_are_respected() {
        let mut cr = credential();
        cr.spec.target.keys.access_token = "TOKEN".into();
        cr.spec.target.keys.hostname = String::new();
        cr.spec.target.name = Some("custom".into());
        let s = build(&cr, &publication());
        assert_eq!(s.metadata.name.as_deref(), Some("custom"));
        let data = s.data.unwrap();
        assert!(data.contains_key("TOKEN") && !data.contains_key("hostname"));
    }

    #[test]
    fn an_older_answer_never_supersedes_a_newer_one_whatever_the_clocks() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let published = |fp: &str, spent: &[&str], issued: &str| Published {
            issued_at: at(issued),
            expires_at: at("2026-11-30T11:00:00Z"),
            refresh_fingerprint: fp.into(),
            spent_fingerprints: spent.iter().map(|s| s.to_string()).collect(),
        };
        let ours = |spent: &[&str]| spent.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = at("2026-11-30T10:00:00Z");
        // The published answer traded our token in: newer, even stamped earlier (a slow clock).
        let p = published("f2", &["f1", "f0"], "2026-11-30T09:59:00Z");
        assert!(supersedes(&p, t, "f1", &ours(&["f0"])));
        // We traded the published answer's token in: ours is newer, even stamped earlier.
        let p = published("f1", &["f0"], "2026-11-30T10:01:00Z");
        assert!(!supersedes(&p, t, "f2", &ours(&["f1", "f0"])));
        // No chain between them (non-rotating, a new login): the later arrival wins, and
        // of one second the one published.
        let p = published("n1", &[], "2026-11-30T10:01:00Z");
        assert!(supersedes(&p, t, "n1", &[]));
        assert!(supersedes(&p, at("2026-11-30T10:01:00Z"), "o1", &[]));
        assert!(!supersedes(&p, at("2026-11-30T10:01:00Z"), "n1", &[]));
        assert!(!supersedes(&p, at("2026-11-30T10:02:00Z"), "n1", &[]));
    }

    #[test]
    fn published_state_round_trips_through_annotations() {
        let mut p = publication();
        let got = published(&build(&credential(), &p)).unwrap();
        assert_eq!((got.issued_at, got.expires_at), (p.issued_at, p.expires_at));
        assert_eq!(got.refresh_fingerprint, "00112233");
        assert!(got.spent_fingerprints.is_empty());
        let spent = ["00000000000000aa".to_owned(), "00000000000000bb".to_owned()];
        p.spent_fingerprints = &spent;
        let got = published(&build(&credential(), &p)).unwrap();
        assert_eq!(got.spent_fingerprints, spent);
    }
}
