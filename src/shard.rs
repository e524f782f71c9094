//! Sharding: several operator deployments split the credentials between them by a label
//! selector (`--credential-selector`), each electing its own leader. What keeps a
//! credential moved between shards from being spent twice is not here: it is the spend
//! intent in its refresh-token Secret (see `intent`), which every process honours,
//! whichever shard or replica it is.

use sha2::{Digest, Sha256};

/// The Lease of an operator that refreshes every credential it watches.
pub const DEFAULT_LEASE: &str = "eagle-eye-operator";

/// The selector as given, trimmed; `None` when blank (every credential).
pub fn selector(given: Option<&str>) -> Option<String> {
    given
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The Lease a shard elects its leader in: [`DEFAULT_LEASE`] for every credential, else
/// that name and the first 8 hex digits of the selector's SHA-256. Replicas of one shard
/// (one selector) share a Lease, and two shards started with default flags never do. The
/// chart computes the same name (`eagle-eye-operator.leaseName`).
pub fn lease_name(selector: Option<&str>) -> String {
    match self::selector(selector) {
        None => DEFAULT_LEASE.to_owned(),
        Some(s) => {
            let digest = Sha256::digest(s.as_bytes());
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("{DEFAULT_LEASE}-{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_is_one_shard_with_the_default_lease() {
        assert_eq!(lease_name(None), "eagle-eye-operator");
        assert_eq!(lease_name(Some("  \n")), "eagle-eye-operator");
        assert_eq!(selector(Some(" \t")), None);
    }

    #[test]
    fn shards_elect_in_leases_of_their_own_and_replicas_of_one_shard_share_one() {
        let a = lease_name(Some("eagle-eye-operator.io/shard=a"));
        let b = lease_name(Some("eagle-eye-operator.io/shard=b"));
        assert_ne!(a, b);
        assert_ne!(a, DEFAULT_LEASE);
        assert_eq!(a, lease_name(Some(" eagle-eye-operator.io/shard=a\n")));
        // `printf %s eagle-eye-operator.io/shard=a | sha256sum | cut -c1-8`
        assert_eq!(a, "eagle-eye-operator-d570a2dd");
    }
}
