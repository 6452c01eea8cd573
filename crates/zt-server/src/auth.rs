//! Who is calling: bearer credentials checked against the store, and the extractors that let a
//! handler in only with the right role.
//!
//! A handler names what it needs in its signature: [`Admin`] (policies, entities), [`Reader`]
//! (evidence records and the entity store; anyone when callers are open) or [`Decider`]
//! (decisions; anyone when callers are open). The extractors run before the body is read, so an
//! unauthenticated request is refused with 401 whatever its body.
//!
//! Verified credentials are cached by digest for [`FRESH`], so that a decision costs a hash and
//! a map lookup, not a store read; a credential revoked from the command line (which writes the
//! store) stops working on every node within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use zt_identity::{
    AuthError, Caller, CredentialName, CredentialRecord, NewSecret, Permission, TokenDigest,
    UnverifiedCredential,
};
use zt_store::{Store, StoreError};

use crate::api::AppState;
use crate::conn::Peer;
use crate::problem::{Challenge, Problem};

/// How long a credential looked up in the store is trusted before it is read again.
pub const FRESH: Duration = Duration::from_secs(1);

/// Most credentials (known or unknown digests) kept in the cache; it is emptied when full.
const MAX_CACHED: usize = 4096;

/// The file, in the data directory, to which the first start writes the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Who may ask for decisions (`--callers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerMode {
    /// Anyone who reaches the port, with the actor they declare (as before credentials
    /// existed; `--demo`). Evidence records and the entity store are readable by anyone too.
    Open,
    /// A decision needs an enforcement point's credential; evidence reads an auditor's or
    /// admin's.
    Authenticated,
}

impl CallerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerMode::Open => "open",
            CallerMode::Authenticated => "authenticated",
        }
    }
}

/// The credentials of callers, checked against the store through a short cache, and the
/// client certificates of callers over mutual TLS, checked against the workload mappings.
#[derive(Debug)]
pub struct Callers {
    mode: CallerMode,
    store: Store,
    workloads: Arc<crate::workloads::Workloads>,
    cache: Mutex<HashMap<TokenDigest, (Option<CredentialRecord>, Instant)>>,
    /// Console sign-ins, by the digest of their cookie.
    consoles: Mutex<HashMap<TokenDigest, ConsoleSession>>,
}

/// The cookie of a console sign-in.
pub const CONSOLE_COOKIE: &str = "zt_console";
/// The header every console request carries: the CSRF token given at sign-in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Most console sign-ins held at once (past it, the expired ones are dropped, then the
/// sign-in is refused).
const MAX_CONSOLES: usize = 10_000;

/// A console sign-in: the credential it stands for (by digest: verified again on every
/// request, so that revoking the credential ends it), its CSRF token, its end.
#[derive(Debug, Clone)]
struct ConsoleSession {
    credential: TokenDigest,
    csrf: String,
    expires: Instant,
}

/// A new console sign-in: its cookie value and CSRF token (each 32 random bytes), and who.
#[derive(Debug)]
pub struct SignedIn {
    pub caller: Caller,
    pub cookie: String,
    pub csrf: String,
}

/// The console cookie of a request, if it carries one.
pub fn console_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CONSOLE_COOKIE)
        .map(|(_, value)| value.trim())
}

/// Equal, in time that does not depend on where two texts differ.
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why a caller is not let in: a refusal, or a store that could not say.
#[derive(Debug)]
pub enum Refusal {
    Auth(AuthError),
    Store(StoreError),
}

impl Callers {
    pub fn new(
        mode: CallerMode,
        store: Store,
        workloads: Arc<crate::workloads::Workloads>,
    ) -> Self {
        Self {
            mode,
            store,
            workloads,
            cache: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
        }
    }

    /// Signs a person in to the console with their credential: one whose role reads
    /// approvals (approver, auditor, admin). The cookie stands for the credential until `ttl`
    /// passes, the person signs out, or the credential is revoked.
    pub async fn sign_in(&self, token: &str, ttl: Duration) -> Result<SignedIn, Refusal> {
        let presented =
            UnverifiedCredential::from_authorization(format!("Bearer {}", token.trim()).as_bytes())
                .map_err(Refusal::Auth)?;
        let digest = presented.digest();
        let stored = self.lookup(digest).await.map_err(Refusal::Store)?;
        let caller = presented.verify(stored.as_ref()).map_err(Refusal::Auth)?;
        caller
            .authorize(Permission::ReadApprovals)
            .map_err(Refusal::Auth)?;
        let (cookie, csrf) = (new_secret(), new_secret());
        let session = ConsoleSession {
            credential: digest,
            csrf: csrf.token().to_owned(),
            expires: Instant::now() + ttl,
        };
        let mut consoles = self
            .consoles
            .lock()
            .map_err(|_| Refusal::Auth(AuthError::Malformed("console sign-ins are unavailable")))?;
        if consoles.len() >= MAX_CONSOLES {
            let now = Instant::now();
            consoles.retain(|_, s| s.expires > now);
            if consoles.len() >= MAX_CONSOLES {
                return Err(Refusal::Auth(AuthError::Malformed(
                    "too many console sign-ins: try again later",
                )));
            }
        }
        consoles.insert(cookie.digest(), session);
        Ok(SignedIn {
            caller,
            cookie: cookie.token().to_owned(),
            csrf: csrf.token().to_owned(),
        })
    }

    /// The live console sign-in of a cookie value: its credential's digest and CSRF token.
    fn console(&self, cookie: &str) -> Option<(TokenDigest, String)> {
        let mut consoles = self.consoles.lock().ok()?;
        let key = TokenDigest::of(cookie);
        let session = consoles.get(&key)?.clone();
        if session.expires <= Instant::now() {
            consoles.remove(&key);
            return None;
        }
        Some((session.credential, session.csrf))
    }

    /// Who a console cookie signs in, and its CSRF token (for the console page to read back
    /// after a reload); `None` when it is unknown, expired or signed out.
    pub async fn console_caller(&self, cookie: &str) -> Option<(Caller, String)> {
        let (credential, csrf) = self.console(cookie)?;
        let stored = self.lookup(credential).await.ok()?;
        let caller = UnverifiedCredential::from_digest(credential)
            .verify(stored.as_ref())
            .ok()?;
        Some((caller, csrf))
    }

    /// Ends a console sign-in.
    pub fn sign_out(&self, cookie: &str) {
        if let Ok(mut consoles) = self.consoles.lock() {
            consoles.remove(&TokenDigest::of(cookie));
        }
    }

    pub fn mode(&self) -> CallerMode {
        self.mode
    }

    /// The caller whose credential is in `headers`, if it is valid; without one, the caller
    /// its client certificate (`peer`, over mutual TLS) is mapped to.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        peer: Option<&Peer>,
    ) -> Result<Caller, Refusal> {
        if let (None, Some(cookie)) = (headers.get(header::AUTHORIZATION), console_cookie(headers))
        {
            // A console sign-in: its cookie, and the CSRF token it was given beside it, on
            // every request (a page of another site can send the cookie, not the header).
            let (credential, csrf) =
                self.console(cookie)
                    .ok_or(Refusal::Auth(AuthError::Malformed(
                        "the console sign-in expired or was ended: sign in again",
                    )))?;
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same_text(sent, &csrf) {
                return Err(Refusal::Auth(AuthError::Malformed(
                    "a console request carries the `X-CSRF-Token` given at sign-in",
                )));
            }
            let stored = self.lookup(credential).await.map_err(Refusal::Store)?;
            return UnverifiedCredential::from_digest(credential)
                .verify(stored.as_ref())
                .map_err(Refusal::Auth);
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            let svid = peer
                .and_then(|p| p.0.as_deref())
                .ok_or(Refusal::Auth(AuthError::Missing))?;
            return match self.workloads.map(svid) {
                crate::workloads::Mapped::Caller(caller) => Ok(caller),
                _ => Err(Refusal::Auth(AuthError::UnmappedWorkload(
                    svid.id.as_str().to_owned(),
                ))),
            };
        };
        let presented =
            UnverifiedCredential::from_authorization(value.as_bytes()).map_err(Refusal::Auth)?;
        let stored = self
            .lookup(presented.digest())
            .await
            .map_err(Refusal::Store)?;
        presented.verify(stored.as_ref()).map_err(Refusal::Auth)
    }

    async fn lookup(&self, digest: TokenDigest) -> Result<Option<CredentialRecord>, StoreError> {
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((record, at)) = cache.get(&digest)
            && now.duration_since(*at) < FRESH
        {
            return Ok(record.clone());
        }
        let record = self.store.credential(digest).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(digest, (record.clone(), now));
        }
        Ok(record)
    }

    /// The caller, if its credential is valid and its role grants `permission`.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        peer: Option<&Peer>,
        permission: Permission,
    ) -> Result<Caller, Problem> {
        let caller = self.verify(headers, peer).await.map_err(refusal_problem)?;
        caller.authorize(permission).map_err(|e| {
            tracing::warn!(credential = %caller.name(), role = %caller.role(), error = %e, "request refused: wrong role");
            metrics::counter!("ztinfra_auth_refusals_total", "reason" => "wrong_role").increment(1);
            auth_problem(&e)
        })?;
        Ok(caller)
    }

    /// As [`authorize`](Self::authorize), but `None` without asking when callers are open.
    pub(crate) async fn unless_open(
        &self,
        headers: &HeaderMap,
        peer: Option<&Peer>,
        permission: Permission,
    ) -> Result<Option<Caller>, Problem> {
        match self.mode {
            CallerMode::Open => Ok(None),
            CallerMode::Authenticated => self.authorize(headers, peer, permission).await.map(Some),
        }
    }
}

pub(crate) fn refusal_problem(refusal: Refusal) -> Problem {
    match refusal {
        Refusal::Auth(e) => {
            let reason = match &e {
                AuthError::Missing => "missing",
                AuthError::Malformed(_) => "malformed",
                AuthError::Unknown => "unknown",
                AuthError::Revoked(_) => "revoked",
                AuthError::UnmappedWorkload(_) => "unmapped_workload",
                AuthError::WrongRole { .. } => "wrong_role",
            };
            if !matches!(e, AuthError::Missing) {
                tracing::warn!(error = %e, "request refused: credential not valid");
            }
            metrics::counter!("ztinfra_auth_refusals_total", "reason" => reason).increment(1);
            auth_problem(&e)
        }
        Refusal::Store(e) => {
            tracing::error!(error = %crate::error_chain(&e), "credentials could not be checked");
            Problem::unavailable(
                "the credential could not be checked (the store does not answer); nothing was done",
            )
        }
    }
}

/// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750), or 403 for a wrong role.
pub fn auth_problem(e: &AuthError) -> Problem {
    let (status, slug, title, challenge) = match e {
        AuthError::Missing => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
            Challenge::Credential,
        ),
        AuthError::WrongRole { .. } => (
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            Challenge::InsufficientScope,
        ),
        AuthError::Malformed(_) => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
            Challenge::InvalidRequest,
        ),
        AuthError::Unknown | AuthError::Revoked(_) | AuthError::UnmappedWorkload(_) => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
            Challenge::InvalidToken,
        ),
    };
    Problem {
        challenge: Some(challenge),
        ..Problem::new(status, slug, title, e.to_string())
    }
}

/// An admin: policies and entities.
#[derive(Debug)]
pub struct Admin(pub Caller);

/// Who may read evidence records and the entity store: an auditor or admin, or anyone
/// (`None`) when callers are open.
#[derive(Debug)]
pub struct Reader(pub Option<Caller>);

/// Who asks for a decision, and for which agent session.
///
/// An agent session presents its own token (`Authorization: Bearer <access token>`), or an
/// enforcement point presents its credential and passes the agent's token in the
/// `ZT-Agent-Token` header; the actor is then the session's agent. An enforcement point that
/// passes no agent token vouches for the actor it declares (asserted, and policies see it so).
/// With open callers, no credential is needed or read, but an agent session token still is.
#[derive(Debug, Default)]
pub struct Decider {
    /// The enforcement point that asked, if one did.
    pub pep: Option<Caller>,
    /// The verified, live agent session the request is for, if any.
    pub session: Option<crate::sessions::LiveSession>,
    /// The plan step capability it presents (`ZT-Plan-Step`), if any.
    pub step: Option<crate::plans::StepRef>,
    /// The Transaction Token it carries (`Txn-Token`), verified.
    pub transaction: Option<Arc<zt_identity::session::TxnClaims>>,
    /// The approval it presents (`ZT-Approval`), for a request that needs one.
    pub approval: Option<String>,
}

/// The header that carries a Transaction Token.
pub const TXN_TOKEN_HEADER: &str = "txn-token";

/// The header in which an enforcement point passes the agent session's token.
pub const AGENT_TOKEN_HEADER: &str = "zt-agent-token";

impl Decider {
    /// Binds a request's actor to this caller: with a session, the actor is the session's
    /// agent (filled in when left out; a request that declares another is refused).
    pub fn bind_actor(&self, actor: &mut String, pointer: &str) -> Result<(), zt_core::FieldError> {
        if let Some(session) = &self.session {
            let agent = &session.claims.session.agent;
            if actor.is_empty() {
                actor.clone_from(agent);
            } else if actor != agent {
                return Err(zt_core::FieldError::new(
                    format!("{pointer}/actor"),
                    format!("declares `{actor}`, but the agent session token is for `{agent}`"),
                ));
            }
        }
        Ok(())
    }

    /// Sets `context.session`, which is the service's alone: the verified session, or the
    /// enforcement point that asserted the actor (nothing with open callers and no session).
    /// A context that already has a `session` member is refused.
    pub fn bind_context(
        &self,
        context: &mut serde_json::Map<String, serde_json::Value>,
        pointer: &str,
    ) -> Result<(), zt_core::FieldError> {
        if context.contains_key("session") {
            return Err(zt_core::FieldError::new(
                format!("{pointer}/session"),
                "is set by the service, from the caller's verified session; it cannot be sent",
            ));
        }
        if context.contains_key(crate::behaviour::CONTEXT_MEMBER) {
            return Err(zt_core::FieldError::new(
                format!("{pointer}/{}", crate::behaviour::CONTEXT_MEMBER),
                "is set by the service, from what it observed of the agent; it cannot be sent",
            ));
        }
        if context.contains_key("transaction") {
            return Err(zt_core::FieldError::new(
                format!("{pointer}/transaction"),
                "is set by the service, from the `Txn-Token` header; it cannot be sent",
            ));
        }
        if let Some(txn) = &self.transaction {
            context.insert("transaction".into(), crate::delegation::txn_view(txn));
        }
        if context.contains_key("plan") {
            return Err(zt_core::FieldError::new(
                format!("{pointer}/plan"),
                "is set by the service, from the `ZT-Plan-Step` header; it cannot be sent",
            ));
        }
        if let Some(step) = &self.step {
            context.insert(
                "plan".into(),
                serde_json::json!({"id": step.plan, "step": step.index}),
            );
        }
        if context.contains_key("delegation") {
            return Err(zt_core::FieldError::new(
                format!("{pointer}/delegation"),
                "is set by the service, from the caller's delegated token; it cannot be sent",
            ));
        }
        if let Some(view) = crate::sessions::policy_view(
            self.session.as_ref(),
            self.pep.as_ref().map(|p| p.name().as_str()),
        ) {
            context.insert("session".into(), view);
        }
        if let Some(session) = &self.session
            && let (Some(claim), Some(act)) = (&session.claims.delegation, &session.claims.act)
        {
            context.insert(
                "delegation".into(),
                crate::delegation::policy_view(claim, act),
            );
        }
        Ok(())
    }

    /// The origin of this caller's decisions: its record, and its delegated authority.
    pub(crate) fn origin(&self, endpoint: &'static str) -> crate::api::Origin {
        crate::api::Origin {
            delegated: self
                .session
                .as_ref()
                .filter(|s| s.claims.delegation.is_some())
                .map(|s| Arc::clone(&s.claims)),
            step: self.step.clone().map(|step| {
                (
                    step,
                    self.session
                        .as_ref()
                        .map(|s| s.claims.session.session_id.clone()),
                )
            }),
            session: self.session.as_ref().map(|s| Arc::clone(&s.claims)),
            approval: self.approval.clone().or_else(|| {
                self.session
                    .as_ref()
                    .and_then(|s| s.claims.approval.clone())
            }),
            approval_token: self
                .session
                .as_ref()
                .and_then(|s| s.claims.approval.clone()),
            acts: true,
            ..crate::api::Origin::now(endpoint, self.record())
        }
    }

    /// Both bindings, for the ZT-Infra contract's request shape.
    pub fn bind(
        &self,
        request: &mut zt_core::DecisionRequest,
        pointer: &str,
    ) -> Result<(), zt_core::FieldError> {
        self.bind_actor(&mut request.actor, pointer)?;
        self.bind_context(&mut request.context, &format!("{pointer}/context"))
    }

    /// Who asked, as the evidence record names it.
    pub fn record(&self) -> Option<serde_json::Value> {
        let mut who = match (&self.pep, &self.session) {
            (Some(pep), _) => record_caller(pep),
            (None, Some(session)) => serde_json::json!({
                "kind": "session",
                "name": session.claims.acting(),
            }),
            (None, None) => return None,
        };
        if let (Some(session), Some(members)) = (&self.session, who.as_object_mut()) {
            members.insert(
                "session".into(),
                session.claims.session.session_id.clone().into(),
            );
            if let Some(delegation) = &session.claims.delegation {
                members.insert(
                    "delegation".into(),
                    serde_json::json!({
                        "id": delegation.id,
                        "depth": delegation.depth,
                        "chain": crate::delegation::chain(&session.claims),
                    }),
                );
            }
        }
        Some(who)
    }
}

/// The bearer token of an `Authorization` header, when it is an access token (a JWT).
pub(crate) fn bearer_jwt(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && zt_identity::session::UnverifiedToken::looks_like_jwt(token))
    .then_some(token)
}

/// The claim of the live session `id`, read from the store when it started on another replica
/// and was not announced here yet.
pub async fn live_claim(
    app: &AppState,
    id: &str,
) -> Result<zt_identity::session::SessionClaim, crate::sessions::SessionError> {
    match app.sessions.live_claim(id, crate::now_ms()) {
        Err(crate::sessions::SessionError::Unknown(_))
            if app.sessions.load_session(id).await.is_ok_and(|found| found) =>
        {
            app.sessions.live_claim(id, crate::now_ms())
        }
        other => other,
    }
}

/// The session of an access token presented by `holder` (the client certificate of the
/// connection it came on, when its bearer is the caller itself), or the problem that refuses
/// it (401, `invalid_token`).
pub async fn live_session(
    app: &AppState,
    token: &str,
    holder: Option<&Peer>,
) -> Result<crate::sessions::LiveSession, Problem> {
    live(app, token, Some(holder)).await
}

/// The session of an access token whoever presents it, for a token that is not used here but
/// handed on (a delegation's actor token: the token issued from it inherits its `cnf`, so only
/// its certificate's holder can use what it receives).
pub async fn session_of(
    app: &AppState,
    token: &str,
) -> Result<crate::sessions::LiveSession, Problem> {
    live(app, token, None).await
}

/// `holder`: `Some` to check a bound token against the presenting connection's certificate.
async fn live(
    app: &AppState,
    token: &str,
    holder: Option<Option<&Peer>>,
) -> Result<crate::sessions::LiveSession, Problem> {
    let mut verified = app.sessions.verify(token, crate::now_ms());
    // Started a moment ago on another replica, and not yet announced here: read it (a
    // delegated token may name several such sessions in its chain).
    for _ in 0..=zt_identity::session::MAX_DEPTH {
        match &verified {
            Err(crate::sessions::SessionError::Unknown(id))
                if app.sessions.load_session(id).await.is_ok_and(|found| found) =>
            {
                verified = app.sessions.verify(token, crate::now_ms());
            }
            _ => break,
        }
    }
    verified
        .and_then(|live| {
            if let Some(holder) = holder {
                live.check_holder(holder.and_then(|p| p.0.as_deref()))?;
            }
            Ok(live)
        })
        .map_err(|e| {
            if matches!(e, crate::sessions::SessionError::Stale) {
                return Problem::unavailable(e.to_string());
            }
            tracing::warn!(error = %e, "request refused: agent session token not valid");
            metrics::counter!("ztinfra_auth_refusals_total", "reason" => "session").increment(1);
            Problem {
                challenge: Some(Challenge::InvalidToken),
                ..Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "authentication required",
                    e.to_string(),
                )
            }
        })
}

impl FromRequestParts<Arc<AppState>> for Decider {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let agent_token = parts
            .headers
            .get(AGENT_TOKEN_HEADER)
            .map(|v| {
                v.to_str().map(str::trim).map_err(|_| {
                    auth_problem(&AuthError::Malformed(
                        "the `ZT-Agent-Token` header is not text",
                    ))
                })
            })
            .transpose()?;
        let peer = parts.extensions.get::<Peer>();
        let step = match parts.headers.get(crate::plans::STEP_HEADER) {
            None => None,
            Some(value) => Some({
                let (plan, index) = value
                        .to_str()
                        .ok()
                        .and_then(crate::plans::parse_step)
                        .ok_or_else(|| {
                            Problem::invalid(
                                "the `ZT-Plan-Step` header is `<plan id>/<step index>` or `<plan id>/next`: 64 hex digits, `/`, a number or `next`",
                                Vec::new(),
                            )
                        })?;
                crate::plans::resolve(app, plan, index).await?
            }),
        };
        let transaction = match parts.headers.get(TXN_TOKEN_HEADER) {
            None => None,
            Some(value) => {
                let verified = value
                    .to_str()
                    .map_err(|_| "the header is not text".to_owned())
                    .and_then(|text| {
                        app.sessions
                            .verify_txn(text.trim(), crate::now_ms())
                            .map_err(|e| e.to_string())
                    });
                match verified {
                    Ok(claims) => Some(Arc::new(claims)),
                    Err(e) => {
                        tracing::warn!(error = %e, "request refused: Transaction Token not valid");
                        metrics::counter!("ztinfra_auth_refusals_total", "reason" => "txn_token")
                            .increment(1);
                        return Err(Problem {
                            challenge: Some(Challenge::InvalidToken),
                            ..Problem::new(
                                StatusCode::UNAUTHORIZED,
                                "unauthenticated",
                                "authentication required",
                                format!("the `Txn-Token` is refused: {e}"),
                            )
                        });
                    }
                }
            }
        };
        let approval = match parts.headers.get(crate::approvals::APPROVAL_HEADER) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|id| uuid::Uuid::parse_str(id).is_ok())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Problem::invalid(
                            "the `ZT-Approval` header is an approval id (a UUID)",
                            Vec::new(),
                        )
                    })?,
            ),
        };
        if let Some(token) = bearer_jwt(&parts.headers) {
            // The agent session itself asks.
            if agent_token.is_some() {
                return Err(Problem::invalid(
                    "a request carries one agent session token: in `Authorization` (the agent asks) or in `ZT-Agent-Token` (an enforcement point asks for it), not both",
                    Vec::new(),
                ));
            }
            return Ok(Self {
                pep: None,
                session: Some(live_session(app, token, peer).await?),
                step,
                transaction,
                approval,
            });
        }
        // Open callers need no credential, and one sent is not read: only an agent session
        // token, which names the actor, is.
        let pep = match app.callers.mode() {
            CallerMode::Open => None,
            CallerMode::Authenticated => Some(
                app.callers
                    .authorize(&parts.headers, peer, Permission::Decide)
                    .await?,
            ),
        };
        // An enforcement point passes the token on: it does not hold a bound token's
        // certificate, so a bound token is refused here.
        let session = match agent_token {
            Some(token) => Some(live_session(app, token, None).await?),
            None => None,
        };
        Ok(Self {
            pep,
            session,
            step,
            transaction,
            approval,
        })
    }
}

/// Who may start a session: a broker, or a session starting a child with its own token.
#[derive(Debug)]
pub enum SessionStarter {
    Broker(Caller),
    Parent(crate::sessions::LiveSession),
}

impl FromRequestParts<Arc<AppState>> for SessionStarter {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<Peer>();
        if let Some(token) = bearer_jwt(&parts.headers) {
            return live_session(app, token, peer).await.map(Self::Parent);
        }
        app.callers
            .authorize(&parts.headers, peer, Permission::StartSessions)
            .await
            .map(Self::Broker)
    }
}

/// Each extractor: the permission it needs, and whether open callers are let in without one.
macro_rules! extractor {
    ($name:ident, $permission:expr, $check:ident) => {
        impl FromRequestParts<Arc<AppState>> for $name {
            type Rejection = Problem;

            async fn from_request_parts(
                parts: &mut Parts,
                app: &Arc<AppState>,
            ) -> Result<Self, Self::Rejection> {
                app.callers
                    .$check(&parts.headers, parts.extensions.get::<Peer>(), $permission)
                    .await
                    .map($name)
            }
        }
    };
}
extractor!(Admin, Permission::Administer, authorize);
extractor!(Reader, Permission::ReadEvidence, unless_open);
extractor!(Approver, Permission::Approve, authorize);

/// A person who answers approvals: an approver credential, even when callers are open.
#[derive(Debug)]
pub struct Approver(pub Caller);

/// Who may read approvals: an approver, auditor or admin (anyone when callers are open), or an
/// agent session, its own approvals only (with its own token, or an enforcement point passing
/// it in `ZT-Agent-Token`).
#[derive(Debug)]
pub enum ApprovalReader {
    Operator(Option<Caller>),
    Session(String),
}

impl ApprovalReader {
    pub fn is_operator(&self) -> bool {
        matches!(self, Self::Operator(_))
    }

    /// The session whose approvals alone this reader sees, if it is one.
    pub fn session(&self) -> Option<&str> {
        match self {
            Self::Operator(_) => None,
            Self::Session(id) => Some(id),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for ApprovalReader {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if bearer_jwt(&parts.headers).is_some() || parts.headers.contains_key(AGENT_TOKEN_HEADER) {
            let decider = Decider::from_request_parts(parts, app).await?;
            return decider
                .session
                .map(|s| Self::Session(s.claims.session.session_id.clone()))
                .ok_or_else(|| Problem::invalid("no agent session token", Vec::new()));
        }
        app.callers
            .unless_open(
                &parts.headers,
                parts.extensions.get::<Peer>(),
                Permission::ReadApprovals,
            )
            .await
            .map(Self::Operator)
    }
}

/// A caller as an evidence record names it (with its SPIFFE ID when it presented an SVID).
pub fn record_caller(caller: &Caller) -> serde_json::Value {
    let mut who =
        serde_json::json!({"kind": caller.kind().as_str(), "name": caller.name().as_str()});
    if let (Some(id), Some(members)) = (caller.workload(), who.as_object_mut()) {
        members.insert("spiffe_id".into(), id.into());
    }
    who
}

/// A new credential token, from the operating system's random source.
pub fn new_secret() -> NewSecret {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    NewSecret::from_random(bytes)
}

/// On a store that has never had an admin credential, makes one named `admin` and writes its
/// token to `<data-dir>/admin.token` (readable by its owner only). Returns the file's path
/// when it did.
pub async fn first_admin(
    store: &Store,
    data_dir: &std::path::Path,
    now_ms: i64,
) -> Result<Option<std::path::PathBuf>, crate::ServerError> {
    let name = CredentialName::parse("admin")
        .map_err(|_| crate::ServerError::Store(StoreError::Corrupt("the admin name".into())))?;
    let secret = new_secret();
    if !store
        .add_first_admin(&name, secret.digest(), now_ms)
        .await?
    {
        return Ok(None);
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let mut text = secret.token().to_owned();
    text.push('\n');
    if let Err(source) = crate::write_private_file(&path, text.as_bytes()) {
        // Nobody could ever use it: take it back, and say why the start failed.
        let _ = store.revoke_credential(&name, now_ms).await;
        return Err(crate::ServerError::AdminToken { path, source });
    }
    Ok(Some(path))
}
