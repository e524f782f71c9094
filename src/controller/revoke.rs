//! spec.revokeOnDelete: a finalizer while it is set, and on deletion the refresh token
//! revoked at the auth server (`/oauth2/revoke`) before the finalizer is removed. A failed
//! revocation is retried with backoff for `--revoke-retry-for` after the deletion, then
//! reported in a Warning Event: deletion is never blocked for longer.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use crate::crd::EagleEyeCredential;
use crate::intent;
use crate::outcome::Note;
use crate::schedule;
use crate::secrets::{self, SecretError, StoredToken};
use crate::token::ErrorClass;

use super::memory::Revocation;
use super::reconciler::Reconciler;
use super::{Context, Error, jitter, key, validate};

/// Held on a credential with spec.revokeOnDelete until its refresh token is revoked.
pub const FINALIZER: &str = "eagle-eye-operator.io/revoke-refresh-token";

/// How a revocation attempt ended.
enum Attempt {
    Revoked,
    /// The server refused the token as dead already: nothing left to revoke.
    AlreadyDead(String),
    /// spec.revokeOnDelete was turned off after the deletion began.
    NotWanted,
    /// Worth trying again (the server or the API server misbehaved, or a refresh is out).
    Retry(String),
    /// Trying again cannot help: say why and let the credential go.
    Impossible(String),
}

use super::projection::has_finalizer;

/// Adds or removes the finalizer as spec.revokeOnDelete says, returning the credential as
/// it now is. A failure is logged and leaves the credential as it was: refreshing goes on.
pub(super) async fn keep_finalizer(cr: EagleEyeCredential, ctx: &Context) -> EagleEyeCredential {
    let want = cr.spec.revoke_on_delete;
    if want == has_finalizer(&cr) || cr.metadata.deletion_timestamp.is_some() {
        return cr;
    }
    match patch_finalizer(&cr, ctx, want).await {
        Ok(updated) => {
            ctx.known.wrote(&updated);
            updated
        }
        Err(e) => {
            let why = secrets::kube_reason(&e);
            warn!(credential = %key(&cr), error = %why, "could not update the revoke-on-delete finalizer; retrying at the next reconcile");
            // A conflict is a change on its way here; anything else the user should see
            // (without the finalizer, deleting the credential revokes nothing).
            if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                let note = Note {
                    type_: EventType::Warning,
                    reason: "RevokeOnDeleteUnavailable",
                    action: "Revoke",
                    note: format!(
                        "could not {} the finalizer {FINALIZER}: {why}; until it is {}, deleting this credential {} its refresh token (the operator needs patch on eagleeyecredentials)",
                        if want { "add" } else { "remove" },
                        if want { "added" } else { "removed" },
                        if want {
                            "does not revoke"
                        } else {
                            "still tries to revoke"
                        },
                    ),
                };
                Reconciler::new(&cr, ctx).event(&note).await;
            }
            cr
        }
    }
}

/// Writes the finalizer list with or without ours, over the resourceVersion read: another
/// writer's change meanwhile fails the patch (409) rather than being undone. The list is
/// read afresh (the store keeps only this operator's finalizer of it): adding or removing
/// it happens once per credential, or once per change of spec.revokeOnDelete.
async fn patch_finalizer(
    cr: &EagleEyeCredential,
    ctx: &Context,
    add: bool,
) -> Result<EagleEyeCredential, kube::Error> {
    let api: Api<EagleEyeCredential> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let read = api.get(&cr.name_any()).await?;
    // Recreated, or the spec changed its mind meanwhile: the next reconcile decides again.
    let changed = read.metadata.uid != cr.metadata.uid
        || (read.metadata.deletion_timestamp.is_none() && read.spec.revoke_on_delete != add);
    if changed || has_finalizer(&read) == add {
        return Ok(read);
    }
    let cr = read;
    let mut finalizers: Vec<String> = cr
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if add {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": cr.metadata.resource_version,
        }
    });
    let params = PatchParams {
        field_manager: Some(super::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(&cr.name_any(), &params, &Patch::Merge(&patch))
        .await
}

impl Reconciler<'_> {
    /// A credential being deleted: nothing is refreshed any more; with the finalizer, its
    /// refresh token is revoked (or given up on) and the finalizer removed.
    pub(super) async fn on_deletion(self) -> Result<Action, Error> {
        if !has_finalizer(self.cr) {
            return Ok(Action::await_change());
        }
        let uid = self.cr.metadata.uid.clone().unwrap_or_default();
        // Settled once (revoked or given up): only the finalizer is left to remove, however
        // often its removal meets a conflict. Never a second revocation.
        let settled = self.revocation(&uid).settled;
        if !settled && let Some(requeue) = self.settle_revocation(&uid).await {
            return Ok(requeue);
        }
        self.release().await?;
        self.ctx
            .memory
            .with(&self.key, |e| e.rare_mut().revocation = None);
        Ok(Action::await_change())
    }

    /// The revocation remembered for this credential of `uid` (a credential recreated under
    /// the same name starts afresh).
    fn revocation(&self, uid: &str) -> Revocation {
        self.ctx
            .memory
            .get(&self.key, |e| e.revocation().cloned())
            .flatten()
            .filter(|(of, _)| of == uid)
            .map(|(_, r)| r)
            .unwrap_or_default()
    }

    fn change_revocation<T>(&self, uid: &str, f: impl FnOnce(&mut Revocation) -> T) -> T {
        let mut r = self.revocation(uid);
        let out = f(&mut r);
        self.ctx.memory.with(&self.key, |e| {
            e.rare_mut().revocation = Some((uid.to_owned(), r))
        });
        out
    }

    /// Tries to revoke, within what is left of `--revoke-retry-for`: `Some(requeue)` to try
    /// again later, `None` once settled (with its Event emitted).
    async fn settle_revocation(&self, uid: &str) -> Option<Action> {
        let deleted_at = self
            .cr
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(self.now, |t| t.0);
        let retry_for = self.ctx.settings.revoke_retry_for;
        let give_up_at = deleted_at.checked_add(retry_for).unwrap_or(Timestamp::MAX);
        let left = |now: Timestamp| {
            Duration::try_from(give_up_at.duration_since(now)).unwrap_or(Duration::ZERO)
        };
        let attempt = if !self.cr.spec.revoke_on_delete {
            // Turned off after the deletion began (the login lives on elsewhere, say).
            Attempt::NotWanted
        } else {
            // One attempt never outlasts the retry window (nor MAX_ATTEMPT): a hanging auth
            // server cannot hold the deletion, or a refresh call slot, for longer.
            let limit = left(self.ctx.settings.now()).clamp(MIN_ATTEMPT, MAX_ATTEMPT);
            match tokio::time::timeout(limit, self.revoke()).await {
                Ok(attempt) => attempt,
                Err(_) => Attempt::Retry(format!(
                    "the auth server did not answer within {}",
                    crate::status_cli::when::span(
                        SignedDuration::try_from(limit).unwrap_or(SignedDuration::ZERO)
                    )
                )),
            }
        };
        let attempts = self.change_revocation(uid, |r| {
            r.attempts = r.attempts.saturating_add(1);
            r.attempts
        });
        let gave_up = |why: &str| {
            format!(
                "gave up revoking the refresh token after {attempts} attempt(s) over {}: {why}. The token stays valid until it expires (14 days unused, 90 days after the login); revoke it at Eagle Eye if a copy may exist",
                crate::status_cli::when::span(retry_for)
            )
        };
        let note = match attempt {
            Attempt::Revoked => {
                info!("revoked the refresh token before deletion");
                Note {
                    type_: EventType::Normal,
                    reason: "RefreshTokenRevoked",
                    action: "Revoke",
                    note: format!(
                        "revoked the refresh token of Secret {:?} at the auth server before deletion: no copy of it works any more",
                        self.cr.spec.refresh_token_secret_ref.name
                    ),
                }
            }
            Attempt::AlreadyDead(why) => Note {
                type_: EventType::Normal,
                reason: "RefreshTokenRevoked",
                action: "Revoke",
                note: format!(
                    "the auth server refused the refresh token as already dead ({why}): no copy of it works"
                ),
            },
            Attempt::NotWanted => Note {
                type_: EventType::Normal,
                reason: "RevokeSkipped",
                action: "Revoke",
                note: "spec.revokeOnDelete was turned off during the deletion: the refresh token was not revoked".into(),
            },
            Attempt::Retry(why) if !left(self.ctx.settings.now()).is_zero() => {
                let wait = schedule::backoff(attempts, jitter(self.cr))
                    .min(MAX_RETRY)
                    .min(left(self.ctx.settings.now()))
                    .max(Duration::from_millis(100));
                warn!(attempt = attempts, retry_in = ?wait, %why, "revoking the refresh token failed; retrying");
                if attempts == 1 {
                    self.event(&Note {
                        type_: EventType::Warning,
                        reason: "RevokeRetrying",
                        action: "Revoke",
                        note: format!(
                            "revoking the refresh token failed: {why}; retrying until {} ({} after deletion), then the credential goes anyway",
                            whole(give_up_at),
                            crate::status_cli::when::span(retry_for)
                        ),
                    })
                    .await;
                }
                return Some(Action::requeue(wait));
            }
            Attempt::Retry(why) => Note {
                type_: EventType::Warning,
                reason: "RevokeFailed",
                action: "Revoke",
                note: gave_up(&why),
            },
            Attempt::Impossible(why) => Note {
                type_: EventType::Warning,
                reason: "RevokeFailed",
                action: "Revoke",
                note: format!(
                    "the refresh token cannot be revoked: {why}. The token stays valid until it expires (14 days unused, 90 days after the login); revoke it at Eagle Eye if a copy may exist"
                ),
            },
        };
        self.event(&note).await;
        self.change_revocation(uid, |r| r.settled = true);
        None
    }

    /// Removes the finalizer; on a conflict (the credential changed meanwhile), reads it
    /// again and retries, a few times, before leaving it to the next reconcile.
    async fn release(&self) -> Result<(), Error> {
        let api: Api<EagleEyeCredential> = Api::namespaced(
            self.ctx.client.clone(),
            &self.cr.namespace().unwrap_or_default(),
        );
        let mut current = self.cr.clone();
        for _ in 0..3 {
            match patch_finalizer(&current, self.ctx, false).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    match api.get_opt(&current.name_any()).await {
                        Ok(Some(fresh)) if fresh.metadata.uid == current.metadata.uid => {
                            current = fresh
                        }
                        Ok(_) => return Ok(()), // gone already
                        Err(e) => return Err(Error::Finalizer(self.key.clone(), e)),
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(e) => return Err(Error::Finalizer(self.key.clone(), e)),
            }
        }
        Err(Error::Finalizer(
            self.key.clone(),
            kube::Error::Api(Box::new(
                kube::core::Status::failure("the credential kept changing", "Conflict")
                    .with_code(409),
            )),
        ))
    }

    async fn revoke(&self) -> Attempt {
        // A rotated token received but not stored is the live one: store it first.
        let ns = self.cr.namespace().unwrap_or_default();
        let secret = &self.cr.spec.refresh_token_secret_ref.name;
        let held = |at| self.ctx.memory.peek_for(&self.key, &ns, secret, at);
        if let Some((k, ..)) = held(self.now)
            && let Some(answer) = self.ctx.memory.take(&k)
        {
            self.ctx
                .memory
                .store_or_keep(&self.ctx.client, &k, answer)
                .await;
            if held(self.now).is_some() {
                return Attempt::Retry(
                    "a rotated refresh token received before the deletion is not stored yet".into(),
                );
            }
        }
        let (url, _) = match validate(self.cr, &self.ctx.settings) {
            Ok(v) => v,
            Err(why) => return Attempt::Impossible(why),
        };
        let spec = &self.cr.spec;
        let r = &spec.refresh_token_secret_ref;
        let stored = match secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now)
            .await
        {
            Ok(s) => s,
            Err(e @ SecretError::Api { .. }) => return Attempt::Retry(e.to_string()),
            Err(e) => {
                return Attempt::Impossible(format!(
                    "{e} (deleted with the credential? delete the credential first and its Secrets after it)"
                ));
            }
        };
        // What it holds counts in this term's census of claims; and no revocation before
        // every credential is read: the one still unread may hold a copy of this login.
        let tokens = super::memory::claimed(&stored.fingerprint, &stored.spent);
        let ctx = self.ctx;
        ctx.memory
            .claim(&self.key, self.uid(), &tokens, ctx.term, false, |k| {
                ctx.is_alive(k)
            });
        if ctx.census_pending(&url).await.is_some() {
            return Attempt::Retry(
                "not every credential has been read since the operator started: one may hold a copy of this login".into(),
            );
        }
        // A token already rotated out (put back, or a copy another credential rotated out
        // and listed here since): sending it is a reuse, which may end the whole grant.
        if stored.spent.contains(&stored.fingerprint) {
            return Attempt::Impossible(
                "not revoked, because the Secret holds a refresh token already rotated out: sending it again could end the login it came from".into(),
            );
        }
        // A copy elsewhere took the login over and rotated this token out: revoking it could
        // end the whole grant (RFC 7009), the copy's live token with it.
        if let Some(owner) = ctx.memory.rotated_out_by(&self.key, &stored.fingerprint) {
            // (One deleted since, with revokeOnDelete, may have revoked it: the token is
            // dead either way, and its login no longer this credential's to end.)
            let now = match ctx.is_alive(&owner) {
                true => "and refreshes the login now",
                false => "or revoked it, and is deleted since",
            };
            return Attempt::Impossible(format!(
                "not revoked, because another credential holding a copy of this login has rotated this token out {now}"
            ));
        }
        // Another credential's login is not this deletion's to end (a duplicate named by
        // mistake, a copied token): it would die with this one.
        if let Some(why) = self.login_shared(&stored) {
            return Attempt::Impossible(format!("not revoked, because the login is shared: {why}"));
        }
        let annotations = stored.secret.metadata.annotations.as_ref();
        if let intent::Verdict::HeldElsewhere { until, .. } = intent::verdict(
            intent::read(annotations).as_ref(),
            &stored.fingerprint,
            &self.holder(),
            self.now,
        ) {
            // Revoking now would revoke a token about to be replaced, and miss its successor.
            return Attempt::Retry(format!(
                "another process's refresh of this token may still be answered (until {})",
                whole(until)
            ));
        }
        let c = &spec.client_secret_ref;
        let creds = match secrets::read_client(
            &self.secrets,
            &c.name,
            &c.client_id_key,
            &c.client_secret_key,
        )
        .await
        {
            Ok(c) => c,
            Err(e @ SecretError::Api { .. }) => return Attempt::Retry(e.to_string()),
            Err(e) => return Attempt::Impossible(e.to_string()),
        };
        if self.ctx.tokens.is_closed() {
            // Stopping: the next leader revokes.
            return Attempt::Retry("the operator is stopping".into());
        }
        // Parked for a slot as a refresh is: no controller seat is held meanwhile, but for
        // the moment it may wait for one in its seat.
        let Some(slot) = self.call_slot(&url).await else {
            return Attempt::Retry(format!(
                "every token-call slot to {} this credential may take is busy; it is queued for one",
                crate::token::Destination::of(&url)
            ));
        };
        // That moment may have seen the process begin to stop: no call starts then.
        if self.ctx.tokens.is_closed() {
            return Attempt::Retry("the operator is stopping".into());
        }
        // A revocation spends the token as a refresh does: a copy elsewhere, free to take
        // the login over once this credential is being deleted, must not spend it while the
        // revocation may still be acted on (the two would race at the server), nor once it
        // is revoked. Refused if another credential claimed it, rotated it out or is
        // spending it since it was checked: the next attempt looks again.
        let (memory, uid) = (&self.ctx.memory, self.uid());
        let binds = MAX_ATTEMPT.saturating_add(self.ctx.settings.in_flight_grace.unsigned_abs());
        if !memory.intend(&self.key, uid, &stored.fingerprint, binds, |k| {
            ctx.is_alive(k)
        }) {
            return Attempt::Retry(
                "another credential claimed this login, rotated it out or is refreshing it since it was checked".into(),
            );
        }
        match self
            .ctx
            .tokens
            .revoke_with(slot, &url, &creds, &stored.token)
            .await
        {
            Ok(()) => {
                memory.rotated(&self.key, uid, &stored.fingerprint);
                memory.forget_live(&self.key);
                Attempt::Revoked
            }
            // Otherwise the spend binds until its bound: an earlier attempt's call may
            // still be acted on, and a refused one (the token is another client's, say)
            // proves nothing dead.
            Err(e) => match e.class() {
                ErrorClass::Transient | ErrorClass::OutcomeUnknown => Attempt::Retry(e.to_string()),
                ErrorClass::Reauthorize => Attempt::AlreadyDead(e.to_string()),
                _ => Attempt::Impossible(e.to_string()),
            },
        }
    }
}

impl Reconciler<'_> {
    /// Why the stored login is also another live credential's, if it is: one naming the same
    /// Secret (in either order of creation), or one refreshing a copy of the token.
    fn login_shared(&self, stored: &StoredToken) -> Option<String> {
        let secret = &self.cr.spec.refresh_token_secret_ref.name;
        let ns = self.cr.namespace().unwrap_or_default();
        let same_secret = self
            .ctx
            .index
            .names(&ns, secret, super::role::REFRESH)
            .into_iter()
            .filter_map(|name| {
                let at = kube::runtime::reflector::ObjectRef::new(&name).within(&ns);
                self.ctx.store.get(&at)
            })
            .find(|c| {
                c.metadata.uid != self.cr.metadata.uid
                    && c.metadata.deletion_timestamp.is_none()
                    && *c.refresh_secret == **secret
            });
        match same_secret {
            Some(other) => Some(format!(
                "EagleEyeCredential {:?} also reads Secret {secret:?}",
                other.name_any()
            )),
            None => {
                let ctx = self.ctx;
                let holders = ctx
                    .memory
                    .holders_of(&self.key, &stored.fingerprint, |k| ctx.is_alive(k));
                let other = holders.first()?;
                let who = match other.split_once('/') {
                    Some((other_ns, name)) if other_ns == ns => {
                        format!("EagleEyeCredential {name:?}")
                    }
                    _ => "a credential in another namespace".to_owned(),
                };
                Some(format!(
                    "Secret {secret:?} holds the same refresh token as {who}"
                ))
            }
        }
    }
}

/// Revocations are retried at least this often (the backoff grows to it).
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Bounds of one attempt (a hanging auth server holds a refresh call slot meanwhile).
const MAX_ATTEMPT: Duration = Duration::from_secs(30);
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

fn whole(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}
