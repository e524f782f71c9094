//! Kubernetes edge for the Secrets a credential reads: client credentials and the refresh
//! token, and the refresh token's write-back with a resourceVersion precondition. Error
//! texts name Secrets and keys, never values.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::content::{self, Content, Pending};
use crate::spent;
use crate::token::ClientCredentials;

/// Login time of the chain, written by `authorize` (or by hand, RFC 3339).
pub const LOGIN_TIME: &str = "eagle-eye-operator.io/login-time";
/// Written by the operator with every rotated token it stores.
pub const CHAIN_STARTED_AT: &str = "eagle-eye-operator.io/chain-started-at";
pub const CHAIN_START_ESTIMATED: &str = "eagle-eye-operator.io/chain-start-estimated";
pub const TOKEN_ISSUED_AT: &str = "eagle-eye-operator.io/refresh-token-issued-at";
pub const TOKEN_FINGERPRINT: &str = "eagle-eye-operator.io/refresh-token-fingerprint";
/// The credential that refreshes this token.
pub const OWNER: &str = "eagle-eye-operator.io/credential";

#[derive(thiserror::Error, Debug)]
pub enum SecretError {
    #[error("Secret {0:?} not found")]
    NotFound(String),
    #[error("Secret {name:?} has no key {key:?}")]
    KeyMissing { name: String, key: String },
    #[error("key {key:?} of Secret {name:?} is empty or not UTF-8 text")]
    BadValue { name: String, key: String },
    #[error(
        "key {key:?} of Secret {name:?} holds {bytes} bytes, more than a client ID, client secret or refresh token can ({MAX_VALUE_BYTES} at most)"
    )]
    TooLong {
        name: String,
        key: String,
        bytes: usize,
    },
    #[error("reading Secret {name:?}: {reason}", reason = kube_reason(source))]
    Api { name: String, source: kube::Error },
    /// A refresh-token Secret that cannot be written: every rotation would leave the new
    /// token in memory only.
    #[error(
        "Secret {0:?} is immutable, and every refresh must write the rotated refresh token back into it, so none is spent; recreate it without `immutable: true`"
    )]
    Immutable(String),
}

/// A Kubernetes error as it may be shown in logs, conditions and Events: the status code and
/// reason of an API answer, never its message, which an admission webhook could fill with
/// the object sent (a Secret with tokens).
pub fn kube_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("the API server answered {} {}", s.code, s.reason),
        _ => "the API server could not be reached".into(),
    }
}

/// A short one-way fingerprint of a refresh token: how annotations and the spent list name
/// a token, and how the target Secret says which stored token is behind its access token.
/// 64 bits of SHA-256 reveal nothing usable about a high-entropy token.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// An Opaque Secret named `name` holding `data`, with `annotations` when there are any:
/// what every Secret this crate writes (or fakes, in tests) starts from. Callers add a
/// namespace, labels or an owner where they need one.
pub fn opaque<K, V>(
    name: &str,
    data: impl IntoIterator<Item = (K, V)>,
    annotations: BTreeMap<String, String>,
) -> Secret
where
    K: Into<String>,
    V: AsRef<[u8]>,
{
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.into(), ByteString(v.as_ref().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The refresh token as stored, with what its Secret says about its chain.
#[derive(Clone)]
pub struct StoredToken {
    pub token: SecretString,
    pub fingerprint: String,
    pub secret: Secret,
    pub chain: Chain,
    /// Refresh tokens this operator rotated out (see `spent`), from the Secret's annotation.
    pub spent: Vec<String>,
}

/// Where the token stands in its 90-day chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub started_at: Timestamp,
    /// True when nobody recorded the login time and first sight stands in for it.
    pub estimated: bool,
    pub token_issued_at: Timestamp,
}

pub async fn read_client(
    api: &Api<Secret>,
    name: &str,
    id_key: &str,
    secret_key: &str,
) -> Result<ClientCredentials, SecretError> {
    read_client_at(api, name, id_key, secret_key)
        .await
        .map(|(creds, _)| creds)
}

/// Client credentials and the resourceVersion of the Secret they were read from.
pub async fn read_client_at(
    api: &Api<Secret>,
    name: &str,
    id_key: &str,
    secret_key: &str,
) -> Result<(ClientCredentials, Option<String>), SecretError> {
    let secret = get(api, name).await?;
    let creds = ClientCredentials {
        id: value(&secret, name, id_key)?.expose_secret().to_owned(),
        secret: value(&secret, name, secret_key)?,
    };
    Ok((creds, secret.metadata.resource_version))
}

pub async fn read_refresh_token(
    api: &Api<Secret>,
    name: &str,
    key: &str,
    now: Timestamp,
) -> Result<StoredToken, SecretError> {
    refresh_token_in(get(api, name).await?, name, key, now)
}

/// The refresh token stored under `key` in `secret` (Secret `name`, read at `now`).
pub fn refresh_token_in(
    secret: Secret,
    name: &str,
    key: &str,
    now: Timestamp,
) -> Result<StoredToken, SecretError> {
    let token = value(&secret, name, key)?;
    if secret.immutable == Some(true) {
        return Err(SecretError::Immutable(name.into()));
    }
    let fingerprint = fingerprint(token.expose_secret());
    let chain = chain(&secret, &fingerprint, now);
    let spent = spent::read(secret.metadata.annotations.as_ref());
    Ok(StoredToken {
        token,
        fingerprint,
        secret,
        chain,
        spent,
    })
}

/// Chain facts from annotations. The operator's own annotations count only while they
/// describe the stored token; a token put there by a person starts a new chain, at its
/// login-time annotation or, failing that, now (an estimate).
pub fn chain(secret: &Secret, fingerprint: &str, now: Timestamp) -> Chain {
    let empty = BTreeMap::new();
    let a = secret.metadata.annotations.as_ref().unwrap_or(&empty);
    let ts = |k: &str| a.get(k).and_then(|v| plausible_time(v, now));
    let login = ts(LOGIN_TIME);
    let ours = a.get(TOKEN_FINGERPRINT).is_some_and(|f| f == fingerprint);
    if ours {
        let started = login.or(ts(CHAIN_STARTED_AT));
        Chain {
            started_at: started.unwrap_or(now),
            estimated: login.is_none()
                && (started.is_none() || a.get(CHAIN_START_ESTIMATED).is_some_and(|v| v == "true")),
            token_issued_at: ts(TOKEN_ISSUED_AT).or(login).unwrap_or(now),
        }
    } else {
        Chain {
            started_at: login.unwrap_or(now),
            estimated: login.is_none(),
            token_issued_at: login.unwrap_or(now),
        }
    }
}

/// A time from an annotation, if it could be true: not before 2000 and not in the future
/// (beyond a minute of clock skew). Anything else (`9999-12-30T00:00:00Z`, a typo) is
/// ignored as if absent, so no later arithmetic on it can overflow.
fn plausible_time(value: &str, now: Timestamp) -> Option<Timestamp> {
    let t: Timestamp = value.trim().parse().ok()?;
    let earliest = Timestamp::from_second(946_684_800).ok()?;
    let latest = now.checked_add(jiff::SignedDuration::from_mins(1)).ok()?;
    (earliest..=latest).contains(&t).then_some(t)
}

/// A Secret value as the operator uses it: UTF-8 with surrounding whitespace (a trailing
/// newline from `echo` or a YAML block, a CRLF) removed; `None` when nothing is left. Every
/// read and every comparison of stored values goes through here, so a token never differs
/// from itself by a newline.
pub fn normalize(raw: &[u8]) -> Option<&str> {
    std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Records on the refresh-token Secret that `intent`'s holder is about to spend the stored
/// token (see `intent`). The replace carries the resourceVersion of the read that found the
/// token: `Ok(None)` when the Secret changed since (nothing may be spent on stale
/// knowledge), else the token as now stored.
pub async fn record_intent(
    api: &Api<Secret>,
    stored: &StoredToken,
    intent: &crate::intent::Intent,
) -> Result<Option<StoredToken>, kube::Error> {
    let mut next = stored.secret.clone();
    next.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            crate::intent::ANNOTATION.into(),
            crate::intent::render(intent),
        );
    let written = replace_unchanged(api, next).await?;
    Ok(written.map(|secret| StoredToken {
        token: stored.token.clone(),
        fingerprint: stored.fingerprint.clone(),
        secret,
        chain: stored.chain,
        spent: stored.spent.clone(),
    }))
}

/// Withdraws `holder`'s spend intent on the stored token once its call has definitely ended
/// with nothing to store (the server answered with a refusal or an error, or nothing was
/// sent): others need not wait out its bound, and a Secret named by mistake keeps no trace.
/// Only while the Secret is as the intent left it (resourceVersion precondition); a
/// Secret changed since keeps whatever it holds.
pub async fn withdraw_intent(
    api: &Api<Secret>,
    stored: &StoredToken,
    holder: &str,
) -> Result<Option<Secret>, kube::Error> {
    let ours = crate::intent::read(stored.secret.metadata.annotations.as_ref())
        .is_some_and(|i| i.holder == holder && i.fingerprint == stored.fingerprint);
    if !ours {
        return Ok(None);
    }
    let mut next = stored.secret.clone();
    if let Some(a) = next.metadata.annotations.as_mut() {
        a.remove(crate::intent::ANNOTATION);
    }
    replace_unchanged(api, next).await
}

/// Adds the stored token itself to its Secret's spent list: another credential holding a
/// copy of the same login rotated it out. Only while the Secret is as read (resourceVersion
/// precondition): `Ok(None)` when it changed since (a new login, say), which the next read
/// judges.
pub async fn list_as_spent(
    api: &Api<Secret>,
    stored: &StoredToken,
) -> Result<Option<Secret>, kube::Error> {
    let mut next = stored.secret.clone();
    let annotations = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let listed = spent::union(
        std::slice::from_ref(&stored.fingerprint),
        &spent::read(Some(annotations)),
    );
    annotations.insert(spent::ANNOTATION.into(), spent::render(&listed));
    replace_unchanged(api, next).await
}

/// Replaces a Secret with `next`, over the resourceVersion it carries: `Ok(None)` when the
/// Secret changed since.
async fn replace_unchanged(
    api: &Api<Secret>,
    mut next: Secret,
) -> Result<Option<Secret>, kube::Error> {
    next.string_data = None;
    let name = next.metadata.name.clone().unwrap_or_default();
    match api.replace(&name, &PostParams::default(), &next).await {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

pub enum WriteBack {
    /// Stored, with the spent list that now stands beside it, and the Secret as written
    /// (`None` when it held the token already).
    Written(Vec<String>, Option<Box<Secret>>),
    /// The Secret now holds a token that is neither the one spent, nor the new one, nor one
    /// known spent: a person replaced it (a new login). Theirs wins.
    ReplacedByPerson,
}

/// Stores a rotated refresh token, and in the same write adds the token it replaces to the
/// spent list. The replace carries the resourceVersion of the read that produced the spent
/// token, so it cannot overwrite a token someone stored meanwhile; when the precondition
/// fails only because of unrelated edits, it retries on the fresh object.
///
/// `traded` is the fingerprint of the token the server took for `new_token`. It is the one
/// `stored` holds, unless a dead token was put back meanwhile: both are listed spent, and
/// the content is judged against the token traded, so that the traded token put back is
/// never taken for a person's new login. `stored.spent` is every token known dead.
///
/// A spend intent on the token written is kept: another holder may be spending it already
/// (the live token put back over a revert). Any other intent ends with this write.
#[allow(clippy::too_many_arguments)]
pub async fn write_back(
    api: &Api<Secret>,
    stored: &StoredToken,
    traded: &str,
    key: &str,
    new_token: &SecretString,
    credential: &str,
    now: Timestamp,
) -> Result<WriteBack, kube::Error> {
    let mut current = stored.secret.clone();
    let new_fp = fingerprint(new_token.expose_secret());
    let pending = Pending {
        spent: traded,
        new: &new_fp,
    };
    for _ in 0..5 {
        let now_stored = current
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| normalize(&v.0))
            .map(fingerprint);
        let previous = spent::read(current.metadata.annotations.as_ref());
        let dead = spent::union(&previous, &stored.spent);
        // A missing or emptied value is written over: the new token is the live login.
        if let Some(fp) = &now_stored {
            match content::classify(fp, Some(pending), &dead) {
                Content::StoredByUs => return Ok(WriteBack::Written(previous, None)),
                Content::NewLogin => return Ok(WriteBack::ReplacedByPerson),
                // The spent token, or a dead one put back meanwhile (a sync tool).
                Content::AwaitingWriteBack | Content::SpentPutBack | Content::Current => {}
            }
        }
        let mut next = current.clone();
        next.data.get_or_insert_with(BTreeMap::new).insert(
            key.into(),
            ByteString(new_token.expose_secret().as_bytes().to_vec()),
        );
        let spent = spent::after(
            &spent::after(&previous, &stored.fingerprint, &new_fp),
            traded,
            &new_fp,
        );
        let a = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
        a.insert(spent::ANNOTATION.into(), spent::render(&spent));
        a.insert(CHAIN_STARTED_AT.into(), stored.chain.started_at.to_string());
        a.insert(
            CHAIN_START_ESTIMATED.into(),
            stored.chain.estimated.to_string(),
        );
        a.insert(TOKEN_ISSUED_AT.into(), now.to_string());
        a.insert(TOKEN_FINGERPRINT.into(), new_fp.clone());
        a.insert(OWNER.into(), credential.into());
        // The spend this write concludes is over; one of the token written is not.
        let on_new = crate::intent::read(Some(&*a)).is_some_and(|i| i.fingerprint == new_fp);
        if !on_new {
            a.remove(crate::intent::ANNOTATION);
        }
        next.string_data = None;
        let name = next.metadata.name.clone().unwrap_or_default();
        match api.replace(&name, &PostParams::default(), &next).await {
            Ok(written) => return Ok(WriteBack::Written(spent, Some(Box::new(written)))),
            Err(kube::Error::Api(s)) if s.code == 409 => current = api.get(&name).await?,
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            "refresh-token Secret kept changing during write-back",
            "Conflict",
        )
        .with_code(409),
    )))
}

async fn get(api: &Api<Secret>, name: &str) -> Result<Secret, SecretError> {
    match api.get_opt(name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(SecretError::NotFound(name.into())),
        Err(source) => Err(SecretError::Api {
            name: name.into(),
            source,
        }),
    }
}

/// The longest value read as a client ID, client secret or refresh token (Eagle Eye's are
/// well under 1 KiB): what the operator keeps of a tenant's Secret stays small.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

fn value(secret: &Secret, name: &str, key: &str) -> Result<SecretString, SecretError> {
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| SecretError::KeyMissing {
            name: name.into(),
            key: key.into(),
        })?;
    if raw.0.len() > MAX_VALUE_BYTES {
        return Err(SecretError::TooLong {
            name: name.into(),
            key: key.into(),
            bytes: raw.0.len(),
        });
    }
    match normalize(&raw.0) {
        Some(v) => Ok(SecretString::from(v.to_owned())),
        None => Err(SecretError::BadValue {
            name: name.into(),
            key: key.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn annotated(annotations: &[(&str, &str)]) -> Secret {
        fixtures::secret("cam-refresh", &[], annotations)
    }
    const NOW: &str = "2026-11-28T12:00:00Z";

    #[test]
    fn fingerprint_is_short_stable_and_not_the_token() {
        let f = fingerprint("secret-refresh-token");
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint("secret-refresh-token"));
        assert_ne!(f, fingerprint("secret-refresh-token2"));
        assert!(!f.contains("secret"));
    }

    #[test]
    fn a_token_of_unknown_origin_starts_an_estimated_chain_now() {
        let c = chain(&annotated(&[]), "fp", NOW.parse().unwrap());
        assert_eq!(
            c,
            Chain {
                started_at: NOW.parse().unwrap(),
                estimated: true,
                token_issued_at: NOW.parse().unwrap()
            }
        );
    }

    #[test]
    fn a_login_time_annotation_gives_an_exact_chain_start() {
        let c = chain(
            &annotated(&[(LOGIN_TIME, "2026-10-01T00:00:00Z")]),
            "fp",
            NOW.parse().unwrap(),
        );
        assert_eq!(
            (c.started_at.to_string().as_str(), c.estimated),
            ("2026-10-01T00:00:00Z", false)
        );
    }

    #[test]
    fn operator_annotations_count_only_for_the_token_they_describe() {
        let s = annotated(&[
            (CHAIN_STARTED_AT, "2026-09-01T00:00:00Z"),
            (CHAIN_START_ESTIMATED, "false"),
            (TOKEN_ISSUED_AT, "2026-11-28T06:00:00Z"),
            (TOKEN_FINGERPRINT, "fp"),
        ]);
        let ours = chain(&s, "fp", NOW.parse().unwrap());
        assert_eq!(ours.started_at.to_string(), "2026-09-01T00:00:00Z");
        assert_eq!(ours.token_issued_at.to_string(), "2026-11-28T06:00:00Z");
        assert!(!ours.estimated);
        let replaced = chain(&s, "other", NOW.parse().unwrap());
        assert_eq!(replaced.started_at.to_string(), NOW);
        assert!(replaced.estimated);
    }

    #[test]
    fn values_are_trimmed_and_errors_name_keys_not_values() {
        let s = fixtures::secret("n", &[("k", " tok \n"), ("e", "  ")], &[]);
        assert_eq!(value(&s, "n", "k").unwrap().expose_secret(), "tok");
        let e = value(&s, "n", "e").unwrap_err().to_string();
        assert_eq!(e, "key \"e\" of Secret \"n\" is empty or not UTF-8 text");
        let e = value(&s, "n", "missing").unwrap_err().to_string();
        assert_eq!(e, "Secret \"n\" has no key \"missing\"");
    }

    #[test]
    fn a_value_longer_than_any_credential_is_refused_by_size_never_shown() {
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let s = fixtures::secret(
            "n",
            &[("k", &long), ("ok", &"y".repeat(MAX_VALUE_BYTES))],
            &[],
        );
        let e = value(&s, "n", "k").unwrap_err().to_string();
        assert!(e.contains("16385 bytes") && !e.contains("xxx"), "{e}");
        assert!(value(&s, "n", "ok").is_ok());
    }

    /// A write-back whose precondition fails finds `current` in the Secret; the answer to
    /// the retry's PUT, if one comes, is returned.
    async fn write_back_meeting(current: &str, spent_before: &[&str]) -> (WriteBack, bool) {
        let (svc, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let api: Api<Secret> = Api::namespaced(kube::Client::new(svc, fixtures::NS), fixtures::NS);
        let spent_list = spent::render(
            &spent_before
                .iter()
                .map(|f| fingerprint(f))
                .collect::<Vec<_>>(),
        );
        let read = fixtures::secret("cam-refresh", &[("refresh_token", "T2")], &[]);
        let stored = StoredToken {
            token: SecretString::from("T2"),
            fingerprint: fingerprint("T2"),
            chain: chain(&read, &fingerprint("T2"), NOW.parse().unwrap()),
            spent: Vec::new(),
            secret: read,
        };
        let server = async move {
            let respond = |code: u16, body: serde_json::Value| {
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap()
            };
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "PUT");
            send.send_response(respond(409, serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409})));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "GET");
            let now = fixtures::secret(
                "cam-refresh",
                &[("refresh_token", current)],
                &[(spent::ANNOTATION, spent_list.as_str())],
            );
            send.send_response(respond(200, serde_json::to_value(&now).unwrap()));
            match handle.next_request().await {
                Some((req, send)) => {
                    assert_eq!(req.method(), "PUT");
                    send.send_response(respond(200, serde_json::to_value(&now).unwrap()));
                    true
                }
                None => false,
            }
        };
        let client = async move {
            let out = write_back(
                &api,
                &stored,
                &stored.fingerprint,
                "refresh_token",
                &SecretString::from("T3"),
                "cam",
                NOW.parse().unwrap(),
            )
            .await
            .unwrap();
            drop(api);
            out
        };
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn a_write_back_writes_over_a_dead_token_put_back_but_yields_to_a_new_login() {
        let (reverted, put) = write_back_meeting("T1", &["T0", "T1"]).await;
        assert!(
            matches!(reverted, WriteBack::Written(..)) && put,
            "a revert is written over"
        );
        let (person, put) = write_back_meeting("NEW", &["T0", "T1"]).await;
        assert!(
            matches!(person, WriteBack::ReplacedByPerson) && !put,
            "a new login wins"
        );
    }
}
