//! The scenario and regression tests of the former `src/model_tests.rs` (a hand-written
//! copy of the refresh path, deleted), ported to scripted runs of the production code.
//! Each keeps its name and, in its doc comment, the bug it names; the events follow the
//! bug's story rather than the old model's step list (its steps were the copy's, not the
//! operator's requests). Tests that do not translate are listed in docs/simulation.md.
//!
//! Every run checks the simulator's invariants after each action (no reuse of a rotated-out
//! token without a crash or a person to excuse it, no login lost, no target going back to
//! an older access token, nothing revoked that a live credential uses).

use eagle_eye_sim::{Ev, Sim, World, play};

fn passes(world: World, script: &[Ev]) -> Sim {
    play(world, script).unwrap_or_else(|v| panic!("{v}"))
}

/// One credential, one process (`--no-leader-election`).
fn one() -> World {
    World::of(1)
}

/// One credential, two replicas under a Lease (process 0 holds it first).
fn two() -> World {
    World {
        procs: 2,
        ..World::of(1)
    }
}

fn healthy(s: &Sim) -> bool {
    s.works(0) && s.published_login(0, "cam0-token") == s.login_stored(0) && s.reuses() == 0
}

#[test]
fn a_healthy_credential_refreshes_stores_and_publishes_again_and_again() {
    for world in [one(), two()] {
        let sim = passes(
            world,
            &[
                Ev::Pass(5 * 3600),
                Ev::Expect("stored, published, no reuse", healthy),
            ],
        );
        // One-hour access tokens, refreshed before they expire: at least once an hour.
        assert!(
            sim.refreshes() >= 5,
            "{world:?}: {} refreshes",
            sim.refreshes()
        );
    }
}

#[test]
fn a_permanent_token_is_refreshed_without_intents_once_known_not_to_rotate() {
    let sim = passes(
        World {
            rotating: false,
            ..two()
        },
        &[
            Ev::Pass(3 * 3600 + 600),
            Ev::Expect("stored, published, no reuse", healthy),
        ],
    );
    assert!(sim.refreshes() >= 3, "{} refreshes", sim.refreshes());
    // The first refresh writes an intent (rotation not yet known); none after it.
    let writes = sim.writes_to(0, "cam0-refresh").len();
    assert!(
        writes <= 1,
        "{writes} writes to the refresh-token Secret for {} refreshes of a permanent token",
        sim.refreshes()
    );
}

/// Model mistake (the copy's, kept as the simulator's own assumption): a call stayed
/// answerable however far the clock moved, so another replica spent the token after the
/// caller's intent expired and then the old call was answered. The client gives up at its
/// deadline, and the server is taken to act, if at all, before.
#[test]
fn a_call_still_unanswered_at_its_deadline_never_reaches_the_server() {
    passes(
        two(),
        &[
            Ev::HoldCallsUntilOne(7200),
            Ev::Expect("p0's call is out", |s| s.calls_waiting() == 1),
            Ev::LeaseTo(1),
            Ev::Pass(700),
            Ev::AnswerCalls,
            Ev::Pass(60),
            Ev::Expect("the old call never reached the server: no reuse", |s| {
                s.reuses() == 0 && s.works(0)
            }),
        ],
    );
}

/// Model mistake: a family whose answer was dropped for a person's new login counted as
/// lost once a revert then took the person's login away too. Here: the answer for the old
/// login, which comes after the person's new login, never replaces it.
#[test]
fn an_answer_dropped_for_a_new_login_belongs_to_a_superseded_login() {
    passes(
        one(),
        &[
            Ev::HoldCallsUntilOne(7200),
            Ev::NewLogin(0),
            Ev::AnswerCalls,
            Ev::Pass(60),
            Ev::Expect("the person's new login is kept, and published", |s| {
                s.login_stored(0) == Some(1) && healthy(s)
            }),
        ],
    );
}

/// Regression, bug found (fixed: `secrets::write_back` takes the token `traded`): the
/// write-back over a put-back token listed the put-back token (f0-0) as spent and forgot
/// the one it traded in (f0-1); when f0-1 was put back later, nothing marked it dead: the
/// operator forgot the live f0-2 and spent f0-1 again.
#[test]
fn regression_a_write_back_over_a_put_back_token_does_not_list_the_token_traded() {
    passes(
        one(),
        &[
            // f0-0 traded for f0-1 at creation; an hour on, f0-1 is spent.
            Ev::HoldCallsUntilOne(7200),
            Ev::FailNextWrite(0, "cam0-refresh"),
            Ev::AnswerCalls,
            // The write-back of f0-2 failed; a sync tool puts f0-0 back meanwhile.
            Ev::PutBack { i: 0, serial: 0 },
            Ev::Pass(60),
            Ev::Expect("f0-2 written back over f0-0", healthy),
            Ev::PutBack { i: 0, serial: 1 },
            Ev::Pass(60),
            Ev::Expect("f0-1 put back is known dead: f0-2 restored", healthy),
        ],
    );
}

/// Regression, bug found (fixed: `write_back` keeps an intent on the token it writes):
/// restoring the live token (f0-1) over a revert removed the other replica's intent on
/// that very token while its call was in flight: the next leader spent f0-1 again.
#[test]
fn regression_restoring_the_live_token_removes_the_intent_of_the_replica_spending_it() {
    passes(
        two(),
        &[
            Ev::LeaseTo(1),
            Ev::HoldCallsUntilOne(7200),
            Ev::Expect("p1 is spending f0-1", |s| s.calls_waiting() == 1),
            Ev::LeaseTo(0),
            Ev::PutBack { i: 0, serial: 0 },
            Ev::Pass(60),
            Ev::Expect("p0 restored f0-1 and left it to p1's call", |s| {
                s.works(0) && s.calls_waiting() == 1
            }),
            Ev::AnswerCalls,
            Ev::Pass(600),
            Ev::Expect("no reuse; stored and published", healthy),
        ],
    );
}

/// Regression, bug found (fixed: `target::supersedes`, and the apply under the read
/// resourceVersion): p0's publish of f0-1's answer, held up in flight, lands after p1's
/// publish of f0-2 and rolls the target back (checked by the invariant that a target never
/// goes back to an older access token).
#[test]
fn regression_a_late_publish_rolls_back_a_newer_one() {
    passes(
        two(),
        &[
            Ev::HoldWrites(0, 0, "cam0-token"),
            Ev::Pass(3600),
            Ev::LeaseTo(1),
            Ev::Pass(3600),
            Ev::ReleaseWrites(0, 0, "cam0-token"),
            Ev::Pass(600),
            Ev::Expect("no reuse; stored and published", healthy),
        ],
    );
}

/// Regression, bug found (fixed: `intent::until` and `intent::verdict` agree on its
/// rounding): an intent's `until` carried an extra second beyond `max_hold`, so a reader
/// exactly `intent::CLOCK_SKEW` behind the writer dismissed the live intent as beyond what
/// any holder could write, and spent the token in flight.
#[test]
fn regression_a_reader_exactly_clock_skew_behind_honours_a_live_intent() {
    let skew = eagle_eye_operator::intent::CLOCK_SKEW.as_millis() as i64;
    passes(
        two(),
        &[
            Ev::Skew(1, -skew),
            Ev::HoldCallsUntilOne(7200),
            Ev::Expect("p0 is spending f0-1", |s| s.calls_waiting() == 1),
            Ev::LeaseTo(1),
            Ev::Pass(60),
            Ev::AnswerCalls,
            Ev::Pass(600),
            Ev::Expect("no reuse; stored and published", healthy),
        ],
    );
}

/// Regression, found with the fix of the late publish: two non-rotating answers of one
/// second (or of clocks up to the allowed skew apart) cannot be ordered; both access
/// tokens work, and either may stand. (The target invariant treats them as equals.)
#[test]
fn regression_two_non_rotating_answers_of_one_second_are_equals() {
    passes(
        World {
            rotating: false,
            ..two()
        },
        &[
            Ev::HoldCallsUntilOne(7200),
            Ev::LeaseTo(1),
            Ev::Pass(3600),
            Ev::AnswerCalls,
            Ev::Pass(600),
            Ev::Expect("stored and published", healthy),
        ],
    );
}

/// Regression, bug found (fixed: `store_rotated` checks that a non-rotating answer's token
/// is still stored): p0's answer for the old login, in flight while a person logged in and
/// p1 refreshed the new login, was published over the new login's access token.
#[test]
fn regression_a_non_rotating_answer_for_a_replaced_login_is_not_published() {
    passes(
        World {
            rotating: false,
            ..two()
        },
        &[
            Ev::HoldCallsUntilOne(7200),
            Ev::Expect("p0's call for the old login is out", |s| {
                s.calls_waiting() == 1
            }),
            Ev::NewLogin(0),
            Ev::LeaseTo(1),
            Ev::AnswerCalls,
            Ev::Pass(600),
            Ev::Expect("the new login is stored and published", |s| {
                s.login_stored(0) == Some(1) && healthy(s)
            }),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Which credential may spend a token found in two Secrets (the old `Memory::claim` tests,
// as the credentials' users see them). `cam0` in `alpha`, `cam1` in `beta`, same client.

/// Neither credential created yet.
fn two_credentials_later() -> World {
    World {
        created: 0,
        ..World::of(2)
    }
}

/// Regression (found in review): the owner of a token it rotated out was deleted; the
/// token stays dead for a credential holding an old copy of it.
#[test]
fn a_token_rotated_out_stays_dead_once_its_credential_is_gone() {
    passes(
        two_credentials_later(),
        &[
            Ev::create(0),
            Ev::Expect("A rotated f0-0", |s| s.refreshes() == 1),
            Ev::Delete(0),
            Ev::CopyFirst { from: 0, to: 1 },
            Ev::create(1),
            Ev::Pass(600),
            Ev::Expect("B never spent f0-0", |s| s.reuses() == 0),
        ],
    );
}

#[test]
fn a_deleted_credentials_claim_binds_nobody() {
    passes(
        two_credentials_later(),
        &[
            Ev::create(0),
            Ev::Copy { from: 0, to: 1 },
            Ev::create(1),
            Ev::Expect("B waits", |s| s.reason(1) == "RefreshTokenInUse"),
            Ev::Delete(0),
            Ev::Pass(120),
            Ev::Expect("B took the login over", |s| {
                s.reason(1) == "TokenRefreshed" && s.works(1) && s.reuses() == 0
            }),
        ],
    );
}

#[test]
fn claims_on_tokens_no_longer_held_are_released() {
    passes(
        two_credentials_later(),
        &[
            Ev::create(0),
            Ev::Copy { from: 0, to: 1 },
            Ev::create(1),
            Ev::Expect("B waits", |s| s.reason(1) == "RefreshTokenInUse"),
            // A new login in A's Secret: A's live token is no longer A's.
            Ev::NewLogin(0),
            Ev::Pass(120),
            Ev::Expect("B took the old login over; A has the new one", |s| {
                s.reason(1) == "TokenRefreshed" && s.works(1) && s.works(0) && s.reuses() == 0
            }),
        ],
    );
}

/// Regression (found by the issue 8 tests, and once in CI): the credential created later
/// reconciled first and may already be spending; the earlier one, reconciled second, must
/// not spend too. Creation order once decided this, and let both through.
#[test]
fn a_credential_reconciled_second_never_spends_a_token_the_first_claimed_whatever_their_ages() {
    passes(
        two_credentials_later(),
        &[
            Ev::Copy { from: 0, to: 1 },
            // B is created later, but A's reconcile waits (a slow read, a busy worker).
            Ev::create(1),
            Ev::Expect("B spent the token", |s| s.refreshes() == 1 && s.works(1)),
            Ev::Hold(0),
            Ev::create(0),
            Ev::Release(0),
            Ev::Pass(600),
            Ev::Expect("A, reconciled second, did not", |s| {
                s.reason(0) == "RefreshTokenInUse" && s.reuses() == 0
            }),
        ],
    );
}

/// A cold start of several credentials, every one due: each waits for the census of claims
/// (no token is spent before every credential of its auth server was read once), and the
/// refresh token read for the census is the one spent once the census completes: one read
/// of it per refresh, as in steady refreshes (issue 20).
#[test]
fn a_cold_start_reads_each_refresh_token_once_though_every_credential_waits_for_the_census() {
    const N: usize = 6;
    let sim = passes(
        World::of(N),
        &[
            Ev::Pass(60),
            Ev::Expect("every credential refreshed and published", |s| {
                (0..N).all(|i| {
                    s.works(i)
                        && s.published_login(i, &format!("cam{i}-token")) == s.login_stored(i)
                })
            }),
        ],
    );
    assert_eq!(sim.refreshes(), N as u64, "one refresh each");
    let reads: Vec<usize> = (0..N)
        .map(|i| sim.reads_of(i, &format!("cam{i}-refresh")))
        .collect();
    assert_eq!(reads, [1; N], "reads of each refresh-token Secret");
}
