//! Minting of codes and tokens that look like the vendor's: access tokens shaped like its RS256
//! JWTs (the signature is random bytes: nothing verifies it), refresh tokens of about 100
//! URL-safe characters, short opaque codes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn random_url_safe(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An authorization code: 32 random bytes, 43 characters.
pub fn code() -> String {
    random_url_safe(32)
}

/// A refresh token: 75 random bytes, exactly 100 URL-safe characters.
pub fn refresh_token() -> String {
    random_url_safe(75)
}

/// An access token with the vendor's claims, issued at `iat` for `ttl`.
pub fn access_token(client_id: &str, iat: SystemTime, ttl: Duration) -> String {
    let header = serde_json::json!({
        "kid": hex(&random_bytes(16)),
        "typ": "JWT",
        "alg": "RS256",
    });
    let iat = unix_seconds(iat);
    let claims = serde_json::json!({
        "sub": "standin-user",
        "aud": "vms.api",
        "iss": "vms.auth.v1",
        "vms_account": "00000001",
        "exp": iat.saturating_add(ttl.as_secs()),
        "iat": iat,
        "jti": hex(&random_bytes(16)),
        "client_id": client_id,
        "vms_cluster": "c000",
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        // An RSA-2048 signature is 256 bytes.
        URL_SAFE_NO_PAD.encode(random_bytes(256)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_url_safe(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn refresh_tokens_are_100_url_safe_characters_and_differ() {
        let (a, b) = (refresh_token(), refresh_token());
        assert_eq!(a.len(), 100);
        assert!(is_url_safe(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn access_token_is_a_three_part_jwt_with_vendor_claims() {
        let iat = UNIX_EPOCH + Duration::from_secs(1_660_317_289);
        let token = access_token("client-1", iat, Duration::from_secs(43_200));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| is_url_safe(p)));
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "vms.auth.v1");
        assert_eq!(claims["aud"], "vms.api");
        assert_eq!(claims["client_id"], "client-1");
        assert_eq!(claims["iat"], 1_660_317_289);
        assert_eq!(claims["exp"], 1_660_317_289 + 43_200);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    }
}
