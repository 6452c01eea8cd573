//! Agent sessions and their access tokens.
//!
//! A session is one run of a registered agent, started by a broker (or by its parent session)
//! with its lineage: the workflow, model, tool manifest, sandbox and broker that launched it, and
//! the human it acts for. Its access token is a JWT in the shape of RFC 9068 (`typ: at+jwt`),
//! signed with Ed25519 (`alg: EdDSA`), whose `sub` is the session's SPIFFE ID. An
//! [`UnverifiedToken`] becomes a [`VerifiedSession`] only through [`UnverifiedToken::verify`],
//! given the service's public keys and the time; whether the session was revoked since is the
//! caller's to ask (it is state, not something the token can say).

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The JWT `typ` of access tokens (RFC 9068 section 2.1).
pub const TOKEN_TYPE: &str = "at+jwt";

/// The name of the claim that holds the session (a URI, as RFC 7519 asks of public claims).
pub const SESSION_CLAIM: &str = "urn:ztinfra:session";

/// Most levels of sessions below a root session.
pub const MAX_DEPTH: u32 = 8;

/// What launched a session, as its broker says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `sha256:<64 hex>` of the tool manifest the agent runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The broker that started the root of this session's tree (set by the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

/// The session claim: who is acting, in which session, launched by what, for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaim {
    pub agent: String,
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// 0 for a session a broker started; one more than its parent's otherwise.
    pub depth: u32,
    pub lineage: Lineage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The SPIFFE ID of the workload whose SVID started the root of this session's tree (set
    /// by the service, like the broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// Proof of possession (RFC 7800 `cnf`): the SHA-256 thumbprint of the client certificate a
/// token is bound to (RFC 8705 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The session's SPIFFE ID.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// The agent (RFC 9068: the client the token was issued to).
    pub client_id: String,
    #[serde(rename = "urn:ztinfra:session")]
    pub session: SessionClaim,
    /// Where the token's revocation is published (a Token Status List).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::status_list::Status>,
    /// Present on a token issued over mutual TLS: it is accepted only from a connection that
    /// presents the same certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// On a delegated token (RFC 8693 section 4.1): the session acting now, with the actors
    /// before it nested inside. `sub` is then the origin, not this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<crate::delegation::Actor>,
    /// On a delegated token: the authority it carries (RFC 9396), never more than the token it
    /// was exchanged from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<Vec<crate::delegation::AuthorizationDetail>>,
    /// On a delegated token: its grant, the grants and sessions above it, its origin.
    #[serde(
        rename = "urn:ztinfra:delegation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delegation: Option<crate::delegation::DelegationClaim>,
    /// On a token issued for an approved CIBA request: the approval it carries. Such a token
    /// is good for exactly the approved action, once.
    #[serde(
        rename = "urn:ztinfra:approval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub approval: Option<String>,
}

impl AccessClaims {
    /// The SPIFFE ID of the session acting: `act.sub` on a delegated token, `sub` otherwise.
    pub fn acting(&self) -> &str {
        self.act.as_ref().map_or(&self.sub, |a| &a.sub)
    }
}

/// `spiffe://<trust-domain>/agent/<agent>/session/<id>`.
pub fn spiffe_id(trust_domain: &str, agent: &str, session_id: &str) -> String {
    format!("spiffe://{trust_domain}/agent/{agent}/session/{session_id}")
}

/// A name usable in a SPIFFE ID path segment and as a Cedar entity id without escapes: 1 to 64
/// of `A-Z a-z 0-9 . _ -`, beginning with a letter or digit (agents, trust domain labels).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    crate::CredentialName::parse(name)
        .map(drop)
        .map_err(|_| format!("`{}` is not a valid {what}: 1 to 64 letters, digits, `.`, `_` or `-`, beginning with a letter or digit", name.escape_debug()))
}

/// The key that signs access tokens.
pub struct TokenSigner {
    kid: String,
    key: jsonwebtoken::EncodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSigner({})", self.kid)
    }
}

/// The PKCS#8 (RFC 8410) prefix of an Ed25519 private key, before its 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl TokenSigner {
    /// A signer from an Ed25519 key, named `kid` in tokens and in the JWKS.
    pub fn new(kid: String, key: &ed25519_dalek::SigningKey) -> Self {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&key.to_bytes());
        Self {
            kid,
            key: jsonwebtoken::EncodingKey::from_ed_der(&der),
            public: key.verifying_key().to_bytes(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as the verifier and the JWKS hold it.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            kid: self.kid.clone(),
            x: self.public,
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        self.sign_typed(TOKEN_TYPE, claims)
            .map_err(TokenError::Malformed)
    }

    /// Signs any claims as a JWT of type `typ` with this key.
    pub fn sign_typed(&self, typ: &str, claims: &impl Serialize) -> Result<String, String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| format!("cannot sign: {e}"))
    }
}

/// A public key that verifies access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub x: [u8; 32],
}

impl PublicKey {
    /// The key as a JWK (RFC 8037: `kty: OKP`, `crv: Ed25519`).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.x),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// What a verifier expects of every token, besides a good signature.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub issuer: String,
    pub audience: String,
    /// Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    pub leeway: i64,
}

/// The keys tokens may be signed with, by `kid`.
#[derive(Clone, Default)]
pub struct VerifyingKeys {
    keys: HashMap<String, jsonwebtoken::DecodingKey>,
}

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl VerifyingKeys {
    pub fn new(keys: &[PublicKey]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| {
                    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.x);
                    (
                        k.kid.clone(),
                        jsonwebtoken::DecodingKey::from_ed_components(&x),
                    )
                })
                .filter_map(|(kid, key)| key.ok().map(|key| (kid, key)))
                .collect(),
        }
    }
}

/// An access token as presented, not yet checked.
pub struct UnverifiedToken<'a> {
    text: &'a str,
}

impl std::fmt::Debug for UnverifiedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnverifiedToken(<redacted>)")
    }
}

/// A session whose token verified: signed by one of the service's keys, of the right type,
/// issuer and audience, within its validity (revocation is not known here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSession {
    pub claims: AccessClaims,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token's `typ` is `{0}`; access tokens are `at+jwt`")]
    WrongType(String),
    #[error("the token is signed with `{0}`; only `EdDSA` is accepted")]
    WrongAlgorithm(String),
    #[error("the token names no signing key (`kid`)")]
    NoKeyId,
    #[error("the token's key `{0}` is not one of this service's")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired at {0} (seconds since the epoch)")]
    Expired(i64),
    #[error("the token is not valid before {0} (seconds since the epoch)")]
    NotYetValid(i64),
    #[error("the token was issued by `{0}`, not this service")]
    WrongIssuer(String),
    #[error("the token is for `{0}`, not this service")]
    WrongAudience(String),
    #[error("the token's subject does not match its session")]
    Inconsistent,
}

impl<'a> UnverifiedToken<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// Whether the text has the shape of a JWS compact serialization (three dot-separated parts).
    pub fn looks_like_jwt(text: &str) -> bool {
        text.split('.').count() == 3
    }

    /// Verifies the token at `now` (seconds since the epoch). The only way to a
    /// [`VerifiedSession`].
    pub fn verify(
        self,
        keys: &VerifyingKeys,
        expect: &Expectations,
        now: i64,
    ) -> Result<VerifiedSession, TokenError> {
        let claims: AccessClaims = signed_claims(self.text, TOKEN_TYPE, keys)?;
        if claims.iss != expect.issuer {
            return Err(TokenError::WrongIssuer(claims.iss));
        }
        if claims.aud != expect.audience {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        if now >= claims.exp.saturating_add(expect.leeway) {
            return Err(TokenError::Expired(claims.exp));
        }
        if now.saturating_add(expect.leeway) < claims.nbf.max(claims.iat) {
            return Err(TokenError::NotYetValid(claims.nbf.max(claims.iat)));
        }
        // A delegated token has all three of `act`, `authorization_details` and its chain, and
        // names its acting session in `act`; a session's own token has none of them.
        let delegated = claims.act.is_some();
        if delegated != claims.authorization_details.is_some()
            || delegated != claims.delegation.is_some()
            || claims
                .act
                .as_ref()
                .is_some_and(|a| a.client_id != claims.client_id)
        {
            return Err(TokenError::Inconsistent);
        }
        if claims.client_id != claims.session.agent
            || !claims.acting().ends_with(&format!(
                "/agent/{}/session/{}",
                claims.session.agent, claims.session.session_id
            ))
        {
            return Err(TokenError::Inconsistent);
        }
        Ok(VerifiedSession { claims })
    }
}

/// The claims of a JWT of type `typ` signed with one of `keys` (EdDSA): header, key and
/// signature checked, nothing else (times, issuer and audience are the caller's to check
/// against a `now` it passes; the library would read the clock itself).
fn signed_claims<T: serde::de::DeserializeOwned>(
    text: &str,
    typ: &str,
    keys: &VerifyingKeys,
) -> Result<T, TokenError> {
    let header =
        jsonwebtoken::decode_header(text).map_err(|e| TokenError::Malformed(e.to_string()))?;
    if header.typ.as_deref() != Some(typ) {
        return Err(TokenError::WrongType(header.typ.unwrap_or_default()));
    }
    if header.alg != jsonwebtoken::Algorithm::EdDSA {
        return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(TokenError::NoKeyId)?;
    let key = keys
        .keys
        .get(&kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<T>(text, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                TokenError::WrongAlgorithm("another algorithm".into())
            }
            _ => TokenError::Malformed(e.to_string()),
        })
}

/// The JWT `typ` of Transaction Tokens (draft-ietf-oauth-transaction-tokens).
pub const TXN_TOKEN_TYPE: &str = "txntoken+jwt";

/// The claims of a Transaction Token: a short-lived, signed statement of one transaction's
/// subject and immutable context (`tctx`), for every service the transaction passes through
/// inside the trust domain (`aud`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnClaims {
    pub iss: String,
    /// The trust domain.
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// The transaction's id.
    pub txn: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The workload that asked for the token.
    pub req_wl: String,
    /// The transaction context: immutable for the transaction's life.
    pub tctx: serde_json::Value,
}

/// A Transaction Token as presented.
pub struct UnverifiedTxnToken<'a>(pub &'a str);

impl std::fmt::Debug for UnverifiedTxnToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnverifiedTxnToken(<redacted>)")
    }
}

impl UnverifiedTxnToken<'_> {
    /// Verifies the token at `now`: type, key, signature, issuer, audience (`expect.audience`
    /// is the trust domain here), `iat` and `exp`.
    pub fn verify(
        self,
        keys: &VerifyingKeys,
        expect: &Expectations,
        now: i64,
    ) -> Result<TxnClaims, TokenError> {
        let claims: TxnClaims = signed_claims(self.0, TXN_TOKEN_TYPE, keys)?;
        if claims.iss != expect.issuer {
            return Err(TokenError::WrongIssuer(claims.iss));
        }
        if claims.aud != expect.audience {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        if now >= claims.exp.saturating_add(expect.leeway) {
            return Err(TokenError::Expired(claims.exp));
        }
        if now.saturating_add(expect.leeway) < claims.iat {
            return Err(TokenError::NotYetValid(claims.iat));
        }
        Ok(claims)
    }
}

/// A session id: 128 random bits, as 32 lowercase hex digits.
pub fn session_id(random: [u8; 16]) -> String {
    hex::encode(random)
}

/// How long a new session lives: `asked` (default `default_ttl`), refused beyond `max_ttl`,
/// and ending no later than its parent (`parent_expires`, seconds since the epoch).
pub fn session_expiry(
    now: i64,
    asked: Option<i64>,
    default_ttl: i64,
    max_ttl: i64,
    parent_expires: Option<i64>,
) -> Result<i64, String> {
    let ttl = asked.unwrap_or(default_ttl);
    if ttl < 1 {
        return Err(format!("`ttl` must be at least 1 second; got {ttl}"));
    }
    if ttl > max_ttl {
        return Err(format!(
            "`ttl` is {ttl} seconds; the longest a session may live is {max_ttl}"
        ));
    }
    let mut expires = now.saturating_add(ttl);
    if let Some(parent) = parent_expires {
        if asked.is_some() && expires > parent {
            return Err(format!(
                "`ttl` of {ttl} seconds would outlive the parent session, which ends in {} seconds",
                parent - now
            ));
        }
        expires = expires.min(parent);
    }
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn expect() -> Expectations {
        Expectations {
            issuer: "http://127.0.0.1:8181".into(),
            audience: "ztinfra".into(),
            leeway: 0,
        }
    }

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            approval: None,
            iss: "http://127.0.0.1:8181".into(),
            sub: spiffe_id("ztinfra.local", "triage-bot", "0011"),
            aud: "ztinfra".into(),
            exp: now + 900,
            iat: now,
            nbf: now,
            jti: "0011".into(),
            client_id: "triage-bot".into(),
            session: SessionClaim {
                agent: "triage-bot".into(),
                session_id: "0011".into(),
                parent: None,
                depth: 0,
                lineage: Lineage {
                    model: Some("gpt-x".into()),
                    ..Lineage::default()
                },
                on_behalf_of: Some("alice".into()),
                ticket: None,
                workload: None,
            },
            status: None,
            cnf: None,
            act: None,
            authorization_details: None,
            delegation: None,
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header, over the claims, signed with `sign`.
    fn forge(
        header: serde_json::Value,
        claims: &AccessClaims,
        sign: impl Fn(&[u8]) -> Vec<u8>,
    ) -> String {
        let payload = serde_json::to_vec(claims).unwrap();
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&payload)
        );
        format!("{input}.{}", b64(&sign(input.as_bytes())))
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_session() {
        let signer = TokenSigner::new("k1".into(), &key(1));
        let keys = VerifyingKeys::new(&[signer.public_key()]);
        let now = 1_800_000_000;
        let token = signer.sign(&claims(now)).unwrap();
        assert!(UnverifiedToken::looks_like_jwt(&token));
        let session = UnverifiedToken::new(&token)
            .verify(&keys, &expect(), now)
            .unwrap();
        assert_eq!(session.claims, claims(now));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(signer.public_key().jwk()["kty"], "OKP");
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let signer = TokenSigner::new("k1".into(), &key(1));
        let keys = VerifyingKeys::new(&[signer.public_key()]);
        let now = 1_800_000_000;
        let check = |token: &str, at: i64| UnverifiedToken::new(token).verify(&keys, &expect(), at);
        let good = signer.sign(&claims(now)).unwrap();

        assert_eq!(check(&good, now + 900), Err(TokenError::Expired(now + 900)));
        assert_eq!(check(&good, now - 1), Err(TokenError::NotYetValid(now)));
        assert!(matches!(
            check("not.a.jwt", now),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(check("", now), Err(TokenError::Malformed(_))));

        let mut other = claims(now);
        other.iss = "https://evil.example".into();
        assert!(matches!(
            check(&signer.sign(&other).unwrap(), now),
            Err(TokenError::WrongIssuer(_))
        ));
        let mut other = claims(now);
        other.aud = "someone-else".into();
        assert!(matches!(
            check(&signer.sign(&other).unwrap(), now),
            Err(TokenError::WrongAudience(_))
        ));
        let mut other = claims(now);
        other.client_id = "admin-bot".into();
        assert_eq!(
            check(&signer.sign(&other).unwrap(), now),
            Err(TokenError::Inconsistent)
        );

        // Another key, unknown here.
        let stranger = TokenSigner::new("k2".into(), &key(2));
        assert_eq!(
            check(&stranger.sign(&claims(now)).unwrap(), now),
            Err(TokenError::UnknownKey("k2".into()))
        );
        // Another key under our key's name: the signature fails.
        let impostor = TokenSigner::new("k1".into(), &key(2));
        assert_eq!(
            check(&impostor.sign(&claims(now)).unwrap(), now),
            Err(TokenError::BadSignature)
        );
        // A claim changed after signing.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut tampered = claims(now);
        tampered.session.agent = "root".into();
        tampered.client_id = "root".into();
        parts[1] = b64(&serde_json::to_vec(&tampered).unwrap());
        assert_eq!(check(&parts.join("."), now), Err(TokenError::BadSignature));

        // `alg: none`, unsigned.
        let none = forge(
            serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": "k1"}),
            &claims(now),
            |_| Vec::new(),
        );
        assert!(check(&none, now).is_err());
        // `alg: HS256` keyed with the public key, the classic confusion.
        let public = signer.public_key().x;
        let hs = forge(
            serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
            &claims(now),
            |input| {
                use hmac::Mac as _;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            },
        );
        assert!(matches!(
            check(&hs, now),
            Err(TokenError::WrongAlgorithm(_))
        ));
        // Another `typ`, and none.
        for header in [
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}),
            serde_json::json!({"alg": "EdDSA", "kid": "k1"}),
        ] {
            let token = forge(header, &claims(now), |input| {
                use ed25519_dalek::Signer as _;
                key(1).sign(input).to_bytes().to_vec()
            });
            assert!(
                matches!(check(&token, now), Err(TokenError::WrongType(_))),
                "{token}"
            );
        }
        // No `kid`.
        let token = forge(
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"}),
            &claims(now),
            |input| {
                use ed25519_dalek::Signer as _;
                key(1).sign(input).to_bytes().to_vec()
            },
        );
        assert_eq!(check(&token, now), Err(TokenError::NoKeyId));
    }

    #[test]
    fn a_transaction_token_verifies_only_as_one() {
        let signer = TokenSigner::new("k1".into(), &key(1));
        let keys = VerifyingKeys::new(&[signer.public_key()]);
        let now = 1_800_000_000;
        let txn = TxnClaims {
            iss: "http://127.0.0.1:8181".into(),
            aud: "ztinfra.local".into(),
            iat: now,
            exp: now + 300,
            txn: "t-1".into(),
            sub: "alice".into(),
            scope: None,
            req_wl: "spiffe://ztinfra.local/agent/a/session/1".into(),
            tctx: serde_json::json!({"session": {"id": "1", "agent": "a"}}),
        };
        let expect = Expectations {
            audience: "ztinfra.local".into(),
            ..expect()
        };
        let token = signer.sign_typed(TXN_TOKEN_TYPE, &txn).unwrap();
        let check = |t: &str, at: i64| UnverifiedTxnToken(t).verify(&keys, &expect, at);
        assert_eq!(check(&token, now), Ok(txn.clone()));
        assert_eq!(
            check(&token, now + 300),
            Err(TokenError::Expired(now + 300))
        );
        assert_eq!(check(&token, now - 1), Err(TokenError::NotYetValid(now)));
        // An access token is not a Transaction Token, nor the other way round.
        let access = signer.sign(&claims(now)).unwrap();
        assert!(matches!(check(&access, now), Err(TokenError::WrongType(_))));
        assert!(matches!(
            UnverifiedToken::new(&token).verify(&keys, &super::tests::expect(), now),
            Err(TokenError::WrongType(_))
        ));
        // Another trust domain's.
        let other = TxnClaims {
            aud: "elsewhere.example".into(),
            ..txn
        };
        assert!(matches!(
            check(&signer.sign_typed(TXN_TOKEN_TYPE, &other).unwrap(), now),
            Err(TokenError::WrongAudience(_))
        ));
    }

    #[test]
    fn a_child_never_outlives_its_parent_nor_the_maximum() {
        let now = 1000;
        assert_eq!(session_expiry(now, None, 900, 3600, None), Ok(1900));
        assert_eq!(session_expiry(now, Some(60), 900, 3600, None), Ok(1060));
        assert!(session_expiry(now, Some(3601), 900, 3600, None).is_err());
        assert!(session_expiry(now, Some(0), 900, 3600, None).is_err());
        // The default is cut to the parent's end; an explicit longer one is refused.
        assert_eq!(session_expiry(now, None, 900, 3600, Some(1300)), Ok(1300));
        assert!(session_expiry(now, Some(600), 900, 3600, Some(1300)).is_err());
        assert_eq!(
            session_expiry(now, Some(100), 900, 3600, Some(1300)),
            Ok(1100)
        );
    }
}
