//! The simulated Eagle Eye token endpoint (`/oauth2/token`, `/oauth2/revoke`), after the
//! vendor's guide and the project's stand-in (`testbed/src/standin`): rotating and
//! non-rotating client accounts; a refresh returns a new refresh token and kills the old
//! one and its access tokens; a rotated-out token sent again is a reuse (counted, and by
//! RFC 9700 the whole login may be revoked); 14-day idle and 90-day chain expiry. Written
//! anew rather than reused because the stand-in mints random tokens (replay needs them
//! deterministic) and lives behind a socket.

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};

pub const IDLE: SignedDuration = SignedDuration::from_hours(14 * 24);
pub const CHAIN: SignedDuration = SignedDuration::from_hours(90 * 24);
pub const ACCESS_LIFE: u64 = 3600;
pub const API_HOST: &str = "api.c001.eagleeyenetworks.com";

/// One login: the chain of refresh tokens from one Phase 1 authorization.
#[derive(Clone, Debug)]
pub struct Login {
    pub client: String,
    /// The one refresh token the server accepts now (`None`: the login is dead).
    pub live: Option<String>,
    pub started: Timestamp,
    pub last_used: Timestamp,
    /// Why it died, when it did.
    pub died: Option<&'static str>,
    pub serial: u32,
}

#[derive(Clone, Debug)]
pub enum TokenState {
    Live,
    /// Rotated out by a refresh: sending it again is a reuse.
    Replaced,
    Revoked,
}

#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub login: usize,
    pub serial: u32,
    pub state: TokenState,
}

/// What the server did with one request, for the invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Did {
    /// Refreshed login `login`; its live token is now `live`.
    Refreshed {
        login: usize,
        spent: String,
    },
    /// A rotated-out token of `login` came back.
    Reuse {
        login: usize,
        token: String,
    },
    Refused,
    Revoked {
        login: usize,
        token: String,
    },
    Nothing,
}

pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
pub struct Eagle {
    /// client id -> rotating.
    pub clients: BTreeMap<String, bool>,
    pub logins: Vec<Login>,
    pub tokens: BTreeMap<String, TokenInfo>,
    /// Access token -> (login, serial of issue, issued at): a target never goes back.
    pub access: BTreeMap<String, (usize, u64, Timestamp)>,
    pub minted: u64,
    pub refreshes: u64,
    pub reuses: u64,
    /// Revocations naming a refresh token already replaced: harmless here, but a server
    /// may take one for a reuse and end the whole grant (RFC 7009 lets it).
    pub revokes_of_replaced: u64,
    /// RFC 9700: a reuse revokes the whole login.
    pub revoke_on_reuse: bool,
    /// Answers rotate as usual but carry no access token: unusable, the new refresh token in
    /// them all the same.
    pub malformed: bool,
}

fn token_text(prefix: char, login: usize, serial: u32) -> String {
    // 100 URL-safe characters, as the vendor's; unique per (login, serial).
    let head = format!("{prefix}{login:05}x{serial:06}");
    let mut s = head.clone();
    let mut n = (login as u64) * 1_000_003 + serial as u64;
    while s.len() < 100 {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let c =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[(n >> 58) as usize];
        s.push(c as char);
    }
    s
}

impl Eagle {
    pub fn client_secret(client: &str) -> String {
        format!("secret-of-{client}")
    }

    /// A Phase 1 login (a person's `authorize`): a new chain.
    pub fn login(&mut self, client: &str, now: Timestamp) -> String {
        let login = self.logins.len();
        let token = token_text('R', login, 0);
        self.logins.push(Login {
            client: client.to_owned(),
            live: Some(token.clone()),
            started: now,
            last_used: now,
            died: None,
            serial: 0,
        });
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                login,
                serial: 0,
                state: TokenState::Live,
            },
        );
        token
    }

    /// Marks logins past their idle or chain lifetime dead.
    pub fn expire(&mut self, now: Timestamp) {
        for l in &mut self.logins {
            if l.died.is_some() || !self.clients.get(&l.client).copied().unwrap_or(true) {
                continue;
            }
            if l.last_used + IDLE < now {
                l.died = Some("idle");
            } else if l.started + CHAIN < now {
                l.died = Some("chain");
            }
            if l.died.is_some()
                && let Some(t) = l.live.take()
                && let Some(i) = self.tokens.get_mut(&t)
            {
                i.state = TokenState::Revoked;
            }
        }
    }

    fn authenticate(&self, authorization: &str) -> Option<String> {
        let b64 = authorization.strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (id, secret) = raw.split_once(':')?;
        let id = url::form_urlencoded::parse(format!("a={id}").as_bytes())
            .next()?
            .1
            .into_owned();
        (self.clients.contains_key(&id) && secret == Self::client_secret(&id)).then_some(id)
    }

    fn oauth_error(status: u16, code: &str) -> Answer {
        Answer {
            status,
            retry_after: None,
            body: format!("{{\"error\":\"{code}\"}}").into_bytes(),
        }
    }

    /// Serves one request as the vendor would.
    pub fn serve(
        &mut self,
        path: &str,
        authorization: &str,
        form: &str,
        now: Timestamp,
    ) -> (Answer, Did) {
        self.expire(now);
        let Some(client) = self.authenticate(authorization) else {
            return (Self::oauth_error(401, "invalid_client"), Did::Refused);
        };
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        if path.ends_with("/revoke") {
            let token = form.get("token").cloned().unwrap_or_default();
            let Some(info) = self.tokens.get_mut(&token) else {
                return (
                    Answer {
                        status: 200,
                        retry_after: None,
                        body: Vec::new(),
                    },
                    Did::Nothing,
                );
            };
            let login = info.login;
            if matches!(info.state, TokenState::Replaced) {
                self.revokes_of_replaced += 1;
            }
            info.state = TokenState::Revoked;
            let l = &mut self.logins[login];
            if l.live.as_deref() == Some(token.as_str()) {
                l.live = None;
                l.died = Some("revoked");
            }
            return (
                Answer {
                    status: 200,
                    retry_after: None,
                    body: Vec::new(),
                },
                Did::Revoked { login, token },
            );
        }
        if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
            return (
                Self::oauth_error(400, "unsupported_grant_type"),
                Did::Refused,
            );
        }
        let token = form.get("refresh_token").cloned().unwrap_or_default();
        let Some(info) = self.tokens.get(&token).cloned() else {
            return (Self::oauth_error(400, "invalid_grant"), Did::Refused);
        };
        let login = info.login;
        if self.logins[login].client != client {
            return (Self::oauth_error(400, "invalid_grant"), Did::Refused);
        }
        match info.state {
            TokenState::Replaced => {
                self.reuses += 1;
                if self.revoke_on_reuse {
                    let l = &mut self.logins[login];
                    if let Some(t) = l.live.take()
                        && let Some(i) = self.tokens.get_mut(&t)
                    {
                        i.state = TokenState::Revoked;
                    }
                    l.died.get_or_insert("reuse");
                }
                return (
                    Self::oauth_error(400, "invalid_grant"),
                    Did::Reuse { login, token },
                );
            }
            TokenState::Revoked => return (Self::oauth_error(400, "invalid_grant"), Did::Refused),
            TokenState::Live => {}
        }
        let rotating = self.clients[&client];
        self.refreshes += 1;
        self.minted += 1;
        let l = &mut self.logins[login];
        l.last_used = now;
        let refresh = if rotating {
            l.serial += 1;
            let next = token_text('R', login, l.serial);
            l.live = Some(next.clone());
            self.tokens.get_mut(&token).expect("known").state = TokenState::Replaced;
            self.tokens.insert(
                next.clone(),
                TokenInfo {
                    login,
                    serial: l.serial,
                    state: TokenState::Live,
                },
            );
            // The old access tokens die with the refresh token they came with.
            self.access.retain(|_, (lg, _, _)| *lg != login);
            next
        } else {
            token.clone()
        };
        let access = format!("A{login:05}m{:08}{}", self.minted, "k".repeat(40));
        self.access
            .insert(access.clone(), (login, self.minted, now));
        let access_field = match self.malformed {
            true => String::new(),
            false => format!("\"access_token\":\"{access}\","),
        };
        let body = format!(
            "{{{access_field}\"expires_in\":{ACCESS_LIFE},\"httpsBaseUrl\":{{\"hostname\":\"{API_HOST}\",\"port\":443}},\"refresh_token\":\"{refresh}\",\"scope\":\"vms.all\",\"token_type\":\"Bearer\"}}"
        );
        (
            Answer {
                status: 200,
                retry_after: None,
                body: body.into_bytes(),
            },
            Did::Refreshed {
                login,
                spent: token,
            },
        )
    }

    /// The login a refresh token belongs to, if the server ever issued it.
    pub fn login_of(&self, token: &str) -> Option<usize> {
        self.tokens.get(token).map(|i| i.login)
    }

    /// The login whose live refresh token `token` is, if it is one.
    pub fn live_login(&self, token: &str) -> Option<usize> {
        self.tokens
            .get(token)
            .filter(|i| matches!(i.state, TokenState::Live))
            .map(|i| i.login)
    }

    pub fn is_live(&self, token: &str) -> bool {
        self.tokens
            .get(token)
            .is_some_and(|i| matches!(i.state, TokenState::Live))
    }
}
