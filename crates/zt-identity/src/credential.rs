//! Operator and enforcement-point credentials: opaque bearer tokens, stored only as digests.
//!
//! A token is `zt_` and 43 base64url characters (256 random bits, drawn by the caller of
//! [`NewSecret::from_random`]). The store keeps its SHA-256 digest ([`TokenDigest`]), never the
//! token: a copy of the store lets nobody act as anyone.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The prefix of every credential token this service issues (it lets secret scanners find
/// leaked ones).
pub const TOKEN_PREFIX: &str = "zt_";

/// The longest `Authorization` value read: session tokens (JWTs) included, far above any real
/// one.
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// What a credential lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Policies, entities, agents, revocation; reads evidence.
    Admin,
    /// Starts agent sessions.
    Broker,
    /// Reads evidence.
    Auditor,
    /// A person who answers approvals for the groups the configuration names them in.
    Approver,
    /// An enforcement point: asks for decisions on behalf of agents.
    Pep,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Broker,
        Role::Auditor,
        Role::Approver,
        Role::Pep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Broker => "broker",
            Role::Auditor => "auditor",
            Role::Approver => "approver",
            Role::Pep => "pep",
        }
    }

    /// Which kind of caller holds a credential of this role.
    pub fn kind(self) -> CallerKind {
        match self {
            Role::Pep => CallerKind::Pep,
            Role::Admin | Role::Broker | Role::Auditor | Role::Approver => CallerKind::Operator,
        }
    }

    /// Whether this role grants `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        permission.roles().contains(&self)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a role: one of admin, broker, auditor, approver, pep")
            })
    }
}

/// The kinds of caller, as evidence records name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerKind {
    /// A person or automation administering the service.
    Operator,
    /// An enforcement point asking on behalf of agents.
    Pep,
}

impl CallerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerKind::Operator => "operator",
            CallerKind::Pep => "pep",
        }
    }
}

/// Something a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Change what is allowed: policies, entities (and agents and revocation).
    Administer,
    /// Start agent sessions.
    StartSessions,
    /// Read evidence records and the entity store.
    ReadEvidence,
    /// Ask for decisions.
    Decide,
    /// Read approvals: who asked for what, and who answered.
    ReadApprovals,
    /// Approve or deny an approval (for the groups one belongs to).
    Approve,
}

impl Permission {
    /// The roles that grant it.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Permission::Administer => &[Role::Admin],
            Permission::StartSessions => &[Role::Broker],
            Permission::ReadEvidence => &[Role::Auditor, Role::Admin, Role::Approver],
            Permission::Decide => &[Role::Pep],
            Permission::ReadApprovals => &[Role::Approver, Role::Auditor, Role::Admin],
            Permission::Approve => &[Role::Approver],
        }
    }
}

/// A credential's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, beginning with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialName(String);

impl CredentialName {
    pub fn parse(name: &str) -> Result<Self, String> {
        let well_formed = (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if well_formed {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a credential name: 1 to 64 letters, digits, `.`, `_` or `-`, beginning with a letter or digit",
                name.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CredentialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a token's text: what the store keeps in its place.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// A digest as the store writes it (64 lowercase hex digits).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Equal, in time that does not depend on where two digests differ.
    fn same(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({})", self.to_hex())
    }
}

/// A credential token just made: shown to its holder once, stored only as its digest.
pub struct NewSecret {
    token: String,
}

impl NewSecret {
    /// The token made of 32 random bytes (the caller draws them from the operating system).
    pub fn from_random(bytes: [u8; 32]) -> Self {
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + 43);
        token.push_str(TOKEN_PREFIX);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
        Self { token }
    }

    /// The token, to give to its holder (and nowhere else: not to logs).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.token)
    }
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewSecret(<redacted>)")
    }
}

/// A credential as stored: the token's digest, its name and role, and whether it was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub name: CredentialName,
    pub role: Role,
    pub digest: TokenDigest,
    pub revoked: bool,
}

/// A bearer token as presented, not yet checked against anything.
pub struct UnverifiedCredential {
    digest: TokenDigest,
}

impl UnverifiedCredential {
    /// Reads an `Authorization` header value: `Bearer <token>` (RFC 6750; the scheme in any
    /// case, the token in the `b64token` alphabet).
    pub fn from_authorization(value: &[u8]) -> Result<Self, AuthError> {
        if value.len() > MAX_AUTHORIZATION_BYTES {
            return Err(AuthError::Malformed("the Authorization header is too long"));
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| AuthError::Malformed("the Authorization header is not text"))?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed(
            "expected `Authorization: Bearer <token>`",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed(
                "only the Bearer scheme is accepted: `Authorization: Bearer <token>`",
            ));
        }
        let token = token.trim_start_matches(' ');
        let body = token.trim_end_matches('=');
        let well_formed = !body.is_empty()
            && body.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
            });
        if !well_formed {
            return Err(AuthError::Malformed(
                "the bearer token is empty or has characters a token cannot have",
            ));
        }
        Ok(Self::from_token(token))
    }

    /// A token given by itself (from a file or an environment variable).
    pub fn from_token(token: &str) -> Self {
        Self {
            digest: TokenDigest::of(token),
        }
    }

    /// A credential presented earlier and remembered by its digest only (a console sign-in:
    /// the session's cookie stands for it, and it is verified again on every use).
    pub fn from_digest(digest: TokenDigest) -> Self {
        Self { digest }
    }

    /// The digest to look the credential up by.
    pub fn digest(&self) -> TokenDigest {
        self.digest
    }

    /// The caller this credential names, given the stored record found under its digest
    /// (`None`: no credential has it). The only way to a [`Caller`].
    pub fn verify(self, stored: Option<&CredentialRecord>) -> Result<Caller, AuthError> {
        let stored = stored
            .filter(|s| s.digest.same(&self.digest))
            .ok_or(AuthError::Unknown)?;
        if stored.revoked {
            return Err(AuthError::Revoked(stored.name.clone()));
        }
        Ok(Caller {
            name: stored.name.clone(),
            role: stored.role,
            workload: None,
        })
    }
}

impl fmt::Debug for UnverifiedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnverifiedCredential(<redacted>)")
    }
}

/// A caller whose credential was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    name: CredentialName,
    role: Role,
    /// The SPIFFE ID of a caller that presented an X.509-SVID instead of a token.
    workload: Option<String>,
}

impl Caller {
    /// A caller known by the X.509-SVID it presented over mutual TLS, given the name and role
    /// the service's configuration maps its SPIFFE ID to.
    pub fn from_workload(svid: &crate::svid::X509Svid, name: CredentialName, role: Role) -> Self {
        Self {
            name,
            role,
            workload: Some(svid.id.as_str().to_owned()),
        }
    }

    /// The SPIFFE ID, for a caller known by its X.509-SVID.
    pub fn workload(&self) -> Option<&str> {
        self.workload.as_deref()
    }

    pub fn name(&self) -> &CredentialName {
        &self.name
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn kind(&self) -> CallerKind {
        self.role.kind()
    }

    /// `Ok` if this caller's role grants `permission`.
    pub fn authorize(&self, permission: Permission) -> Result<(), AuthError> {
        if self.role.grants(permission) {
            Ok(())
        } else {
            Err(AuthError::WrongRole {
                name: self.name.clone(),
                role: self.role,
                needed: permission,
            })
        }
    }
}

/// Why a caller is not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs a credential: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the bearer token is not a credential of this service")]
    Unknown,
    #[error("the credential `{0}` was revoked")]
    Revoked(CredentialName),
    /// A client certificate (X.509-SVID) that verified, but names no caller here.
    #[error(
        "the client certificate's SPIFFE ID `{0}` is not mapped to an enforcement point or operator here (`[[workloads.callers]]`); an agent exchanges its SVID for a session token at `/oauth2/token`"
    )]
    UnmappedWorkload(String),
    #[error("the credential `{name}` has role `{role}`; this needs {}", needed_roles(.needed))]
    WrongRole {
        name: CredentialName,
        role: Role,
        needed: Permission,
    },
}

fn needed_roles(permission: &Permission) -> String {
    let names: Vec<String> = permission
        .roles()
        .iter()
        .map(|r| format!("`{r}`"))
        .collect();
    format!("a credential of role {}", names.join(" or "))
}

impl AuthError {
    /// `true`: the caller is not known (401); `false`: known, but not allowed (403).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(self, AuthError::WrongRole { .. })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(secret: &NewSecret, role: Role, revoked: bool) -> CredentialRecord {
        CredentialRecord {
            name: CredentialName::parse("gw-1").unwrap(),
            role,
            digest: secret.digest(),
            revoked,
        }
    }

    #[test]
    fn a_token_is_256_bits_with_a_prefix_and_stored_as_its_digest() {
        let secret = NewSecret::from_random([7; 32]);
        assert!(secret.token().starts_with("zt_"));
        assert_eq!(secret.token().len(), 3 + 43);
        assert_ne!(NewSecret::from_random([8; 32]).token(), secret.token());
        assert_eq!(secret.digest(), TokenDigest::of(secret.token()));
        assert_eq!(
            TokenDigest::from_hex(&secret.digest().to_hex()),
            Some(secret.digest())
        );
        assert!(!format!("{secret:?}").contains(secret.token()));
    }

    #[test]
    fn only_the_stored_digest_of_a_live_credential_verifies() {
        let secret = NewSecret::from_random([1; 32]);
        let header = format!("Bearer {}", secret.token());
        let caller = UnverifiedCredential::from_authorization(header.as_bytes())
            .and_then(|c| c.verify(Some(&record(&secret, Role::Pep, false))));
        assert_eq!(caller.as_ref().map(Caller::kind), Ok(CallerKind::Pep));
        // The scheme in any case.
        let lower = format!("bearer {}", secret.token());
        assert!(
            UnverifiedCredential::from_authorization(lower.as_bytes())
                .and_then(|c| c.verify(Some(&record(&secret, Role::Pep, false))))
                .is_ok()
        );
        let other = NewSecret::from_random([2; 32]);
        let presented = |s: &NewSecret| UnverifiedCredential::from_token(s.token());
        assert_eq!(
            presented(&other).verify(Some(&record(&secret, Role::Pep, false))),
            Err(AuthError::Unknown)
        );
        assert_eq!(presented(&other).verify(None), Err(AuthError::Unknown));
        assert!(matches!(
            presented(&secret).verify(Some(&record(&secret, Role::Pep, true))),
            Err(AuthError::Revoked(_))
        ));
    }

    #[test]
    fn malformed_authorization_is_refused_with_a_reason() {
        for value in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer a b",
            b"Bearer \xff\xfe",
            b"zt_abc",
        ] {
            let refused = UnverifiedCredential::from_authorization(value);
            assert!(
                matches!(refused, Err(AuthError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        assert!(UnverifiedCredential::from_authorization(long.as_bytes()).is_err());
    }

    #[test]
    fn roles_grant_what_they_name_and_nothing_else() {
        let caller = |role| Caller {
            name: CredentialName("x".into()),
            role,
            workload: None,
        };
        for (role, granted) in [
            (Role::Admin, Permission::Administer),
            (Role::Admin, Permission::ReadEvidence),
            (Role::Auditor, Permission::ReadEvidence),
            (Role::Broker, Permission::StartSessions),
            (Role::Pep, Permission::Decide),
            (Role::Approver, Permission::Approve),
            (Role::Approver, Permission::ReadApprovals),
            (Role::Approver, Permission::ReadEvidence),
            (Role::Auditor, Permission::ReadApprovals),
        ] {
            assert!(
                caller(role).authorize(granted).is_ok(),
                "{role} {granted:?}"
            );
        }
        // Separation of duties: no role does another's job.
        for (role, denied) in [
            (Role::Admin, Permission::Decide),
            (Role::Admin, Permission::StartSessions),
            (Role::Auditor, Permission::Administer),
            (Role::Pep, Permission::Administer),
            (Role::Pep, Permission::ReadEvidence),
            (Role::Broker, Permission::Decide),
            (Role::Auditor, Permission::Approve),
            (Role::Admin, Permission::Approve),
            (Role::Pep, Permission::Approve),
            (Role::Pep, Permission::ReadApprovals),
        ] {
            let refused = caller(role).authorize(denied);
            assert!(matches!(refused, Err(AuthError::WrongRole { .. })));
            assert!(refused.is_err_and(|e| !e.is_unauthenticated()));
        }
        for permission in [
            Permission::Administer,
            Permission::StartSessions,
            Permission::Decide,
        ] {
            assert!(caller(Role::Approver).authorize(permission).is_err());
        }
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn credential_names_are_plain() {
        for good in ["gw", "mcp-gateway.prod_1", "A"] {
            assert!(CredentialName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b", "ünï", &"a".repeat(65)] {
            assert!(CredentialName::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// No token but the one a record was made from verifies against it.
        #[test]
        fn a_record_verifies_its_own_token_only(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let secret = NewSecret::from_random(a);
            let stored = record(&secret, Role::Admin, false);
            prop_assert!(UnverifiedCredential::from_token(secret.token()).verify(Some(&stored)).is_ok());
            if a != b {
                let other = NewSecret::from_random(b);
                prop_assert_eq!(
                    UnverifiedCredential::from_token(other.token()).verify(Some(&stored)),
                    Err(AuthError::Unknown)
                );
            }
        }
    }
}
