//! The stand-in's bookkeeping: clients, authorization codes, refresh-token chains and access
//! tokens, and every expiry decision. Plain data and functions of `now`, with no HTTP and no
//! clock reads, so the vendor's token life-cycle rules can be unit-tested without a server.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::mint;
use super::types::{ClientRegistration, Counters, Grant};

/// How long each kind of credential lives; copied from `StandInConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub access: Duration,
    pub idle: Duration,
    pub chain: Duration,
    pub code: Duration,
}

/// Why a grant was refused; the HTTP layer turns both into `invalid_grant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Unknown, expired, used, rotated, revoked or another client's code or token: the vendor
    /// answers 401.
    Refused,
    /// The code exists but `redirect_uri` differs from the authorize call's: 400.
    RedirectMismatch,
}

/// Why an authorize call cannot even redirect back with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    UnknownClient,
    RedirectNotWhitelisted,
}

/// A revocation of another client's token, which Spring answers `invalid_client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotYourToken;

/// The state of a refresh token, judged at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Unknown,
    /// Rotated out by an earlier refresh: a reuse.
    Rotated,
    /// Revoked, chain ended, idle limit or chain limit passed.
    Dead,
    Live,
}

// No Debug: it holds tokens.
struct Chain {
    client_id: String,
    started: SystemTime,
    rotating: bool,
    ended: bool,
    /// The one refresh token of the chain that may still work.
    latest_refresh: String,
}

#[derive(Debug, PartialEq, Eq)]
enum RefreshState {
    Current,
    Rotated,
}

// No Debug: it holds tokens.
struct RefreshRecord {
    chain: usize,
    issued: SystemTime,
    state: RefreshState,
    /// The latest access token issued from this refresh token.
    access_token: String,
}

#[derive(Debug)]
struct AccessRecord {
    client_id: String,
    /// `None` when the lifetime is too long for `SystemTime` to hold: never expires.
    expires: Option<SystemTime>,
    revoked: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum CodeState {
    Unused,
    /// Exchanged once; a replay ends the chain it started, as Spring does.
    Exchanged {
        chain: usize,
    },
    /// Presented by the wrong client; Spring burns it.
    Burned,
}

#[derive(Debug)]
struct CodeRecord {
    client_id: String,
    redirect_uri: String,
    issued: SystemTime,
    state: CodeState,
}

/// All of the stand-in's state that decides what a request gets.
// No Debug: its keys are tokens and codes.
pub struct Ledger {
    lifetimes: Lifetimes,
    clients: HashMap<String, ClientRegistration>,
    codes: HashMap<String, CodeRecord>,
    chains: Vec<Chain>,
    refresh: HashMap<String, RefreshRecord>,
    access: HashMap<String, AccessRecord>,
    pub counters: Counters,
}

/// `t + d`, or `None` (never) when `SystemTime` cannot hold it.
fn after(t: SystemTime, d: Duration) -> Option<SystemTime> {
    t.checked_add(d)
}

fn reached(now: SystemTime, deadline: Option<SystemTime>) -> bool {
    deadline.is_some_and(|d| now >= d)
}

impl Ledger {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self {
            lifetimes,
            clients: HashMap::new(),
            codes: HashMap::new(),
            chains: Vec::new(),
            refresh: HashMap::new(),
            access: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Adds or replaces a client.
    pub fn register(&mut self, client: ClientRegistration) {
        self.clients.insert(client.id.clone(), client);
    }

    /// The client whose id and secret these are, if any.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<&ClientRegistration> {
        self.clients.get(id).filter(|c| c.secret == secret)
    }

    /// Whether an authorize call may redirect back at all: a known client and a whitelisted
    /// `redirect_uri`, compared as exact strings.
    pub fn check_redirect(
        &self,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<(), AuthorizeError> {
        let client = self
            .clients
            .get(client_id)
            .ok_or(AuthorizeError::UnknownClient)?;
        if client.redirect_uris.iter().any(|u| u == redirect_uri) {
            Ok(())
        } else {
            Err(AuthorizeError::RedirectNotWhitelisted)
        }
    }

    /// Phase 1: the user approves at once and a fresh code is issued.
    pub fn authorize(
        &mut self,
        client_id: &str,
        redirect_uri: &str,
        now: SystemTime,
    ) -> Result<String, AuthorizeError> {
        self.check_redirect(client_id, redirect_uri)?;
        let code = mint::code();
        let record = CodeRecord {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            issued: now,
            state: CodeState::Unused,
        };
        self.codes.insert(code.clone(), record);
        Ok(code)
    }

    /// `grant_type=authorization_code`, checked in Spring's order.
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        now: SystemTime,
    ) -> Result<Grant, GrantError> {
        let code_ttl = self.lifetimes.code;
        let record = self.codes.get_mut(code).ok_or(GrantError::Refused)?;
        if record.client_id != client_id {
            if record.state == CodeState::Unused {
                record.state = CodeState::Burned;
            }
            return Err(GrantError::Refused);
        }
        if redirect_uri != Some(record.redirect_uri.as_str()) {
            return Err(GrantError::RedirectMismatch);
        }
        match record.state {
            CodeState::Unused => {}
            CodeState::Exchanged { chain } => {
                self.end(chain);
                return Err(GrantError::Refused);
            }
            CodeState::Burned => return Err(GrantError::Refused),
        }
        if reached(now, after(record.issued, code_ttl)) {
            return Err(GrantError::Refused);
        }
        let (chain, grant) = self.start_chain(client_id, now);
        if let Some(record) = self.codes.get_mut(code) {
            record.state = CodeState::Exchanged { chain };
        }
        self.counters.code_exchanges += 1;
        Ok(grant)
    }

    /// Starts a chain for a registered client as a successful code exchange would.
    pub fn login(&mut self, client_id: &str, now: SystemTime) -> Option<Grant> {
        self.clients
            .contains_key(client_id)
            .then(|| self.start_chain(client_id, now).1)
    }

    fn start_chain(&mut self, client_id: &str, now: SystemTime) -> (usize, Grant) {
        let rotating = self.clients.get(client_id).is_none_or(|c| c.rotating);
        let chain = self.chains.len();
        let refresh_token = mint::refresh_token();
        self.chains.push(Chain {
            client_id: client_id.to_owned(),
            started: now,
            rotating,
            ended: false,
            latest_refresh: refresh_token.clone(),
        });
        let grant = self.issue_pair(chain, refresh_token, now);
        (chain, grant)
    }

    /// Records a new refresh token with a new access token beside it.
    fn issue_pair(&mut self, chain: usize, refresh_token: String, now: SystemTime) -> Grant {
        let access_token = self.issue_access(chain, now);
        let record = RefreshRecord {
            chain,
            issued: now,
            state: RefreshState::Current,
            access_token: access_token.clone(),
        };
        self.refresh.insert(refresh_token.clone(), record);
        Grant {
            access_token,
            refresh_token,
            expires_in: self.lifetimes.access.as_secs(),
        }
    }

    fn issue_access(&mut self, chain: usize, now: SystemTime) -> String {
        let client_id = self.chains[chain].client_id.clone();
        let token = mint::access_token(&client_id, now, self.lifetimes.access);
        let record = AccessRecord {
            client_id,
            expires: after(now, self.lifetimes.access),
            revoked: false,
        };
        self.access.insert(token.clone(), record);
        token
    }

    /// `grant_type=refresh_token`.
    pub fn refresh(
        &mut self,
        client_id: &str,
        refresh_token: &str,
        now: SystemTime,
    ) -> Result<Grant, GrantError> {
        let Some(record) = self.refresh.get(refresh_token) else {
            return Err(GrantError::Refused);
        };
        let chain = record.chain;
        if self.chains[chain].client_id != client_id {
            return Err(GrantError::Refused);
        }
        match self.standing(refresh_token, now) {
            Standing::Live => {}
            Standing::Rotated => {
                self.counters.reused_refresh_tokens += 1;
                return Err(GrantError::Refused);
            }
            Standing::Dead | Standing::Unknown => return Err(GrantError::Refused),
        }
        self.counters.refreshes += 1;
        if self.chains[chain].rotating {
            return Ok(self.rotate(refresh_token, chain, now));
        }
        // Non-rotating: the active access token comes back, its clock not restarted.
        let current = record.access_token.clone();
        if let Some(remaining) = self.access_remaining(&current, now) {
            let expires_in = remaining.as_secs();
            return Ok(Grant {
                access_token: current,
                refresh_token: refresh_token.to_owned(),
                expires_in,
            });
        }
        let access_token = self.issue_access(chain, now);
        if let Some(record) = self.refresh.get_mut(refresh_token) {
            record.access_token = access_token.clone();
        }
        Ok(Grant {
            access_token,
            refresh_token: refresh_token.to_owned(),
            expires_in: self.lifetimes.access.as_secs(),
        })
    }

    /// Retires the old pair and issues a new one on the same chain.
    fn rotate(&mut self, old: &str, chain: usize, now: SystemTime) -> Grant {
        if let Some(record) = self.refresh.get_mut(old) {
            record.state = RefreshState::Rotated;
            let old_access = record.access_token.clone();
            self.revoke_access(&old_access);
        }
        let refresh_token = mint::refresh_token();
        self.chains[chain].latest_refresh = refresh_token.clone();
        self.issue_pair(chain, refresh_token, now)
    }

    /// Judges a refresh token without changing anything.
    pub fn standing(&self, refresh_token: &str, now: SystemTime) -> Standing {
        let Some(record) = self.refresh.get(refresh_token) else {
            return Standing::Unknown;
        };
        let chain = &self.chains[record.chain];
        if record.state == RefreshState::Rotated {
            return Standing::Rotated;
        }
        if chain.ended {
            return Standing::Dead;
        }
        if chain.rotating {
            let idle = after(record.issued, self.lifetimes.idle);
            let whole = after(chain.started, self.lifetimes.chain);
            if reached(now, idle) || reached(now, whole) {
                return Standing::Dead;
            }
        }
        Standing::Live
    }

    /// Time left on a live access token; `Duration::MAX` when it never expires.
    pub fn access_remaining(&self, access_token: &str, now: SystemTime) -> Option<Duration> {
        let record = self.access.get(access_token).filter(|r| !r.revoked)?;
        match record.expires {
            None => Some(Duration::MAX),
            Some(expires) => expires.duration_since(now).ok().filter(|d| !d.is_zero()),
        }
    }

    /// The client a live access token belongs to.
    pub fn access_client(&self, access_token: &str, now: SystemTime) -> Option<&str> {
        self.access_remaining(access_token, now)?;
        self.access.get(access_token).map(|r| r.client_id.as_str())
    }

    fn revoke_access(&mut self, access_token: &str) {
        if let Some(record) = self.access.get_mut(access_token) {
            record.revoked = true;
        }
    }

    /// RFC 7009 revocation by a client. Unknown tokens are fine (200); revoking a refresh token
    /// ends its chain and with it the access token.
    pub fn revoke(&mut self, client_id: &str, token: &str) -> Result<(), NotYourToken> {
        if let Some(record) = self.refresh.get(token) {
            let chain = record.chain;
            if self.chains[chain].client_id != client_id {
                return Err(NotYourToken);
            }
            // A rotated-out token is no longer part of the grant, so Spring would not find it.
            if record.state == RefreshState::Current {
                self.end(chain);
            }
            return Ok(());
        }
        if let Some(record) = self.access.get_mut(token) {
            if record.client_id != client_id {
                return Err(NotYourToken);
            }
            record.revoked = true;
        }
        Ok(())
    }

    /// Ends the chain a refresh token (current or rotated) belongs to, with its access token.
    pub fn end_chain(&mut self, refresh_token: &str) {
        if let Some(chain) = self.refresh.get(refresh_token).map(|r| r.chain) {
            self.end(chain);
        }
    }

    fn end(&mut self, chain: usize) {
        self.chains[chain].ended = true;
        let latest = self.chains[chain].latest_refresh.clone();
        if let Some(access) = self.refresh.get(&latest).map(|r| r.access_token.clone()) {
            self.revoke_access(&access);
        }
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
