//! The last check before a refresh token is spent: does this replica still hold a fresh
//! Lease? kube-lease-manager reports a lost Lease only once it can read who took it, so
//! a leader cut off from the API server would otherwise keep going after its Lease ran out
//! while a follower takes over. One read per refresh, which is rare, closes that gap.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

/// Refreshes only start while this much of the Lease is left: the token call's time limit
/// must fit in it, or a follower could take over mid-call.
#[derive(Clone)]
pub struct Leadership(Option<Check>);

#[derive(Clone)]
struct Check {
    leases: Api<Lease>,
    name: String,
    identity: String,
    margin: SignedDuration,
}

impl Leadership {
    /// No leader election: a single replica may always spend.
    pub fn unchecked() -> Self {
        Leadership(None)
    }

    pub fn lease(leases: Api<Lease>, name: &str, identity: &str, margin: Duration) -> Self {
        Leadership(Some(Check {
            leases,
            name: name.into(),
            identity: identity.into(),
            margin: SignedDuration::try_from(margin).unwrap_or(SignedDuration::MAX),
        }))
    }

    /// `None` when spending is safe now; otherwise how long to wait before asking again.
    pub async fn not_safe_to_spend(&self) -> Option<Duration> {
        let check = self.0.as_ref()?;
        let lease = check.leases.get_opt(&check.name).await.ok().flatten();
        let spec = lease.and_then(|l| l.spec).unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(check.identity.as_str());
        let fresh_until = spec
            .renew_time
            .map(|t| t.0)
            .zip(spec.lease_duration_seconds)
            .map(|(renewed, secs)| renewed + SignedDuration::from_secs(i64::from(secs)));
        let safe = ours && fresh_until.is_some_and(|until| until - check.margin > Timestamp::now());
        (!safe).then_some(Duration::from_secs(1))
    }
}
