//! What one reconcile does, decided from everything it read: a pure function of an
//! [`Observed`] value, with every guard in one documented order (the model is
//! cert-manager's issuing policies). The controller gathers, calls [`decide`], and carries
//! out the one [`Decision`]; it decides nothing itself.
//!
//! The order, and why:
//! 1. An answer still pending in memory comes first: it may be the only live copy of the
//!    login, so neither suspend, nor a bad spec, nor a missing client Secret may keep it
//!    waiting. Only a refresh-token Secret that cannot be read makes it wait.
//! 2. Suspend, then the spec, then a second claimant of the token, then a target Secret
//!    that is not this credential's to write: each stops spending before any Secret
//!    content is trusted (a refresh whose answer cannot be published only rotates).
//! 3. The Secrets' content: missing or unreadable values, then a login the server refused
//!    or an answer the configuration refused (never sent again until something changes),
//!    then a rotated-out token put back (never spent).
//! 4. The schedule: not due yet means wait (after rendering the published token again when
//!    spec.target.template changed since it was published). A renew request makes the
//!    schedule due now (`crate::renew`), and so passes every guard above and below.
//! 5. Due: another holder's spend intent on this very token is waited out; otherwise spend.
//!    (Whether this replica's Lease is fresh enough is the last check, made right before
//!    the call because it needs a read.)

use jiff::Timestamp;

use crate::content::{self, Content, Pending};
use crate::intent;
use crate::schedule::{Plan, Why};

/// An answer received but not yet seen stored and published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAnswer {
    /// Fingerprint of the token spent for it.
    pub spent: String,
    /// Fingerprint of the token it carries (equal to `spent` when it did not rotate).
    pub new: String,
    /// Whether it has an access token still worth publishing.
    pub publishable: bool,
}

/// Everything one reconcile read, as plain data.
#[derive(Debug)]
pub struct Observed {
    pub now: Timestamp,
    pub suspended: bool,
    /// What is wrong with the spec beyond what the API server checks.
    pub spec_problem: Option<String>,
    /// Why another credential owns this refresh token, if one does.
    pub claimed_elsewhere: Option<String>,
    /// That credential rotated the token out: it is dead, not only claimed first (listed so
    /// on its Secret, whatever is decided).
    pub dead_copy: bool,
    /// Why the target Secret is not this credential's to write, if it is not.
    pub target_conflict: Option<String>,
    /// The client-credentials Secret's problem, if any.
    pub client: Option<String>,
    /// Fingerprint of the stored refresh token, or why there is none.
    pub stored: Result<String, String>,
    pub pending: Option<PendingAnswer>,
    /// Fingerprints of every token known rotated out.
    pub dead: Vec<String>,
    /// Whether this process still knows the live token (to put back over a dead one).
    pub live_known: bool,
    /// The server refused this exact login (client, scope, URL and token) before.
    pub refused: bool,
    /// The configuration refused the answer to this exact login before (an API host
    /// outside the allow-list): spending again would rotate for nothing.
    pub blocked: bool,
    /// Another holder's spend intent on the stored token.
    pub intent: intent::Verdict,
    /// The schedule's plan (see `schedule::plan`).
    pub plan: Plan,
    /// The live published token was rendered with other templates than the spec's.
    pub templates_stale: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write the pending token into the Secret (over the spent token, or over a spent
    /// token put back).
    StorePending,
    /// The pending answer's token is stored: publish its access token.
    PublishPending,
    /// The pending answer's token is stored but its access token is not worth publishing:
    /// forget it and look again.
    ForgetPending,
    /// A person stored a new login while an answer was pending: theirs wins.
    YieldToNewLogin,
    /// Pending answer, but its Secret cannot be read: keep it and wait.
    KeepPending,
    Suspended,
    InvalidSpec(String),
    InUse(String),
    TargetConflict(String),
    ClientSecretProblem,
    RefreshSecretProblem,
    /// The server refused this login: wait for a person's new one.
    WaitForLogin,
    /// The configuration refused the last answer: wait for it to change.
    WaitForConfig,
    /// A rotated-out token was put back and this process knows the live one: restore it.
    RestoreLive,
    /// A rotated-out token was put back and no live copy is left: a new login is needed.
    Reverted,
    /// Another holder may still receive an answer for this token until then.
    Deferred {
        holder: String,
        until: Timestamp,
    },
    WaitUntil(Timestamp),
    /// Not due, but spec.target.template changed: render the published token again, then
    /// wait until then.
    Rerender(Timestamp),
    Spend(Why),
}

pub fn decide(o: &Observed) -> Decision {
    if let Some(p) = &o.pending {
        let Ok(stored) = &o.stored else {
            return Decision::KeepPending;
        };
        let pending = Pending {
            spent: &p.spent,
            new: &p.new,
        };
        return match content::classify(stored, Some(pending), &o.dead) {
            Content::AwaitingWriteBack | Content::SpentPutBack if p.new != p.spent => {
                Decision::StorePending
            }
            Content::StoredByUs | Content::AwaitingWriteBack | Content::SpentPutBack
                if p.publishable =>
            {
                Decision::PublishPending
            }
            Content::NewLogin => Decision::YieldToNewLogin,
            _ => Decision::ForgetPending,
        };
    }
    if o.suspended {
        return Decision::Suspended;
    }
    if let Some(problem) = &o.spec_problem {
        return Decision::InvalidSpec(problem.clone());
    }
    if let Some(why) = &o.claimed_elsewhere {
        return Decision::InUse(why.clone());
    }
    if let Some(why) = &o.target_conflict {
        return Decision::TargetConflict(why.clone());
    }
    if o.client.is_some() {
        return Decision::ClientSecretProblem;
    }
    let Ok(stored) = &o.stored else {
        return Decision::RefreshSecretProblem;
    };
    if o.refused {
        return Decision::WaitForLogin;
    }
    if o.blocked {
        return Decision::WaitForConfig;
    }
    if content::classify(stored, None, &o.dead) == Content::SpentPutBack {
        return if o.live_known {
            Decision::RestoreLive
        } else {
            Decision::Reverted
        };
    }
    match &o.plan {
        Plan::RefreshAt(at, _) if o.templates_stale => Decision::Rerender(*at),
        Plan::RefreshAt(at, _) => Decision::WaitUntil(*at),
        Plan::RefreshNow(why) => match &o.intent {
            intent::Verdict::HeldElsewhere { holder, until } => Decision::Deferred {
                holder: holder.clone(),
                until: *until,
            },
            intent::Verdict::Free => Decision::Spend(*why),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A healthy, due credential: every guard passes.
    fn due() -> Observed {
        Observed {
            now: t("2026-11-30T10:00:00Z"),
            suspended: false,
            spec_problem: None,
            claimed_elsewhere: None,
            dead_copy: false,
            target_conflict: None,
            client: None,
            stored: Ok("t1".into()),
            pending: None,
            dead: vec!["t0".into()],
            live_known: true,
            refused: false,
            blocked: false,
            intent: intent::Verdict::Free,
            plan: Plan::RefreshNow(Why::Due),
            templates_stale: false,
        }
    }

    fn pending(spent: &str, new: &str, publishable: bool) -> Option<PendingAnswer> {
        Some(PendingAnswer {
            spent: spent.into(),
            new: new.into(),
            publishable,
        })
    }

    #[test]
    fn a_due_credential_with_nothing_in_the_way_spends() {
        assert_eq!(decide(&due()), Decision::Spend(Why::Due));
    }

    #[test]
    fn a_pending_answer_comes_before_suspend_spec_target_and_client_problems() {
        let o = Observed {
            suspended: true,
            spec_problem: Some("bad".into()),
            target_conflict: Some("t".into()),
            client: Some("c".into()),
            pending: pending("t1", "t2", true),
            ..due()
        };
        assert_eq!(decide(&o), Decision::StorePending);
    }

    #[test]
    fn a_pending_answer_waits_out_an_unreadable_secret() {
        let o = Observed {
            stored: Err("r".into()),
            pending: pending("t1", "t2", true),
            ..due()
        };
        assert_eq!(decide(&o), Decision::KeepPending);
    }

    #[test]
    fn a_stored_pending_answer_is_published_or_forgotten() {
        let stored = Observed {
            stored: Ok("t2".into()),
            pending: pending("t1", "t2", true),
            ..due()
        };
        assert_eq!(decide(&stored), Decision::PublishPending);
        let expired = Observed {
            stored: Ok("t2".into()),
            pending: pending("t1", "t2", false),
            ..due()
        };
        assert_eq!(decide(&expired), Decision::ForgetPending);
        let non_rotating = Observed {
            pending: pending("t1", "t1", true),
            ..due()
        };
        assert_eq!(decide(&non_rotating), Decision::PublishPending);
    }

    #[test]
    fn a_new_login_beats_a_pending_answer_and_a_put_back_token_does_not() {
        let new_login = Observed {
            stored: Ok("person".into()),
            pending: pending("t1", "t2", true),
            ..due()
        };
        assert_eq!(decide(&new_login), Decision::YieldToNewLogin);
        let put_back = Observed {
            stored: Ok("t0".into()),
            pending: pending("t1", "t2", true),
            ..due()
        };
        assert_eq!(decide(&put_back), Decision::StorePending);
    }

    /// One row per `Ready` reason the guards produce, in the documented order: each row
    /// also trips every later guard, so the row's own guard must win.
    #[test]
    fn each_guard_wins_over_every_later_one() {
        let later = || Observed {
            refused: true,
            blocked: true,
            stored: Ok("t0".into()),
            intent: intent::Verdict::HeldElsewhere {
                holder: "h".into(),
                until: t("2026-11-30T10:05:00Z"),
            },
            ..due()
        };
        let rows: Vec<(Observed, Decision)> = vec![
            (
                Observed {
                    suspended: true,
                    spec_problem: Some("s".into()),
                    ..later()
                },
                Decision::Suspended,
            ),
            (
                Observed {
                    spec_problem: Some("s".into()),
                    claimed_elsewhere: Some("c".into()),
                    ..later()
                },
                Decision::InvalidSpec("s".into()),
            ),
            (
                Observed {
                    claimed_elsewhere: Some("c".into()),
                    target_conflict: Some("t".into()),
                    ..later()
                },
                Decision::InUse("c".into()),
            ),
            (
                Observed {
                    target_conflict: Some("t".into()),
                    client: Some("c".into()),
                    ..later()
                },
                Decision::TargetConflict("t".into()),
            ),
            (
                Observed {
                    client: Some("c".into()),
                    stored: Err("r".into()),
                    ..later()
                },
                Decision::ClientSecretProblem,
            ),
            (
                Observed {
                    stored: Err("r".into()),
                    ..later()
                },
                Decision::RefreshSecretProblem,
            ),
            (later(), Decision::WaitForLogin),
            (
                Observed {
                    refused: false,
                    ..later()
                },
                Decision::WaitForConfig,
            ),
            (
                Observed {
                    refused: false,
                    blocked: false,
                    ..later()
                },
                Decision::RestoreLive,
            ),
            (
                Observed {
                    refused: false,
                    blocked: false,
                    live_known: false,
                    ..later()
                },
                Decision::Reverted,
            ),
            (
                Observed {
                    refused: false,
                    blocked: false,
                    stored: Ok("t1".into()),
                    ..later()
                },
                Decision::Deferred {
                    holder: "h".into(),
                    until: t("2026-11-30T10:05:00Z"),
                },
            ),
        ];
        for (o, want) in rows {
            assert_eq!(decide(&o), want, "{o:?}");
        }
    }

    #[test]
    fn changed_templates_render_again_only_while_nothing_else_is_to_do() {
        let at = t("2026-11-30T11:00:00Z");
        let waiting = || Observed {
            plan: Plan::RefreshAt(at, Why::Due),
            templates_stale: true,
            ..due()
        };
        assert_eq!(decide(&waiting()), Decision::Rerender(at));
        // A due refresh publishes with the new templates anyway; a guard still wins.
        let due_now = Observed {
            templates_stale: true,
            ..due()
        };
        assert_eq!(decide(&due_now), Decision::Spend(Why::Due));
        let suspended = Observed {
            suspended: true,
            ..waiting()
        };
        assert_eq!(decide(&suspended), Decision::Suspended);
    }

    #[test]
    fn a_renew_request_is_a_due_refresh_behind_every_guard() {
        let renew = || Observed {
            plan: Plan::RefreshNow(Why::Renew),
            ..due()
        };
        assert_eq!(decide(&renew()), Decision::Spend(Why::Renew));
        let suspended = Observed {
            suspended: true,
            ..renew()
        };
        assert_eq!(decide(&suspended), Decision::Suspended);
        let dead = Observed {
            refused: true,
            ..renew()
        };
        assert_eq!(decide(&dead), Decision::WaitForLogin);
        let held = Observed {
            intent: intent::Verdict::HeldElsewhere {
                holder: "h".into(),
                until: t("2026-11-30T10:05:00Z"),
            },
            ..renew()
        };
        assert!(matches!(decide(&held), Decision::Deferred { .. }));
    }

    #[test]
    fn a_credential_not_due_waits_even_with_another_holders_intent() {
        let o = Observed {
            plan: Plan::RefreshAt(t("2026-11-30T11:00:00Z"), Why::Due),
            intent: intent::Verdict::HeldElsewhere {
                holder: "h".into(),
                until: t("2026-11-30T10:05:00Z"),
            },
            ..due()
        };
        assert_eq!(decide(&o), Decision::WaitUntil(t("2026-11-30T11:00:00Z")));
    }
}
