//! Who may read `/metrics`: the bearer token's owner, as the API server knows them
//! (TokenReview), allowed `get` on the non-resource URL `/metrics` (SubjectAccessReview) —
//! what kubebuilder's secure metrics serving does. Verdicts are cached briefly, keyed by
//! the token's SHA-256 (the token itself is never kept), and reviews run a few at a time,
//! so a flood of made-up tokens costs the API server a bounded number of calls in flight.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// What the API server said about a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and allowed `get /metrics`.
    Allowed,
    /// Authenticated, not allowed.
    Forbidden,
    /// Not a token the API server accepts (expired, revoked, made up).
    Unauthenticated,
}

/// Why no verdict could be reached; the client is told to retry.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("too many token reviews in flight")]
    Busy,
    #[error("reviewing the token failed: {0}")]
    Review(String),
}

/// The two questions put to the API server about a token; a trait so that the cache and
/// the bound on concurrency are tested without one.
pub trait Review: Send + Sync + 'static {
    fn review(&self, token: &str) -> impl Future<Output = Result<Verdict, String>> + Send;
}

/// Reviews through the operator's own client: needs `create` on
/// tokenreviews.authentication.k8s.io and subjectaccessreviews.authorization.k8s.io.
pub struct KubeReview {
    pub client: kube::Client,
}

/// The non-resource URL and verb a reader must be allowed (the `metrics-reader` role).
pub const PATH: &str = "/metrics";
pub const VERB: &str = "get";

impl Review for KubeReview {
    async fn review(&self, token: &str) -> Result<Verdict, String> {
        let tokens: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                // The API server's own audiences: a projected ServiceAccount token's default.
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = tokens
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview: {}", crate::secrets::kube_reason(&e)))?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(Verdict::Unauthenticated),
        };
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let question = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_owned()),
                    verb: Some(VERB.to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = access
            .create(&PostParams::default(), &question)
            .await
            .map_err(|e| format!("SubjectAccessReview: {}", crate::secrets::kube_reason(&e)))?;
        Ok(match answer.status {
            Some(s) if s.allowed => Verdict::Allowed,
            _ => Verdict::Forbidden,
        })
    }
}

/// Limits of the gate; the defaults suit a Prometheus or two scraping every few seconds.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Reviews in flight at once (each is two API calls, one after the other).
    pub concurrent_reviews: usize,
    /// How long a request waits for a review slot before it is answered 503.
    pub wait_for_slot: Duration,
    /// How long an `Allowed` verdict is reused.
    pub allowed_for: Duration,
    /// How long a `Forbidden` or `Unauthenticated` verdict is reused.
    pub denied_for: Duration,
    /// Verdicts kept at most.
    pub cached: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrent_reviews: 4,
            wait_for_slot: Duration::from_secs(2),
            allowed_for: Duration::from_secs(60),
            denied_for: Duration::from_secs(10),
            cached: 1024,
        }
    }
}

/// Longer bearer tokens are refused without a review (ServiceAccount JWTs are ~1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

type Key = [u8; 32];

pub struct Gate<R> {
    reviewer: R,
    limits: Limits,
    slots: Semaphore,
    verdicts: Mutex<HashMap<Key, (Instant, Verdict)>>,
}

impl<R: Review> Gate<R> {
    pub fn new(reviewer: R, limits: Limits) -> Self {
        Gate {
            reviewer,
            slots: Semaphore::new(limits.concurrent_reviews.max(1)),
            limits,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict on `token`: cached if recent, else reviewed once a slot is free.
    pub async fn check(&self, token: &str) -> Result<Verdict, GateError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Ok(Verdict::Unauthenticated);
        }
        let key: Key = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let _slot = tokio::time::timeout(self.limits.wait_for_slot, self.slots.acquire())
            .await
            .map_err(|_| GateError::Busy)?
            // Invariant: the semaphore is never closed.
            .expect("review slots are never closed");
        // The same token may have been reviewed while this request waited.
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let verdict = self
            .reviewer
            .review(token)
            .await
            .map_err(GateError::Review)?;
        self.remember(key, verdict);
        Ok(verdict)
    }

    fn cached(&self, key: &Key) -> Option<Verdict> {
        let verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, verdict) = verdicts.get(key)?;
        (Instant::now() < *expires).then_some(*verdict)
    }

    /// Keeps the verdict; when full, drops the expired ones, then the denials (a flood of
    /// made-up tokens never pushes out a scraper's `Allowed`), then everything.
    fn remember(&self, key: Key, verdict: Verdict) {
        let ttl = match verdict {
            Verdict::Allowed => self.limits.allowed_for,
            Verdict::Forbidden | Verdict::Unauthenticated => self.limits.denied_for,
        };
        let now = Instant::now();
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= self.limits.cached {
            verdicts.retain(|_, (expires, _)| *expires > now);
        }
        if verdicts.len() >= self.limits.cached {
            verdicts.retain(|_, (_, v)| *v == Verdict::Allowed);
        }
        if verdicts.len() >= self.limits.cached {
            verdicts.clear();
        }
        verdicts.insert(key, (now + ttl, verdict));
    }

    #[cfg(test)]
    fn cached_count(&self) -> usize {
        self.verdicts.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Allows `good`, forbids `stranger`, rejects the rest; counts calls and the most in
    /// flight at once, each taking `delay`.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<AtomicUsize>,
        in_flight: Arc<AtomicUsize>,
        most_in_flight: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Review for Fake {
        async fn review(&self, token: &str) -> Result<Verdict, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(match token {
                "good" => Verdict::Allowed,
                "stranger" => Verdict::Forbidden,
                "broken" => return Err("API server down".into()),
                _ => Verdict::Unauthenticated,
            })
        }
    }

    fn gate(fake: &Fake, limits: Limits) -> Arc<Gate<Fake>> {
        Arc::new(Gate::new(fake.clone(), limits))
    }

    #[tokio::test]
    async fn verdicts_follow_the_review_and_a_repeated_token_is_reviewed_once() {
        let fake = Fake::default();
        let g = gate(&fake, Limits::default());
        assert_eq!(g.check("good").await.unwrap(), Verdict::Allowed);
        assert_eq!(g.check("good").await.unwrap(), Verdict::Allowed);
        assert_eq!(g.check("stranger").await.unwrap(), Verdict::Forbidden);
        assert_eq!(g.check("made-up").await.unwrap(), Verdict::Unauthenticated);
        assert_eq!(g.check("made-up").await.unwrap(), Verdict::Unauthenticated);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_empty_or_oversized_token_is_refused_without_a_review() {
        let fake = Fake::default();
        let g = gate(&fake, Limits::default());
        let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(g.check("").await.unwrap(), Verdict::Unauthenticated);
        assert_eq!(g.check(&huge).await.unwrap(), Verdict::Unauthenticated);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_review_is_an_error_and_is_not_remembered() {
        let fake = Fake::default();
        let g = gate(&fake, Limits::default());
        assert!(matches!(g.check("broken").await, Err(GateError::Review(_))));
        assert!(matches!(g.check("broken").await, Err(GateError::Review(_))));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_verdict_is_reviewed_again_once_it_expires() {
        let fake = Fake::default();
        let limits = Limits {
            allowed_for: Duration::from_millis(50),
            ..Limits::default()
        };
        let g = gate(&fake, limits);
        g.check("good").await.unwrap();
        // std's Instant is not paused: wait for real.
        std::thread::sleep(Duration::from_millis(60));
        g.check("good").await.unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_flood_of_made_up_tokens_keeps_reviews_in_flight_and_cache_bounded() {
        let fake = Fake {
            delay: Duration::from_millis(5),
            ..Fake::default()
        };
        let limits = Limits {
            concurrent_reviews: 3,
            wait_for_slot: Duration::from_millis(30),
            cached: 50,
            ..Limits::default()
        };
        let g = gate(&fake, limits);
        assert_eq!(g.check("good").await.unwrap(), Verdict::Allowed);
        let flood: Vec<_> = (0..500)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move { g.check(&format!("random-{i}")).await })
            })
            .collect();
        let mut busy = 0;
        for r in futures::future::join_all(flood).await {
            match r.unwrap() {
                Ok(v) => assert_eq!(v, Verdict::Unauthenticated),
                Err(GateError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 3);
        assert!(busy > 0, "waiters beyond the slots' reach are turned away");
        assert!(g.cached_count() <= 50);
        // The scraper's verdict survived the flood: no new review for it.
        let before = fake.calls.load(Ordering::SeqCst);
        assert_eq!(g.check("good").await.unwrap(), Verdict::Allowed);
        assert_eq!(fake.calls.load(Ordering::SeqCst), before);
    }
}
