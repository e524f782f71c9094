//! The second half of a reconcile: carrying out [`Decision`] through the token call and
//! everything after it (spend intent, call, write-back, publish, failure handling, undo of
//! a revert), decided here and only here. Every effect (a Kubernetes read or write, the
//! token call, a change of the process's memory, a report) is a call on a [`World`], and
//! every input is what that call returned; the controller's interpreter implements `World`
//! with kube and the token client and decides nothing, and the simulator (`sim/`) drives
//! this same code, the interpreter included, against simulated servers.
//!
//! Written as straight-line async code over the `World` rather than as an explicit
//! transition table: each await is one effect, so a crash or a cancellation can fall at
//! every one of them, and the order of effects reads as it happens.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use secrecy::{ExposeSecret, SecretString};
use tracing::info;

use crate::controller::{Error, Held, Refusal};
use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus, RotationMode};
use crate::decide::{Decision, Observed};
use crate::history;
use crate::intent;
use crate::outcome::{Failure, Outcome, Standing};
use crate::schedule::{self, Rotation};
use crate::secrets::{self, SecretError, StoredToken, WriteBack};
use crate::spent;
use crate::status::{self, Lifetimes};
use crate::target::{self, Ownership};
use crate::token::{ClientCredentials, ErrorClass, TokenError, TokenGrant};

/// A credential that waits on a person (dead login, refused answer, a conflict) is looked at
/// again this often even without a watch event.
pub const WAITING_RECHECK: Duration = Duration::from_secs(300);
/// A credential parked for a call slot is looked at again after this at the latest (it is
/// woken when the slot is granted; this only bounds a lost wake-up, and shows an expiry).
const PARKED_RECHECK: Duration = Duration::from_secs(60);
/// A credential refused a token another credential claims looks again this often: once
/// that one is deleted, the copy may take the login over.
const IN_USE_RECHECK: Duration = Duration::from_secs(30);
/// The longest wait between two publishes that met a conflict.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(30);
/// A due credential waiting for the census of claims is woken when it completes: at the
/// end of whichever reconcile, in any controller of the term, completes it, or at the
/// term's next look (`Context::census_advance`, `Context::census_looks`); this look-again
/// only guards against a wake lost. Not sooner: one that fires before the wake (a census of
/// 10,000 takes about 20 s) is a second reconcile, queued behind every woken refresh.
const CENSUS_RECHECK: Duration = PARKED_RECHECK;

/// Why a due refresh does not start after all.
pub enum NotNow {
    /// The process is stopping.
    Stopping,
    /// The credential left this process's watch (relabelled, deleted).
    NotWatched,
    /// This replica's Lease is not fresh enough: look again after this.
    Lease(Duration),
}

/// Every effect the refresh path has, and what each returns. See the module's doc.
#[allow(async_fn_in_trait)]
pub trait World {
    /// The time now (whole seconds are the caller's business).
    fn now(&self) -> Timestamp;
    /// Takes the answer held under `key` out of memory.
    fn take_held(&mut self, key: &str) -> Option<Held>;
    /// Keeps an answer in memory until it is stored and published.
    fn hold(&mut self, held: Held);
    fn remember_live(&mut self, token: &SecretString);
    /// The live refresh token remembered, unless it is among `dead`.
    fn live(&self, dead: &[String]) -> Option<SecretString>;
    fn refuse(&mut self, which: Refusal, login: &str);
    fn set_retry_not_before(&mut self, at: Option<Timestamp>);
    fn set_publish_backoff(&mut self, backoff: Option<PublishBackoff>);
    /// The first credential calling `auth_url` not yet read in this term's census of
    /// claims, if any: the credential then waits for the census, and `read` (what this
    /// refresh would spend) may serve the reconcile its completion wakes, as for a call
    /// slot.
    async fn census_pending(&mut self, auth_url: &url::Url, read: &StoredToken) -> Option<String>;
    /// Why another credential owns `stored`'s token, if one does (see `Memory::claim`).
    fn claimed_elsewhere(&mut self, stored: &StoredToken) -> Option<String>;
    /// Whether another credential rotated `stored`'s token out (it is dead, not only
    /// claimed first).
    fn rotated_out_elsewhere(&mut self, stored: &StoredToken) -> bool;
    /// Adds `stored`'s own token to its Secret's spent list; false when the write failed
    /// (the next look tries again). A Secret changed since it was read is left to that look.
    async fn list_as_spent(&mut self, stored: &StoredToken) -> bool;
    /// Takes a token-call slot and says how long the call may take with it, or parks the
    /// credential for one (`None`); `read` is what this refresh would spend, which the
    /// credential's next reconcile (the one the slot wakes) may use unless its Secret
    /// changed meanwhile.
    async fn call_slot(
        &mut self,
        auth_url: &url::Url,
        read: &StoredToken,
    ) -> Option<SignedDuration>;
    /// Whether a refresh may start now (checked once the slot is granted).
    async fn may_start(&mut self) -> Result<(), NotNow>;
    async fn read_refresh_token(&mut self) -> Result<StoredToken, SecretError>;
    async fn record_intent(
        &mut self,
        stored: &StoredToken,
        intent: &intent::Intent,
    ) -> Result<Option<StoredToken>, Error>;
    /// Best effort: an intent left behind runs out by itself.
    async fn withdraw_intent(&mut self, stored: &StoredToken);
    /// The token call with the slot taken; returns the answer and when it came.
    async fn call(
        &mut self,
        auth_url: &url::Url,
        creds: &ClientCredentials,
        stored: &StoredToken,
    ) -> (Result<TokenGrant, TokenError>, Timestamp);
    async fn write_back(
        &mut self,
        stored: &StoredToken,
        traded: &str,
        new: &SecretString,
        received_at: Timestamp,
    ) -> Result<WriteBack, Error>;
    /// The target Secret as it is now (its metadata).
    async fn read_target(&mut self) -> Result<Option<Secret>, Error>;
    /// The access token the target Secret holds now, if any.
    async fn read_published_token(&mut self) -> Result<Option<SecretString>, Error>;
    async fn publish(
        &mut self,
        grant: &TokenGrant,
        at: (Timestamp, Timestamp),
        refresh_fingerprint: &str,
        spent: &[String],
        ownership: &Ownership,
        resource_version: Option<String>,
    ) -> Result<(), Error>;
    /// Reports `outcome` with `status` (Events, then the status).
    async fn report(
        &mut self,
        outcome: &Outcome,
        status: &EagleEyeCredentialStatus,
        now: Timestamp,
    ) -> Result<(), Error>;
}

/// What gathering read, worked out once, for the whole reconcile.
pub struct Facts {
    /// The credential's key in memory (`namespace/name`).
    pub key: String,
    pub observed: Observed,
    pub stored: Result<StoredToken, SecretError>,
    pub creds: Result<ClientCredentials, SecretError>,
    /// Under which key the pending answer is held (another credential's, after a rename).
    pub pending_key: Option<String>,
    pub published: Option<schedule::Published>,
    /// The target Secret as read, if it exists.
    pub target: Option<Secret>,
    /// Another credential of the namespace that reads a Secret of the target's name.
    pub input_of: Option<String>,
    pub auth_url: Option<url::Url>,
    pub refresh_before: SignedDuration,
    pub login: Option<String>,
    pub dead: Vec<String>,
    /// This credential's name as a spender, in spend intents.
    pub holder: String,
    /// How long past the token call's own limit a spend intent binds other holders.
    pub in_flight_grace: SignedDuration,
    /// The server's `Retry-After`, as remembered.
    pub retry_not_before: Option<Timestamp>,
    pub publish_backoff: Option<PublishBackoff>,
    pub lifetimes: Lifetimes,
    pub jitter: f64,
}

/// Publishes met by a conflict in a row (the target changed since it was read), and when
/// the next may be tried: something that keeps writing the target (a second field manager,
/// a loop) must not make the credential publish in a loop, whatever wakes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishBackoff {
    pub conflicts: u32,
    pub not_before: Timestamp,
}

/// What a refresh sends, once due.
struct Call {
    auth_url: url::Url,
    creds: ClientCredentials,
    /// The login's fingerprint (`controller::login_fingerprint`).
    login: String,
}

/// How a reconcile ends: reported with its outcome, or not (a round that only looks again).
pub enum End {
    Report(Outcome, Action),
    Quiet(Action),
    /// An error for the error policy's backoff, after reporting this outcome (if any).
    Fail(Option<Outcome>, Error),
}

/// The refresh path of one reconcile, over `world`.
pub struct Refresh<'a, W> {
    pub world: W,
    pub cr: &'a EagleEyeCredential,
    pub facts: Facts,
    /// The status as it will be written.
    pub status: EagleEyeCredentialStatus,
    pub now: Timestamp,
    /// Issue and expiry times of the access token published (read, or written this round).
    pub published_token: Option<(Timestamp, Timestamp)>,
}

impl<'a, W: World> Refresh<'a, W> {
    /// Carries out `decision` to its end. A dead copy is listed first, whatever the decision
    /// (one of suspend, a bad spec or the claim, which write nothing): if that fails, the
    /// credential looks again within `IN_USE_RECHECK` to try once more.
    pub async fn run(&mut self, decision: Decision) -> End {
        let unlisted = self.facts.observed.dead_copy && !self.list_dead_copy().await;
        match self.carry_out(decision).await {
            End::Report(outcome, _) if unlisted => {
                End::Report(outcome, Action::requeue(IN_USE_RECHECK))
            }
            end => end,
        }
    }

    async fn carry_out(&mut self, decision: Decision) -> End {
        let chain = self.facts.stored.as_ref().ok().map(|s| s.chain);
        let stay = End::Quiet(Action::requeue(Duration::ZERO));
        match decision {
            Decision::StorePending => {
                let (Some(k), Ok(stored)) = (self.facts.pending_key.clone(), &self.facts.stored)
                else {
                    return stay;
                };
                let Some(held) = self.world.take_held(&k) else {
                    return stay;
                };
                info!(held_for = %self.now.duration_since(held.received_at), "storing the rotated refresh token held in memory");
                // After a revert the chain annotations describe the spent token, not the one
                // stored.
                let stored = StoredToken {
                    token: stored.token.clone(),
                    fingerprint: stored.fingerprint.clone(),
                    secret: stored.secret.clone(),
                    chain: secrets::chain(&stored.secret, &held.spent_fingerprint, self.now),
                    spent: self.facts.dead.clone(),
                };
                let publishable = held.publishable(self.now);
                match self.store_rotated(&stored, held).await {
                    Ok(Some(held)) if publishable => self.publish_held(stored.chain, held).await,
                    Ok(_) => stay,
                    Err(end) => end,
                }
            }
            Decision::PublishPending => {
                let (Some(k), Some(chain)) = (self.facts.pending_key.clone(), chain) else {
                    return stay;
                };
                if let Some(b) = self
                    .facts
                    .publish_backoff
                    .filter(|b| b.not_before > self.now)
                {
                    // Held, stored: it waits out the backoff of the conflicts before it.
                    return End::Quiet(Action::requeue(wait_until(self.world.now(), b.not_before)));
                }
                match self.world.take_held(&k) {
                    Some(held) => self.publish_held(chain, held).await,
                    None => stay,
                }
            }
            Decision::ForgetPending => {
                if let Some(k) = self.facts.pending_key.clone() {
                    self.world.take_held(&k);
                }
                stay
            }
            Decision::YieldToNewLogin => {
                if let Some(k) = self.facts.pending_key.clone() {
                    self.world.take_held(&k);
                }
                End::Report(Outcome::ReplacedByPerson, Action::requeue(Duration::ZERO))
            }
            Decision::KeepPending | Decision::RefreshSecretProblem => match &self.facts.stored {
                Err(e) => secret_problem(e),
                Ok(_) => stay,
            },
            Decision::Suspended => End::Report(Outcome::Suspended, Action::await_change()),
            Decision::InvalidSpec(message) => {
                End::Report(Outcome::InvalidSpec(message), Action::await_change())
            }
            Decision::InUse(message) => {
                End::Report(Outcome::InUse(message), Action::requeue(IN_USE_RECHECK))
            }
            Decision::TargetConflict(message) => End::Report(
                Outcome::TargetConflict(message),
                Action::requeue(WAITING_RECHECK),
            ),
            Decision::ClientSecretProblem => match &self.facts.creds {
                Err(e) => secret_problem(e),
                Ok(_) => stay,
            },
            Decision::WaitForLogin => {
                // Sending a refused token again cannot succeed, and servers count it as reuse.
                if let Some(login) = self.facts.login.clone() {
                    self.world.refuse(Refusal::Server, &login);
                }
                End::Report(Outcome::AwaitingLogin, Action::requeue(WAITING_RECHECK))
            }
            Decision::WaitForConfig => {
                End::Report(Outcome::AwaitingConfig, Action::requeue(WAITING_RECHECK))
            }
            Decision::RestoreLive | Decision::Reverted => match self.facts.stored.as_ref() {
                Ok(stored) => {
                    let stored = StoredToken::clone(stored);
                    self.undo_revert(stored).await
                }
                Err(_) => stay,
            },
            Decision::Deferred { holder, until } => {
                info!(%holder, %until, "deferring a refresh to another holder's spend intent");
                let expires = self.facts.published.as_ref().map(|p| p.expires_at);
                // Looked at again when the intent lapses, or sooner when the published token
                // expires meanwhile, so that Ready says so.
                let next = expires
                    .filter(|e| *e > self.now)
                    .map_or(until, |e| e.min(until));
                let wait = wait_until(self.world.now(), next) + Duration::from_secs(1);
                let standing = self.standing(expires);
                End::Report(
                    Outcome::Deferred {
                        holder,
                        until,
                        standing,
                    },
                    Action::requeue(wait),
                )
            }
            Decision::WaitUntil(at) => self.waiting(at),
            Decision::Rerender(at) => match self.rerender().await {
                Some(end) => end,
                None => self.waiting(at),
            },
            Decision::Spend(why) => {
                let (Ok(stored), Ok(creds), Some(auth_url), Some(login)) = (
                    &self.facts.stored,
                    &self.facts.creds,
                    self.facts.auth_url.clone(),
                    self.facts.login.clone(),
                ) else {
                    return stay;
                };
                let creds = creds.clone();
                // The write-back after the call (and a follower's retry of it) must know
                // every token found dead, the target's copy of the list included.
                let stored = StoredToken {
                    spent: self.facts.dead.clone(),
                    ..StoredToken::clone(stored)
                };
                self.world.remember_live(&stored.token);
                if let Some(unread) = self.world.census_pending(&auth_url, &stored).await {
                    info!(%unread, "not refreshing before every credential has been read in this term: one may hold a copy of this token");
                    return End::Quiet(Action::requeue(CENSUS_RECHECK));
                }
                // Claimed when read; asked again now that every credential is known: the one
                // read last may have rotated this very token out.
                if let Some(why) = self.world.claimed_elsewhere(&stored) {
                    return self.claimed_elsewhere(why).await;
                }
                let Some(call_limit) = self.world.call_slot(&auth_url, &stored).await else {
                    return self.awaiting_slot();
                };
                info!(?why, "refreshing");
                let call = Call {
                    auth_url,
                    creds,
                    login,
                };
                self.spend(stored, call, call_limit).await
            }
        }
    }

    /// The target as last read (taken: a publish reads it again), and whose it is.
    fn take_target(&mut self) -> (Option<Secret>, Ownership) {
        let current = self.facts.target.take();
        let ownership = target::ownership(
            self.cr,
            current.as_ref(),
            self.facts.input_of.as_deref(),
            crate::controller::FIELD_MANAGER,
        );
        (current, ownership)
    }

    /// Not due until `at`: the deadline and the live token as read, and a wait.
    fn waiting(&mut self, at: Timestamp) -> End {
        let chain = self.facts.stored.as_ref().ok().map(|s| s.chain);
        if let Some(chain) = chain {
            self.set_deadline(chain);
        }
        if let Ok(stored) = &self.facts.stored {
            let token = stored.token.clone();
            self.world.remember_live(&token);
        }
        let standing = self.standing(self.facts.published.as_ref().map(|p| p.expires_at));
        let action = Action::requeue(wait_until(self.world.now(), at));
        End::Report(
            Outcome::Waiting {
                until: at,
                standing,
            },
            action,
        )
    }

    /// Publishes the live published token again, for templates changed since it was
    /// published; `None` when done (or nothing to do), else how the reconcile ends.
    async fn rerender(&mut self) -> Option<End> {
        let published = self.facts.published.clone()?;
        let base = self.status.base_url.as_deref()?;
        let api = url::Url::parse(base).ok()?;
        let hostname = api.host_str()?.trim_matches(['[', ']']).to_owned();
        let port = api.port_or_known_default()?;
        let access_token = match self.world.read_published_token().await {
            Ok(token) => token?,
            Err(e) => return Some(End::Fail(None, e)),
        };
        let grant = TokenGrant {
            access_token,
            expires_in: schedule::until(published.issued_at, published.expires_at),
            refresh_token: None,
            api: crate::token::ApiBase { hostname, port },
            scope: self.cr.spec.scope.clone(),
            token_type: "Bearer".into(),
        };
        let (current, ownership) = self.take_target();
        if matches!(ownership, Ownership::Conflict(_)) {
            return None;
        }
        // Written over the version read: a token published meanwhile is never rolled back.
        let version = current.and_then(|s| s.metadata.resource_version);
        let written = self
            .world
            .publish(
                &grant,
                (published.issued_at, published.expires_at),
                &published.refresh_fingerprint,
                &published.spent_fingerprints,
                &ownership,
                version,
            )
            .await;
        match written {
            Ok(()) => {
                info!("rendered spec.target.template again for the published access token");
                None
            }
            Err(e) if e.is_conflict() => Some(End::Quiet(Action::requeue(Duration::from_secs(1)))),
            Err(e) => Some(End::Fail(None, e)),
        }
    }

    /// Due, parked for a call slot: nothing is written while the published token is valid;
    /// once it has expired, `Ready` says why no new one comes.
    fn awaiting_slot(&self) -> End {
        let expires = self.facts.published.as_ref().map(|p| p.expires_at);
        let standing = self.standing(expires);
        let recheck = expires
            .filter(|e| *e > self.now)
            .map_or(PARKED_RECHECK, |e| {
                wait_until(self.world.now(), e) + Duration::from_secs(1)
            })
            .min(PARKED_RECHECK);
        let destination = self
            .facts
            .auth_url
            .as_ref()
            .map(|u| crate::token::Destination::of(u).to_string())
            .unwrap_or_default();
        End::Report(
            Outcome::AwaitingCallSlot {
                destination,
                standing,
            },
            Action::requeue(recheck),
        )
    }

    /// Records the spend intent on the token's Secret (rotating tokens), then refreshes.
    /// The intent write carries the resourceVersion of the read that found the token: if
    /// anything changed since, nothing is spent and the next reconcile looks again.
    async fn spend(&mut self, stored: StoredToken, call: Call, call_limit: SignedDuration) -> End {
        match self.world.may_start().await {
            Ok(()) => {}
            Err(NotNow::Stopping) => {
                info!("not refreshing: the operator is stopping");
                return End::Quiet(Action::await_change());
            }
            Err(NotNow::NotWatched) => {
                info!("not refreshing: the credential is no longer watched by this operator");
                return End::Quiet(Action::await_change());
            }
            Err(NotNow::Lease(wait)) => {
                info!(
                    ?wait,
                    "not refreshing: this replica's Lease is not fresh enough"
                );
                return End::Quiet(Action::requeue(wait));
            }
        }
        if self.rotation() == Rotation::NonRotating {
            return self.refresh(stored, call).await;
        }
        // The intent binds others for the call's limit plus the grace: time for a holder
        // that received an answer while cut off from the API server to store it once it is
        // back, before anyone else may spend the token it traded.
        let intent = intent::Intent {
            fingerprint: stored.fingerprint.clone(),
            holder: self.facts.holder.clone(),
            until: intent::until(
                self.world.now(),
                call_limit.saturating_add(self.facts.in_flight_grace),
            ),
        };
        match self.world.record_intent(&stored, &intent).await {
            Ok(Some(stored)) => self.refresh(stored, call).await,
            // Someone wrote the Secret since it was read: read it again.
            Ok(None) => End::Quiet(Action::requeue(Duration::ZERO)),
            Err(e) => End::Fail(None, e),
        }
    }

    async fn refresh(&mut self, stored: StoredToken, call: Call) -> End {
        let (result, answered_at) = self.world.call(&call.auth_url, &call.creds, &stored).await;
        // Times from here on count from the answer: the token's life starts there.
        self.now = answered_at;
        match result {
            Ok(grant) => {
                self.world.set_retry_not_before(None);
                let held = self.held(&stored, Some(grant), None);
                match self.store_rotated(&stored, held).await {
                    // Read afresh: the call may have lasted minutes, and a target deleted
                    // meanwhile must not come back from the copy read before it.
                    Ok(Some(held)) => {
                        self.facts.target = None;
                        self.publish_held_after_call(stored.chain, held).await
                    }
                    Ok(None) => End::Quiet(Action::requeue(Duration::ZERO)),
                    Err(end) => end,
                }
            }
            Err(e) => {
                // An unusable answer that still carried a new refresh token: the server has
                // rotated, so the new token must be stored before the failure is reported.
                let mut login = call.login;
                if let Some(new) = e.refresh_token() {
                    let held = self.held(&stored, None, Some(new.clone()));
                    if held.new_token.is_some() {
                        match self.store_rotated(&stored, held).await {
                            Ok(Some(_)) => {}
                            Ok(None) => return End::Quiet(Action::requeue(Duration::ZERO)),
                            Err(end) => return end,
                        }
                    }
                    // From here on the stored login is the one with the new token.
                    login = crate::controller::login_fingerprint(
                        &call.auth_url,
                        &self.cr.spec.scope,
                        &call.creds,
                        new.expose_secret(),
                    );
                } else if e.class() != ErrorClass::OutcomeUnknown {
                    // The call has ended with nothing to store: no answer can still come.
                    self.world.withdraw_intent(&stored).await;
                }
                self.refresh_failed(e, &stored, &login).await
            }
        }
    }

    /// What to keep of an answer until it is stored and published.
    fn held(
        &self,
        stored: &StoredToken,
        grant: Option<TokenGrant>,
        token: Option<SecretString>,
    ) -> Held {
        let new = token.or_else(|| grant.as_ref().and_then(|g| g.refresh_token.clone()));
        let r = &self.cr.spec.refresh_token_secret_ref;
        Held {
            spent_fingerprint: stored.fingerprint.clone(),
            new_token: new.filter(|t| t.expose_secret() != stored.token.expose_secret()),
            grant,
            received_at: self.now,
            spent: stored.spent.clone(),
            namespace: self.cr.metadata.namespace.clone().unwrap_or_default(),
            secret: r.name.clone(),
            key: r.key.clone(),
            credential: self.cr.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// Writes a rotated refresh token back before anything else. Returns the held answer
    /// to publish, or `None` when a person stored a new login meanwhile (theirs wins). A
    /// failed write keeps everything held for the next attempt and reports it.
    async fn store_rotated(
        &mut self,
        stored: &StoredToken,
        mut held: Held,
    ) -> Result<Option<Held>, End> {
        let Some(new) = held.new_token.clone() else {
            // Nothing to store; but a person may have stored a new login while the call was
            // out, and an answer for the old one is not published over theirs. Unread, it
            // stays held for the next reconcile to decide.
            return match self.world.read_refresh_token().await {
                Ok(now) if now.fingerprint == held.spent_fingerprint => Ok(Some(held)),
                Ok(_) => Ok(None),
                Err(_) => {
                    self.world.hold(held);
                    Ok(None)
                }
            };
        };
        // From the answer on, the new token is the live one (the spent one is dead); and it is
        // held in memory until the write-back is acknowledged, so that a reconcile cancelled
        // or panicking meanwhile leaves it there for the next one (or the flush) to store.
        self.world.remember_live(&new);
        self.world.hold(held.clone());
        let traded = held.spent_fingerprint.clone();
        let written = self
            .world
            .write_back(stored, &traded, &new, held.received_at)
            .await;
        if written.is_ok() {
            self.world.take_held(&self.facts.key);
        }
        match written {
            Ok(WriteBack::Written(spent, _)) => {
                held.spent = spent;
                Ok(Some(held))
            }
            Ok(WriteBack::ReplacedByPerson) => {
                // An Event only: no status write that could fail.
                match self
                    .world
                    .report(&Outcome::ReplacedByPerson, &self.status, self.now)
                    .await
                {
                    Ok(()) => Ok(None),
                    Err(e) => Err(End::Fail(None, e)),
                }
            }
            Err(e) => {
                let secret = held.secret.clone();
                let outcome = Outcome::WriteBackPending {
                    secret,
                    why: e.reason(),
                };
                Err(End::Fail(Some(outcome), e))
            }
        }
    }

    /// [`Refresh::publish_held`] after a token call: the target as it is now.
    async fn publish_held_after_call(&mut self, chain: secrets::Chain, held: Held) -> End {
        match self.world.read_target().await {
            Ok(target) => {
                self.facts.target = target;
                self.publish_held(chain, held).await
            }
            Err(e) => {
                self.world.hold(held);
                let outcome = Outcome::PublishFailed { why: e.to_string() };
                End::Fail(Some(outcome), e)
            }
        }
    }

    /// Publishes a stored answer's access token over the target as last read, then the
    /// status. A failed publish keeps the answer held, so the next attempt publishes it
    /// instead of refreshing again.
    async fn publish_held(&mut self, mut chain: secrets::Chain, held: Held) -> End {
        let Some(grant) = held.grant.clone() else {
            return End::Quiet(Action::requeue(Duration::ZERO));
        };
        let rotated = held.new_token.is_some();
        let refresh_fp = held.new_fingerprint();
        let issued_at = held.received_at;
        let expires_at =
            issued_at + SignedDuration::try_from(grant.expires_in).unwrap_or(SignedDuration::ZERO);
        // The target keeps a copy of the spent list, for tools that put back annotations
        // along with the token; the refresh-token Secret's list is the one that counts. It
        // is written over the version read, so an answer held up in flight never rolls back
        // a newer one published meanwhile (a 409 if it changed since).
        let (current, ownership) = self.take_target();
        if let Ownership::Conflict(why) = ownership {
            // The refresh token is stored; its access token cannot be published here.
            return End::Report(
                Outcome::TargetConflict(why),
                Action::requeue(WAITING_RECHECK),
            );
        }
        let copy = current.as_ref().and_then(target::published);
        if copy
            .as_ref()
            .is_some_and(|p| target::supersedes(p, issued_at, &refresh_fp))
        {
            info!("a newer access token is already published; this older answer is not");
            return End::Quiet(Action::requeue(Duration::ZERO));
        }
        let copy = copy.map(|p| p.spent_fingerprints).unwrap_or_default();
        let spent: Vec<String> = spent::union(&held.spent, &copy)
            .into_iter()
            .filter(|f| *f != refresh_fp)
            .collect();
        let version = current.and_then(|s| s.metadata.resource_version);
        let published = self
            .world
            .publish(
                &grant,
                (issued_at, expires_at),
                &refresh_fp,
                &spent,
                &ownership,
                version,
            )
            .await;
        if let Err(e) = published {
            self.world.hold(held);
            if e.is_conflict() {
                // The target changed since it was read: publish again, over the new version,
                // once a backoff that grows with each conflict in a row has passed.
                let conflicts = self.facts.publish_backoff.map_or(0, |b| b.conflicts) + 1;
                let wait = schedule::backoff(conflicts, self.facts.jitter).min(MAX_PUBLISH_BACKOFF);
                let not_before = self
                    .world
                    .now()
                    .checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::ZERO))
                    .unwrap_or(Timestamp::MAX);
                self.world.set_publish_backoff(Some(PublishBackoff {
                    conflicts,
                    not_before,
                }));
                info!(
                    conflicts,
                    ?wait,
                    "the target Secret changed while publishing; publishing again after a backoff"
                );
                return End::Quiet(Action::requeue(wait));
            }
            let outcome = Outcome::PublishFailed { why: e.to_string() };
            return End::Fail(Some(outcome), e);
        }
        if self.facts.publish_backoff.is_some() {
            self.world.set_publish_backoff(None);
        }
        let rotation = match (self.cr.spec.rotation, rotated, &grant.refresh_token) {
            (RotationMode::Auto, false, Some(_)) => RotationMode::NonRotating,
            (RotationMode::Auto, _, _) => RotationMode::Rotating,
            (explicit, _, _) => explicit,
        };
        let published = schedule::Published {
            issued_at,
            expires_at,
            refresh_fingerprint: refresh_fp,
            spent_fingerprints: spent,
        };
        let s = &mut self.status;
        s.rotation = Some(rotation);
        s.access_token_expires_at = Some(Time(expires_at));
        s.last_refresh_at = Some(Time(issued_at));
        s.failed_refresh_attempts = 0;
        s.last_failure_time = None;
        s.refused_login_fingerprint = None;
        s.base_url = Some(grant.api.base_url());
        s.target_secret_name = Some(target::target_name(self.cr));
        if rotated {
            chain.token_issued_at = issued_at;
        }
        self.set_deadline(chain);
        let next = schedule::before_idle_end(
            schedule::due_at(
                &published,
                self.rotation(),
                self.facts.refresh_before,
                self.facts.jitter,
            ),
            chain.token_issued_at,
            self.idle_end(chain.token_issued_at),
        );
        let action = Action::requeue(wait_until(self.world.now(), next));
        self.published_token = Some((issued_at, expires_at));
        self.status.revision = self.status.revision.saturating_add(1);
        self.record(history::REFRESHED, &published.refresh_fingerprint);
        let outcome = Outcome::Refreshed {
            expires_at,
            next_refresh: next,
        };
        End::Report(outcome, action)
    }

    async fn refresh_failed(&mut self, err: TokenError, stored: &StoredToken, login: &str) -> End {
        // Within the bound the CRD sets, or the status write would be refused.
        self.status.failed_refresh_attempts = self
            .status
            .failed_refresh_attempts
            .saturating_add(1)
            .min(crate::crd::MAX_FAILED_ATTEMPTS);
        self.status.last_failure_time = Some(Time(self.now));
        if let Some(after) = err.retry_after() {
            // From the precise time of the answer: rounding down to the second would retry
            // up to a second before the server asked.
            let after = SignedDuration::try_from(after).unwrap_or(SignedDuration::ZERO);
            let at = self
                .world
                .now()
                .checked_add(after)
                .unwrap_or(Timestamp::MAX);
            self.world.set_retry_not_before(Some(at));
        }
        self.record(err_outcome(&err), &stored.fingerprint);
        if err.class() == ErrorClass::RefusedByConfig {
            // The server answered (and rotated: the new token was stored above), but this
            // operator may not use the answer. Spending again would only rotate for nothing:
            // wait until the configuration or the login changes.
            self.world.refuse(Refusal::Config, login);
            let outcome = Outcome::AnswerRefused {
                failure: Failure::from(&err),
            };
            return End::Report(outcome, Action::requeue(WAITING_RECHECK));
        }
        if err.class() == ErrorClass::Reauthorize {
            // Before declaring the login dead, make sure the token spent is still the one
            // stored: if it changed meanwhile, someone logged in again or rotated it.
            let again = self.world.read_refresh_token().await;
            if again.is_ok_and(|s| s.fingerprint != stored.fingerprint) {
                return End::Quiet(Action::requeue(Duration::ZERO));
            }
            // Sending a refused non-rotating token again is no reuse, and may work after a
            // server incident: only rotating logins are held back.
            if self.rotation() != Rotation::NonRotating {
                self.status.refused_login_fingerprint = Some(login.to_owned());
                self.world.refuse(Refusal::Server, login);
            }
            let outcome = Outcome::ReauthorizationRequired {
                failure: Failure::from(&err),
                secret: self.cr.spec.refresh_token_secret_ref.name.clone(),
            };
            return End::Report(outcome, Action::requeue(WAITING_RECHECK));
        }
        // Only the retry time matters here, which refreshBefore does not change.
        let published = self.facts.published.clone();
        let inputs = schedule::Inputs {
            now: self.now,
            published: published.clone(),
            stored_fingerprint: stored.fingerprint.clone(),
            rotation: self.rotation(),
            refresh_before: SignedDuration::ZERO,
            failures: self.status.failed_refresh_attempts,
            last_failure: self.status.last_failure_time.as_ref().map(|t| t.0),
            retry_not_before: err
                .retry_after()
                .and_then(|after| {
                    let after = SignedDuration::try_from(after).ok()?;
                    self.world.now().checked_add(after).ok()
                })
                .or(self.facts.retry_not_before),
            jitter: self.facts.jitter,
            refresh_token_idle_end: self.idle_end(stored.chain.token_issued_at),
            renew: false,
        };
        let at = match schedule::plan(&inputs) {
            schedule::Plan::RefreshAt(at, _) => at,
            schedule::Plan::RefreshNow(_) => {
                self.now
                    + SignedDuration::try_from(schedule::MIN_BACKOFF)
                        .unwrap_or(SignedDuration::ZERO)
            }
        };
        let action = Action::requeue(wait_until(self.world.now(), at));
        let outcome = Outcome::RefreshFailed {
            failure: Failure::from(&err),
            attempt: self.status.failed_refresh_attempts,
            next_try: at,
            published_until: published.map(|p| p.expires_at),
        };
        End::Report(outcome, action)
    }

    /// Lists the stored token, which another credential rotated out, as spent on its own
    /// Secret (once): what this process knows of the other's spent list dies with the
    /// process, and a later one may never read that list again (the other credential
    /// deleted, say), so it would take the copy for the live token and spend it, a reuse
    /// that can end the whole login. Done whatever else is decided (a suspended copy
    /// included), never while an answer is pending. False when the write failed.
    async fn list_dead_copy(&mut self) -> bool {
        let Ok(stored) = &self.facts.stored else {
            return true;
        };
        if stored.spent.contains(&stored.fingerprint) {
            return true;
        }
        let stored = StoredToken::clone(stored);
        info!("listing the refresh token another credential rotated out as spent on its Secret");
        self.world.list_as_spent(&stored).await
    }

    /// The stored token is another credential's: claimed by it first, or rotated out by it
    /// (then dead, and listed so).
    async fn claimed_elsewhere(&mut self, why: String) -> End {
        if let Ok(stored) = &self.facts.stored
            && self.world.rotated_out_elsewhere(stored)
        {
            self.list_dead_copy().await;
        }
        End::Report(Outcome::InUse(why), Action::requeue(IN_USE_RECHECK))
    }

    /// The Secret holds a refresh token this operator rotated out (a GitOps or secret-sync
    /// tool put its old copy back). Spending it would fail and could alarm the server, so
    /// it is never spent: the live token is written back when this process still knows
    /// it, else the credential waits for a new login.
    async fn undo_revert(&mut self, stored: StoredToken) -> End {
        let r = &self.cr.spec.refresh_token_secret_ref;
        let (secret, key) = (r.name.clone(), r.key.clone());
        let Some(live) = self.world.live(&self.facts.dead) else {
            let outcome = Outcome::Reverted { secret, key };
            return End::Report(outcome, Action::requeue(WAITING_RECHECK));
        };
        // The chain annotations still describe the live token unless they were reverted too.
        let live_fp = secrets::fingerprint(live.expose_secret());
        let chain = secrets::chain(&stored.secret, &live_fp, self.now);
        let reverted = StoredToken { chain, ..stored };
        let traded = reverted.fingerprint.clone();
        match self
            .world
            .write_back(&reverted, &traded, &live, chain.token_issued_at)
            .await
        {
            Ok(WriteBack::Written(..)) => End::Report(
                Outcome::Restored { secret, key },
                Action::requeue(Duration::ZERO),
            ),
            Ok(WriteBack::ReplacedByPerson) => End::Quiet(Action::requeue(Duration::ZERO)),
            Err(e) => End::Fail(None, e),
        }
    }

    /// Adds this round's refresh to status.history.
    fn record(&mut self, outcome: &str, fingerprint: &str) {
        let s = &mut self.status;
        history::record(
            &mut s.history,
            self.now,
            intent::process(&self.facts.holder),
            outcome,
            fingerprint,
            s.revision,
        );
    }

    /// What stands when this round changed nothing, for `Ready`.
    pub fn standing(&self, expires_at: Option<Timestamp>) -> Standing {
        Standing {
            expires_at,
            failing: self.status.failed_refresh_attempts > 0,
        }
    }

    pub fn rotation(&self) -> Rotation {
        rotation(self.cr, &self.status)
    }

    fn set_deadline(&mut self, chain: secrets::Chain) {
        let rotation = self.rotation();
        set_deadline(&mut self.status, rotation, &self.facts.lifetimes, chain);
    }

    /// When the current refresh token dies unused; rotating tokens only.
    fn idle_end(&self, token_issued_at: Timestamp) -> Option<Timestamp> {
        (self.rotation() != Rotation::NonRotating)
            .then(|| token_issued_at + self.facts.lifetimes.idle)
    }
}

/// How a failed refresh shows in status.history: the `Ready` reason it leads to.
fn err_outcome(err: &TokenError) -> &'static str {
    match err.class() {
        ErrorClass::RefusedByConfig => crate::status::reason::ANSWER_REFUSED,
        ErrorClass::Reauthorize => crate::status::reason::REAUTHORIZATION_REQUIRED,
        _ => crate::status::reason::REFRESH_FAILED,
    }
}

/// A Secret that cannot be used is reported and looked at again soon; a Kubernetes API
/// failure is an error, retried with backoff.
fn secret_problem(e: &SecretError) -> End {
    match Outcome::secret_problem(e) {
        Some(outcome) => End::Report(outcome, Action::requeue(MISSING_SECRET_RECHECK)),
        // Kubernetes API failures never reach here: gathering returns them as errors.
        None => End::Quiet(Action::requeue(MISSING_SECRET_RECHECK)),
    }
}

/// A missing Secret is looked for again this often (its creation also triggers a look).
pub const MISSING_SECRET_RECHECK: Duration = Duration::from_secs(30);

/// Whether the credential's tokens rotate, as the spec says or the server showed.
pub fn rotation(cr: &EagleEyeCredential, status: &EagleEyeCredentialStatus) -> Rotation {
    match (cr.spec.rotation, status.rotation) {
        (RotationMode::Rotating, _) | (RotationMode::Auto, Some(RotationMode::Rotating)) => {
            Rotation::Rotating
        }
        (RotationMode::NonRotating, _) | (RotationMode::Auto, Some(RotationMode::NonRotating)) => {
            Rotation::NonRotating
        }
        _ => Rotation::Unknown,
    }
}

/// The chain's deadlines in `status` (none for a non-rotating token).
pub fn set_deadline(
    status: &mut EagleEyeCredentialStatus,
    rotation: Rotation,
    lifetimes: &Lifetimes,
    chain: secrets::Chain,
) {
    if rotation == Rotation::NonRotating {
        status.refresh_token_deadline = None;
        status.chain_started_at = None;
        status.refresh_token_deadline_is_estimate = false;
        return;
    }
    status.chain_started_at = Some(Time(whole_seconds(chain.started_at)));
    status.refresh_token_deadline = Some(Time(whole_seconds(status::deadline(
        lifetimes,
        chain.started_at,
        chain.token_issued_at,
    ))));
    status.refresh_token_deadline_is_estimate = chain.estimated;
}

/// Kubernetes keeps times to the second; rounding down here keeps the status, the target
/// Secret and the schedule in agreement, and errs towards refreshing early.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// How long from `now` until a clock that reads whole seconds reaches `at`: until the
/// first whole second not before it. Waking at `at` itself would find it not yet due and
/// wait again, a reconcile per remaining fraction of a second.
pub fn wait_until(now: Timestamp, at: Timestamp) -> Duration {
    let floor = whole_seconds(at);
    let at = if floor < at {
        floor
            .checked_add(SignedDuration::from_secs(1))
            .unwrap_or(at)
    } else {
        at
    };
    schedule::until(now, at)
}

#[cfg(test)]
mod tests {
    use super::{wait_until, whole_seconds};

    #[test]
    fn a_wait_ends_when_the_whole_second_clock_reaches_the_time_not_before() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let now = t("2026-11-30T11:35:26.404Z");
        let at = t("2026-11-30T11:35:26.538Z");
        // Woken at 26.538, the clock still reads 26 and the refresh is not due yet.
        assert!(whole_seconds(at) < at);
        assert_eq!(wait_until(now, at).as_millis(), 596);
        // Whole seconds and the past need no rounding.
        assert_eq!(wait_until(now, t("2026-11-30T11:35:30Z")).as_millis(), 3596);
        assert_eq!(wait_until(now, t("2026-11-30T11:35:20.5Z")).as_millis(), 0);
        assert!(wait_until(now, jiff::Timestamp::MAX).as_secs() > 0);
    }
}
