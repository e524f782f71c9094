//! Issue 19's findings 1–4, and the seeded simulator's own, as scripted scenarios: the
//! production reconcile over the simulated API server and token endpoint, one fixed
//! sequence of events each. Issue 19's have test-bed tests in
//! `tests/integration/core_findings.rs`.
//!
//! Credentials: `cam0` in namespace `alpha`, `cam1` in `beta`, both of client `acme` (see
//! `Ev`); each starts with a login of its own in its refresh-token Secret.

use eagle_eye_sim::{Ev, Sim, World, play};
use serde_json::Value;

fn passes(world: World, script: &[Ev]) -> Sim {
    play(world, script).unwrap_or_else(|v| panic!("{v}"))
}

/// Credential `i` says its token is a dead copy: in use by the credential that rotated it
/// out, or (once that one is gone from this process's memory) rotated out.
fn says_dead_copy(s: &Sim, i: usize) -> bool {
    let in_use = s.reason(i) == "RefreshTokenInUse" && s.message(i).contains("this copy is dead");
    in_use || s.reason(i) == "RefreshTokenReverted"
}

/// A and B (not yet created), one process.
fn a_and_b_later() -> World {
    World {
        created: 0,
        ..World::of(2)
    }
}

/// A (created first) claims its token; B, in another namespace, holds a copy of it and is
/// refused.
fn b_holds_a_copy_of_as_live_token() -> Vec<Ev> {
    use Ev::*;
    vec![
        Ev::create(0),
        Copy { from: 0, to: 1 },
        Ev::create(1),
        Expect("B says its token is in use", |s| {
            s.reason(1) == "RefreshTokenInUse"
        }),
    ]
}

/// Finding 1: A rotates T1 to T2; T1 copied into B's Secret in another namespace; the
/// process restarts (a rolling update) and B is reconciled before A (A's Secret is slow
/// to read, say): B must not spend T1, a reuse that may revoke A's whole login.
#[test]
fn a_rotated_out_token_copied_to_another_namespace_is_never_spent_after_a_restart() {
    use Ev::*;
    passes(
        a_and_b_later(),
        &[
            Ev::create(0),
            Expect("A refreshed and rotated T1", |s| {
                s.reason(0) == "TokenRefreshed" && s.refreshes() == 1
            }),
            CopyFirst { from: 0, to: 1 },
            Ev::create(1),
            Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
            Stop(0),
            Hold(0),
            Start(0),
            Pass(60),
            Expect("no reuse while A is not yet read", |s| s.reuses() == 0),
            Release(0),
            Pass(60),
            Expect("no reuse once A is read", |s| s.reuses() == 0),
            Expect("A's login works", |s| s.works(0)),
            // Its own Secret lists the token as spent since its first look, so B knows it
            // dead before A is read, and after.
            Expect("B still says its token is dead", |s| says_dead_copy(s, 1)),
        ],
    );
}

/// After A, which rotated out the token B holds a copy of, is deleted and the operator
/// restarts `pause` seconds later: the new process never reads A's Secret, so B's own must
/// say that its token is dead. B spends nothing, says a new login is needed, and refreshes
/// once it has one.
fn b_holds_a_dead_copy_after_a_is_deleted_and_the_operator_restarts(pause: u64) -> Vec<Ev> {
    use Ev::*;
    vec![
        Delete(0),
        Pass(pause),
        Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
        Stop(0),
        Start(0),
        Pass(120),
        Expect("no reuse after the restart", |s| s.reuses() == 0),
        Expect("B says its token was rotated out", |s| {
            s.reason(1) == "RefreshTokenReverted"
        }),
        NewLogin(1),
        Pass(60),
        Expect("B refreshes its new login", |s| {
            s.reason(1) == "TokenRefreshed" && s.works(1)
        }),
        Expect("no reuse", |s| s.reuses() == 0),
    ]
}

/// The simulator's seed 8 (issue 20), with the copy made after A rotated the token out.
#[test]
fn a_copy_of_a_token_rotated_out_by_a_deleted_credential_is_never_spent_after_a_restart() {
    use Ev::*;
    let mut script = vec![
        Ev::create(0),
        Expect("A refreshed and rotated T1", |s| {
            s.reason(0) == "TokenRefreshed" && s.refreshes() == 1
        }),
        CopyFirst { from: 0, to: 1 },
        Ev::create(1),
        Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
    ];
    script.extend(b_holds_a_dead_copy_after_a_is_deleted_and_the_operator_restarts(60));
    passes(a_and_b_later(), &script);
}

/// The simulator's seed 8 as it happened: B held A's live token, refused as in use, and the
/// copy died when A next refreshed.
#[test]
fn a_copy_that_died_when_its_claimant_refreshed_is_never_spent_once_the_claimant_is_deleted_and_the_operator_restarts()
 {
    use Ev::*;
    let mut script = b_holds_a_copy_of_as_live_token();
    script.extend([
        Pass(3600),
        Expect("A refreshed again: B's copy is dead, and B says so", |s| {
            s.refreshes() >= 2 && s.works(0) && !s.works(1) && says_dead_copy(s, 1)
        }),
    ]);
    script.extend(b_holds_a_dead_copy_after_a_is_deleted_and_the_operator_restarts(60));
    passes(a_and_b_later(), &script);
}

/// As above, with A deleted and the operator restarted right after A's refresh, before B's
/// next look at its claim: A's rotation wakes B at once.
#[test]
fn a_copy_that_died_when_its_claimant_refreshed_is_listed_dead_at_once() {
    use Ev::*;
    let mut script = b_holds_a_copy_of_as_live_token();
    script.extend([
        HoldCallsUntilOne(3600),
        AnswerCalls,
        Expect(
            "A refreshed again: B's copy is dead, and B says so at once",
            |s| s.refreshes() == 2 && s.works(0) && !s.works(1) && says_dead_copy(s, 1),
        ),
    ]);
    script.extend(b_holds_a_dead_copy_after_a_is_deleted_and_the_operator_restarts(0));
    passes(a_and_b_later(), &script);
}

/// As above, with B suspended (by a person tired of its `RefreshTokenInUse`) when A's
/// refresh kills its copy, and the first write listing it dead failing: B lists it dead all
/// the same, soon after, and once resumed after A's deletion and a restart, spends nothing.
#[test]
fn a_suspended_copy_is_listed_dead_when_its_claimant_refreshes() {
    use Ev::*;
    let script = [
        Ev::create(0),
        Copy { from: 0, to: 1 },
        Ev::create(1),
        Suspend(1, true),
        Expect("B is suspended", |s| s.reason(1) == "Suspended"),
        FailNextWrite(1, "cam1-refresh"),
        HoldCallsUntilOne(3600),
        AnswerCalls,
        Expect("A refreshed again: B's copy is dead", |s| {
            s.refreshes() == 2 && s.works(0) && !s.works(1)
        }),
        Pass(60),
        Delete(0),
        Stop(0),
        Start(0),
        Suspend(1, false),
        Pass(120),
        Expect("no reuse", |s| s.reuses() == 0),
        Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
    ];
    passes(a_and_b_later(), &script);
}

/// The simulator's seed 22 (issue 20): B holds a copy of a token A rotated out, put there
/// while the operator was down, and the operator starts during a kube-apiserver outage
/// longer than the census's patience. Once it is back, B is read before A, and waits for
/// A, whose reads failed only during the outage, to be read before spending anything.
#[test]
fn an_outage_longer_than_the_census_patience_does_not_let_a_copy_spend_before_its_claimant_is_read()
{
    use Ev::*;
    passes(
        a_and_b_later(),
        &[
            Ev::create(0),
            Expect("A refreshed and rotated T1", |s| s.refreshes() == 1),
            Stop(0),
            CopyFirst { from: 0, to: 1 },
            Ev::create(1),
            Outage(true),
            Start(0),
            Pass(300),
            // A's reconciles do not start for a while (its backoff, a process paused):
            // its last failure is the outage's, before the census was listed.
            Hold(0),
            Outage(false),
            Pass(200),
            Expect("no reuse while A is not yet read", |s| s.reuses() == 0),
            Release(0),
            Pass(60),
            Expect("no reuse once A is read", |s| s.reuses() == 0),
            Expect("A's login works", |s| s.works(0)),
            Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
        ],
    );
}

/// B, with `revokeOnDelete`, holds a copy of a token A rotated out, and is deleted after a
/// restart, read before A: it revokes nothing, since sending the dead token again may end
/// A's login.
#[test]
fn deleting_a_credential_holding_a_copy_another_rotated_out_revokes_nothing_after_a_restart() {
    use Ev::*;
    passes(
        a_and_b_later(),
        &[
            Ev::create(0),
            Expect("A refreshed", |s| s.reason(0) == "TokenRefreshed"),
            CopyFirst { from: 0, to: 1 },
            Create {
                i: 1,
                revoke_on_delete: true,
                target: None,
            },
            Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
            Stop(0),
            Hold(0),
            Start(0),
            Delete(1),
            Pass(60),
            Release(0),
            Pass(60),
            Expect("B is gone", |s| !s.exists(1)),
            Expect("the dead token was not sent to be revoked", |s| {
                s.revokes_of_replaced() == 0
            }),
            Expect("no reuse, and A's login works", |s| {
                s.reuses() == 0 && s.works(0)
            }),
        ],
    );
}

/// A with `revokeOnDelete`, refreshed; its live token copied into B (another namespace);
/// B says the token is in use.
fn a_revoking_on_delete_and_b_holding_its_live_token() -> Vec<Ev> {
    use Ev::*;
    vec![
        Create {
            i: 0,
            revoke_on_delete: true,
            target: None,
        },
        Expect("A refreshed", |s| s.reason(0) == "TokenRefreshed"),
        Copy { from: 0, to: 1 },
        Ev::create(1),
        Expect("B says its token is in use", |s| {
            s.reason(1) == "RefreshTokenInUse"
        }),
    ]
}

/// After A is gone: nothing was revoked, and B took the login over and refreshes it.
fn b_keeps_the_login() -> Vec<Ev> {
    use Ev::*;
    vec![
        Expect("A is gone", |s| !s.exists(0)),
        Expect("nothing revoked", |s| s.revoked() == 0),
        Pass(120),
        Expect("B took the login over and refreshed it", |s| {
            s.reason(1) == "TokenRefreshed" && s.works(1)
        }),
        Expect("no reuse", |s| s.reuses() == 0),
    ]
}

/// Finding 2: deleting the claimant of a login another namespace's credential holds a copy
/// of must not revoke it (the README promises as much).
#[test]
fn deleting_a_credential_with_revoke_on_delete_never_revokes_a_login_another_namespace_holds() {
    let mut script = a_revoking_on_delete_and_b_holding_its_live_token();
    script.extend([Ev::Delete(0), Ev::Pass(30)]);
    script.extend(b_keeps_the_login());
    passes(a_and_b_later(), &script);
}

/// Finding 2, right after a restart: A's deletion is reconciled before B is read again
/// (the new process has no memory of who holds what).
#[test]
fn deleting_a_credential_with_revoke_on_delete_right_after_a_restart_never_revokes_a_login_another_namespace_holds()
 {
    use Ev::*;
    let mut script = a_revoking_on_delete_and_b_holding_its_live_token();
    script.extend([
        Stop(0),
        Hold(1),
        Start(0),
        Delete(0),
        Pass(60),
        Expect("nothing revoked while B is not yet read", |s| {
            s.revoked() == 0
        }),
        Release(1),
        Pass(60),
    ]);
    script.extend(b_keeps_the_login());
    passes(a_and_b_later(), &script);
}

/// Whether a version of the target holds an access token without saying whose it is: not
/// owned by credential 0 (`uid`) and not opted in to it.
fn unowned_with_a_token(version: &Value, uid: &str) -> bool {
    let has_token = version.pointer("/data/access_token").is_some();
    let owned = version
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["controller"] == Value::Bool(true) && r["uid"] == uid)
        });
    let adopted = version
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(eagle_eye_operator::target::ADOPT))
        .is_some_and(|v| v == "cam0");
    has_token && !owned && !adopted
}

/// Finding 3: an adopted target deleted by its owner while the token call is out must
/// never come back, holding a bearer token, without owner or adopt annotation.
#[test]
fn an_adopted_target_deleted_during_a_refresh_never_comes_back_unowned_with_a_token() {
    use Ev::*;
    passes(
        World {
            created: 0,
            ..World::of(1)
        },
        &[
            AppSecret(0, "app-config"),
            HoldCalls,
            Create {
                i: 0,
                revoke_on_delete: false,
                target: Some("app-config"),
            },
            Expect("the token call is out", |s| s.calls_waiting() == 1),
            DeleteSecret(0, "app-config"),
            AnswerCalls,
            Pass(30),
            Expect("the answer is stored", |s| s.works(0) && s.refreshes() == 1),
            Expect(
                "no version of app-config holds an access token unowned and not opted in",
                |s| {
                    let uid = s.uid(0).unwrap_or_default();
                    !s.versions(0, "app-config")
                        .iter()
                        .any(|v| unowned_with_a_token(v, &uid))
                },
            ),
        ],
    );
}

/// Finding 4: a publish that meets a conflict each time (another writer keeps writing the
/// target) backs off instead of retrying at once, forever; once the writer stops, the
/// access token is published.
#[test]
fn a_publish_that_meets_conflicts_backs_off_while_another_writer_keeps_writing_the_target() {
    use Ev::*;
    passes(
        World::of(1),
        &[
            Expect("published", |s| {
                s.published_login(0, "cam0-token") == s.login_stored(0)
            }),
            HoldCalls,
            NewLogin(0),
            Expect("the new login's token call is out", |s| {
                s.calls_waiting() == 1
            }),
            Meddle(0, "cam0-token", true),
            AnswerCalls,
            Pass(10),
            Expect("at most 5 writes to the target in any one second", |s| {
                s.busiest_second(0, "cam0-token") <= 5
            }),
            Expect("at most 20 writes to the target in 10 s", |s| {
                s.writes_to(0, "cam0-token").len() <= 20
            }),
            Meddle(0, "cam0-token", false),
            Pass(120),
            Expect("the new login's access token is published", |s| {
                s.published_login(0, "cam0-token") == s.login_stored(0)
            }),
        ],
    );
}

/// A is deleted while its token call is in flight, and B holds a copy of the token A is
/// spending: B must not spend it before A's answer is stored (two spends of one rotating
/// token, which may end the login), however soon it looks again.
#[test]
fn a_copy_is_not_spent_while_its_claimant_deleted_mid_call_still_awaits_its_answer() {
    use Ev::*;
    let mut script = b_holds_a_copy_of_as_live_token();
    script.extend([
        HoldCallsUntilOne(3600),
        Delete(0),
        Pass(90),
        AnswerCalls,
        Pass(60),
        Expect("no reuse", |s| s.reuses() == 0),
        Expect("A's answer is stored in its Secret", |s| s.refreshes() == 2),
        Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
    ]);
    passes(a_and_b_later(), &script);
}

/// As above, with A's write-back held in flight well past its spend intent's bound: the
/// answer rotated the token out, so B's copy is dead from then on, stored or not; also when
/// the answer is unusable (no access token) but carries the new refresh token.
fn a_copy_once_its_deleted_claimants_answer_came(malformed: bool) -> Vec<Ev> {
    use Ev::*;
    let mut script = b_holds_a_copy_of_as_live_token();
    script.extend([
        HoldCallsUntilOne(3600),
        Delete(0),
        HoldWrites(0, 0, "cam0-refresh"),
        Malformed(malformed),
        AnswerCalls,
        Malformed(false),
        Pass(1200),
        Expect("no reuse while A's answer waits", |s| s.reuses() == 0),
        Expect("B says its token is dead", |s| says_dead_copy(s, 1)),
        ReleaseWrites(0, 0, "cam0-refresh"),
        Pass(60),
        Expect("no reuse", |s| s.reuses() == 0),
    ]);
    script
}

#[test]
fn a_copy_is_never_spent_once_its_deleted_claimants_answer_came_though_not_yet_stored() {
    passes(
        a_and_b_later(),
        &a_copy_once_its_deleted_claimants_answer_came(false),
    );
}

#[test]
fn a_copy_is_never_spent_once_its_deleted_claimants_unusable_answer_carried_a_new_token() {
    passes(
        a_and_b_later(),
        &a_copy_once_its_deleted_claimants_answer_came(true),
    );
}

/// A (with `revokeOnDelete`, so it stays while being deleted) writes its spend intent, and
/// the write is slow to land; A is deleted meanwhile, and B, holding a copy, looks at once:
/// B must not take the token over, since A's spend is already under way.
#[test]
fn a_copy_is_not_spent_when_its_claimant_is_deleted_while_recording_its_spend() {
    use Ev::*;
    passes(
        a_and_b_later(),
        &[
            Ev::Create {
                i: 0,
                revoke_on_delete: true,
                target: None,
            },
            Copy { from: 0, to: 1 },
            Ev::create(1),
            Expect("B says its token is in use", |s| {
                s.reason(1) == "RefreshTokenInUse"
            }),
            HoldWrites(0, 0, "cam0-refresh"),
            // A is due at 2,387 s in this script: its intent write waits from then on, with
            // its call slot for 30 s. B looks again every 30 s (at 2,400 s).
            Pass(2390),
            Expect("A has not spent yet", |s| s.refreshes() == 1),
            Delete(0),
            Pass(15),
            ReleaseWrites(0, 0, "cam0-refresh"),
            Pass(120),
            Expect("A's spend went ahead", |s| s.refreshes() == 2),
            Expect("no reuse", |s| s.reuses() == 0),
        ],
    );
}

/// The Lease moves while the old leader's call for A is in flight; the new leader reads B,
/// holding a copy of A's token, before A: once A is read, B must wait for the old leader's
/// answer as for a spend of its own process, not spend the token beside it.
#[test]
fn a_copy_waits_for_the_old_leaders_spend_of_its_token_after_a_failover() {
    use Ev::*;
    let mut script = b_holds_a_copy_of_as_live_token();
    script.extend([
        HoldCallsUntilOne(3600),
        Hold(0),
        LeaseTo(1),
        Pass(30),
        Release(0),
        Pass(60),
        AnswerCalls,
        Pass(120),
        Expect("no reuse", |s| s.reuses() == 0),
    ]);
    passes(
        World {
            procs: 2,
            ..a_and_b_later()
        },
        &script,
    );
}

/// The simulator's seed 39 (issue 20), scripted: A, with `revokeOnDelete`, is deleted, and
/// its revocation is on its way to the server when a person copies A's token into B's
/// Secret (B had a login of its own). The revocation ends that login, B's copy with it: no
/// reader of Secrets could have known, and the invariant excuses exactly this. Found while
/// scripting it: B, free to take over the login of a credential being deleted, spent the
/// copy while the revocation was still on its way, racing it at the server. A revocation
/// now binds copies as a refresh does: B never spends the token, and says its copy is dead.
#[test]
fn a_copy_made_while_a_deleted_credentials_login_is_being_revoked_dies_with_it_and_says_so() {
    use Ev::*;
    let sim = passes(
        a_and_b_later(),
        &[
            Create {
                i: 0,
                revoke_on_delete: true,
                target: None,
            },
            Ev::create(1),
            Expect("A and B refreshed", |s| {
                s.reason(0) == "TokenRefreshed" && s.reason(1) == "TokenRefreshed"
            }),
            HoldCalls,
            Delete(0),
            Expect("A's revocation waits at the server", |s| {
                s.calls_waiting() == 1 && s.revoked() == 0
            }),
            Copy { from: 0, to: 1 },
            AnswerCalls,
            Expect("A's login is revoked, and A gone", |s| {
                s.revoked() == 1 && !s.exists(0)
            }),
            Pass(7200),
            Expect("B says its copy is dead, and never spent it", |s| {
                says_dead_copy(s, 1) && !s.works(1) && s.refreshes() == 2
            }),
            Expect("no reuse", |s| s.reuses() == 0),
        ],
    );
    drop(sim);
}
