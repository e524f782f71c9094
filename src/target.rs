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
/// Which spec.target.template the target was last rendered with (a digest, never a value):
/// a template changed since is rendered again without a refresh.
pub const TEMPLATE_DIGEST: &str = "eagle-eye-operator.io/template-digest";
/// Set on an existing Secret by someone who may write it, naming a credential of its
/// namespace: that credential may publish into it (and never deletes it).
pub const ADOPT: &str = "eagle-eye-operator.io/adopt";

/// Whose the target Secret is, as far as publishing goes. A credential writes only a
/// target it created (its controller reference) or one whose writer opted in for it: a
/// tenant who may create credentials but not Secrets can never make the operator write,
/// take over or garbage-collect a Secret of someone else's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// There is none: it is created, owned by the credential and deleted with it.
    Absent,
    /// The credential created it.
    Owned,
    /// Someone with write access to it opted in ([`ADOPT`]): written, never deleted with
    /// the credential (no owner reference is added).
    Adopted,
    /// Anything else: nothing is written; why, in words for the status.
    Conflict(String),
}

/// Whose `target` (the Secret named by [`target_name`], if it exists) is for `cr`.
/// `input_of`: another credential of the namespace that reads a Secret of that name (its
/// client or refresh-token Secret). `manager`: the operator's field manager, whose data
/// keys in an adopted Secret are its own to write again.
pub fn ownership(
    cr: &EagleEyeCredential,
    target: Option<&Secret>,
    input_of: Option<&str>,
    manager: &str,
) -> Ownership {
    let name = target_name(cr);
    let spec = &cr.spec;
    if name == spec.client_secret_ref.name || name == spec.refresh_token_secret_ref.name {
        return Ownership::Conflict(format!(
            "the target Secret {name:?} is one this credential reads (its client or refresh-token Secret): the operator never publishes into it; set spec.target.name to another name"
        ));
    }
    // Created here, it would be deleted with this credential, taking the other's login along.
    if let Some(other) = input_of {
        return Ownership::Conflict(format!(
            "Secret {name:?} is one EagleEyeCredential {other:?} reads: the operator never publishes into it; set spec.target.name to another name"
        ));
    }
    let Some(target) = target else {
        return Ownership::Absent;
    };
    let mine = cr.metadata.uid.as_deref();
    match controlling_credential(&target.metadata) {
        Some(o) if mine.is_some_and(|uid| o.uid == uid) => return Ownership::Owned,
        // A credential's own target stays its own, whatever an annotation says.
        Some(o) => {
            return Ownership::Conflict(if o.name == cr.name_any() {
                format!(
                    "Secret {name:?} is the target of an earlier EagleEyeCredential of this name, deleted since: the garbage collector deletes it shortly, and this credential then creates its own"
                )
            } else {
                format!(
                    "Secret {name:?} is the target of EagleEyeCredential {:?}, which created it; set spec.target.name to another name",
                    o.name
                )
            });
        }
        None => {}
    }
    let opted_in = target
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ADOPT))
        .is_some_and(|v| v.trim() == cr.name_any());
    if opted_in {
        // Only keys it wrote itself, or new ones: never another writer's value.
        let ours = managed_data_keys(target, manager);
        let held = target.data.iter().flatten().map(|(k, _)| k);
        let foreign: Vec<&String> = held
            .filter(|k| data_keys(cr).contains(&k.as_str()) && !ours.contains(*k))
            .collect();
        if !foreign.is_empty() {
            return Ownership::Conflict(format!(
                "Secret {name:?} already holds {foreign:?}, written by someone else: the operator never overwrites another writer's keys; choose other names in spec.target.keys"
            ));
        }
        return Ownership::Adopted;
    }
    Ownership::Conflict(format!(
        "Secret {name:?} exists and was not created by this credential, so nothing is written to it; to publish there, someone who may edit that Secret annotates it {ADOPT}={}, or set spec.target.name to another name",
        cr.name_any()
    ))
}

/// The EagleEyeCredential that controls an object (created it as its target), if one does:
/// deleting that credential deletes the object.
pub fn controlling_credential(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references.iter().flatten().find(|o| {
        o.controller == Some(true)
            && o.kind == EagleEyeCredential::kind(&())
            && o.api_version.starts_with(crate::crd::GROUP)
    })
}

/// The names of the operator's own keys in the target (spec.target.keys), left out or not.
pub fn own_keys(cr: &EagleEyeCredential) -> [&String; 6] {
    let k = &cr.spec.target.keys;
    [
        &k.access_token,
        &k.base_url,
        &k.hostname,
        &k.port,
        &k.expires_at,
        &k.token_type,
    ]
}

/// The data keys `cr` publishes (those not left out, and its template keys).
fn data_keys(cr: &EagleEyeCredential) -> Vec<&str> {
    own_keys(cr)
        .into_iter()
        .chain(cr.spec.target.template.keys())
        .map(String::as_str)
        .filter(|k| !k.is_empty())
        .collect()
}

/// The data keys field manager `manager` owns in `secret` (from its managedFields).
fn managed_data_keys(secret: &Secret, manager: &str) -> Vec<String> {
    secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter_map(|m| m.fields_v1.as_ref()?.0.get("f:data")?.as_object())
        .flat_map(|data| data.keys())
        .filter_map(|k| k.strip_prefix("f:"))
        .map(str::to_owned)
        .collect()
}

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

/// Whether the API server takes `key` as a key of a Secret's data (at most 253 of letters,
/// digits, '-', '_' and '.'; neither '.' nor starting with '..').
pub fn is_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && !key.starts_with("..")
}

pub fn target_name(cr: &EagleEyeCredential) -> String {
    cr.spec
        .target
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-token", cr.name_any()))
}

/// Whether `name` is `cr`'s target Secret: [`target_name`] without building the name.
pub fn names_target(cr: &EagleEyeCredential, name: &str) -> bool {
    match &cr.spec.target.name {
        Some(target) => target == name,
        None => cr
            .metadata
            .name
            .as_deref()
            .and_then(|own| name.strip_prefix(own))
            .is_some_and(|rest| rest == "-token"),
    }
}

/// The whole target Secret, for server-side apply; `owned`: created by the credential,
/// which is then its controller (and the garbage collector deletes it with the credential).
pub fn build(cr: &EagleEyeCredential, p: &Publication<'_>, owned: bool) -> Secret {
    let keys = &cr.spec.target.keys;
    let port = p.port.to_string();
    let expires = p.expires_at.to_string();
    let rendered = crate::template::render(
        cr,
        &crate::template::Values {
            access_token: p.access_token,
            token_type: p.token_type,
            base_url: p.base_url,
            hostname: p.hostname,
            port: &port,
            expires_at: &expires,
        },
    );
    let data = [
        (&keys.access_token, p.access_token),
        (&keys.base_url, p.base_url),
        (&keys.hostname, p.hostname),
        (&keys.port, port.as_str()),
        (&keys.expires_at, expires.as_str()),
        (&keys.token_type, p.token_type),
    ]
    .into_iter()
    .filter(|(k, _)| !k.is_empty())
    .chain(rendered.iter().map(|(k, v)| (k, v.as_str())));

    // An adopted Secret is someone else's: only the keys and the operator's own
    // annotations are written, never labels or annotations the spec chose.
    let (mut labels, mut annotations) = if owned {
        (
            cr.spec.target.labels.clone(),
            cr.spec.target.annotations.clone(),
        )
    } else {
        Default::default()
    };
    if owned {
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        labels.insert(CREDENTIAL_LABEL.into(), cr.name_any());
    }
    annotations.insert(ISSUED_AT.into(), p.issued_at.to_string());
    annotations.insert(EXPIRES_AT.into(), expires.clone());
    annotations.insert(REFRESH_FINGERPRINT.into(), p.refresh_fingerprint.into());
    if let Some(digest) = template_digest(cr) {
        annotations.insert(TEMPLATE_DIGEST.into(), digest);
    }
    if !p.spent_fingerprints.is_empty() {
        annotations.insert(
            spent::ANNOTATION.into(),
            spent::render(p.spent_fingerprints),
        );
    }

    let mut secret = secrets::opaque(&target_name(cr), data, annotations);
    secret.metadata.namespace = cr.namespace();
    secret.metadata.labels = (!labels.is_empty()).then_some(labels);
    if owned {
        secret.metadata.owner_references = cr.controller_owner_ref(&()).map(|o| vec![o]);
    }
    secret
}

/// The digest of `cr`'s templates and key names, if it has templates.
pub fn template_digest(cr: &EagleEyeCredential) -> Option<String> {
    let t = &cr.spec.target;
    (!t.template.is_empty()).then(|| {
        let both = serde_json::json!([t.template, t.keys]);
        secrets::fingerprint(&both.to_string())
    })
}

/// Whether `target` was rendered with other templates than `cr`'s (or none, or has some
/// `cr` no longer has).
pub fn templates_stale(cr: &EagleEyeCredential, target: &Secret) -> bool {
    let rendered = target
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_DIGEST));
    rendered != template_digest(cr).as_ref()
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
/// the refresh token `refresh_fp` current. Answers are published only while their token is
/// the one stored, so: the published answer is newer when it traded that token in (lists it
/// spent); an answer for another token is not (it is of an older link of the chain or of a
/// login since replaced, whatever its clock said); of two answers for one token (it does
/// not rotate), the later arrival. An older answer is never published over a newer one:
/// with rotating tokens, the older answer's access token is dead.
pub fn supersedes(published: &Published, received_at: jiff::Timestamp, refresh_fp: &str) -> bool {
    if published.spent_fingerprints.iter().any(|f| f == refresh_fp) {
        return true;
    }
    published.refresh_fingerprint == refresh_fp && published.issued_at > received_at
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn names_target_agrees_with_target_name() {
        let mut cr = EagleEyeCredential::test();
        cr.metadata.name = Some("cam".into());
        for name in ["cam-token", "cam", "cam-tokens", "x-token", "-token", ""] {
            assert_eq!(names_target(&cr, name), target_name(&cr) == name, "{name}");
        }
        cr.spec.target.name = Some("out".into());
        for name in ["out", "cam-token", "out-token"] {
            assert_eq!(names_target(&cr, name), target_name(&cr) == name, "{name}");
        }
    }
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
        let s = build(&credential(), &publication(), true);
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
    fn an_adopted_target_gets_no_owner_reference() {
        let s = build(&credential(), &publication(), false);
        assert!(s.metadata.owner_references.is_none());
    }

    /// An existing Secret with `owner` as controller and `annotations`.
    fn existing(owner: Option<(&str, &str, &str)>, annotations: &[(&str, &str)]) -> Secret {
        let mut s = crate::secrets::opaque(
            "cam-token",
            [("password", "hunter2")],
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s.metadata.owner_references = owner.map(|(kind, name, uid)| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: if kind == "EagleEyeCredential" {
                        "eagle-eye-operator.io/v1alpha1".into()
                    } else {
                        "apps/v1".into()
                    },
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]
        });
        s
    }

    const MANAGER: &str = "eagle-eye-operator";

    fn own(cr: &EagleEyeCredential, target: Option<&Secret>) -> Ownership {
        ownership(cr, target, None, MANAGER)
    }

    /// `s` with its `data` keys `keys` written by field manager `manager`.
    fn managed(mut s: Secret, manager: &str, keys: &[&str]) -> Secret {
        let data: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|k| (format!("f:{k}"), serde_json::json!({})))
            .collect();
        s.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some("Apply".into()),
                fields_type: Some("FieldsV1".into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    serde_json::json!({ "f:data": data }),
                )),
                ..Default::default()
            },
        ]);
        s
    }

    #[test]
    fn an_adopted_secret_keeps_every_key_another_writer_wrote() {
        let mut cr = credential();
        // The tenant renames the access token's key to the application's password key.
        cr.spec.target.keys.access_token = "password".into();
        let opted = existing(None, &[(ADOPT, "cam")]);
        match own(&cr, Some(&opted)) {
            Ownership::Conflict(m) => assert!(m.contains("\"password\""), "{m}"),
            o => panic!("{o:?}"),
        }
        // Written by the application's own manager: still not ours.
        let by_app = managed(existing(None, &[(ADOPT, "cam")]), "kubectl", &["password"]);
        assert!(matches!(own(&cr, Some(&by_app)), Ownership::Conflict(_)));
        // A key this operator wrote earlier is its own to write again.
        let by_us = managed(existing(None, &[(ADOPT, "cam")]), MANAGER, &["password"]);
        assert_eq!(own(&cr, Some(&by_us)), Ownership::Adopted);
    }

    #[test]
    fn an_adopted_target_gets_only_keys_and_the_operators_annotations() {
        let mut cr = credential();
        cr.spec.target.labels = [("reflector/allowed".to_owned(), "true".to_owned())].into();
        cr.spec.target.annotations = [("copy-to".to_owned(), "everywhere".to_owned())].into();
        let s = build(&cr, &publication(), false);
        assert!(s.metadata.labels.is_none(), "{:?}", s.metadata.labels);
        let annotations = s.metadata.annotations.unwrap();
        assert!(
            annotations
                .keys()
                .all(|k| k.starts_with("eagle-eye-operator.io/"))
        );
        let owned = build(&cr, &publication(), true);
        assert!(
            owned
                .metadata
                .labels
                .unwrap()
                .contains_key("reflector/allowed")
        );
    }

    #[test]
    fn a_secret_another_credential_reads_is_never_a_target() {
        let cr = credential();
        match ownership(&cr, None, Some("other"), MANAGER) {
            Ownership::Conflict(m) => assert!(m.contains("\"other\" reads"), "{m}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_target_is_written_only_when_absent_created_by_the_credential_or_adopted_for_it() {
        let cr = credential();
        assert_eq!(own(&cr, None), Ownership::Absent);
        let created = existing(Some(("EagleEyeCredential", "cam", "uid-1")), &[]);
        assert_eq!(own(&cr, Some(&created)), Ownership::Owned);
        let opted = existing(None, &[(ADOPT, "cam")]);
        assert_eq!(own(&cr, Some(&opted)), Ownership::Adopted);
        let conflict = |s: &Secret| matches!(own(&cr, Some(s)), Ownership::Conflict(_));
        // Another application's Secret, or one adopted for another credential.
        assert!(conflict(&existing(None, &[])));
        assert!(conflict(&existing(None, &[(ADOPT, "other")])));
        assert!(conflict(&existing(
            Some(("Deployment", "app", "uid-9")),
            &[]
        )));
        // Another credential's target stays its own, even annotated for this one; so does
        // the target of a deleted namesake (another UID).
        let theirs = existing(
            Some(("EagleEyeCredential", "other", "uid-2")),
            &[(ADOPT, "cam")],
        );
        match own(&cr, Some(&theirs)) {
            Ownership::Conflict(m) => assert!(m.contains("\"other\""), "{m}"),
            o => panic!("{o:?}"),
        }
        let namesake = existing(Some(("EagleEyeCredential", "cam", "uid-0")), &[]);
        assert!(conflict(&namesake));
    }

    #[test]
    fn a_target_that_is_an_input_secret_is_never_written_even_if_absent_or_adopted() {
        let mut cr = credential();
        for input in ["client", "refresh"] {
            cr.spec.target.name = Some(input.into());
            assert!(matches!(own(&cr, None), Ownership::Conflict(m) if m.contains("reads")));
            let opted = existing(None, &[(ADOPT, "cam")]);
            assert!(matches!(own(&cr, Some(&opted)), Ownership::Conflict(_)));
        }
    }

    #[test]
    fn renamed_and_omitted_keys_are_respected() {
        let mut cr = credential();
        cr.spec.target.keys.access_token = "TOKEN".into();
        cr.spec.target.keys.hostname = String::new();
        cr.spec.target.name = Some("custom".into());
        let s = build(&cr, &publication(), true);
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
        let t = at("2026-11-30T10:00:00Z");
        // The published answer traded our token in: newer, even stamped earlier (a slow clock).
        let p = published("f2", &["f1", "f0"], "2026-11-30T09:59:00Z");
        assert!(supersedes(&p, t, "f1"));
        // Ours traded the published answer's token in, or is for a login stored since: ours
        // stands, even when the published one is stamped later (a fast clock, a hand edit).
        let p = published("f1", &["f0"], "2026-11-30T10:01:00Z");
        assert!(!supersedes(&p, t, "f2"));
        let p = published("old-login", &[], "2999-01-01T00:00:00Z");
        assert!(!supersedes(&p, t, "new-login"));
        // One token that does not rotate: the later arrival.
        let p = published("n1", &[], "2026-11-30T10:01:00Z");
        assert!(supersedes(&p, t, "n1"));
        assert!(!supersedes(&p, at("2026-11-30T10:01:00Z"), "n1"));
        assert!(!supersedes(&p, at("2026-11-30T10:02:00Z"), "n1"));
    }

    #[test]
    fn published_state_round_trips_through_annotations() {
        let mut p = publication();
        let got = published(&build(&credential(), &p, true)).unwrap();
        assert_eq!((got.issued_at, got.expires_at), (p.issued_at, p.expires_at));
        assert_eq!(got.refresh_fingerprint, "00112233");
        assert!(got.spent_fingerprints.is_empty());
        let spent = ["00000000000000aa".to_owned(), "00000000000000bb".to_owned()];
        p.spent_fingerprints = &spent;
        let got = published(&build(&credential(), &p, true)).unwrap();
        assert_eq!(got.spent_fingerprints, spent);
    }
}
