//! Delegation: authority handed from a subject (a human, or an agent session) to an agent
//! session by OAuth 2.0 token exchange (RFC 8693), bounded by rich authorization details
//! (RFC 9396), and only ever narrowed.
//!
//! Pure: the rules by which a request for authority is checked against the authority it is
//! taken from ([`narrow`]), by which an action on a resource falls inside a grant
//! ([`AuthorizationDetail::covers`]), the chain a delegated token carries ([`Actor`],
//! [`DelegationClaim`]), and the verification of a human's token from an external OpenID
//! issuer against its JWKS ([`UnverifiedExternalToken::verify`]).

use serde::{Deserialize, Serialize};

/// The one type of authorization detail this service grants and understands.
pub const DETAIL_TYPE: &str = "ztinfra_action";

/// The claim that holds a delegated token's chain (a URI, as RFC 7519 asks of public claims).
pub const DELEGATION_CLAIM: &str = "urn:ztinfra:delegation";

/// Most entries of one `authorization_details` array, and most actions or locations of one
/// entry: a grant is a short list, not a policy set.
pub const MAX_ENTRIES: usize = 16;
pub const MAX_ITEMS: usize = 64;
const MAX_ITEM_LEN: usize = 512;

/// One entry of `authorization_details` (RFC 9396) of type `ztinfra_action`: the actions it
/// allows, on which resources, how many times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationDetail {
    /// Always [`DETAIL_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Action names; one covers itself and every action below it in the dotted hierarchy
    /// (`crm.invoices` covers `crm.invoices.read`).
    pub actions: Vec<String>,
    /// Resources, each an exact value or a prefix ending in `*`. Absent: any resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<String>>,
    /// How many allowed decisions the entry grants in all. Absent: no count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
}

/// A malformed `authorization_details` or `scope`, naming the member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{at}` {why}")]
pub struct DetailError {
    pub at: String,
    pub why: String,
}

fn detail_error(at: impl Into<String>, why: impl Into<String>) -> DetailError {
    DetailError {
        at: at.into(),
        why: why.into(),
    }
}

fn check_action(at: &str, action: &str) -> Result<(), DetailError> {
    if action.is_empty()
        || action.len() > MAX_ITEM_LEN
        || action.split('.').any(str::is_empty)
        || action.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(detail_error(
            at,
            format!(
                "is `{}`: an action name is dotted segments, none empty, without spaces",
                action.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Parses `authorization_details` (a JSON array) and checks every entry: the type is
/// [`DETAIL_TYPE`] (others are refused, not ignored), members are the documented ones, actions
/// are action names, locations are non-empty, `max_uses` is at least 1.
pub fn parse_details(text: &str) -> Result<Vec<AuthorizationDetail>, DetailError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| detail_error("authorization_details", format!("is not JSON: {e}")))?;
    let serde_json::Value::Array(entries) = value else {
        return Err(detail_error(
            "authorization_details",
            "must be a JSON array of objects",
        ));
    };
    if entries.is_empty() || entries.len() > MAX_ENTRIES {
        return Err(detail_error(
            "authorization_details",
            format!(
                "holds {} entries; 1 to {MAX_ENTRIES} are allowed",
                entries.len()
            ),
        ));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(n, entry)| {
            let at = format!("authorization_details[{n}]");
            let kind = entry.get("type").and_then(|t| t.as_str()).ok_or_else(|| {
                detail_error(format!("{at}.type"), "is required (a string)")
            })?;
            if kind != DETAIL_TYPE {
                return Err(detail_error(
                    format!("{at}.type"),
                    format!(
                        "is `{}`, which this service does not know; the one type is `{DETAIL_TYPE}`",
                        kind.escape_debug()
                    ),
                ));
            }
            let detail: AuthorizationDetail =
                serde_json::from_value(entry).map_err(|e| detail_error(&at, e.to_string()))?;
            detail.check(&at)?;
            Ok(detail)
        })
        .collect()
}

/// The authority a `scope` names: its space-separated action names, on any resource, as one
/// entry.
pub fn scope_details(scope: &str) -> Result<Vec<AuthorizationDetail>, DetailError> {
    let actions: Vec<String> = scope.split_ascii_whitespace().map(str::to_owned).collect();
    let detail = AuthorizationDetail {
        kind: DETAIL_TYPE.into(),
        actions,
        locations: None,
        max_uses: None,
    };
    detail.check("scope")?;
    Ok(vec![detail])
}

impl AuthorizationDetail {
    fn check(&self, at: &str) -> Result<(), DetailError> {
        if self.actions.is_empty() || self.actions.len() > MAX_ITEMS {
            return Err(detail_error(
                format!("{at}.actions"),
                format!(
                    "holds {} actions; 1 to {MAX_ITEMS} are allowed",
                    self.actions.len()
                ),
            ));
        }
        for (n, action) in self.actions.iter().enumerate() {
            check_action(&format!("{at}.actions[{n}]"), action)?;
        }
        if let Some(locations) = &self.locations {
            if locations.is_empty() || locations.len() > MAX_ITEMS {
                return Err(detail_error(
                    format!("{at}.locations"),
                    format!(
                        "holds {} locations; 1 to {MAX_ITEMS} are allowed (leave it out for any resource)",
                        locations.len()
                    ),
                ));
            }
            for (n, location) in locations.iter().enumerate() {
                if location.is_empty() || location.len() > MAX_ITEM_LEN || location == "*" {
                    return Err(detail_error(
                        format!("{at}.locations[{n}]"),
                        "is a resource, or a prefix ending in `*` (not empty, not `*` alone: leave `locations` out for any resource)",
                    ));
                }
            }
        }
        if self.max_uses == Some(0) {
            return Err(detail_error(
                format!("{at}.max_uses"),
                "is at least 1 (leave it out for no count)",
            ));
        }
        Ok(())
    }

    /// Whether this entry allows `action` on `resource` (uses aside).
    pub fn covers(&self, action: &str, resource: &str) -> bool {
        self.actions.iter().any(|a| action_within(action, a))
            && self
                .locations
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| location_within(resource, l)))
    }
}

/// Whether `action` is `granted` or below it in the dotted hierarchy.
pub fn action_within(action: &str, granted: &str) -> bool {
    action == granted
        || action
            .strip_prefix(granted)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Whether `location` (a resource, or a prefix ending in `*`) lies inside `granted`.
pub fn location_within(location: &str, granted: &str) -> bool {
    match granted.strip_suffix('*') {
        Some(prefix) => location.starts_with(prefix),
        None => location == granted,
    }
}

/// What a request for authority would have widened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Widening {
    #[error(
        "`authorization_details[{entry}]` asks for the action `{action}`, which the authority delegated from does not hold"
    )]
    Action { entry: usize, action: String },
    #[error(
        "`authorization_details[{entry}]` asks for `{location}`, which lies outside every location the authority delegated from holds for its actions"
    )]
    Location { entry: usize, location: String },
    #[error(
        "`authorization_details[{entry}]` asks for any resource, but the authority delegated from is limited to some locations"
    )]
    AnyLocation { entry: usize },
    #[error(
        "`authorization_details[{entry}]` asks for {asked}, but the authority delegated from is limited to {limit} uses"
    )]
    Uses {
        entry: usize,
        asked: String,
        limit: u64,
    },
}

impl Widening {
    /// Whether the widening is of targets (actions, locations: `invalid_target`) rather than of
    /// amount (`invalid_request`).
    pub fn of_target(&self) -> bool {
        !matches!(self, Self::Uses { .. })
    }
}

/// Checks that every entry `asked` lies wholly inside one entry of `held` (its actions at or
/// below that entry's, its locations inside that entry's, its uses no more than that entry's),
/// and says which: for each asked entry, the index of the first held entry that covers it.
/// `held` of `None` is a subject whose authority is its policies alone (a session token, a
/// human's token): anything may be asked of it, since policies still decide every use.
pub fn narrow(
    held: Option<&[AuthorizationDetail]>,
    asked: &[AuthorizationDetail],
) -> Result<Vec<Option<usize>>, Widening> {
    let Some(held) = held else {
        return Ok(vec![None; asked.len()]);
    };
    asked
        .iter()
        .enumerate()
        .map(|(entry, ask)| {
            let mut first_error = None;
            for (n, have) in held.iter().enumerate() {
                match within(entry, ask, have) {
                    Ok(()) => return Ok(Some(n)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(first_error.unwrap_or(Widening::AnyLocation { entry }))
        })
        .collect()
}

fn within(
    entry: usize,
    ask: &AuthorizationDetail,
    have: &AuthorizationDetail,
) -> Result<(), Widening> {
    if let Some(action) = ask
        .actions
        .iter()
        .find(|a| !have.actions.iter().any(|h| action_within(a, h)))
    {
        return Err(Widening::Action {
            entry,
            action: action.clone(),
        });
    }
    match (&ask.locations, &have.locations) {
        (_, None) => {}
        (None, Some(_)) => return Err(Widening::AnyLocation { entry }),
        (Some(asked), Some(held)) => {
            if let Some(location) = asked
                .iter()
                .find(|a| !held.iter().any(|h| location_within(a, h)))
            {
                return Err(Widening::Location {
                    entry,
                    location: location.clone(),
                });
            }
        }
    }
    if let Some(limit) = have.max_uses {
        match ask.max_uses {
            Some(n) if n <= limit => {}
            Some(n) => {
                return Err(Widening::Uses {
                    entry,
                    asked: format!("{n} uses"),
                    limit,
                });
            }
            None => {
                return Err(Widening::Uses {
                    entry,
                    asked: "uncounted uses".into(),
                    limit,
                });
            }
        }
    }
    Ok(())
}

/// The entries of `details` that allow `action` on `resource`, uncounted ones first (using one
/// of those spends nothing).
pub fn matching(details: &[AuthorizationDetail], action: &str, resource: &str) -> Vec<usize> {
    let mut found: Vec<usize> = details
        .iter()
        .enumerate()
        .filter(|(_, d)| d.covers(action, resource))
        .map(|(n, _)| n)
        .collect();
    found.sort_by_key(|n| details.get(*n).is_some_and(|d| d.max_uses.is_some()));
    found
}

/// The `act` claim (RFC 8693 section 4.1): the current actor, with the one before it nested
/// inside, back to the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor session's SPIFFE ID.
    pub sub: String,
    /// The actor session's agent.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The actors, current first.
    pub fn chain(&self) -> Vec<&Actor> {
        let mut chain = vec![self];
        let mut next = self.act.as_deref();
        while let Some(actor) = next {
            chain.push(actor);
            next = actor.act.as_deref();
        }
        chain
    }
}

/// Where a chain starts: the subject whose authority was delegated first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `human` (a token of an external OpenID issuer) or `session` (an agent session of this
    /// service).
    pub kind: String,
    pub sub: String,
    /// The issuer of a human's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The agent of a session origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// What a delegated token carries beside `act` and `authorization_details`: its grant, every
/// grant and session above it (so that revoking any of them stops it), and its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationClaim {
    /// This grant's id (also the token's `jti`).
    pub id: String,
    /// The grants above this one, first first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub above: Vec<String>,
    /// Every session of the chain: a session origin and each actor's, first first.
    pub sessions: Vec<String>,
    /// Hops from the origin: 1 for a grant made from the origin's own token.
    pub depth: u32,
    pub origin: Origin,
}

/// A human's token (ID token or JWT access token) from an external OpenID issuer, as
/// presented.
pub struct UnverifiedExternalToken<'a>(pub &'a str);

impl std::fmt::Debug for UnverifiedExternalToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnverifiedExternalToken(<redacted>)")
    }
}

/// A configured external issuer's keys and what its tokens must say.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    pub issuer: String,
    /// Accepted audiences: the token's `aud` must hold one.
    pub audiences: Vec<String>,
    pub keys: jsonwebtoken::jwk::JwkSet,
}

impl ExternalIssuer {
    /// An issuer whose keys are the JWKS (RFC 7517) `jwks`.
    pub fn from_jwks(issuer: &str, audiences: &[String], jwks: &str) -> Result<Self, String> {
        let keys: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
            keys,
        })
    }
}

/// A human's token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSubject {
    pub iss: String,
    pub sub: String,
    pub exp: i64,
    /// RFC 8693 section 4.4: who may act for the subject, when the token says.
    pub may_act: Option<serde_json::Value>,
}

/// Why a human's token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token names no issuer (`iss`)")]
    NoIssuer,
    #[error("the token's issuer `{0}` is not one this service trusts for delegation")]
    UnknownIssuer(String),
    #[error("the token is signed with `{0}`; RS, PS, ES and EdDSA algorithms are accepted")]
    Algorithm(String),
    #[error("the token's key `{0}` is not in its issuer's JWKS")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is for none of the audiences accepted from its issuer")]
    Audience,
    #[error("the token has no `exp`, or expired at {0} (seconds since the epoch)")]
    Expired(i64),
    #[error("the token is not valid before {0} (seconds since the epoch)")]
    NotYetValid(i64),
    #[error("the token has no `sub`")]
    NoSubject,
}

/// The issuer a token names, unverified: which keys to try.
pub fn unverified_issuer(token: &str) -> Result<String, ExternalError> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let claims: Iss = crate::svid::unverified_claims(token)
        .map_err(|e| ExternalError::Malformed(e.to_string()))?;
    claims.iss.ok_or(ExternalError::NoIssuer)
}

#[derive(Deserialize)]
struct ExternalClaims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<crate::svid::Audience>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    may_act: Option<serde_json::Value>,
}

impl UnverifiedExternalToken<'_> {
    /// Verifies the token with `issuer`'s keys at `now` (seconds), allowing `leeway` seconds
    /// of clock difference: signature (by `kid`, or the one key of a set with one), issuer,
    /// audience, `exp` (required), `nbf`, `sub` (required).
    pub fn verify(
        self,
        issuer: &ExternalIssuer,
        now: i64,
        leeway: i64,
    ) -> Result<ExternalSubject, ExternalError> {
        let header = jsonwebtoken::decode_header(self.0)
            .map_err(|e| ExternalError::Malformed(e.to_string()))?;
        if !crate::svid::JWT_SVID_ALGORITHMS.contains(&header.alg)
            && header.alg != jsonwebtoken::Algorithm::EdDSA
        {
            return Err(ExternalError::Algorithm(format!("{:?}", header.alg)));
        }
        let jwk = match &header.kid {
            Some(kid) => issuer.keys.find(kid),
            None => match issuer.keys.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
        .ok_or_else(|| ExternalError::UnknownKey(header.kid.clone().unwrap_or_default()))?;
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string() != format!("{:?}", header.alg)
        {
            return Err(ExternalError::Algorithm(format!(
                "{:?} (the key is for {alg})",
                header.alg
            )));
        }
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|e| ExternalError::Malformed(format!("the issuer's key: {e}")))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<ExternalClaims>(self.0, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => ExternalError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    ExternalError::Algorithm(format!("{:?}", header.alg))
                }
                _ => ExternalError::Malformed(e.to_string()),
            })?
            .claims;
        if claims.iss != issuer.issuer {
            return Err(ExternalError::UnknownIssuer(claims.iss));
        }
        if !claims
            .aud
            .as_ref()
            .is_some_and(|aud| issuer.audiences.iter().any(|a| aud.contains(a)))
        {
            return Err(ExternalError::Audience);
        }
        let exp = claims.exp.ok_or(ExternalError::Expired(0))?;
        if now >= exp.saturating_add(leeway) {
            return Err(ExternalError::Expired(exp));
        }
        if let Some(nbf) = claims.nbf
            && now.saturating_add(leeway) < nbf
        {
            return Err(ExternalError::NotYetValid(nbf));
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(ExternalError::NoSubject)?;
        Ok(ExternalSubject {
            iss: claims.iss,
            sub,
            exp,
            may_act: claims.may_act,
        })
    }
}

/// Whether `may_act` (RFC 8693 section 4.4, from a subject token) lets the session with SPIFFE
/// ID `actor_sub` of agent `actor_agent` act: its `sub` names that session or its agent (the
/// agent's SPIFFE ID prefix, `spiffe://<domain>/agent/<name>`), its `client_id` that agent.
/// A `may_act` naming neither (or another member only) lets no one.
pub fn may_act_allows(may_act: &serde_json::Value, actor_sub: &str, actor_agent: &str) -> bool {
    let sub = may_act.get("sub").and_then(|s| s.as_str());
    let client = may_act.get("client_id").and_then(|s| s.as_str());
    if sub.is_none() && client.is_none() {
        return false;
    }
    sub.is_none_or(|s| {
        s == actor_sub
            || actor_sub
                .strip_prefix(s)
                .is_some_and(|rest| rest.starts_with("/session/"))
    }) && client.is_none_or(|c| c == actor_agent)
}

#[cfg(test)]
mod tests;
