//! What the credential store keeps of a credential: what a reconcile reads, and nothing a
//! tenant can pad. The spec and status are bounded by the CRD (`crate::crd`); of the
//! metadata, which is bounded only by the API server's object size (1.5 MiB), only the
//! identity, generation, deletion time and this operator's own finalizer are kept: no
//! labels, annotations (`kubectl apply` alone puts a second copy of the spec there),
//! owner references, managed fields or other finalizers. Everything that needs more reads
//! the credential afresh (adding or removing the finalizer, a shard's farewell). The spec
//! and status are kept as their JSON ([`StoredCredential`]), parsed back by the reconcile.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Client, Resource, ResourceExt};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::crd::{EagleEyeCredential, EagleEyeCredentialSpec, EagleEyeCredentialStatus};

use super::revoke::FINALIZER;

/// A credential as the operator reads it from the API server (watch, list, get, and the
/// answers to its writes): metadata other than identity, generation, times and this
/// operator's finalizer is skipped while the JSON is parsed, never allocated, so a
/// tenant's 250 KiB of annotations cost the operator no more than the bytes in transit.
/// Everything else uses it as an [`EagleEyeCredential`].
#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct LeanCredential {
    #[serde(deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    pub spec: EagleEyeCredentialSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<EagleEyeCredentialStatus>,
}

/// `Resource` for another shape of an EagleEyeCredential read or kept: the same kind, and
/// its `metadata`.
macro_rules! credential_resource {
    ($ty:ty) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(dt: &()) -> Cow<'_, str> {
                EagleEyeCredential::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                EagleEyeCredential::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                EagleEyeCredential::version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                EagleEyeCredential::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

credential_resource!(LeanCredential);

impl From<LeanCredential> for EagleEyeCredential {
    fn from(lean: LeanCredential) -> Self {
        EagleEyeCredential {
            metadata: lean.metadata,
            spec: lean.spec,
            status: lean.status,
        }
    }
}

/// A credential as the store keeps it: the metadata a lean read keeps ([`LeanCredential`],
/// cut down by [`project`]), and the spec and status as the JSON they serialize to. A
/// parsed credential is 1,400 bytes inline before a single string (560 of them for the
/// spec's optional parts), and the store keeps one per credential for the whole process,
/// where a reconcile parses its credential back once, in microseconds (docs/scale.md,
/// eleventh round: 0.3 KiB less a credential).
#[derive(Clone, Debug)]
pub struct StoredCredential {
    pub metadata: ObjectMeta,
    /// spec.refreshTokenSecretRef.name and spec.authUrl, which the walks over every
    /// credential read (who else claims a Secret, the census by auth server): never a
    /// parse there.
    pub refresh_secret: Box<str>,
    pub auth_url: Box<str>,
    spec: Box<[u8]>,
    /// `null` for none.
    status: Box<[u8]>,
    /// The digest `known` keeps of the status, of all of it: computed before it is cut.
    pub status_digest: u64,
}

credential_resource!(StoredCredential);

impl StoredCredential {
    /// `cr` as the store keeps it (`cr` projected already: see [`project`]).
    pub fn new(cr: EagleEyeCredential) -> Self {
        // Serializing these types cannot fail (no map with keys that are not strings); an
        // empty value, or one past its bound (nothing is kept), does not parse back, and the
        // reconcile then reads the credential from the API server.
        let kept = |json: Vec<u8>| match json.len() <= KEEP_JSON_UP_TO {
            true => json.into_boxed_slice(),
            false => Box::default(),
        };
        let status = serde_json::to_vec(&cr.status).unwrap_or_default();
        StoredCredential {
            refresh_secret: cr.spec.refresh_token_secret_ref.name.as_str().into(),
            auth_url: cr.spec.auth_url.as_str().into(),
            spec: kept(serde_json::to_vec(&cr.spec).unwrap_or_default()),
            status_digest: super::known::digest_json(&status),
            status: kept(status),
            metadata: cr.metadata,
        }
    }

    /// The credential kept, parsed back.
    pub fn credential(&self) -> Option<EagleEyeCredential> {
        Some(EagleEyeCredential {
            metadata: self.metadata.clone(),
            spec: self.spec()?,
            status: serde_json::from_slice(&self.status).ok()?,
        })
    }

    /// Its spec, parsed back.
    fn spec(&self) -> Option<EagleEyeCredentialSpec> {
        serde_json::from_slice(&self.spec).ok()
    }
}

impl From<EagleEyeCredential> for StoredCredential {
    fn from(mut cr: EagleEyeCredential) -> Self {
        project(&mut cr);
        StoredCredential::new(cr)
    }
}

/// kube-runtime's controller asks its objects to deserialize; what the API server sends is
/// read lean and kept as the store keeps it.
impl<'de> Deserialize<'de> for StoredCredential {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EagleEyeCredential::from(LeanCredential::deserialize(d)?).into())
    }
}

/// Where the store keeps credential `cr`.
pub fn stored_ref(cr: &impl Resource) -> kube::runtime::reflector::ObjectRef<StoredCredential> {
    let at = kube::runtime::reflector::ObjectRef::new(&cr.name_any());
    match cr.meta().namespace.as_deref() {
        Some(ns) => at.within(ns),
        None => at,
    }
}

/// A watch event of projected credentials (see [`project`]) as the store takes it.
pub fn stored_event(
    event: kube::runtime::watcher::Event<EagleEyeCredential>,
) -> kube::runtime::watcher::Event<StoredCredential> {
    use kube::runtime::watcher::Event;
    match event {
        Event::Apply(cr) => Event::Apply(StoredCredential::new(cr)),
        Event::Delete(cr) => Event::Delete(StoredCredential::new(cr)),
        Event::Init => Event::Init,
        Event::InitApply(cr) => Event::InitApply(StoredCredential::new(cr)),
        Event::InitDone => Event::InitDone,
    }
}

/// A watch event of lean reads, as the store and controller take it.
pub fn credential_event(
    event: kube::runtime::watcher::Event<LeanCredential>,
) -> kube::runtime::watcher::Event<EagleEyeCredential> {
    use kube::runtime::watcher::Event;
    match event {
        Event::Apply(cr) => Event::Apply(cr.into()),
        Event::Delete(cr) => Event::Delete(cr.into()),
        Event::Init => Event::Init,
        Event::InitApply(cr) => Event::InitApply(cr.into()),
        Event::InitDone => Event::InitDone,
    }
}

/// Credentials of `namespace`, read lean.
pub fn api(client: Client, namespace: &str) -> kube::Api<LeanCredential> {
    kube::Api::namespaced(client, namespace)
}

fn lean_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        generation: Option<i64>,
        creation_timestamp: Option<Time>,
        deletion_timestamp: Option<Time>,
        #[serde(default, deserialize_with = "ours_only")]
        finalizers: Option<Vec<String>>,
    }
    let m = Lean::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        ..ObjectMeta::default()
    })
}

/// The finalizer list with only this operator's own kept (others are only looked at).
fn ours_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of finalizers")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ours = false;
            while let Some(is_ours) = seq.next_element::<IsOurs>()? {
                ours |= is_ours.0;
            }
            Ok(Some(if ours {
                vec![FINALIZER.to_owned()]
            } else {
                vec![]
            }))
        }
    }
    d.deserialize_option(List)
}

/// Whether one finalizer is this operator's, decided without keeping the string.
struct IsOurs(bool);

impl<'de> Deserialize<'de> for IsOurs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = IsOurs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a finalizer name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IsOurs, E> {
                Ok(IsOurs(v == FINALIZER))
            }
        }
        d.deserialize_str(Name)
    }
}

/// Marks, in the store only, a credential whose target labels, annotations and templates
/// or pod selector were left out; never written anywhere.
const TRIMMED: &str = "eagle-eye-operator.io/trimmed-in-store";

/// Target labels, annotations and templates and the pod selector, together as JSON, larger
/// than this are left out of the store; a reconcile of such a credential reads it whole from
/// the API server. Most credentials have none; a tenant who pads them pays one read per
/// reconcile.
pub const KEEP_EXTRAS_UP_TO: usize = 1024;

/// The most a credential's spec or status takes in the store, as JSON: one past it is not
/// kept, and a reconcile reads the credential from the API server. A spec of printable
/// characters, every string at its bound and the extras at theirs, is under 6 KiB; padded
/// with characters JSON escapes six bytes each, it is not. A status past it is rare
/// (dozens of workload restarts failing, or someone else's writing); its digest is still
/// of all of it.
const KEEP_JSON_UP_TO: usize = 8 * 1024;

/// Cuts `cr` down to what the store keeps.
pub fn project(cr: &mut EagleEyeCredential) {
    let m = &mut cr.metadata;
    m.managed_fields = None;
    m.annotations = None;
    m.labels = None;
    m.owner_references = None;
    if let Some(finalizers) = &mut m.finalizers {
        finalizers.retain(|f| f == FINALIZER);
    }
    let target = &mut cr.spec.target;
    // As JSON, escapes included; most credentials have none of these, and an empty one is
    // not serialized.
    let map = |m: &std::collections::BTreeMap<String, String>| match m.is_empty() {
        true => 0,
        false => json_len(m),
    };
    let size = map(&target.labels)
        .saturating_add(map(&target.annotations))
        .saturating_add(map(&target.template))
        .saturating_add(cr.spec.consumers.as_ref().map_or(0, json_len));
    if size > KEEP_EXTRAS_UP_TO {
        target.labels.clear();
        target.annotations.clear();
        target.template.clear();
        // None, never an empty selector (which would select every pod): nothing reads the
        // store's copy for it, and a reconcile reads the credential whole.
        cr.spec.consumers = None;
        m.annotations = Some([(TRIMMED.to_owned(), String::new())].into());
    }
}

/// `value`'s length as JSON.
fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |json| json.len())
}

/// Whether the store's copy of `cr` lacks fields a reconcile needs (see [`project`]).
pub fn is_trimmed(cr: &impl Resource) -> bool {
    cr.annotations().contains_key(TRIMMED)
}

/// Whether `cr` carries this operator's finalizer; the same for a credential and its
/// projection.
pub fn has_finalizer(cr: &impl Resource) -> bool {
    cr.finalizers().iter().any(|f| f == FINALIZER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_no_metadata_a_tenant_can_pad() {
        let mut cr = crate::target::tests::credential();
        let pad = "x".repeat(100_000);
        cr.metadata.annotations = Some([("pad".to_owned(), pad.clone())].into());
        cr.metadata.labels = Some([("l".to_owned(), "v".to_owned())].into());
        cr.metadata.finalizers = Some(vec![pad.clone(), FINALIZER.to_owned(), pad]);
        let before = serde_json::to_vec(&cr).unwrap().len();
        project(&mut cr);
        let after = serde_json::to_vec(&cr).unwrap().len();
        assert!(
            after < 2_000 && before > 300_000,
            "{before} -> {after} bytes"
        );
        assert_eq!(cr.finalizers(), [FINALIZER]);
        assert!(has_finalizer(&cr));
        assert_eq!(cr.name_any(), "cam");
        assert!(!is_trimmed(&cr));
    }

    #[test]
    fn a_lean_read_skips_padded_metadata_and_keeps_what_a_reconcile_needs() {
        let mut cr = crate::target::tests::credential();
        cr.metadata.annotations = Some([("pad".to_owned(), "x".repeat(1000))].into());
        cr.metadata.labels = Some([("l".to_owned(), "v".to_owned())].into());
        cr.metadata.finalizers = Some(vec!["other/f".into(), FINALIZER.into()]);
        cr.metadata.generation = Some(3);
        cr.metadata.resource_version = Some("42".into());
        let json = serde_json::to_vec(&cr).unwrap();
        let lean: EagleEyeCredential = serde_json::from_slice::<LeanCredential>(&json)
            .unwrap()
            .into();
        let mut projected = cr.clone();
        project(&mut projected);
        assert_eq!(
            serde_json::to_value(&lean).unwrap(),
            serde_json::to_value(&projected).unwrap()
        );

        cr.metadata.finalizers = Some(vec!["other/f".into()]);
        let json = serde_json::to_vec(&cr).unwrap();
        let lean: LeanCredential = serde_json::from_slice(&json).unwrap();
        assert_eq!(lean.metadata.finalizers, Some(vec![]));
        assert!(!has_finalizer(&EagleEyeCredential::from(lean)));
    }

    #[test]
    fn the_store_gives_back_the_projected_credential_it_keeps_as_json() {
        let mut cr = crate::target::tests::credential();
        cr.metadata.annotations = Some([("pad".to_owned(), "x".repeat(1000))].into());
        cr.metadata.finalizers = Some(vec!["other/f".into(), FINALIZER.into()]);
        cr.spec.target.labels = [("team".to_owned(), "video".to_owned())].into();
        cr.status = Some(crate::crd::EagleEyeCredentialStatus {
            failed_refresh_attempts: 2,
            base_url: Some("https://api.c001.eagleeyenetworks.com".into()),
            ..Default::default()
        });
        let stored = StoredCredential::from(cr.clone());
        let mut projected = cr;
        project(&mut projected);
        assert_eq!(
            serde_json::to_value(stored.credential().unwrap()).unwrap(),
            serde_json::to_value(&projected).unwrap()
        );
        assert_eq!(stored.spec().unwrap(), projected.spec);
        assert!(has_finalizer(&stored) && !is_trimmed(&stored));
        assert_eq!(stored_ref(&stored), stored_ref(&projected));
        // Read as kube-runtime reads it: lean, projected, kept.
        let json = serde_json::to_vec(&projected).unwrap();
        let read: StoredCredential = serde_json::from_slice(&json).unwrap();
        assert_eq!(read.status, stored.status);
        assert_eq!(read.status_digest, stored.status_digest);
        assert_eq!(read.metadata, stored.metadata);
    }

    #[test]
    fn a_spec_padded_with_characters_json_escapes_costs_the_store_a_bounded_amount() {
        let pad = |n: usize| "\u{1}".repeat(n);
        let mut cr = crate::target::tests::credential();
        cr.spec.target.template = (0..8).map(|i| (format!("k{i}"), pad(4096))).collect();
        let stored = StoredCredential::from(cr.clone());
        assert!(is_trimmed(&stored), "templates count with the other extras");
        assert!(stored.credential().unwrap().spec.target.template.is_empty());

        // Every other string at its bound, each character six bytes as JSON.
        cr.spec.scope = pad(512);
        cr.spec.auth_url = pad(512);
        cr.spec.client_secret_ref.client_id_key = pad(253);
        cr.spec.client_secret_ref.client_secret_key = pad(253);
        cr.spec.refresh_token_secret_ref.key = pad(253);
        let stored = StoredCredential::from(cr.clone());
        assert!(stored.spec.len() + stored.status.len() <= 2 * KEEP_JSON_UP_TO);
        assert!(
            stored.credential().is_none(),
            "not kept: the reconcile reads it whole"
        );
        // What the walks over every credential read is kept as it is.
        assert_eq!(&*stored.auth_url, cr.spec.auth_url);
        assert_eq!(
            &*stored.refresh_secret,
            cr.spec.refresh_token_secret_ref.name
        );
    }

    #[test]
    fn padded_target_metadata_is_left_out_and_marked_small_metadata_is_kept() {
        let mut small = crate::target::tests::credential();
        small.spec.target.labels = [("team".to_owned(), "video".to_owned())].into();
        let kept = small.spec.clone();
        project(&mut small);
        assert_eq!(small.spec, kept);
        assert!(!is_trimmed(&small));

        let mut padded = crate::target::tests::credential();
        let pad = "v".repeat(KEEP_EXTRAS_UP_TO);
        padded.spec.target.annotations = [("a".to_owned(), pad)].into();
        project(&mut padded);
        assert!(padded.spec.target.annotations.is_empty());
        assert!(is_trimmed(&padded));
        // A reconcile reads the whole credential: what it gets back is never trimmed.
        let mut read = padded.clone();
        read.metadata.annotations = None;
        assert!(!is_trimmed(&read));
    }
}
