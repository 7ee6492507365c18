//! Local stand-in for the HTTP API JWT authorizer: HS256 tokens signed with a shared
//! secret (`LOCAL_JWT_SECRET`, default [`DEFAULT_SECRET`]) and issued by [`ISSUER`].
//!
//! Only HS256 is accepted; `alg: none` and every other algorithm are rejected before any
//! signature check. Tokens are never logged, and no error carries the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

/// The secret used when `LOCAL_JWT_SECRET` is not set.
pub const DEFAULT_SECRET: &str = "local-dev-secret";
/// The `iss` of every local token; [`verify`] accepts no other.
pub const ISSUER: &str = "local";
/// The `scope` claim of tokens from [`issue`].
pub const SCOPE: &str = "openbank";
/// Clock skew tolerated on `exp`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No token at all.
    #[error("no token")]
    Missing,
    /// Not a well-formed JWT, or a required claim (`exp`, `sub`) is missing or invalid.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("wrong or missing issuer")]
    WrongIssuer,
    #[error("wrong or missing audience")]
    WrongAudience,
    /// The header's `alg` is not HS256 (e.g. `none`, `HS512`, `RS256`).
    #[error("unsupported alg {0:?}")]
    UnsupportedAlg(String),
}

/// `LOCAL_JWT_SECRET`, or [`DEFAULT_SECRET`] when unset or empty.
pub fn secret_from_env() -> String {
    std::env::var("LOCAL_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SECRET.to_owned())
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 token for `subject`, valid for `ttl`, with claims `sub`, `iss` ("local"),
/// `iat`, `exp`, `jti` (a UUID), `scope` ("openbank") and `aud` when given.
pub fn issue(secret: &str, subject: &str, ttl: Duration, audience: Option<&str>) -> String {
    let iat = now_seconds();
    let mut claims = json!({
        "sub": subject,
        "iss": ISSUER,
        "iat": iat,
        "exp": iat.saturating_add(ttl.as_secs()),
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": SCOPE,
    });
    if let Some(aud) = audience {
        claims["aud"] = Value::String(aud.to_owned());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with a byte secret cannot fail")
}

/// Verifies an HS256 token and returns its claims.
///
/// Checks, in order: shape, `alg` (HS256 only), signature, `exp` (required, 5 s leeway),
/// `iss` (must be "local"), `aud` (only when `audience` is given: then required and must
/// match), `sub` (required, non-empty string).
pub fn verify(
    secret: &str,
    token: &str,
    audience: Option<&str>,
) -> Result<Map<String, Value>, JwtError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Malformed("not three segments"));
    }
    // Check the algorithm ourselves first: jsonwebtoken cannot even parse `alg: none`,
    // and we want an explicit UnsupportedAlg for it and for every other algorithm.
    let header_bytes = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let header: Value = serde_json::from_slice(&header_bytes)
        .map_err(|_| JwtError::Malformed("header is not JSON"))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => return Err(JwtError::UnsupportedAlg(alg.clone())),
        Some(other) => return Err(JwtError::UnsupportedAlg(other.to_string())),
        None => return Err(JwtError::Malformed("header has no alg")),
    }
    if parts[2].is_empty() {
        return Err(JwtError::BadSignature);
    }

    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = false;
    validation.set_issuer(&[ISSUER]);
    let mut required = vec!["exp", "iss", "sub"];
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);

    let data = jsonwebtoken::decode::<Map<String, Value>>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.into_kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            JwtError::UnsupportedAlg("?".to_owned())
        }
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => JwtError::WrongIssuer,
            "aud" => JwtError::WrongAudience,
            "exp" => JwtError::Malformed("missing exp"),
            _ => JwtError::Malformed("missing or invalid sub"),
        },
        ErrorKind::InvalidClaimFormat(_) => JwtError::Malformed("invalid claim format"),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => JwtError::Malformed("invalid encoding"),
        ErrorKind::Json(_) => JwtError::Malformed("claims are not a JSON object"),
        _ => JwtError::Malformed("invalid token"),
    })?;

    match data.claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => Ok(data.claims),
        _ => Err(JwtError::Malformed("missing or invalid sub")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret";

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// Signs arbitrary claims with HS256 (for claims `issue` would never produce).
    fn sign(claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn valid_claims() -> Value {
        let now = now_seconds();
        json!({"sub": "alice", "iss": ISSUER, "iat": now, "exp": now + 600})
    }

    #[test]
    fn issued_token_verifies_with_all_claims() {
        let token = issue(SECRET, "alice", Duration::from_secs(3600), None);
        let claims = verify(SECRET, &token, None).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], "local");
        assert_eq!(claims["scope"], "openbank");
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
        assert!(!claims.contains_key("aud"));
    }

    #[test]
    fn default_secret_and_issuer() {
        assert_eq!(DEFAULT_SECRET, "local-dev-secret");
        assert_eq!(ISSUER, "local");
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let token = issue("other", "alice", Duration::from_secs(60), None);
        assert_eq!(verify(SECRET, &token, None), Err(JwtError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let token = issue(SECRET, "alice", Duration::from_secs(60), None);
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = valid_claims();
        claims["sub"] = json!("mallory");
        let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
        assert_eq!(verify(SECRET, &forged, None), Err(JwtError::BadSignature));
    }

    #[test]
    fn expired_and_leeway() {
        let now = now_seconds();
        let mut claims = valid_claims();
        claims["exp"] = json!(now - 30);
        assert_eq!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Expired)
        );
        // Within the 5 s leeway.
        claims["exp"] = json!(now - 2);
        assert!(verify(SECRET, &sign(&claims, SECRET), None).is_ok());
        // Just past the leeway.
        claims["exp"] = json!(now - 7);
        assert_eq!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn exp_is_required() {
        let mut claims = valid_claims();
        claims.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Malformed(_))
        ));
        claims["exp"] = json!("tomorrow");
        assert!(matches!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn issuer_must_be_local() {
        let mut claims = valid_claims();
        claims["iss"] = json!("https://cognito-idp.example");
        assert_eq!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::WrongIssuer)
        );
        claims.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::WrongIssuer)
        );
    }

    #[test]
    fn sub_is_required_and_non_empty() {
        let mut claims = valid_claims();
        claims["sub"] = json!("");
        assert!(matches!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Malformed(_))
        ));
        claims["sub"] = json!(42);
        assert!(matches!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Malformed(_))
        ));
        claims.as_object_mut().unwrap().remove("sub");
        assert!(matches!(
            verify(SECRET, &sign(&claims, SECRET), None),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn audience_checked_only_when_configured() {
        let with_aud = issue(SECRET, "alice", Duration::from_secs(60), Some("api"));
        let without_aud = issue(SECRET, "alice", Duration::from_secs(60), None);
        // Not configured: any aud (or none) passes.
        assert!(verify(SECRET, &with_aud, None).is_ok());
        assert!(verify(SECRET, &without_aud, None).is_ok());
        // Configured: must be present and match.
        assert_eq!(
            verify(SECRET, &with_aud, Some("api")).unwrap()["aud"],
            "api"
        );
        assert_eq!(
            verify(SECRET, &with_aud, Some("other")),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            verify(SECRET, &without_aud, Some("api")),
            Err(JwtError::WrongAudience)
        );
        let mut claims = valid_claims();
        claims["aud"] = json!(["x", "api"]);
        assert!(verify(SECRET, &sign(&claims, SECRET), Some("api")).is_ok());
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let payload = b64(&valid_claims());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.AAAA"),
        ] {
            assert_eq!(
                verify(SECRET, &token, None),
                Err(JwtError::UnsupportedAlg("none".into()))
            );
        }
        let header = b64(&json!({"alg": "None"}));
        assert_eq!(
            verify(SECRET, &format!("{header}.{payload}."), None),
            Err(JwtError::UnsupportedAlg("None".into()))
        );
    }

    #[test]
    fn other_algorithms_are_rejected() {
        // A correctly signed HS512 token is still refused.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &valid_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(SECRET, &token, None),
            Err(JwtError::UnsupportedAlg("HS512".into()))
        );
        let payload = b64(&valid_claims());
        for alg in ["RS256", "ES256", "PS256", "EdDSA", "HS384"] {
            let header = b64(&json!({"alg": alg}));
            assert_eq!(
                verify(SECRET, &format!("{header}.{payload}.c2ln"), None),
                Err(JwtError::UnsupportedAlg(alg.into()))
            );
        }
        let header = b64(&json!({"typ": "JWT"}));
        assert!(matches!(
            verify(SECRET, &format!("{header}.{payload}.c2ln"), None),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_and_missing() {
        assert_eq!(verify(SECRET, "", None), Err(JwtError::Missing));
        assert_eq!(verify(SECRET, "  ", None), Err(JwtError::Missing));
        for bad in ["abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.sig"] {
            assert!(
                matches!(verify(SECRET, bad, None), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
        // A valid HS256 header with garbage claims.
        let header = b64(&json!({"alg": "HS256"}));
        assert!(verify(SECRET, &format!("{header}.bm90IGpzb24.c2ln"), None).is_err());
    }

    #[test]
    fn errors_never_contain_the_token() {
        let token = issue("other", "alice", Duration::from_secs(60), None);
        let err = verify(SECRET, &token, None).unwrap_err();
        assert!(!err.to_string().contains(&token));
        assert!(!format!("{err:?}").contains(&token));
    }
}
