//! Delegation by token exchange (RFC 8693) bounded by authorization details (RFC 9396).
//!
//! `POST /oauth2/token` with an `actor_token` comes here ([`exchange`]): the subject token (a
//! session's token, a token delegated before, or a human's token from a configured external
//! OpenID issuer) hands part of its authority to the actor token's session. The rules of
//! narrowing are `zt_identity::delegation`'s; this module verifies the tokens, asks the
//! policies (`ztinfra.token.exchange`), spends a counted parent's uses, signs the delegated
//! token and records the grant. At decision time, [`bound`] keeps an allow inside the token's
//! authority and spends its counted uses once across replicas (the store's counter).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use zt_core::{Decision, Reason, ReasonKind, ValidRequest, Verdict};
use zt_identity::delegation::{
    Actor, AuthorizationDetail, DelegationClaim, ExternalError, ExternalIssuer, ExternalSubject,
    Origin, UnverifiedExternalToken,
};
use zt_identity::session::AccessClaims;

use crate::api::AppState;
use crate::identity::{ACCESS_TOKEN_TYPE, TokenRequest, oauth_error};
use crate::problem::Problem;
use crate::sessions::LiveSession;

/// The action every token exchange is decided as, before anything is issued.
pub const EXCHANGE_ACTION: &str = "ztinfra.token.exchange";
/// Subject token types (RFC 8693 section 3) accepted.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The token type of a Transaction Token (draft-ietf-oauth-transaction-tokens).
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
/// A Transaction Token's life when `ttl` is not asked, and the longest asked.
const TXN_TTL: i64 = 300;
const MAX_TXN_TTL: i64 = 600;

/// Clock difference tolerated on a human's token.
const EXTERNAL_LEEWAY: i64 = 30;
/// An issuer's keys are fetched again for an unknown `kid` at most this often.
const KEY_REFRESH: Duration = Duration::from_secs(10);

/// `[delegation]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationSettings {
    /// Most hops from the origin (a human's or a session's own token is 0; each exchange adds
    /// one).
    #[serde(default = "default_depth")]
    pub max_depth: u32,
    /// A delegated token's life when `ttl` is not asked (always cut to the subject's and the
    /// actor's).
    #[serde(default = "default_ttl")]
    pub default_ttl_secs: i64,
    /// External OpenID issuers whose users' tokens may be delegated.
    #[serde(default)]
    pub issuers: Vec<IssuerSettings>,
}

fn default_depth() -> u32 {
    4
}

fn default_ttl() -> i64 {
    900
}

impl Default for DelegationSettings {
    fn default() -> Self {
        Self {
            max_depth: default_depth(),
            default_ttl_secs: default_ttl(),
            issuers: Vec::new(),
        }
    }
}

/// One trusted external issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// Its `iss`, exactly.
    pub issuer: String,
    /// Its JWKS as a file (read again when it changes), or
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// at a URL (fetched at first use, and again for a key it did not have).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// What its tokens' `aud` must hold one of (an ID token's is the client id).
    pub audiences: Vec<String>,
}

/// The trusted issuers and their keys.
pub struct Issuers {
    issuers: Vec<(IssuerSettings, Mutex<Keys>)>,
    /// Made only when an issuer's keys are at a URL.
    http: Option<reqwest::Client>,
}

#[derive(Default)]
struct Keys {
    set: Option<Arc<ExternalIssuer>>,
    fetched: Option<Instant>,
    file_stamp: Option<(std::time::SystemTime, u64)>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|(s, _)| &s.issuer))
            .finish()
    }
}

impl Issuers {
    /// Checks the settings (each issuer has one JWKS source, and audiences); keys are read on
    /// first use.
    pub fn new(settings: &DelegationSettings) -> Result<Self, String> {
        if settings.max_depth == 0 || settings.max_depth > zt_identity::session::MAX_DEPTH {
            return Err(format!(
                "`delegation.max_depth` is 1 to {}",
                zt_identity::session::MAX_DEPTH
            ));
        }
        if settings.default_ttl_secs < 1 {
            return Err("`delegation.default_ttl_secs` is at least 1".into());
        }
        for issuer in &settings.issuers {
            if issuer.jwks_file.is_some() == issuer.jwks_uri.is_some() {
                return Err(format!(
                    "the issuer `{}` needs one of `jwks_file` and `jwks_uri`",
                    issuer.issuer
                ));
            }
            if issuer.audiences.is_empty() {
                return Err(format!(
                    "the issuer `{}` needs `audiences`: what its tokens' `aud` must name",
                    issuer.issuer
                ));
            }
        }
        let http = if settings.issuers.iter().any(|i| i.jwks_uri.is_some()) {
            Some(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| format!("no HTTP client: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            issuers: settings
                .issuers
                .iter()
                .map(|s| (s.clone(), Mutex::new(Keys::default())))
                .collect(),
            http,
        })
    }

    /// Verifies a human's token with the keys of the issuer it names.
    pub async fn verify(&self, token: &str, now: i64) -> Result<ExternalSubject, ExternalError> {
        let iss = zt_identity::delegation::unverified_issuer(token)?;
        let Some((settings, keys)) = self.issuers.iter().find(|(s, _)| s.issuer == iss) else {
            return Err(ExternalError::UnknownIssuer(iss));
        };
        let mut refreshed = false;
        loop {
            let current = self.keys(settings, keys, refreshed).await?;
            match UnverifiedExternalToken(token).verify(&current, now, EXTERNAL_LEEWAY) {
                Err(ExternalError::UnknownKey(_)) if !refreshed => refreshed = true,
                other => return other,
            }
        }
    }

    /// The issuer's keys: read when never read, when its file changed, or (`again`) for a key
    /// they lacked, at most every [`KEY_REFRESH`].
    async fn keys(
        &self,
        settings: &IssuerSettings,
        keys: &Mutex<Keys>,
        again: bool,
    ) -> Result<Arc<ExternalIssuer>, ExternalError> {
        let unavailable = |why: String| {
            tracing::warn!(issuer = %settings.issuer, error = %why, "an issuer's keys could not be read");
            ExternalError::Malformed(format!(
                "the keys of its issuer `{}` could not be read: {why}",
                settings.issuer
            ))
        };
        let (current, fetched, stamp) = {
            let k = keys.lock().map_err(|_| unavailable("poisoned".into()))?;
            (k.set.clone(), k.fetched, k.file_stamp)
        };
        let text = match (&settings.jwks_file, &settings.jwks_uri) {
            (Some(path), _) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
                let now_stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
                if let Some(set) = &current
                    && stamp == Some(now_stamp)
                {
                    return Ok(Arc::clone(set));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
                if let Ok(mut k) = keys.lock() {
                    k.file_stamp = Some(now_stamp);
                }
                text
            }
            (None, Some(uri)) => {
                if let Some(set) = &current
                    && (!again || fetched.is_some_and(|t| t.elapsed() < KEY_REFRESH))
                {
                    return Ok(Arc::clone(set));
                }
                if let Ok(mut k) = keys.lock() {
                    k.fetched = Some(Instant::now());
                }
                let http = self
                    .http
                    .as_ref()
                    .ok_or_else(|| unavailable("no HTTP client".into()))?;
                let response = http
                    .get(uri)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| unavailable(format!("{uri}: {e}")))?;
                response
                    .text()
                    .await
                    .map_err(|e| unavailable(format!("{uri}: {e}")))?
            }
            (None, None) => return Err(unavailable("no JWKS source".into())),
        };
        let issuer = Arc::new(
            ExternalIssuer::from_jwks(&settings.issuer, &settings.audiences, &text)
                .map_err(unavailable)?,
        );
        if let Ok(mut k) = keys.lock() {
            k.set = Some(Arc::clone(&issuer));
        }
        Ok(issuer)
    }
}

/// The party whose authority is delegated, once its token verified.
struct Subject {
    origin: Origin,
    /// Its own bounds (a delegated token's); `None`: its policies alone.
    held: Option<Vec<AuthorizationDetail>>,
    /// The grant it holds and those above it, first first.
    grants: Vec<String>,
    sessions: Vec<String>,
    depth: u32,
    act: Option<Actor>,
    exp: i64,
    /// Who hands the authority on: an agent, or the human.
    from: String,
    from_kind: &'static str,
    may_act: Option<Value>,
}

fn bad(detail: impl Into<String>) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", detail)
}

fn grant_refused(detail: impl Into<String>) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", detail)
}

/// Token exchange with an `actor_token`: delegation. The answer, or the refusal's.
pub(crate) async fn exchange(
    app: &AppState,
    form: &TokenRequest,
    peer: Option<&crate::conn::Peer>,
) -> Result<Response, Response> {
    let now_ms = crate::now_ms();
    let now = now_ms / 1000;
    if form
        .requested_token_type
        .as_deref()
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(bad(format!(
            "a delegation issues an access token: `requested_token_type` is `{ACCESS_TOKEN_TYPE}` or absent"
        )));
    }
    let (Some(subject_token), Some(subject_type), Some(actor_token)) = (
        form.subject_token.as_deref(),
        form.subject_token_type.as_deref(),
        form.actor_token.as_deref(),
    ) else {
        return Err(bad(
            "a delegation needs `subject_token`, `subject_token_type` and `actor_token`",
        ));
    };
    if form.actor_token_type.as_deref() != Some(ACCESS_TOKEN_TYPE) {
        return Err(bad(format!(
            "`actor_token_type` must be `{ACCESS_TOKEN_TYPE}`: the actor is a session of this service"
        )));
    }
    if let Some(resource) = &form.resource
        && resource != app.sessions.issuer()
    {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!(
                "tokens from here are for this service (`{}`) only, not `{resource}`",
                app.sessions.issuer()
            ),
        ));
    }

    // The actor: a live session, by its own token (not a delegated one), which is not used
    // here: a bound one is accepted from the delegating party, and what it receives is bound
    // to the same certificate.
    let actor = crate::auth::session_of(app, actor_token)
        .await
        .map_err(|p| grant_refused(format!("the actor token: {}", p.detail)))?;
    if actor.claims.delegation.is_some() {
        return Err(bad(
            "`actor_token` is the receiving session's own token, not a delegated one",
        ));
    }
    let subject = subject(app, subject_token, subject_type, peer, now).await?;
    if let Some(may_act) = &subject.may_act
        && !zt_identity::delegation::may_act_allows(
            may_act,
            &actor.claims.sub,
            &actor.claims.client_id,
        )
    {
        return Err(grant_refused(format!(
            "the subject token's `may_act` ({may_act}) does not name the actor `{}`",
            actor.claims.sub
        )));
    }
    let depth = subject.depth.saturating_add(1);
    if depth > app.delegation.max_depth {
        return Err(bad(format!(
            "the chain would be {depth} delegations deep; at most {} are allowed here",
            app.delegation.max_depth
        )));
    }

    // What is asked, inside what is held.
    let mut asked = Vec::new();
    if let Some(text) = &form.authorization_details {
        asked.extend(zt_identity::delegation::parse_details(text).map_err(|e| bad(e.to_string()))?);
    }
    if let Some(scope) = &form.scope {
        asked
            .extend(zt_identity::delegation::scope_details(scope).map_err(|e| bad(e.to_string()))?);
    }
    if asked.is_empty() {
        return Err(bad(
            "name the authority delegated: `authorization_details` (RFC 9396) and/or `scope`",
        ));
    }
    let within = zt_identity::delegation::narrow(subject.held.as_deref(), &asked).map_err(|w| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            if w.of_target() {
                "invalid_target"
            } else {
                "invalid_request"
            },
            w.to_string(),
        )
    })?;
    let ends = subject.exp.min(actor.claims.exp);
    let exp = match form.ttl {
        Some(ttl) if ttl < 1 => return Err(bad("`ttl` is at least 1 second")),
        Some(ttl) if now.saturating_add(ttl) > ends => {
            return Err(bad(format!(
                "`ttl` of {ttl} seconds would outlive the {} token, which ends in {} seconds",
                if subject.exp <= actor.claims.exp {
                    "subject"
                } else {
                    "actor"
                },
                ends - now
            )));
        }
        Some(ttl) => now.saturating_add(ttl),
        None => now
            .saturating_add(app.delegation.default_ttl_secs)
            .min(ends),
    };

    let id = hex::encode(crate::random16());
    let mut sessions = subject.sessions.clone();
    sessions.push(actor.claims.session.session_id.clone());
    let act = Actor {
        sub: actor.claims.sub.clone(),
        client_id: actor.claims.client_id.clone(),
        act: subject.act.clone().map(Box::new),
    };
    let claim = DelegationClaim {
        id: id.clone(),
        above: subject.grants.clone(),
        sessions,
        depth,
        origin: subject.origin.clone(),
    };

    // The policies decide who may hand what to whom: one decision per action handed on.
    decide_exchange(app, &subject, &actor, &claim, &act, &asked).await?;

    // Counted uses taken from a counted parent are the parent's, spent now.
    let parent = subject.grants.last();
    let reserve: Vec<zt_store::Spend<'_>> = asked
        .iter()
        .zip(&within)
        .filter_map(|(ask, held_entry)| {
            let grant = parent?;
            let held = subject.held.as_ref()?.get((*held_entry)?)?;
            Some(zt_store::Spend {
                grant,
                entry: i64::try_from((*held_entry)?).ok()?,
                n: i64::try_from(ask.max_uses?).ok()?,
                max: i64::try_from(held.max_uses?).ok()?,
            })
        })
        .collect();
    let details_json = serde_json::to_string(&asked).unwrap_or_default();
    let stored = app
        .store
        .add_grant(
            &zt_store::StoredGrant {
                id: id.clone(),
                parent: parent.cloned(),
                origin: subject.origin.sub.clone(),
                actor_session: actor.claims.session.session_id.clone(),
                details: details_json,
                created_at_ms: now_ms,
                expires_at_ms: exp.saturating_mul(1000),
            },
            &reserve,
        )
        .await;
    match stored {
        Ok(true) => {}
        Ok(false) => {
            return Err(bad(
                "the subject token has fewer uses left than `max_uses` asks of it",
            ));
        }
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "a delegation could not be stored");
            return Err(Problem::unavailable(
                "the store could not be written; see the service's log",
            )
            .into_response());
        }
    }

    let claims = AccessClaims {
        approval: None,
        iss: app.sessions.issuer().to_owned(),
        sub: subject.origin.sub.clone(),
        aud: app.sessions.audience().to_owned(),
        exp,
        iat: now,
        nbf: now,
        jti: id.clone(),
        client_id: actor.claims.client_id.clone(),
        session: actor.claims.session.clone(),
        status: actor.claims.status.clone(),
        cnf: actor.claims.cnf.clone(),
        act: Some(act),
        authorization_details: Some(asked.clone()),
        delegation: Some(claim),
    };
    let token = app.sessions.sign(&claims).map_err(|e| {
        Problem::internal(format!("the delegated token could not be signed: {e}")).into_response()
    })?;

    // On record, or not issued.
    let record = json!({
        "delegation": id,
        "parent": parent,
        "origin": subject.origin,
        "chain": chain(&claims),
        "depth": depth,
        "authorization_details": asked,
        "expires_at": crate::reference::rfc3339_utc(exp.saturating_mul(1000)),
    });
    let receipt = match crate::api::record_act(
        app,
        "delegation.grant",
        Some(exchange_caller(&subject, &actor)),
        record,
        "authority delegated by token exchange".into(),
    )
    .await
    {
        Ok(receipt) => receipt,
        Err(e) => {
            tracing::error!(error = %e, delegation = %id, "a delegation could not be recorded; it is revoked");
            let _ = app.sessions.revoke_grant(&id, crate::now_ms()).await;
            return Err(Problem::unavailable(
                "the delegation could not be put on record, so it was revoked",
            )
            .into_response());
        }
    };
    tracing::info!(delegation = %id, from = %subject.from, to = %actor.claims.sub, depth, "authority delegated");
    metrics::counter!("ztinfra_delegations_total").increment(1);
    let mut response = axum::Json(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": exp - now,
        "authorization_details": asked,
        "delegation_id": id,
        "evidence": receipt,
    }))
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Token exchange for a Transaction Token: the subject is a session's token (its own, or one
/// delegated to it), presented by its holder; the token carries the subject's immutable
/// authority and chain (`tctx`) for the services a transaction passes through inside the trust
/// domain, for minutes. The answer, or the refusal's.
pub(crate) async fn txn_token(
    app: &AppState,
    form: &TokenRequest,
    peer: Option<&crate::conn::Peer>,
) -> Result<Response, Response> {
    let now = crate::now_ms() / 1000;
    let (Some(subject), Some(ACCESS_TOKEN_TYPE)) = (
        form.subject_token.as_deref(),
        form.subject_token_type.as_deref(),
    ) else {
        return Err(bad(format!(
            "a Transaction Token is asked with `subject_token`, a session's token of this service, and `subject_token_type` `{ACCESS_TOKEN_TYPE}`"
        )));
    };
    let live = crate::auth::live_session(app, subject, peer)
        .await
        .map_err(|p| grant_refused(format!("the subject token: {}", p.detail)))?;
    let claims = &live.claims;
    if let Some(scope) = &form.scope
        && let Some(details) = &claims.authorization_details
    {
        let asked =
            zt_identity::delegation::scope_details(scope).map_err(|e| bad(e.to_string()))?;
        let actions = asked.iter().flat_map(|d| &d.actions);
        if let Some(outside) = actions.into_iter().find(|a| {
            !details
                .iter()
                .flat_map(|d| &d.actions)
                .any(|h| zt_identity::delegation::action_within(a, h))
        }) {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                format!(
                    "`scope` names `{outside}`, which the subject token's authority does not hold"
                ),
            ));
        }
    }
    let ttl = form.ttl.unwrap_or(TXN_TTL);
    if !(1..=MAX_TXN_TTL).contains(&ttl) {
        return Err(bad(format!(
            "a Transaction Token lives 1 to {MAX_TXN_TTL} seconds; `ttl` is {ttl}"
        )));
    }
    let exp = now.saturating_add(ttl).min(claims.exp);
    let mut tctx = serde_json::Map::new();
    tctx.insert(
        "session".into(),
        json!({"id": claims.session.session_id, "agent": claims.client_id}),
    );
    if let Some(details) = &claims.authorization_details {
        tctx.insert("authorization_details".into(), json!(details));
    }
    if let (Some(claim), Some(act)) = (&claims.delegation, &claims.act) {
        tctx.insert("delegation".into(), policy_view(claim, act));
    }
    let txn = zt_identity::session::TxnClaims {
        iss: app.sessions.issuer().to_owned(),
        aud: app.sessions.trust_domain().to_owned(),
        iat: now,
        exp,
        txn: uuid::Uuid::now_v7().to_string(),
        sub: claims.sub.clone(),
        scope: form.scope.clone(),
        req_wl: peer
            .and_then(|p| p.0.as_ref())
            .map_or_else(|| claims.acting().to_owned(), |svid| svid.id.to_string()),
        tctx: Value::Object(tctx),
    };
    let token = app.sessions.sign_txn(&txn).map_err(|e| {
        Problem::internal(format!("the Transaction Token could not be signed: {e}")).into_response()
    })?;
    let receipt = crate::api::record_act(
        app,
        "txn.issue",
        Some(json!({"kind": "session", "name": claims.acting(), "session": claims.session.session_id})),
        json!({"txn": txn.txn, "sub": txn.sub, "req_wl": txn.req_wl, "scope": txn.scope, "tctx": txn.tctx,
               "expires_at": crate::reference::rfc3339_utc(exp.saturating_mul(1000))}),
        "Transaction Token issued".into(),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a Transaction Token could not be recorded; not issued");
        Problem::unavailable("the Transaction Token could not be put on record, so it was not issued")
        .into_response()
    })?;
    let mut response = axum::Json(json!({
        "access_token": token,
        "issued_token_type": TXN_TOKEN_TYPE,
        "token_type": "N_A",
        "expires_in": exp - now,
        "txn": txn.txn,
        "evidence": receipt,
    }))
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The transaction as policies see it, in `context.transaction`.
pub fn txn_view(txn: &zt_identity::session::TxnClaims) -> Value {
    let mut view = serde_json::Map::new();
    view.insert("txn".into(), txn.txn.clone().into());
    view.insert("sub".into(), txn.sub.clone().into());
    view.insert("req_wl".into(), txn.req_wl.clone().into());
    if let Some(scope) = &txn.scope {
        view.insert("scope".into(), scope.clone().into());
    }
    view.insert("tctx".into(), txn.tctx.clone());
    Value::Object(view)
}

/// Verifies the subject token: this service's own (a session's, or one delegated before), or
/// a human's from a trusted issuer.
async fn subject(
    app: &AppState,
    token: &str,
    kind: &str,
    peer: Option<&crate::conn::Peer>,
    now: i64,
) -> Result<Subject, Response> {
    let ours = zt_identity::delegation::unverified_issuer(token)
        .is_ok_and(|iss| iss == app.sessions.issuer());
    if ours {
        if kind != ACCESS_TOKEN_TYPE {
            return Err(bad(format!(
                "a token of this service is an access token: `subject_token_type` is `{ACCESS_TOKEN_TYPE}`"
            )));
        }
        // The subject's holder asks: a token bound to a certificate needs it.
        let live = crate::auth::live_session(app, token, peer)
            .await
            .map_err(|p| grant_refused(format!("the subject token: {}", p.detail)))?;
        return Ok(own_subject(&live));
    }
    if ![ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE].contains(&kind) {
        return Err(bad(format!(
            "`subject_token_type` `{kind}` is not accepted: `{ACCESS_TOKEN_TYPE}`, `{ID_TOKEN_TYPE}` or `{JWT_TOKEN_TYPE}`"
        )));
    }
    let human = app.issuers.verify(token, now).await.map_err(|e| {
        metrics::counter!("ztinfra_auth_refusals_total", "reason" => "external_token").increment(1);
        grant_refused(format!("the subject token: {e}"))
    })?;
    Ok(Subject {
        origin: Origin {
            kind: "human".into(),
            sub: human.sub.clone(),
            iss: Some(human.iss),
            agent: None,
        },
        held: None,
        grants: Vec::new(),
        sessions: Vec::new(),
        depth: 0,
        act: None,
        exp: human.exp,
        from: human.sub,
        from_kind: "human",
        may_act: human.may_act,
    })
}

fn own_subject(live: &LiveSession) -> Subject {
    let claims = &live.claims;
    match &claims.delegation {
        Some(d) => {
            let mut grants = d.above.clone();
            grants.push(d.id.clone());
            Subject {
                origin: d.origin.clone(),
                held: claims.authorization_details.clone(),
                grants,
                sessions: d.sessions.clone(),
                depth: d.depth,
                act: claims.act.clone(),
                exp: claims.exp,
                from: claims.client_id.clone(),
                from_kind: "agent",
                may_act: None,
            }
        }
        None => Subject {
            origin: Origin {
                kind: "session".into(),
                sub: claims.sub.clone(),
                iss: None,
                agent: Some(claims.client_id.clone()),
            },
            held: None,
            grants: Vec::new(),
            sessions: vec![claims.session.session_id.clone()],
            depth: 0,
            act: None,
            exp: claims.exp,
            from: claims.client_id.clone(),
            from_kind: "agent",
            may_act: None,
        },
    }
}

/// Who asked for an exchange, as its records name it.
fn exchange_caller(subject: &Subject, actor: &LiveSession) -> Value {
    json!({
        "kind": "delegation",
        "name": subject.from,
        "subject": subject.origin.sub,
        "actor": actor.claims.sub,
        "session": actor.claims.session.session_id,
    })
}

/// Asks the policies, once for each action handed on, whether the subject may hand it to the
/// actor: actor = the receiving agent, action = [`EXCHANGE_ACTION`], resource = the action
/// handed on, with `context.exchange`, `context.session` (the actor's) and
/// `context.delegation` (the chain as it would be). Every decision is recorded; one deny
/// refuses the exchange.
async fn decide_exchange(
    app: &AppState,
    subject: &Subject,
    actor: &LiveSession,
    claim: &DelegationClaim,
    act: &Actor,
    asked: &[AuthorizationDetail],
) -> Result<(), Response> {
    let mut requests = Vec::new();
    for detail in asked {
        for action in &detail.actions {
            let mut exchange = serde_json::Map::new();
            exchange.insert("action".into(), action.clone().into());
            exchange.insert("from".into(), subject.from.clone().into());
            exchange.insert("from_kind".into(), subject.from_kind.into());
            if let Some(locations) = &detail.locations {
                exchange.insert("locations".into(), json!(locations));
            }
            if let Some(n) = detail.max_uses {
                exchange.insert("max_uses".into(), n.into());
            }
            let mut context = serde_json::Map::new();
            context.insert("exchange".into(), Value::Object(exchange));
            if let Some(view) = crate::sessions::policy_view(Some(actor), None) {
                context.insert("session".into(), view);
            }
            context.insert("delegation".into(), policy_view(claim, act));
            let request = zt_core::DecisionRequest {
                actor: actor.claims.client_id.clone(),
                action: EXCHANGE_ACTION.into(),
                resource: action.clone(),
                context,
            };
            requests.push(
                request
                    .validate(&app.limits)
                    .map_err(|e| bad(Problem::invalid_fields(e).detail))?,
            );
        }
    }
    let engine = app.policies.engine();
    let decided = requests.iter().map(|r| (r, engine.decide(r))).collect();
    let origin = crate::api::Origin::now("token.exchange", Some(exchange_caller(subject, actor)));
    let answers = crate::api::answer(app, origin, decided, None).await;
    let denied: Vec<String> = requests
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.decision != Decision::Allow)
        .map(|(r, a)| {
            let why: Vec<&str> = a.reasons.iter().map(|r| r.message.as_str()).collect();
            format!(
                "handing `{}` on was denied ({}; decision {})",
                r.resource(),
                why.join("; "),
                a.decision_id
            )
        })
        .collect();
    if denied.is_empty() {
        Ok(())
    } else {
        Err(grant_refused(format!(
            "the policies refuse this delegation (`{EXCHANGE_ACTION}`): {}",
            denied.join(", ")
        )))
    }
}

/// The chain, first first: the origin's subject, then each actor's session.
pub fn chain(claims: &AccessClaims) -> Vec<String> {
    let mut chain = vec![claims.sub.clone()];
    if let Some(act) = &claims.act {
        chain.extend(act.chain().iter().rev().map(|a| a.sub.clone()));
    }
    chain
}

/// The chain as policies see it, in `context.delegation`: the grant, its depth, the origin,
/// the actors' agents (first first) and the party that delegated last.
pub fn policy_view(claim: &DelegationClaim, act: &Actor) -> Value {
    let actors: Vec<&str> = act
        .chain()
        .iter()
        .rev()
        .map(|a| a.client_id.as_str())
        .collect();
    let delegator = act.act.as_ref().map_or_else(
        || {
            claim
                .origin
                .agent
                .clone()
                .unwrap_or_else(|| claim.origin.sub.clone())
        },
        |a| a.client_id.clone(),
    );
    let mut view = serde_json::Map::new();
    view.insert("id".into(), claim.id.clone().into());
    view.insert("depth".into(), i64::from(claim.depth).into());
    view.insert("origin".into(), claim.origin.sub.clone().into());
    view.insert("origin_kind".into(), claim.origin.kind.clone().into());
    if let Some(iss) = &claim.origin.iss {
        view.insert("origin_issuer".into(), iss.clone().into());
    }
    view.insert("actors".into(), json!(actors));
    view.insert("delegator".into(), delegator.into());
    Value::Object(view)
}

/// Keeps an allow made under a delegated token inside the token's authority: the action and
/// resource fall in one of its `authorization_details` entries, and a counted entry has a use
/// left, which is spent (once, across replicas: the store counts). Anything else is a deny
/// whose reason names the bound; a store that cannot count denies (fail closed).
pub(crate) async fn bound(
    app: &AppState,
    claims: &AccessClaims,
    request: &ValidRequest,
    verdict: Verdict,
) -> Verdict {
    let (Some(details), Some(delegation)) = (&claims.authorization_details, &claims.delegation)
    else {
        return verdict;
    };
    if verdict.decision != Decision::Allow {
        return verdict;
    }
    let action = request.action().to_string();
    let resource = request.resource();
    let deny = |message: String, kind: ReasonKind| Verdict {
        decision: Decision::Deny,
        reasons: vec![Reason {
            approval: None,
            quarantine: None,
            kind,
            policy: None,
            message,
        }],
        policy_version: verdict.policy_version.clone(),
    };
    let matching = zt_identity::delegation::matching(details, &action, resource);
    if matching.is_empty() {
        return deny(
            format!(
                "`{action}` on `{resource}` is outside the authority delegated to this session (delegation `{}`)",
                delegation.id
            ),
            ReasonKind::Delegation,
        );
    }
    let mut spent_out = Vec::new();
    for entry in matching {
        let Some(max) = details.get(entry).and_then(|d| d.max_uses) else {
            return verdict;
        };
        let spend = zt_store::UseOp::Spend {
            grant: delegation.id.clone(),
            entry: i64::try_from(entry).unwrap_or(i64::MAX),
            n: 1,
            max: i64::try_from(max).unwrap_or(i64::MAX),
        };
        match app.uses.apply(spend).await {
            Ok(true) => return verdict,
            Ok(false) => spent_out.push(format!("`authorization_details[{entry}]` ({max})")),
            Err(e) => {
                tracing::error!(error = %e, "a delegated use could not be counted; denied");
                return deny(
                    "the use of the delegated authority could not be counted; denied (fail closed)"
                        .into(),
                    ReasonKind::Error,
                );
            }
        }
    }
    deny(
        format!(
            "every use the delegation `{}` grants for `{action}` on `{resource}` is spent: {}",
            delegation.id,
            spent_out.join(", ")
        ),
        ReasonKind::Delegation,
    )
}

/// Revokes a delegation (and everything delegated from it) and puts it on record.
pub(crate) async fn revoke(
    app: &AppState,
    id: &str,
    caller: Option<Value>,
    why: &str,
) -> Result<(), Problem> {
    match app.sessions.revoke_grant(id, crate::now_ms()).await {
        Ok(()) => {}
        Err(crate::sessions::SessionError::NoGrant(_)) if caller.is_none() => return Ok(()),
        Err(e) => return Err(crate::identity::session_problem(e)),
    }
    tracing::info!(delegation = %id, why, "delegation revoked");
    crate::api::record_act(
        app,
        "delegation.revoke",
        caller,
        json!({"delegation": id, "reason": why}),
        format!("delegation revoked: {why}"),
    )
    .await
    .map(drop)
    .map_err(|e| {
        tracing::error!(error = %e, "a delegation revocation could not be recorded (it stands)");
        Problem::unavailable(
            "the delegation is revoked, but the revocation could not be put on record",
        )
    })
}
