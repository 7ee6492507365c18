//! The `state` parameter of the SCA redirect: signed, expiring and single-use.
//!
//! When we send a user to the bank for Strong Customer Authentication, the bank later sends
//! the browser back to our callback (`GET /v1/callbacks/sca?state=…`). That request carries
//! no bearer token, so everything the callback needs — whose consent (or payment) it is and
//! where to send the browser next — travels inside `state`, signed by us:
//!
//! ```text
//! base64url(payload JSON) "." base64url(HMAC-SHA256(secret, base64url(payload JSON)))
//! ```
//!
//! (no padding). The MAC covers the payload exactly as it appears in the token, so a token
//! is accepted only byte for byte as we issued it. [`StateSigner::verify`] checks the MAC in
//! constant time before it even decodes the payload, then the expiry. Single use is not
//! checked here: the caller consumes [`ScaState::nonce`] in a
//! [`NonceStore`](crate::store::NonceStore) after verifying.
//!
//! Neither the token nor the secret is ever logged or displayed: [`StateSigner`]'s and
//! [`ScaState`]'s `Debug` hide the secret and the nonce, and [`StateError`] never contains
//! any part of the token.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use url::Url;

use crate::domain::{ConsentId, PaymentId, UserId};

/// Longest token [`StateSigner::verify`] looks at; longer input is `Malformed` without
/// further work. Callers keep what they put in a state (e.g. a redirect URL) well below.
pub const MAX_TOKEN_LEN: usize = 2048;

/// Shortest accepted signing secret, in bytes (the HMAC-SHA256 output size).
pub const MIN_SECRET_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What an SCA redirect is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateSubject {
    /// Authorisation of an account-information consent.
    Consent { user: UserId, consent: ConsentId },
    /// Authorisation of a payment.
    Payment { user: UserId, payment: PaymentId },
}

impl StateSubject {
    /// The user the redirect belongs to.
    pub fn user(&self) -> &UserId {
        match self {
            StateSubject::Consent { user, .. } | StateSubject::Payment { user, .. } => user,
        }
    }
}

/// The content of a `state` token.
#[derive(Clone, PartialEq, Eq)]
pub struct ScaState {
    pub subject: StateSubject,
    /// 128 random bits, base64url: consumed once in the nonce store.
    pub nonce: String,
    /// The token is refused from this instant on. Tokens carry whole seconds, so a verified
    /// state has this truncated to the second.
    pub expires_at: DateTime<Utc>,
    /// Where to send the browser afterwards (already checked against the allow-list when
    /// the state was issued).
    pub redirect_url: Option<Url>,
}

impl ScaState {
    /// A state with a fresh random nonce.
    pub fn new(
        subject: StateSubject,
        expires_at: DateTime<Utc>,
        redirect_url: Option<Url>,
    ) -> Self {
        Self {
            subject,
            nonce: fresh_nonce(),
            expires_at,
            redirect_url,
        }
    }
}

impl fmt::Debug for ScaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScaState")
            .field("subject", &self.subject)
            .field("nonce", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

/// 128 bits from the thread-local CSPRNG, base64url without padding (22 characters).
fn fresh_nonce() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// Why a token was refused. Deliberately carries no part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a token we could have issued (shape, encoding, length, content).
    #[error("the state is malformed")]
    Malformed,
    /// Well-formed, but the signature does not match (tampered, or another secret).
    #[error("the state's signature is not valid")]
    BadSignature,
    /// Genuine, but past its expiry.
    #[error("the state has expired")]
    Expired,
}

/// The signing secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the SCA state secret must be at least {min} bytes long, got {got}")]
pub struct WeakSecret {
    pub min: usize,
    pub got: usize,
}

/// Signs and verifies `state` tokens with one HMAC-SHA256 secret.
#[derive(Clone)]
pub struct StateSigner {
    /// The keyed MAC, cloned for every use (the secret itself is not kept separately).
    mac: HmacSha256,
}

impl fmt::Debug for StateSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateSigner { secret: <redacted> }")
    }
}

/// The payload, with short keys to keep the redirect URL compact.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// Subject kind: `c` (consent) or `p` (payment).
    k: Kind,
    /// User.
    u: UserId,
    /// Consent or payment id.
    i: String,
    /// Nonce.
    n: String,
    /// Expiry, Unix seconds.
    e: i64,
    /// Redirect URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<Url>,
}

#[derive(Serialize, Deserialize)]
enum Kind {
    #[serde(rename = "c")]
    Consent,
    #[serde(rename = "p")]
    Payment,
}

impl StateSigner {
    /// A signer for `secret`.
    ///
    /// # Errors
    /// [`WeakSecret`] when `secret` is shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret {
                min: MIN_SECRET_LEN,
                got: secret.len(),
            });
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| WeakSecret {
            min: MIN_SECRET_LEN,
            got: secret.len(),
        })?;
        Ok(Self { mac })
    }

    /// The token for `state`.
    pub fn sign(&self, state: &ScaState) -> String {
        let (k, i) = match &state.subject {
            StateSubject::Consent { consent, .. } => (Kind::Consent, consent.as_str()),
            StateSubject::Payment { payment, .. } => (Kind::Payment, payment.as_str()),
        };
        let payload = Payload {
            k,
            u: state.subject.user().clone(),
            i: i.to_owned(),
            n: state.nonce.clone(),
            e: state.expires_at.timestamp(),
            r: state.redirect_url.clone(),
        };
        let json = serde_json::to_vec(&payload).expect("the state payload serialises");
        let body = URL_SAFE_NO_PAD.encode(json);
        let tag = self.tag(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks `token` and returns its content.
    ///
    /// # Errors
    /// [`StateError::Malformed`] (including longer than [`MAX_TOKEN_LEN`]),
    /// [`StateError::BadSignature`], or [`StateError::Expired`] when `now` has reached the
    /// token's expiry.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<ScaState, StateError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(StateError::Malformed);
        }
        let (body, signature) = token.split_once('.').ok_or(StateError::Malformed)?;
        if body.is_empty() || signature.contains('.') {
            return Err(StateError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| StateError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        // Constant time (hmac compares with `subtle`); a wrong length is also refused here.
        mac.verify_slice(&signature)
            .map_err(|_| StateError::BadSignature)?;

        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| StateError::Malformed)?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| StateError::Malformed)?;
        let subject = match payload.k {
            Kind::Consent => StateSubject::Consent {
                user: payload.u,
                consent: ConsentId::parse(&payload.i).map_err(|_| StateError::Malformed)?,
            },
            Kind::Payment => StateSubject::Payment {
                user: payload.u,
                payment: PaymentId::parse(&payload.i).map_err(|_| StateError::Malformed)?,
            },
        };
        let expires_at =
            DateTime::<Utc>::from_timestamp(payload.e, 0).ok_or(StateError::Malformed)?;
        if now >= expires_at {
            return Err(StateError::Expired);
        }
        Ok(ScaState {
            subject,
            nonce: payload.n,
            expires_at,
            redirect_url: payload.r,
        })
    }

    fn tag(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    fn consent_state() -> ScaState {
        ScaState::new(
            StateSubject::Consent {
                user: UserId::parse("auth0|alice").unwrap(),
                consent: ConsentId::new(),
            },
            now() + Duration::minutes(30),
            Some(Url::parse("https://app.example/done?tab=banks").unwrap()),
        )
    }

    fn signer() -> StateSigner {
        StateSigner::new(SECRET).unwrap()
    }

    #[test]
    fn round_trip_consent_and_payment() {
        let state = consent_state();
        let token = signer().sign(&state);
        assert_eq!(signer().verify(&token, now()).unwrap(), state);

        let payment = ScaState::new(
            StateSubject::Payment {
                user: UserId::parse("bob").unwrap(),
                payment: PaymentId::new(),
            },
            now() + Duration::seconds(90),
            None,
        );
        let token = signer().sign(&payment);
        assert_eq!(signer().verify(&token, now()).unwrap(), payment);
    }

    #[test]
    fn token_is_url_safe_and_compact() {
        let token = signer().sign(&consent_state());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
            "{token}"
        );
        assert_eq!(token.matches('.').count(), 1);
        assert!(token.len() < 400, "{}", token.len());
    }

    #[test]
    fn nonces_are_fresh_128_bit_values() {
        let a = consent_state();
        let b = consent_state();
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 22);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.nonce).unwrap().len(), 16);
    }

    #[test]
    fn expires_at_the_second() {
        let state = consent_state();
        let token = signer().sign(&state);
        let expiry = state.expires_at;
        assert!(
            signer()
                .verify(&token, expiry - Duration::seconds(1))
                .is_ok()
        );
        assert_eq!(signer().verify(&token, expiry), Err(StateError::Expired));
        assert_eq!(
            signer().verify(&token, expiry + Duration::days(3)),
            Err(StateError::Expired)
        );
    }

    #[test]
    fn sub_second_expiry_is_truncated() {
        let mut state = consent_state();
        state.expires_at += Duration::milliseconds(750);
        let verified = signer().verify(&signer().sign(&state), now()).unwrap();
        assert_eq!(verified.expires_at, now() + Duration::minutes(30));
    }

    #[test]
    fn another_secret_is_refused() {
        let token = signer().sign(&consent_state());
        let other = StateSigner::new(b"another secret that is long enough!!").unwrap();
        assert_eq!(other.verify(&token, now()), Err(StateError::BadSignature));
    }

    #[test]
    fn every_changed_byte_is_refused() {
        let token = signer().sign(&consent_state());
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            // Two replacements per position: a neighbouring character and one from the
            // other end of the alphabet (so both low and high bits change).
            for replacement in [bytes[i] ^ 0x01, if bytes[i] == b'A' { b'z' } else { b'A' }] {
                let mut tampered = bytes.to_vec();
                tampered[i] = replacement;
                let tampered = String::from_utf8(tampered).unwrap();
                let result = signer().verify(&tampered, now());
                assert!(
                    matches!(
                        result,
                        Err(StateError::BadSignature | StateError::Malformed)
                    ),
                    "position {i}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn truncated_and_extended_tokens_are_refused() {
        let token = signer().sign(&consent_state());
        for cut in 0..token.len() {
            assert!(signer().verify(&token[..cut], now()).is_err(), "cut {cut}");
        }
        for suffix in ["A", ".", "=", "==", ".AA"] {
            assert!(signer().verify(&format!("{token}{suffix}"), now()).is_err());
        }
        let (body, sig) = token.split_once('.').unwrap();
        assert!(signer().verify(&format!("{sig}.{body}"), now()).is_err());
    }

    #[test]
    fn a_resigned_payload_from_someone_else_is_refused() {
        // An attacker who swaps the payload keeps our signature of another payload.
        let a = signer().sign(&consent_state());
        let b = signer().sign(&consent_state());
        let (body_b, _) = b.split_once('.').unwrap();
        let (_, sig_a) = a.split_once('.').unwrap();
        assert_eq!(
            signer().verify(&format!("{body_b}.{sig_a}"), now()),
            Err(StateError::BadSignature)
        );
    }

    #[test]
    fn garbage_and_oversized_input_is_malformed() {
        for token in ["", ".", "abc", "abc.", ".abc", "a.b.c", "!!!.@@@", "ä.ö"] {
            assert!(
                matches!(
                    signer().verify(token, now()),
                    Err(StateError::Malformed | StateError::BadSignature)
                ),
                "{token:?}"
            );
        }
        let huge = "A".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(signer().verify(&huge, now()), Err(StateError::Malformed));
    }

    #[test]
    fn a_signed_but_invalid_payload_is_malformed() {
        let s = signer();
        for json in [
            r#"{"k":"c","u":"alice","i":"not-a-uuid","n":"x","e":9999999999}"#,
            r#"{"k":"x","u":"alice","i":"67e55044-10b1-426f-9247-bb680e5fe0c8","n":"x","e":9999999999}"#,
            r#"{"k":"c","u":"a/b","i":"67e55044-10b1-426f-9247-bb680e5fe0c8","n":"x","e":9999999999}"#,
            r#"{"k":"c","u":"alice","i":"67e55044-10b1-426f-9247-bb680e5fe0c8","n":"x","e":9999999999,"z":1}"#,
            "not json",
        ] {
            let body = URL_SAFE_NO_PAD.encode(json);
            let token = format!("{body}.{}", URL_SAFE_NO_PAD.encode(s.tag(body.as_bytes())));
            assert_eq!(
                s.verify(&token, now()),
                Err(StateError::Malformed),
                "{json}"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            StateSigner::new(b"short").unwrap_err(),
            WeakSecret { min: 32, got: 5 }
        );
        assert!(StateSigner::new(&[7u8; 31]).is_err());
        assert!(StateSigner::new(&[7u8; 32]).is_ok());
    }

    #[test]
    fn nothing_secret_in_debug_or_errors() {
        let state = consent_state();
        let token = signer().sign(&state);
        let debug = format!("{:?} {:?}", signer(), state);
        assert!(!debug.contains(&state.nonce), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        for error in [
            StateError::Malformed,
            StateError::BadSignature,
            StateError::Expired,
        ] {
            assert!(!error.to_string().contains(&token));
        }
    }
}
