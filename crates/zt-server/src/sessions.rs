//! Agents and their sessions: registration, session starts with lineage, access tokens, their
//! verification on every decision, and revocation that cascades to descendants.
//!
//! The registry of agents and unexpired sessions is held in memory (loaded from the store at
//! start, written through on every change), so that a decision checks a session with a map
//! lookup and a revocation is effective for the very next decision on this node. Verified tokens
//! are cached by digest until they expire (bounded); revocation is checked on every use.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use utoipa::ToSchema;
use zt_identity::session::{
    AccessClaims, Expectations, Lineage, MAX_DEPTH, SessionClaim, TokenError, TokenSigner,
    UnverifiedToken, VerifyingKeys, session_expiry, spiffe_id,
};
use zt_identity::status_list::{Status, StatusList, StatusReference};
use zt_store::{Store, StoreError, StoredAgent, StoredSession};

/// Session settings (`--trust-domain`, `--session-ttl-secs`, `--max-session-ttl-secs`).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The SPIFFE trust domain of session IDs.
    pub trust_domain: String,
    /// The `aud` of access tokens.
    pub audience: String,
    /// Seconds a session lives when its start asks for no `ttl`.
    pub default_ttl: i64,
    /// The longest a session may live.
    pub max_ttl: i64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            trust_domain: "ztinfra.local".into(),
            audience: "ztinfra".into(),
            default_ttl: 15 * 60,
            max_ttl: 60 * 60,
        }
    }
}

/// What the registry knows of an agent (and, without `disabled`, what registers one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    pub name: String,
    /// The person or team responsible for it.
    pub owner: String,
    #[serde(default)]
    pub description: String,
    /// The models its sessions may run on (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// The digests (`sha256:<hex>`) of the tool manifests its sessions may run with (absent:
    /// any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tool_manifests: Option<Vec<String>>,
    #[serde(default, skip_deserializing)]
    pub disabled: bool,
}

/// The part of an agent kept as JSON in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AgentDetails {
    #[serde(default)]
    description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed_tool_manifests: Option<Vec<String>>,
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStart {
    pub agent: String,
    /// What launched the session: `workflow`, `model`, `tool_manifest` (`sha256:<hex>`),
    /// `sandbox`. The broker is the service's to record.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub lineage: Lineage,
    /// The human the session acts for (inherited by a child that names none).
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    /// For a child session: its parent (whose token starts it).
    #[serde(default)]
    pub parent_session: Option<String>,
    /// Seconds to live (default 15 minutes; never beyond the maximum or the parent's end).
    #[serde(default)]
    pub ttl: Option<i64>,
    /// Ask for an X.509-SVID for the session, issued by this service's CA.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub svid: Option<SvidRequest>,
    /// The thumbprint (`x5t#S256`) of the client certificate the token is bound to: set by the
    /// service for a start over mutual TLS, never sent.
    #[serde(skip)]
    pub bind: Option<String>,
}

/// What an X.509-SVID is issued for: a certificate signing request (PEM; the private key
/// stays with the agent), or `{"generate": true}` for a key made here and returned once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRequest {
    #[serde(default)]
    pub csr: Option<String>,
    #[serde(default)]
    pub generate: bool,
}

/// An X.509-SVID issued for a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedSvid {
    pub spiffe_id: String,
    /// The SVID and the CA certificate that issued it, PEM.
    pub certificate_chain: String,
    /// The bundle to verify it with (this service's CA certificates, PEM).
    pub bundle: String,
    /// The SVID's SHA-256 thumbprint (RFC 8705), as the evidence record names it.
    #[serde(rename = "x5t#S256")]
    pub thumbprint: String,
    /// Only when the key was generated here: PKCS#8 PEM, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    pub expires_at: i64,
}

/// A started session and its access token (shown once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StartedSession {
    pub session_id: String,
    pub spiffe_id: String,
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    /// The record of the session's start in the evidence log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::evidence::Receipt>,
    /// The session's X.509-SVID, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svid: Option<IssuedSvid>,
    /// Set when the token is bound to the client certificate of the connection that asked
    /// (RFC 8705).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub cnf: Option<zt_identity::session::Confirmation>,
    /// The session as its record holds it (not sent: the token carries it).
    #[serde(skip)]
    pub claim: SessionClaim,
    #[serde(skip)]
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
struct SessionEntry {
    claim: SessionClaim,
    expires: i64,
    revoked: bool,
    children: Vec<String>,
    /// Its tokens' index in the status list.
    status_idx: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    agents: HashMap<String, AgentInfo>,
    sessions: HashMap<String, SessionEntry>,
    /// One bit per session whose place is known here: set when revoked.
    status: StatusList,
    /// Changes with every start and revocation: when the served list must be made again.
    generation: u64,
    /// The keys of every replica's tokens, and their public halves for the JWKS.
    keys: Arc<VerifyingKeys>,
    public_keys: Vec<zt_identity::session::PublicKey>,
    /// The change feed from the store was lost and the state not yet read again: no session
    /// can be checked (fail closed).
    stale: bool,
    /// Revoked delegation grants that have not expired: a delegated token whose grant, or a
    /// grant above it, is here is refused.
    revoked_grants: HashSet<String>,
    /// The quarantines in force, by target (`agent:<name>`, `session:<id>`).
    quarantined: HashMap<String, Quarantine>,
}

/// A quarantine in force: every decision of its agent, or of its session and the sessions
/// descending from it, is denied until an operator releases it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Quarantine {
    /// `agent:<name>` or `session:<id>`.
    pub target: String,
    /// Why: the policy's reason, or the operator's.
    pub reason: String,
    /// Who: `policy:<id>`, or the operator credential's name.
    pub by: String,
    /// The decision that quarantined (a policy's), or the record of the operator's act.
    pub decision_id: String,
    pub at_ms: i64,
}

impl Quarantine {
    /// The target naming an agent.
    pub fn agent_target(name: &str) -> String {
        format!("agent:{name}")
    }

    /// The target naming a session.
    pub fn session_target(id: &str) -> String {
        format!("session:{id}")
    }

    fn from_stored(q: zt_store::StoredQuarantine) -> Self {
        Self {
            target: q.target,
            reason: q.reason,
            by: q.by,
            decision_id: q.decision_id,
            at_ms: q.at_ms,
        }
    }
}

/// The topics of the store's change feed ([`zt_store::changes`]) this registry publishes and
/// follows.
pub const TOPIC_START: &str = "session.start";
pub const TOPIC_REVOKE: &str = "session.revoke";
pub const TOPIC_AGENT: &str = "agent";
pub const TOPIC_TOKEN_KEY: &str = "token_key";
pub const TOPIC_GRANT_REVOKE: &str = "grant.revoke";
pub const TOPIC_QUARANTINE: &str = "quarantine";

/// The path of the sessions' Token Status List.
pub const STATUS_LIST_PATH: &str = "/v1/status-lists/sessions";

/// Seconds a verifier may keep a status list before fetching it again.
pub const STATUS_LIST_TTL: i64 = 30;

/// A session whose token verified and which is live (not revoked, not expired, its agent
/// enabled) at the moment it was checked.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub claims: Arc<AccessClaims>,
}

impl LiveSession {
    /// Refuses a token bound to a client certificate (RFC 8705) unless `holder`, the
    /// certificate of the connection that presented it, is that one.
    pub fn check_holder(
        &self,
        holder: Option<&zt_identity::svid::X509Svid>,
    ) -> Result<(), SessionError> {
        let Some(cnf) = &self.claims.cnf else {
            return Ok(());
        };
        match holder {
            Some(svid) if svid.thumbprint == cnf.x5t_s256 => Ok(()),
            Some(svid) => Err(SessionError::WrongHolder(format!(
                "this connection presents another certificate (`{}`)",
                svid.id
            ))),
            None => Err(SessionError::WrongHolder(
                "it came without that certificate (no mutual TLS, or passed on by an enforcement point)"
                    .into(),
            )),
        }
    }
}

/// Why a session cannot act or start another.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the session `{0}` was revoked")]
    Revoked(String),
    #[error("the delegation `{0}` was revoked, so every token delegated from it is void")]
    GrantRevoked(String),
    #[error("there is no delegation `{0}`")]
    NoGrant(String),
    #[error("the session `{0}` is not known to this service")]
    Unknown(String),
    #[error(
        "the token is bound to a client certificate (RFC 8705) and is accepted only over mutual TLS with that certificate: {0}"
    )]
    WrongHolder(String),
    #[error("the agent `{0}` is disabled")]
    AgentDisabled(String),
    #[error("{0}")]
    Invalid(String),
    #[error("there is no agent `{0}`")]
    NoAgent(String),
    #[error("there is no session `{0}`")]
    NoSession(String),
    #[error("an agent named `{0}` exists already")]
    AgentExists(String),
    #[error("the store could not be written")]
    Store(#[from] StoreError),
    #[error(
        "this node lost the store's change feed and is reading its state again: no session can be checked now (fail closed); retry shortly"
    )]
    Stale,
}

/// Most verified tokens cached; the cache is emptied when full.
const MAX_CACHED_TOKENS: usize = 16_384;

/// Agents, sessions and the key that signs their tokens.
pub struct Sessions {
    settings: SessionSettings,
    issuer: String,
    signer: TokenSigner,
    store: Store,
    state: RwLock<State>,
    verified: Mutex<HashMap<[u8; 32], Arc<AccessClaims>>>,
    /// The last status list token made, and the generation it shows.
    status_token: Mutex<Option<(u64, i64, String)>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("issuer", &self.issuer)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

fn invalid(detail: impl Into<String>) -> SessionError {
    SessionError::Invalid(detail.into())
}

impl Sessions {
    /// Loads agents and unexpired sessions from the store.
    pub async fn load(
        settings: SessionSettings,
        issuer: String,
        signer: TokenSigner,
        store: Store,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let own = signer.public_key();
        store
            .add_token_key(&own.kid, &hex::encode(own.x), now_ms)
            .await?;
        store.publish(TOPIC_TOKEN_KEY, &own.kid).await?;
        let state = read_state(&store, now_ms).await?;
        Ok(Self {
            settings,
            issuer,
            signer,
            store,
            state: RwLock::new(state),
            verified: Mutex::new(HashMap::new()),
            status_token: Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.settings.audience
    }

    /// The JWKS of access tokens.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> =
            self.read().public_keys.iter().map(|k| k.jwk()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// Follows the store's change feed, so that sessions started, revoked or whose agents were
    /// disabled on other replicas are known here within milliseconds. While the feed is lost,
    /// every session is refused (fail closed); when it is back, the whole state is read again.
    pub async fn follow(self: Arc<Self>) -> Result<(), StoreError> {
        let mut feed = self.store.subscribe().await?;
        tokio::spawn(async move {
            while let Some(item) = feed.recv().await {
                let applied = match item {
                    zt_store::changes::Feed::Change(change) => self.apply(&change).await,
                    zt_store::changes::Feed::Lost => {
                        self.write().stale = true;
                        tracing::warn!(
                            "the store's change feed was lost: sessions are refused until it is back and the state read again"
                        );
                        Ok(())
                    }
                    zt_store::changes::Feed::Resumed => self.reread().await,
                };
                if let Err(e) = applied {
                    // A change that could not be applied leaves this node behind: refuse
                    // sessions until the state could be read whole again.
                    tracing::error!(error = %crate::error_chain(&e), "a change from the store could not be applied; reading the whole state again");
                    self.write().stale = true;
                    while let Err(e) = self.reread().await {
                        tracing::error!(error = %crate::error_chain(&e), "the session state could not be read; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// Reads one session from the store into the registry (one started on another replica
    /// that this one has not heard of yet); `false` if the store has none of that id.
    pub async fn load_session(&self, id: &str) -> Result<bool, StoreError> {
        match self.store.session(id).await? {
            Some(session) => {
                insert_session(&mut self.write(), &session)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Reads the whole state from the store again and takes it (clearing `stale`).
    async fn reread(&self) -> Result<(), StoreError> {
        let mut fresh = read_state(&self.store, crate::now_ms()).await?;
        let mut state = self.write();
        fresh.generation = state.generation + 1;
        *state = fresh;
        tracing::info!("session state read again from the store");
        Ok(())
    }

    /// Applies one change another replica (or this one) made.
    async fn apply(&self, change: &zt_store::changes::Change) -> Result<(), StoreError> {
        match change.topic.as_str() {
            TOPIC_START => {
                if !self.read().sessions.contains_key(&change.key)
                    && let Some(session) = self.store.session(&change.key).await?
                {
                    insert_session(&mut self.write(), &session)?;
                }
            }
            TOPIC_REVOKE => {
                for id in change.key.split(',').filter(|id| !id.is_empty()) {
                    if !self.read().sessions.contains_key(id)
                        && let Some(session) = self.store.session(id).await?
                    {
                        insert_session(&mut self.write(), &session)?;
                    }
                    let mut state = self.write();
                    let mut revoked = Vec::new();
                    revoke_tree(&mut state, id, &mut revoked);
                }
            }
            TOPIC_AGENT => {
                if let Some(agent) = self.store.agent(&change.key).await? {
                    let agent = agent_info(agent)?;
                    let mut state = self.write();
                    if agent.disabled {
                        revoke_agent(&mut state, &agent.name);
                    }
                    state.agents.insert(agent.name.clone(), agent);
                }
            }
            TOPIC_GRANT_REVOKE => {
                self.write().revoked_grants.insert(change.key.clone());
            }
            TOPIC_QUARANTINE => {
                let found = self.store.quarantines(Some(&change.key)).await?;
                let mut state = self.write();
                match found.into_iter().next() {
                    Some(q) => {
                        state
                            .quarantined
                            .insert(change.key.clone(), Quarantine::from_stored(q));
                    }
                    None => {
                        state.quarantined.remove(&change.key);
                    }
                }
            }
            TOPIC_TOKEN_KEY => {
                let (keys, public_keys) = read_keys(&self.store).await?;
                let mut state = self.write();
                state.keys = keys;
                state.public_keys = public_keys;
            }
            other => tracing::debug!(topic = other, "a change of another kind, ignored"),
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sessions' Token Status List, as a signed `statuslist+jwt`, made again only when a
    /// session was started or revoked since (or the last one is half its lifetime old).
    pub fn status_list_token(&self, now_ms: i64) -> Result<String, String> {
        let now = now_ms.div_euclid(1000);
        let generation = self.read().generation;
        let mut cache = self
            .status_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made_for, made_at, token)) = cache.as_ref()
            && *made_for == generation
            && now - made_at < STATUS_LIST_TTL / 2
        {
            return Ok(token.clone());
        }
        let (generation, list) = {
            let state = self.read();
            (state.generation, state.status.clone())
        };
        let uri = format!("{}{STATUS_LIST_PATH}", self.issuer);
        let token = list.token(&self.signer, &uri, now, STATUS_LIST_TTL)?;
        *cache = Some((generation, now, token.clone()));
        Ok(token)
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut agents: Vec<AgentInfo> = self.read().agents.values().cloned().collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    /// Registers an agent.
    pub async fn add_agent(
        &self,
        agent: AgentInfo,
        now_ms: i64,
    ) -> Result<AgentInfo, SessionError> {
        zt_identity::session::check_name("agent name", &agent.name).map_err(invalid)?;
        if agent.owner.trim().is_empty() {
            return Err(invalid("`owner` must name the person or team responsible"));
        }
        for digest in agent.allowed_tool_manifests.iter().flatten() {
            check_manifest(digest)?;
        }
        let details = AgentDetails {
            description: agent.description.clone(),
            allowed_models: agent.allowed_models.clone(),
            allowed_tool_manifests: agent.allowed_tool_manifests.clone(),
        };
        let stored = StoredAgent {
            name: agent.name.clone(),
            owner: agent.owner.clone(),
            details: serde_json::to_string(&details).unwrap_or_default(),
            created_at_ms: now_ms,
            disabled_at_ms: None,
        };
        match self.store.add_agent(&stored).await {
            Err(StoreError::Exists(name)) => return Err(SessionError::AgentExists(name)),
            other => other?,
        }
        let agent = AgentInfo {
            disabled: false,
            ..agent
        };
        self.write()
            .agents
            .insert(agent.name.clone(), agent.clone());
        self.store.publish(TOPIC_AGENT, &agent.name).await?;
        Ok(agent)
    }

    /// Disables an agent and revokes every session of it (and their descendants). Returns the
    /// revoked session ids.
    pub async fn disable_agent(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, SessionError> {
        let revoked = {
            let mut state = self.write();
            let agent = state
                .agents
                .get_mut(name)
                .ok_or_else(|| SessionError::NoAgent(name.to_owned()))?;
            agent.disabled = true;
            revoke_agent(&mut state, name)
        };
        self.store.disable_agent(name, now_ms).await?;
        self.store.revoke_sessions(&revoked, now_ms).await?;
        self.store.publish(TOPIC_AGENT, name).await?;
        Ok(revoked)
    }

    /// Revokes a session and every session descending from it. Effective in memory before the
    /// store is written: a failed write still stops them here (and is reported).
    pub async fn revoke(&self, id: &str, now_ms: i64) -> Result<Vec<String>, SessionError> {
        let revoked = {
            let mut state = self.write();
            if !state.sessions.contains_key(id) {
                return Err(SessionError::NoSession(id.to_owned()));
            }
            let mut revoked = Vec::new();
            revoke_tree(&mut state, id, &mut revoked);
            revoked
        };
        self.store.revoke_sessions(&revoked, now_ms).await?;
        self.store.publish(TOPIC_REVOKE, &revoked.join(",")).await?;
        Ok(revoked)
    }

    /// Holds a target on this node at once (until [`Self::quarantine`] stores and announces it).
    pub fn hold(&self, q: Quarantine) {
        self.write().quarantined.insert(q.target.clone(), q);
    }

    /// Quarantines a target: here first (the next decision on this node is denied even if the
    /// store cannot be written, which is then reported), then in the store, then announced to
    /// every replica.
    pub async fn quarantine(&self, q: Quarantine) -> Result<(), SessionError> {
        self.hold(q.clone());
        self.store
            .add_quarantine(&zt_store::StoredQuarantine {
                target: q.target.clone(),
                reason: q.reason,
                by: q.by,
                decision_id: q.decision_id,
                at_ms: q.at_ms,
            })
            .await?;
        self.store.publish(TOPIC_QUARANTINE, &q.target).await?;
        Ok(())
    }

    /// Releases a target: in the store first (a release that cannot be stored releases
    /// nothing), then here, then announced. `false` if it was not in quarantine.
    pub async fn release(&self, target: &str, now_ms: i64) -> Result<bool, SessionError> {
        let released = self.store.release_quarantine(target, now_ms).await?;
        let here = self.write().quarantined.remove(target).is_some();
        self.store.publish(TOPIC_QUARANTINE, target).await?;
        Ok(released || here)
    }

    /// Whether a session of this id is known here (live, revoked or expired but not yet
    /// forgotten).
    pub fn knows_session(&self, id: &str) -> bool {
        self.read().sessions.contains_key(id)
    }

    /// The quarantines in force.
    pub fn quarantines(&self) -> Vec<Quarantine> {
        let mut all: Vec<_> = self.read().quarantined.values().cloned().collect();
        all.sort_by(|a, b| a.target.cmp(&b.target));
        all
    }

    /// The quarantine that holds a decision of `agent` in `sessions` (the agent's, one of the
    /// sessions', or a quarantined ancestor session's), if any. A node whose state is stale
    /// cannot tell: an error, which the caller takes as a deny.
    pub fn quarantine_of(
        &self,
        agent: &str,
        sessions: &[&str],
    ) -> Result<Option<Quarantine>, SessionError> {
        let state = self.read();
        if state.stale {
            return Err(SessionError::Stale);
        }
        if state.quarantined.is_empty() {
            return Ok(None);
        }
        if let Some(q) = state.quarantined.get(&Quarantine::agent_target(agent)) {
            return Ok(Some(q.clone()));
        }
        for session in sessions {
            let mut next = Some((*session).to_owned());
            // Up the lineage: a child of a quarantined session is held with it.
            for _ in 0..=MAX_DEPTH {
                let Some(id) = next else { break };
                if let Some(q) = state.quarantined.get(&Quarantine::session_target(&id)) {
                    return Ok(Some(q.clone()));
                }
                next = state
                    .sessions
                    .get(&id)
                    .and_then(|entry| entry.claim.parent.clone());
            }
        }
        Ok(None)
    }

    fn expectations(&self) -> Expectations {
        Expectations {
            issuer: self.issuer.clone(),
            audience: self.settings.audience.clone(),
            leeway: 0,
        }
    }

    /// Verifies an access token and checks that its session is live at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<LiveSession, SessionError> {
        let now = now_ms.div_euclid(1000);
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|cache| cache.get(&digest).cloned())
            .filter(|claims| now < claims.exp);
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let keys = Arc::clone(&self.read().keys);
                let verified =
                    UnverifiedToken::new(token).verify(&keys, &self.expectations(), now)?;
                let claims = Arc::new(verified.claims);
                if let Ok(mut cache) = self.verified.lock() {
                    if cache.len() >= MAX_CACHED_TOKENS {
                        cache.clear();
                    }
                    cache.insert(digest, Arc::clone(&claims));
                }
                claims
            }
        };
        let state = self.read();
        if state.stale {
            return Err(SessionError::Stale);
        }
        let id = &claims.session.session_id;
        let session = state
            .sessions
            .get(id)
            .ok_or_else(|| SessionError::Unknown(id.clone()))?;
        if session.revoked {
            return Err(SessionError::Revoked(id.clone()));
        }
        if state
            .agents
            .get(&claims.session.agent)
            .is_none_or(|a| a.disabled)
        {
            return Err(SessionError::AgentDisabled(claims.session.agent.clone()));
        }
        // A delegated token stands only while every grant and session above it does.
        if let Some(delegation) = &claims.delegation {
            if let Some(grant) = std::iter::once(&delegation.id)
                .chain(&delegation.above)
                .find(|g| state.revoked_grants.contains(*g))
            {
                return Err(SessionError::GrantRevoked(grant.clone()));
            }
            for id in &delegation.sessions {
                match state.sessions.get(id) {
                    None => return Err(SessionError::Unknown(id.clone())),
                    Some(s) if s.revoked => return Err(SessionError::Revoked(id.clone())),
                    Some(_) => {}
                }
            }
        }
        Ok(LiveSession { claims })
    }

    /// The claim of the session `id` if it is live now: known, not revoked, unexpired, its agent
    /// enabled.
    pub fn live_claim(&self, id: &str, now_ms: i64) -> Result<SessionClaim, SessionError> {
        let state = self.read();
        if state.stale {
            return Err(SessionError::Stale);
        }
        let session = state
            .sessions
            .get(id)
            .ok_or_else(|| SessionError::Unknown(id.to_owned()))?;
        if session.revoked || session.expires <= now_ms.div_euclid(1000) {
            return Err(SessionError::Revoked(id.to_owned()));
        }
        if state
            .agents
            .get(&session.claim.agent)
            .is_none_or(|a| a.disabled)
        {
            return Err(SessionError::AgentDisabled(session.claim.agent.clone()));
        }
        Ok(session.claim.clone())
    }

    /// Revokes a delegation grant, and so every token delegated from it. Effective in memory
    /// before the store is written, as session revocations are.
    pub async fn revoke_grant(&self, id: &str, now_ms: i64) -> Result<(), SessionError> {
        self.write().revoked_grants.insert(id.to_owned());
        if !self.store.revoke_grant(id, now_ms).await? {
            self.write().revoked_grants.remove(id);
            return Err(SessionError::NoGrant(id.to_owned()));
        }
        self.store.publish(TOPIC_GRANT_REVOKE, id).await?;
        Ok(())
    }

    /// Signs a delegated token (made by [`crate::delegation`]) with the session token key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, SessionError> {
        Ok(self.signer.sign(claims)?)
    }

    /// The trust domain: a Transaction Token's audience.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// Signs a Transaction Token with the session token key.
    pub fn sign_txn(
        &self,
        claims: &zt_identity::session::TxnClaims,
    ) -> Result<String, SessionError> {
        self.signer
            .sign_typed(zt_identity::session::TXN_TOKEN_TYPE, claims)
            .map_err(|e| SessionError::Token(TokenError::Malformed(e)))
    }

    /// Verifies a Transaction Token signed by any replica, for this trust domain, at `now_ms`.
    pub fn verify_txn(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<zt_identity::session::TxnClaims, TokenError> {
        let keys = Arc::clone(&self.read().keys);
        let expect = Expectations {
            issuer: self.issuer.clone(),
            audience: self.settings.trust_domain.clone(),
            leeway: 0,
        };
        zt_identity::session::UnverifiedTxnToken(token).verify(
            &keys,
            &expect,
            now_ms.div_euclid(1000),
        )
    }

    /// The verified claims of a token this service signed that has not expired, revoked or
    /// not (for revocation by the token's holder).
    pub fn claims_of(&self, token: &str, now_ms: i64) -> Result<AccessClaims, SessionError> {
        let keys = Arc::clone(&self.read().keys);
        Ok(UnverifiedToken::new(token)
            .verify(&keys, &self.expectations(), now_ms.div_euclid(1000))?
            .claims)
    }

    /// Starts a session: by a broker (`broker`: its credential's name), or as the child of
    /// `parent` (the session whose token asked).
    pub async fn start(
        &self,
        start: SessionStart,
        starter: Starter<'_>,
        now_ms: i64,
        random: [u8; 16],
    ) -> Result<StartedSession, SessionError> {
        let now = now_ms.div_euclid(1000);
        if start.lineage.broker.is_some() {
            return Err(invalid(
                "`lineage.broker` is recorded by the service (the broker's credential name), not sent",
            ));
        }
        for (field, value) in [
            ("/on_behalf_of", &start.on_behalf_of),
            ("/ticket", &start.ticket),
            ("/lineage/workflow", &start.lineage.workflow),
            ("/lineage/model", &start.lineage.model),
            ("/lineage/sandbox", &start.lineage.sandbox),
        ] {
            if let Some(value) = value
                && (value.is_empty() || value.len() > 256)
            {
                return Err(invalid(format!("`{field}` must be 1 to 256 bytes")));
            }
        }
        if let Some(manifest) = &start.lineage.tool_manifest {
            check_manifest(manifest)?;
        }
        let (parent, broker, workload, parent_expires) = match starter {
            Starter::Broker(name) => {
                if start.parent_session.is_some() {
                    return Err(invalid(
                        "a child session is started with its parent session's own token, not a broker's credential",
                    ));
                }
                (None, Some(name.to_owned()), None, None)
            }
            Starter::Workload { id, may_claim } => {
                if start.parent_session.is_some() {
                    return Err(invalid(
                        "a child session is started with its parent session's own token, not a workload's SVID",
                    ));
                }
                for (field, set) in [
                    ("workflow", start.lineage.workflow.is_some()),
                    ("model", start.lineage.model.is_some()),
                    ("tool_manifest", start.lineage.tool_manifest.is_some()),
                    ("sandbox", start.lineage.sandbox.is_some()),
                    ("on_behalf_of", start.on_behalf_of.is_some()),
                    ("ticket", start.ticket.is_some()),
                ] {
                    if set && !may_claim.iter().any(|m| m == field) {
                        return Err(invalid(format!(
                            "the workload `{id}` may not claim `{field}` (its mapping's `may_claim` does not name it)"
                        )));
                    }
                }
                (None, None, Some(id.to_owned()), None)
            }
            Starter::Parent(parent) => {
                let claim = &parent.claims.session;
                if start
                    .parent_session
                    .as_ref()
                    .is_some_and(|p| *p != claim.session_id)
                {
                    return Err(invalid(
                        "`parent_session` must be the session whose token starts the child",
                    ));
                }
                if claim.depth + 1 > MAX_DEPTH {
                    return Err(invalid(format!(
                        "sessions nest at most {MAX_DEPTH} levels deep"
                    )));
                }
                if start
                    .on_behalf_of
                    .as_ref()
                    .is_some_and(|o| Some(o) != claim.on_behalf_of.as_ref())
                {
                    return Err(invalid(
                        "a child session acts for the same person as its parent: `on_behalf_of` cannot change",
                    ));
                }
                (
                    Some(claim.clone()),
                    claim.lineage.broker.clone(),
                    claim.workload.clone(),
                    Some(parent.claims.exp),
                )
            }
        };
        let on_behalf_of = match (&start.on_behalf_of, &parent) {
            (Some(who), _) => Some(who.clone()),
            (None, Some(parent)) => parent.on_behalf_of.clone(),
            // A workload acts for itself unless it may claim a person.
            (None, None) if workload.is_some() => None,
            (None, None) => {
                return Err(invalid(
                    "`on_behalf_of` must name the person the session acts for",
                ));
            }
        };
        {
            let state = self.read();
            let agent = state
                .agents
                .get(&start.agent)
                .ok_or_else(|| SessionError::NoAgent(start.agent.clone()))?;
            if agent.disabled {
                return Err(SessionError::AgentDisabled(start.agent.clone()));
            }
            if let (Some(allowed), Some(model)) = (&agent.allowed_models, &start.lineage.model)
                && !allowed.contains(model)
            {
                return Err(invalid(format!(
                    "the agent `{}` may not run on the model `{model}`",
                    start.agent
                )));
            }
            if agent.allowed_models.is_some() && start.lineage.model.is_none() {
                return Err(invalid(format!(
                    "the agent `{}` runs only on its allowed models: name one in `lineage.model`",
                    start.agent
                )));
            }
            if let Some(allowed) = &agent.allowed_tool_manifests {
                match &start.lineage.tool_manifest {
                    Some(manifest) if allowed.contains(manifest) => {}
                    Some(manifest) => {
                        return Err(invalid(format!(
                            "the agent `{}` may not run with the tool manifest `{manifest}`",
                            start.agent
                        )));
                    }
                    None => {
                        return Err(invalid(format!(
                            "the agent `{}` runs only with its allowed tool manifests: name one in `lineage.tool_manifest`",
                            start.agent
                        )));
                    }
                }
            }
            if let Some(parent) = &parent {
                match state.sessions.get(&parent.session_id) {
                    Some(entry) if !entry.revoked => {}
                    _ => return Err(SessionError::Revoked(parent.session_id.clone())),
                }
            }
        }
        let expires = session_expiry(
            now,
            start.ttl,
            self.settings.default_ttl,
            self.settings.max_ttl,
            parent_expires,
        )
        .map_err(invalid)?;
        let id = zt_identity::session::session_id(random);
        let claim = SessionClaim {
            agent: start.agent.clone(),
            session_id: id.clone(),
            parent: parent.as_ref().map(|p| p.session_id.clone()),
            depth: parent.as_ref().map_or(0, |p| p.depth + 1),
            lineage: Lineage {
                broker: broker.clone(),
                ..start.lineage
            },
            on_behalf_of,
            ticket: start
                .ticket
                .or_else(|| parent.as_ref().and_then(|p| p.ticket.clone())),
            workload: workload.clone(),
        };
        let cnf = start
            .bind
            .map(|x5t_s256| zt_identity::session::Confirmation { x5t_s256 });
        let started_by = broker.or(workload).unwrap_or_default();
        let spiffe = spiffe_id(&self.settings.trust_domain, &start.agent, &id);
        // The status list place comes from the store, so that replicas never give one twice
        // (the store refuses a place taken meanwhile: try the next).
        let mut status_idx = self.store.next_status_idx().await?;
        let mut attempts = 0;
        let token = loop {
            let claims = AccessClaims {
                approval: None,
                iss: self.issuer.clone(),
                sub: spiffe.clone(),
                aud: self.settings.audience.clone(),
                exp: expires,
                iat: now,
                nbf: now,
                jti: id.clone(),
                client_id: start.agent.clone(),
                session: claim.clone(),
                status: Some(Status {
                    status_list: StatusReference {
                        idx: status_idx,
                        uri: format!("{}{STATUS_LIST_PATH}", self.issuer),
                    },
                }),
                cnf: cnf.clone(),
                act: None,
                authorization_details: None,
                delegation: None,
            };
            let token = self.signer.sign(&claims)?;
            let stored = self
                .store
                .add_session(&StoredSession {
                    id: id.clone(),
                    agent: start.agent.clone(),
                    parent: claim.parent.clone(),
                    claim: serde_json::to_string(&claim).unwrap_or_default(),
                    started_by: started_by.clone(),
                    created_at_ms: now_ms,
                    expires_at_ms: expires.saturating_mul(1000),
                    revoked_at_ms: None,
                    status_idx: i64::try_from(status_idx).ok(),
                })
                .await;
            match stored {
                Ok(()) => break token,
                Err(StoreError::Exists(_)) if attempts < 8 => {
                    attempts += 1;
                    status_idx = self.store.next_status_idx().await?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        {
            let mut state = self.write();
            // Expired sessions need no more keeping: their tokens are refused anyway.
            state.sessions.retain(|_, s| s.expires > now);
            let entry = SessionEntry {
                claim: claim.clone(),
                expires,
                revoked: false,
                children: Vec::new(),
                status_idx: Some(status_idx),
            };
            insert_entry(&mut state, id.clone(), entry);
        }
        self.store.publish(TOPIC_START, &id).await?;
        Ok(StartedSession {
            session_id: id,
            spiffe_id: spiffe,
            access_token: token,
            token_type: "Bearer",
            expires_in: expires - now,
            evidence: None,
            svid: None,
            cnf,
            claim,
            expires_at: expires,
        })
    }
}

/// Everything the registry holds, read from the store: agents, unexpired sessions, the status
/// list, and every replica's token keys.
async fn read_state(store: &Store, now_ms: i64) -> Result<State, StoreError> {
    let mut state = State::default();
    for agent in store.agents().await? {
        let agent = agent_info(agent)?;
        state.agents.insert(agent.name.clone(), agent);
    }
    let stored = store.unexpired_sessions(now_ms).await?;
    for session in &stored {
        insert_session(&mut state, session)?;
    }
    // The list covers every place ever given, expired sessions' included.
    state.status.cover(store.next_status_idx().await?);
    (state.keys, state.public_keys) = read_keys(store).await?;
    state.revoked_grants = store.revoked_grants(now_ms).await?.into_iter().collect();
    state.quarantined = store
        .quarantines(None)
        .await?
        .into_iter()
        .map(|q| (q.target.clone(), Quarantine::from_stored(q)))
        .collect();
    Ok(state)
}

/// Every replica's token keys, to verify with and to publish.
async fn read_keys(
    store: &Store,
) -> Result<(Arc<VerifyingKeys>, Vec<zt_identity::session::PublicKey>), StoreError> {
    let mut public_keys = Vec::new();
    for (kid, public_key) in store.token_keys().await? {
        let x: [u8; 32] = hex::decode(&public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("token key `{kid}`")))?;
        public_keys.push(zt_identity::session::PublicKey { kid, x });
    }
    Ok((Arc::new(VerifyingKeys::new(&public_keys)), public_keys))
}

/// Adds a stored session to the registry, unless it is there already.
fn insert_session(state: &mut State, session: &StoredSession) -> Result<(), StoreError> {
    if !state.sessions.contains_key(&session.id) {
        insert_entry(state, session.id.clone(), session_entry(session)?);
    }
    Ok(())
}

/// Adds a session to the registry: its status bit, its place among its parent's children, and
/// its own children (which may have been read before it).
fn insert_entry(state: &mut State, id: String, entry: SessionEntry) {
    if let Some(idx) = entry.status_idx {
        if entry.revoked {
            state.status.revoke(idx);
        }
        state.status.cover(idx + 1);
    }
    let children: Vec<String> = state
        .sessions
        .iter()
        .filter(|(_, s)| s.claim.parent.as_deref() == Some(id.as_str()))
        .map(|(child, _)| child.clone())
        .collect();
    if let Some(parent) = &entry.claim.parent
        && let Some(parent) = state.sessions.get_mut(parent)
    {
        parent.children.push(id.clone());
    }
    state
        .sessions
        .insert(id, SessionEntry { children, ..entry });
    state.generation += 1;
}

fn agent_info(agent: StoredAgent) -> Result<AgentInfo, StoreError> {
    let details: AgentDetails = serde_json::from_str(&agent.details)
        .map_err(|e| StoreError::Corrupt(format!("agent `{}`: {e}", agent.name)))?;
    Ok(AgentInfo {
        name: agent.name,
        owner: agent.owner,
        description: details.description,
        allowed_models: details.allowed_models,
        allowed_tool_manifests: details.allowed_tool_manifests,
        disabled: agent.disabled_at_ms.is_some(),
    })
}

fn session_entry(session: &StoredSession) -> Result<SessionEntry, StoreError> {
    let claim: SessionClaim = serde_json::from_str(&session.claim)
        .map_err(|e| StoreError::Corrupt(format!("session `{}`: {e}", session.id)))?;
    Ok(SessionEntry {
        claim,
        expires: session.expires_at_ms / 1000,
        revoked: session.revoked_at_ms.is_some(),
        children: Vec::new(),
        status_idx: session.status_idx.and_then(|i| u64::try_from(i).ok()),
    })
}

/// Who starts a session.
#[derive(Debug)]
pub enum Starter<'a> {
    /// A broker, by its credential's name.
    Broker(&'a str),
    /// The parent session, by its verified token.
    Parent(&'a LiveSession),
    /// A workload, by the SPIFFE ID of its verified SVID and what its mapping lets it claim.
    Workload {
        id: &'a str,
        may_claim: &'a [String],
    },
}

fn check_manifest(digest: &str) -> Result<(), SessionError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "`{digest}` is not a tool manifest digest: `sha256:` and 64 lowercase hex digits"
        )))
    }
}

/// Revokes every session of the agent `name`, and their descendants; returns their ids.
fn revoke_agent(state: &mut State, name: &str) -> Vec<String> {
    let roots: Vec<String> = state
        .sessions
        .iter()
        .filter(|(_, s)| s.claim.agent == name)
        .map(|(id, _)| id.clone())
        .collect();
    let mut revoked = Vec::new();
    for root in roots {
        revoke_tree(state, &root, &mut revoked);
    }
    revoked
}

/// Marks `id` and its descendants revoked, in the registry and the status list, adding them
/// to `revoked`.
fn revoke_tree(state: &mut State, id: &str, revoked: &mut Vec<String>) {
    let mut pending = vec![id.to_owned()];
    let mut indexes = Vec::new();
    while let Some(next) = pending.pop() {
        if let Some(entry) = state.sessions.get_mut(&next) {
            entry.revoked = true;
            indexes.extend(entry.status_idx);
            pending.extend(entry.children.iter().cloned());
            revoked.push(next);
        }
    }
    for idx in indexes {
        state.status.revoke(idx);
    }
    state.generation += 1;
}

/// A verified session's claim as policies see it (`bound`: its token is bound to the client
/// certificate that presented it).
pub fn claim_view(claim: &SessionClaim, bound: bool) -> serde_json::Map<String, serde_json::Value> {
    let mut view = serde_json::Map::new();
    view.insert("verified".into(), true.into());
    view.insert("id".into(), claim.session_id.clone().into());
    view.insert("agent".into(), claim.agent.clone().into());
    view.insert("depth".into(), i64::from(claim.depth).into());
    view.insert("bound".into(), bound.into());
    for (name, value) in [
        ("parent", &claim.parent),
        ("on_behalf_of", &claim.on_behalf_of),
        ("ticket", &claim.ticket),
        ("workflow", &claim.lineage.workflow),
        ("model", &claim.lineage.model),
        ("tool_manifest", &claim.lineage.tool_manifest),
        ("sandbox", &claim.lineage.sandbox),
        ("broker", &claim.lineage.broker),
        ("workload", &claim.workload),
    ] {
        if let Some(value) = value {
            view.insert(name.into(), value.clone().into());
        }
    }
    view
}

/// The session as policies see it, in `context.session`: verified from a token, or asserted by
/// the enforcement point `pep` when it passed only a declared actor.
pub fn policy_view(session: Option<&LiveSession>, pep: Option<&str>) -> Option<serde_json::Value> {
    let mut view = serde_json::Map::new();
    match session {
        Some(live) => {
            // A bound token got here only from the connection holding its certificate.
            view = claim_view(&live.claims.session, live.claims.cnf.is_some());
            if let Some(pep) = pep {
                view.insert("via".into(), pep.into());
            }
        }
        None => {
            view.insert("verified".into(), false.into());
            view.insert("asserted_by".into(), pep?.into());
        }
    }
    Some(serde_json::Value::Object(view))
}
