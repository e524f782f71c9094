//! Unit tests of the token life-cycle rules, with time as a plain argument.

use super::*;

const REDIRECT: &str = "http://127.0.0.1:3333";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn ledger() -> Ledger {
    let mut ledger = Ledger::new(Lifetimes {
        access: 12 * HOUR,
        idle: 14 * DAY,
        chain: 90 * DAY,
        code: Duration::from_secs(300),
    });
    for (id, rotating) in [("rot", true), ("perm", false)] {
        ledger.register(ClientRegistration {
            id: id.into(),
            secret: "secret".into(),
            redirect_uris: vec![REDIRECT.into()],
            rotating,
        });
    }
    ledger
}

#[test]
fn authenticate_needs_the_exact_secret() {
    let ledger = ledger();
    assert!(ledger.authenticate("rot", "secret").is_some());
    assert!(ledger.authenticate("rot", "Secret").is_none());
    assert!(ledger.authenticate("nobody", "secret").is_none());
}

#[test]
fn rotation_retires_the_old_pair_and_counts_reuse() {
    let mut l = ledger();
    let first = l.login("rot", t0()).unwrap();
    let second = l.refresh("rot", &first.refresh_token, t0() + HOUR).unwrap();
    assert_ne!(first.refresh_token, second.refresh_token);
    assert_ne!(first.access_token, second.access_token);
    assert_eq!(second.expires_in, 12 * 3600);
    assert_eq!(
        l.standing(&first.refresh_token, t0() + HOUR),
        Standing::Rotated
    );
    assert!(
        l.access_remaining(&first.access_token, t0() + HOUR)
            .is_none()
    );
    assert_eq!(
        l.standing(&second.refresh_token, t0() + HOUR),
        Standing::Live
    );

    let reuse = l.refresh("rot", &first.refresh_token, t0() + HOUR);
    assert_eq!(reuse, Err(GrantError::Refused));
    assert_eq!(l.counters.reused_refresh_tokens, 1);
    assert_eq!(l.counters.refreshes, 1);
    // A reuse does not end the chain.
    assert_eq!(
        l.standing(&second.refresh_token, t0() + HOUR),
        Standing::Live
    );
}

#[test]
fn idle_limit_kills_an_unused_refresh_token_at_exactly_idle_ttl() {
    let mut l = ledger();
    let grant = l.login("rot", t0()).unwrap();
    let just_before = t0() + 14 * DAY - Duration::from_nanos(1);
    assert_eq!(
        l.standing(&grant.refresh_token, just_before),
        Standing::Live
    );
    assert_eq!(
        l.standing(&grant.refresh_token, t0() + 14 * DAY),
        Standing::Dead
    );
    let late = l.refresh("rot", &grant.refresh_token, t0() + 14 * DAY);
    assert_eq!(late, Err(GrantError::Refused));
    assert_eq!(l.counters.reused_refresh_tokens, 0);
}

#[test]
fn chain_limit_wins_over_a_fresh_idle_window() {
    let mut l = ledger();
    let mut token = l.login("rot", t0()).unwrap().refresh_token;
    for step in 1..=6 {
        token = l
            .refresh("rot", &token, t0() + 13 * step * DAY)
            .unwrap()
            .refresh_token;
    }
    // Issued at day 78, so idle would allow day 92; the chain ends at day 90.
    assert_eq!(l.standing(&token, t0() + 90 * DAY - HOUR), Standing::Live);
    assert_eq!(l.standing(&token, t0() + 90 * DAY), Standing::Dead);
}

#[test]
fn non_rotating_returns_active_access_token_then_a_new_one_and_never_expires() {
    let mut l = ledger();
    let first = l.login("perm", t0()).unwrap();
    let later = t0() + HOUR + Duration::from_millis(500);
    let again = l.refresh("perm", &first.refresh_token, later).unwrap();
    assert_eq!(again.access_token, first.access_token);
    assert_eq!(again.refresh_token, first.refresh_token);
    assert_eq!(
        again.expires_in,
        11 * 3600 - 1,
        "remaining seconds, rounded down"
    );

    let expired = t0() + 12 * HOUR;
    let fresh = l.refresh("perm", &first.refresh_token, expired).unwrap();
    assert_ne!(fresh.access_token, first.access_token);
    assert_eq!(fresh.refresh_token, first.refresh_token);
    assert_eq!(fresh.expires_in, 12 * 3600);

    let far = t0() + 400 * DAY;
    assert_eq!(l.standing(&first.refresh_token, far), Standing::Live);
    assert!(l.refresh("perm", &first.refresh_token, far).is_ok());
}

#[test]
fn code_is_single_use_and_a_replay_ends_the_chain_it_started() {
    let mut l = ledger();
    let code = l.authorize("rot", REDIRECT, t0()).unwrap();
    let grant = l.exchange_code("rot", &code, Some(REDIRECT), t0()).unwrap();
    assert_eq!(l.counters.code_exchanges, 1);
    let replay = l.exchange_code("rot", &code, Some(REDIRECT), t0());
    assert_eq!(replay, Err(GrantError::Refused));
    assert_eq!(l.standing(&grant.refresh_token, t0()), Standing::Dead);
    assert!(l.access_remaining(&grant.access_token, t0()).is_none());
}

#[test]
fn code_expires_after_code_ttl() {
    let mut l = ledger();
    let code = l.authorize("rot", REDIRECT, t0()).unwrap();
    let late = t0() + Duration::from_secs(300);
    assert_eq!(
        l.exchange_code("rot", &code, Some(REDIRECT), late),
        Err(GrantError::Refused)
    );
}

#[test]
fn redirect_mismatch_is_a_bad_request_and_keeps_the_code() {
    let mut l = ledger();
    let code = l.authorize("rot", REDIRECT, t0()).unwrap();
    for wrong in [
        Some("http://127.0.0.1:3333/"),
        Some("http://localhost:3333"),
        None,
    ] {
        let result = l.exchange_code("rot", &code, wrong, t0());
        assert_eq!(result, Err(GrantError::RedirectMismatch));
    }
    assert!(l.exchange_code("rot", &code, Some(REDIRECT), t0()).is_ok());
}

#[test]
fn another_clients_code_is_refused_and_burned() {
    let mut l = ledger();
    let code = l.authorize("rot", REDIRECT, t0()).unwrap();
    assert_eq!(
        l.exchange_code("perm", &code, Some(REDIRECT), t0()),
        Err(GrantError::Refused)
    );
    assert_eq!(
        l.exchange_code("rot", &code, Some(REDIRECT), t0()),
        Err(GrantError::Refused)
    );
}

#[test]
fn authorize_checks_client_and_whitelist_exactly() {
    let mut l = ledger();
    assert_eq!(
        l.authorize("nobody", REDIRECT, t0()),
        Err(AuthorizeError::UnknownClient)
    );
    let slash = l.authorize("rot", "http://127.0.0.1:3333/", t0());
    assert_eq!(slash, Err(AuthorizeError::RedirectNotWhitelisted));
}

#[test]
fn refresh_token_of_another_client_is_refused() {
    let mut l = ledger();
    let grant = l.login("rot", t0()).unwrap();
    assert_eq!(
        l.refresh("perm", &grant.refresh_token, t0()),
        Err(GrantError::Refused)
    );
    assert_eq!(l.standing(&grant.refresh_token, t0()), Standing::Live);
}

#[test]
fn revoking_a_refresh_token_ends_it_and_its_access_token() {
    let mut l = ledger();
    let grant = l.login("rot", t0()).unwrap();
    assert_eq!(l.revoke("perm", &grant.refresh_token), Err(NotYourToken));
    assert_eq!(l.revoke("rot", &grant.refresh_token), Ok(()));
    assert_eq!(l.standing(&grant.refresh_token, t0()), Standing::Dead);
    assert!(l.access_remaining(&grant.access_token, t0()).is_none());
    assert_eq!(l.revoke("rot", "never-issued"), Ok(()));
}

#[test]
fn ending_a_chain_through_a_rotated_token_kills_the_latest_pair() {
    let mut l = ledger();
    let first = l.login("rot", t0()).unwrap();
    let second = l.refresh("rot", &first.refresh_token, t0()).unwrap();
    l.end_chain(&first.refresh_token);
    assert_eq!(l.standing(&second.refresh_token, t0()), Standing::Dead);
    assert!(l.access_client(&second.access_token, t0()).is_none());
}

#[test]
fn access_token_dies_at_its_expiry() {
    let mut l = ledger();
    let grant = l.login("rot", t0()).unwrap();
    assert_eq!(
        l.access_client(&grant.access_token, t0() + 11 * HOUR),
        Some("rot")
    );
    assert_eq!(l.access_client(&grant.access_token, t0() + 12 * HOUR), None);
}

#[test]
fn login_needs_a_registered_client() {
    assert!(ledger().login("nobody", t0()).is_none());
}
