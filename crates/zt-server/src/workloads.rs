//! Workload identity at the service's edge: the trust bundles it reads (and reads again when
//! their files change), the mutual TLS listener's check of client certificates, the mapping
//! from SPIFFE IDs to agents and callers, and the service's own issuing CA.
//!
//! The SPIFFE rules themselves are `zt_identity::svid`'s; this module holds the files, the clock
//! and rustls.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _};
use serde::Deserialize;
use zt_identity::svid::{Ca, SpiffeId, SvidError, TrustBundle, TrustBundles, X509Svid};
use zt_identity::{Caller, CredentialName, Role};

/// The CA's files in the key directory (`ztinfra ca init`).
pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA certificate before the last rotation: still trusted (and served in the bundle), so
/// that the SVIDs it issued stay valid until they expire.
pub const CA_PREVIOUS_FILE: &str = "ca.previous.crt";

/// The topic of the store's change feed on which replicas announce their CA certificates.
pub const TOPIC_CA: &str = "ca";

/// How often bundle files are checked for changes.
pub const BUNDLE_POLL: Duration = Duration::from_secs(2);

/// Days a CA made by `ztinfra ca init` lives by default.
pub const CA_DAYS: i64 = 365;

/// A trust domain and the file of its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainSource {
    pub name: String,
    /// A SPIFFE bundle (JSON) or PEM CA certificates.
    pub bundle: PathBuf,
}

/// Which SPIFFE IDs are which agent, and which session fields they may set themselves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMapping {
    /// An exact SPIFFE ID, or a prefix ending `/*` (every ID below it).
    pub spiffe_id: String,
    pub agent: String,
    /// Of `workflow`, `model`, `tool_manifest`, `sandbox`, `on_behalf_of`, `ticket`.
    #[serde(default)]
    pub may_claim: Vec<String>,
}

/// Which SPIFFE IDs are which enforcement point or operator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerMapping {
    /// An exact SPIFFE ID, or a prefix ending `/*`.
    pub spiffe_id: String,
    pub name: String,
    /// `pep`, `admin`, `auditor` or `broker`.
    pub role: String,
}

/// The fields of a session a workload may claim (`may_claim`).
pub const CLAIMABLE: [&str; 6] = [
    "workflow",
    "model",
    "tool_manifest",
    "sandbox",
    "on_behalf_of",
    "ticket",
];

/// The mutual TLS listener's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse connections without a client certificate (otherwise they may still present a
    /// bearer token).
    pub client_auth_required: bool,
}

/// `[workloads]` in the config file, and the TLS flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadSettings {
    /// What a JWT-SVID's `aud` must contain [default: `ztinfra`].
    pub audience: Option<String>,
    pub trust_domains: Vec<TrustDomainSource>,
    pub agents: Vec<AgentMapping>,
    pub callers: Vec<CallerMapping>,
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot read `{path}`")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}`: {source}")]
    Bundle { path: PathBuf, source: SvidError },
    #[error("the CA in `{dir}`: {source}")]
    Ca { dir: PathBuf, source: SvidError },
    #[error(
        "the CA in `{dir}` is for the trust domain `{ca}`, but sessions are in `{sessions}`; make a CA for `{sessions}` (`ztinfra ca rotate`) or set `trust_domain = \"{ca}\"`"
    )]
    CaDomain {
        dir: PathBuf,
        ca: String,
        sessions: String,
    },
    #[error("a CA exists already in `{0}`; `ztinfra ca rotate` replaces it")]
    CaExists(PathBuf),
    #[error("there is no CA in `{0}`; make one with `ztinfra ca init`")]
    NoCa(PathBuf),
    #[error("workload mapping: {0}")]
    Mapping(String),
    #[error("the TLS listener: {0}")]
    Tls(String),
}

/// What a verified X.509-SVID is, to this service.
#[derive(Debug)]
pub enum Mapped<'a> {
    Agent(&'a AgentMapping),
    Caller(Caller),
    /// Trusted, but named in no mapping.
    Unmapped,
}

/// Trust bundles, mappings and the CA, as the running service holds them.
pub struct Workloads {
    settings: WorkloadSettings,
    own_domain: String,
    key_dir: PathBuf,
    ca: Option<Ca>,
    /// The CA's certificates this service trusts for its own domain (current and previous).
    own_authorities: Vec<CertificateDer<'static>>,
    bundles: ArcSwap<TrustBundles>,
    /// Each bundle file's modification time and length when it was last read.
    stamps: Mutex<Vec<Stamp>>,
    /// The TLS listener's certificate and key, read again when their files change.
    server_cert: Option<Arc<ServerCert>>,
    /// Other replicas' CA certificates of this trust domain (from the store).
    shared: Mutex<Vec<CertificateDer<'static>>>,
    /// Client certificates the TLS handshake verified a moment ago, by thumbprint, until their
    /// connection takes them ([`Workloads::peer`]): so that a handshake verifies its chain once.
    handshakes: Mutex<std::collections::HashMap<String, Arc<X509Svid>>>,
}

/// Most verified handshake certificates waiting for their connection (a handshake that fails
/// after its certificate verified leaves one behind; the map is emptied when full).
const MAX_HANDSHAKES: usize = 4096;

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("own_domain", &self.own_domain)
            .field("ca", &self.ca)
            .field("bundles", &self.bundles.load())
            .finish_non_exhaustive()
    }
}

/// A file's modification time and length, to tell that it changed.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Workloads {
    /// Reads the bundles and the CA (if `key_dir` has one) and checks the mappings.
    pub fn load(
        settings: WorkloadSettings,
        own_domain: &str,
        key_dir: &Path,
    ) -> Result<Self, WorkloadError> {
        for mapping in &settings.agents {
            check_pattern(&mapping.spiffe_id)?;
            zt_identity::session::check_name("agent name", &mapping.agent)
                .map_err(WorkloadError::Mapping)?;
            for field in &mapping.may_claim {
                if !CLAIMABLE.contains(&field.as_str()) {
                    return Err(WorkloadError::Mapping(format!(
                        "`may_claim` of `{}` names `{field}`; a workload may claim only {}",
                        mapping.spiffe_id,
                        CLAIMABLE.join(", ")
                    )));
                }
            }
        }
        for mapping in &settings.callers {
            check_pattern(&mapping.spiffe_id)?;
            CredentialName::parse(&mapping.name).map_err(WorkloadError::Mapping)?;
            parse_role(&mapping.role)?;
        }
        let ca = load_ca(key_dir)?;
        let mut own_authorities = Vec::new();
        if let Some(ca) = &ca {
            if ca.domain() != own_domain {
                return Err(WorkloadError::CaDomain {
                    dir: key_dir.to_owned(),
                    ca: ca.domain().to_owned(),
                    sessions: own_domain.to_owned(),
                });
            }
            own_authorities.push(ca.certificate().clone());
            let previous = key_dir.join(CA_PREVIOUS_FILE);
            if previous.exists() {
                let text = read(&previous)?;
                own_authorities.push(CertificateDer::from_pem_slice(text.as_bytes()).map_err(
                    |e| WorkloadError::Bundle {
                        path: previous.clone(),
                        source: SvidError::BadCertificate(e.to_string()),
                    },
                )?);
            }
        }
        let settings_tls = settings.tls.clone();
        let workloads = Self {
            stamps: Mutex::new(vec![None; settings.trust_domains.len()]),
            settings,
            own_domain: own_domain.to_owned(),
            key_dir: key_dir.to_owned(),
            ca,
            own_authorities,
            bundles: ArcSwap::from_pointee(TrustBundles::default()),
            handshakes: Mutex::new(std::collections::HashMap::new()),
            shared: Mutex::new(Vec::new()),
            server_cert: match &settings_tls {
                Some(tls) => Some(Arc::new(ServerCert::read(tls)?)),
                None => None,
            },
        };
        workloads.bundles.store(Arc::new(workloads.read_bundles()?));
        Ok(workloads)
    }

    /// Every configured bundle file, read now, and this service's own CA.
    fn read_bundles(&self) -> Result<TrustBundles, WorkloadError> {
        let own = self.own_domain_authorities();
        let mut bundles = Vec::new();
        let mut stamps = Vec::new();
        for source in &self.settings.trust_domains {
            stamps.push(stamp(&source.bundle));
            let text = read(&source.bundle)?;
            let mut bundle =
                TrustBundle::parse(&source.name, &text).map_err(|e| WorkloadError::Bundle {
                    path: source.bundle.clone(),
                    source: e,
                })?;
            if source.name == self.own_domain {
                for cert in &own {
                    bundle
                        .add_authority(cert.clone())
                        .map_err(|e| WorkloadError::Ca {
                            dir: self.key_dir.clone(),
                            source: e,
                        })?;
                }
            }
            bundles.push(bundle);
        }
        if !own.is_empty()
            && !self
                .settings
                .trust_domains
                .iter()
                .any(|d| d.name == self.own_domain)
        {
            bundles.push(
                TrustBundle::from_authorities(&self.own_domain, own).map_err(|e| {
                    WorkloadError::Ca {
                        dir: self.key_dir.clone(),
                        source: e,
                    }
                })?,
            );
        }
        if let Ok(mut kept) = self.stamps.lock() {
            *kept = stamps;
        }
        Ok(TrustBundles::new(bundles))
    }

    /// The CA certificates of this service's own trust domain: its own (current and previous),
    /// then other replicas' (from the store).
    fn own_domain_authorities(&self) -> Vec<CertificateDer<'static>> {
        let mut all = self.own_authorities.clone();
        if let Ok(shared) = self.shared.lock() {
            all.extend(shared.iter().cloned());
        }
        all
    }

    /// Records this replica's CA certificates in the store (for the other replicas) and takes
    /// theirs.
    pub async fn share(&self, store: &zt_store::Store) -> Result<(), zt_store::StoreError> {
        use sha2::Digest as _;
        for cert in &self.own_authorities {
            store
                .add_ca_cert(
                    &hex::encode(sha2::Sha256::digest(cert)),
                    &self.own_domain,
                    &zt_identity::svid::pem_certificate(cert),
                    crate::now_ms(),
                )
                .await?;
        }
        if !self.own_authorities.is_empty() {
            store.publish(TOPIC_CA, &self.own_domain).await?;
        }
        self.take_shared(store).await
    }

    /// Reads the other replicas' CA certificates of this trust domain from the store, and
    /// trusts them from now on.
    async fn take_shared(&self, store: &zt_store::Store) -> Result<(), zt_store::StoreError> {
        let mut shared = Vec::new();
        for pem in store.ca_certs(&self.own_domain).await? {
            let cert = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| zt_store::StoreError::Corrupt(format!("a CA certificate: {e}")))?;
            if !self.own_authorities.contains(&cert) {
                shared.push(cert);
            }
        }
        let changed = match self.shared.lock() {
            Ok(mut kept) if *kept != shared => {
                *kept = shared;
                true
            }
            _ => false,
        };
        if changed {
            match self.read_bundles() {
                Ok(bundles) => {
                    tracing::info!("another replica's CA is trusted now");
                    self.bundles.store(Arc::new(bundles));
                }
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "the trust bundles could not be read again with another replica's CA");
                }
            }
        }
        Ok(())
    }

    /// Follows the store's change feed for CA certificates recorded by other replicas.
    pub async fn follow(
        self: Arc<Self>,
        store: zt_store::Store,
    ) -> Result<(), zt_store::StoreError> {
        let mut feed = store.subscribe().await?;
        tokio::spawn(async move {
            while let Some(item) = feed.recv().await {
                let read = match item {
                    zt_store::changes::Feed::Change(change) if change.topic == TOPIC_CA => true,
                    zt_store::changes::Feed::Resumed => true,
                    _ => false,
                };
                if read && let Err(e) = self.take_shared(&store).await {
                    tracing::error!(error = %crate::error_chain(&e), "other replicas' CA certificates could not be read");
                }
            }
        });
        Ok(())
    }

    /// Reads the bundles again if a file changed since they were read; a bundle that no longer
    /// reads leaves the previous ones in place (and is logged).
    pub fn reload_if_changed(&self) -> bool {
        let changed = {
            let Ok(kept) = self.stamps.lock() else {
                return false;
            };
            self.settings
                .trust_domains
                .iter()
                .zip(kept.iter())
                .any(|(source, kept)| stamp(&source.bundle) != *kept)
        };
        if !changed {
            return false;
        }
        match self.read_bundles() {
            Ok(bundles) => {
                tracing::info!(domains = ?bundles.iter().map(|b| b.domain().to_owned()).collect::<Vec<_>>(), "trust bundles read again");
                metrics::counter!("ztinfra_trust_bundle_reloads_total", "result" => "ok")
                    .increment(1);
                self.bundles.store(Arc::new(bundles));
                true
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "a trust bundle changed and no longer reads; the previous bundles stay in use");
                metrics::counter!("ztinfra_trust_bundle_reloads_total", "result" => "error")
                    .increment(1);
                false
            }
        }
    }

    /// Checks the bundle files, and the TLS certificate and key, every [`BUNDLE_POLL`] for as
    /// long as the service runs.
    pub fn watch(self: &Arc<Self>) {
        if self.settings.trust_domains.is_empty() && self.server_cert.is_none() {
            return;
        }
        let workloads = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BUNDLE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(workloads) = workloads.upgrade() else {
                    return;
                };
                workloads.reload_if_changed();
                if let Some(cert) = &workloads.server_cert {
                    cert.reload_if_changed();
                }
            }
        });
    }

    pub fn bundles(&self) -> Arc<TrustBundles> {
        self.bundles.load_full()
    }

    pub fn ca(&self) -> Option<&Ca> {
        self.ca.as_ref()
    }

    /// What a JWT-SVID's `aud` must contain.
    pub fn audience(&self) -> &str {
        self.settings.audience.as_deref().unwrap_or("ztinfra")
    }

    /// Whether workloads can be known at all (some trust domain is configured or this service
    /// has a CA).
    pub fn any_trusted(&self) -> bool {
        !self.bundles.load().is_empty()
    }

    /// The agent `id` is mapped to (the first mapping that matches).
    pub fn agent_for(&self, id: &SpiffeId) -> Option<&AgentMapping> {
        self.settings
            .agents
            .iter()
            .find(|m| id.matches(&m.spiffe_id))
    }

    /// What a verified X.509-SVID is: an agent, a caller (enforcement point or operator), or
    /// nothing this service was told of.
    pub fn map(&self, svid: &X509Svid) -> Mapped<'_> {
        if let Some(caller) = self
            .settings
            .callers
            .iter()
            .find(|m| svid.id.matches(&m.spiffe_id))
            && let (Ok(name), Ok(role)) = (
                CredentialName::parse(&caller.name),
                parse_role(&caller.role),
            )
        {
            return Mapped::Caller(Caller::from_workload(svid, name, role));
        }
        match self.agent_for(&svid.id) {
            Some(agent) => Mapped::Agent(agent),
            None => Mapped::Unmapped,
        }
    }

    /// The X.509-SVID of a TLS peer whose certificate the handshake accepted: the one its
    /// verification gave, or verified again if that one was taken by another connection.
    pub fn peer(&self, certs: Option<&[CertificateDer<'static>]>) -> Option<Arc<X509Svid>> {
        let (leaf, intermediates) = certs?.split_first()?;
        let thumbprint = zt_identity::svid::thumbprint(leaf);
        if let Ok(mut waiting) = self.handshakes.lock()
            && let Some(svid) = waiting.remove(&thumbprint)
        {
            return Some(svid);
        }
        self.verify_certificate(leaf, intermediates)
            .ok()
            .map(Arc::new)
    }

    /// The X.509-SVID of a certificate and the intermediates that came with it, verified
    /// against the trust bundles now.
    pub fn verify_certificate(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<X509Svid, zt_identity::svid::SvidError> {
        zt_identity::svid::verify_x509_svid(
            &self.bundles.load(),
            leaf,
            intermediates,
            crate::now_ms() / 1000,
        )
    }

    /// This service's bundle in the SPIFFE format: its CA certificates (`x509-svid`) and the
    /// keys of its session tokens (`jwt-svid`).
    pub fn own_bundle(&self, token_keys: &serde_json::Value) -> serde_json::Value {
        use base64::Engine as _;
        let mut keys = Vec::new();
        if let Some(ca) = &self.ca {
            keys.push(ca.public_jwk());
        }
        for previous in self
            .own_domain_authorities()
            .iter()
            .skip(usize::from(self.ca.is_some()))
        {
            keys.push(serde_json::json!({
                "use": "x509-svid",
                "x5c": [base64::engine::general_purpose::STANDARD.encode(previous)],
            }));
        }
        if let Some(token_keys) = token_keys.get("keys").and_then(|k| k.as_array()) {
            for key in token_keys {
                let mut key = key.clone();
                if let Some(members) = key.as_object_mut() {
                    members.insert("use".into(), "jwt-svid".into());
                }
                keys.push(key);
            }
        }
        serde_json::json!({
            "keys": keys,
            "spiffe_refresh_hint": 300,
        })
    }

    /// The acceptor of the mutual TLS listener, when one is configured.
    pub fn tls_acceptor(
        self: &Arc<Self>,
    ) -> Result<Option<tokio_rustls::TlsAcceptor>, WorkloadError> {
        let Some(tls) = &self.settings.tls else {
            return Ok(None);
        };
        let Some(server_cert) = &self.server_cert else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(SvidVerifier {
            workloads: Arc::clone(self),
            required: tls.client_auth_required,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| WorkloadError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(
                Arc::clone(server_cert) as Arc<dyn rustls::server::ResolvesServerCert>
            );
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// The TLS listener's certificate chain and key: read at start, and again whenever either file
/// changes (SPIRE and spiffe-helper rotate a workload's SVID well within its hour), so that new
/// handshakes use the new one. A pair that does not read, or does not match, leaves the
/// previous one in use.
#[derive(Debug)]
pub struct ServerCert {
    tls: TlsSettings,
    current: ArcSwap<rustls::sign::CertifiedKey>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl ServerCert {
    fn read(tls: &TlsSettings) -> Result<Self, WorkloadError> {
        let stamps = (stamp(&tls.cert), stamp(&tls.key));
        Ok(Self {
            current: ArcSwap::from_pointee(Self::certified_key(tls)?),
            tls: tls.clone(),
            stamps: Mutex::new(stamps),
        })
    }

    fn certified_key(tls: &TlsSettings) -> Result<rustls::sign::CertifiedKey, WorkloadError> {
        let (certs, key) = read_pair(&tls.cert, &tls.key)?;
        rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| {
                WorkloadError::Tls(format!(
                    "`{}` and `{}`: {e}",
                    tls.cert.display(),
                    tls.key.display()
                ))
            })
    }

    /// Reads the pair again if a file changed; returns whether the new one is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = (stamp(&self.tls.cert), stamp(&self.tls.key));
        {
            let Ok(mut kept) = self.stamps.lock() else {
                return false;
            };
            if *kept == now {
                return false;
            }
            *kept = now;
        }
        match Self::certified_key(&self.tls) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!(cert = %self.tls.cert.display(), "TLS certificate read again");
                true
            }
            Err(e) => {
                // A half-written pair (the certificate renewed, the key not yet): tried again
                // at the next change.
                tracing::warn!(error = %e, "the TLS certificate changed and does not load yet; the previous one stays in use");
                false
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(path: &Path) -> Result<String, WorkloadError> {
    std::fs::read_to_string(path).map_err(|source| WorkloadError::File {
        path: path.to_owned(),
        source,
    })
}

fn check_pattern(pattern: &str) -> Result<(), WorkloadError> {
    SpiffeId::parse(pattern.strip_suffix("/*").unwrap_or(pattern))
        .map(drop)
        .map_err(|e| WorkloadError::Mapping(e.to_string()))
}

fn parse_role(role: &str) -> Result<Role, WorkloadError> {
    Role::ALL
        .into_iter()
        .find(|r| r.as_str() == role && *r != Role::Approver)
        .ok_or_else(|| {
            WorkloadError::Mapping(format!(
                "`{role}` is not a role a workload can have: pep, admin, auditor or broker"
            ))
        })
}

/// The CA in `key_dir`, if there is one.
pub fn load_ca(key_dir: &Path) -> Result<Option<Ca>, WorkloadError> {
    let key_path = key_dir.join(CA_KEY_FILE);
    if !key_path.exists() {
        return Ok(None);
    }
    crate::keys::check_private(&key_path).map_err(|e| WorkloadError::Ca {
        dir: key_dir.to_owned(),
        source: SvidError::Issue(e.to_string()),
    })?;
    let key = read(&key_path)?;
    let cert = read(&key_dir.join(CA_CERT_FILE))?;
    Ca::from_pem(&key, &cert)
        .map(Some)
        .map_err(|source| WorkloadError::Ca {
            dir: key_dir.to_owned(),
            source,
        })
}

fn new_ca(domain: &str, days: i64, dir: &Path) -> Result<Ca, WorkloadError> {
    let error = |source| WorkloadError::Ca {
        dir: dir.to_owned(),
        source,
    };
    let key = rcgen::KeyPair::generate().map_err(|e| error(SvidError::Issue(e.to_string())))?;
    Ca::create(domain, key, crate::now_ms() / 1000, days, crate::random16()).map_err(error)
}

fn write_ca(key_dir: &Path, ca: &Ca) -> Result<(), WorkloadError> {
    let io = |path: PathBuf| {
        move |source| WorkloadError::File {
            path: path.clone(),
            source,
        }
    };
    crate::private_dir(key_dir).map_err(|e| WorkloadError::Tls(e.to_string()))?;
    // The certificate first: a key without its certificate would be refused at start.
    let cert = key_dir.join(CA_CERT_FILE);
    crate::write_private_file(&cert, ca.cert_pem().as_bytes()).map_err(io(cert))?;
    let key = key_dir.join(CA_KEY_FILE);
    crate::write_private_file(&key, ca.key_pem().as_bytes()).map_err(io(key))
}

/// `ztinfra ca init`: a new CA for `domain` in `key_dir`, unless one is there.
pub fn init_ca(key_dir: &Path, domain: &str, days: i64) -> Result<Ca, WorkloadError> {
    if key_dir.join(CA_KEY_FILE).exists() {
        return Err(WorkloadError::CaExists(key_dir.to_owned()));
    }
    let ca = new_ca(domain, days, key_dir)?;
    write_ca(key_dir, &ca)?;
    Ok(ca)
}

/// `ztinfra ca rotate`: a new CA (for `domain`, or the current one's), the current certificate
/// kept as the previous one (trusted until the next rotation).
pub fn rotate_ca(key_dir: &Path, domain: Option<&str>, days: i64) -> Result<Ca, WorkloadError> {
    let old = load_ca(key_dir)?.ok_or_else(|| WorkloadError::NoCa(key_dir.to_owned()))?;
    let ca = new_ca(domain.unwrap_or(old.domain()), days, key_dir)?;
    let previous = key_dir.join(CA_PREVIOUS_FILE);
    crate::write_private_file(&previous, old.cert_pem().as_bytes()).map_err(|source| {
        WorkloadError::File {
            path: previous.clone(),
            source,
        }
    })?;
    write_ca(key_dir, &ca)?;
    Ok(ca)
}

/// A certificate chain (PEM) and its private key (PEM, in a file only its owner can read), as
/// TLS presents them: the server's own, or a client's X.509-SVID.
fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), WorkloadError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            WorkloadError::Tls(format!(
                "cannot read certificates from `{}`: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(WorkloadError::Tls(format!(
            "`{}` holds no certificate",
            cert.display()
        )));
    }
    crate::keys::check_private(key).map_err(|e| WorkloadError::Tls(e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        WorkloadError::Tls(format!(
            "cannot read a private key from `{}`: {e}",
            key.display()
        ))
    })?;
    Ok((chain, key_der))
}

/// A TLS client configuration (ring) for reaching a ZT-Infra service: trusting the CA
/// certificates in `ca` (PEM), presenting the certificate chain and key of `identity` (PEM: an
/// X.509-SVID, for mutual TLS) when given.
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, WorkloadError> {
    let tls = |what: &Path, e: &dyn std::fmt::Display| {
        WorkloadError::Tls(format!("`{}`: {e}", what.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| tls(ca, &e))? {
        roots
            .add(cert.map_err(|e| tls(ca, &e))?)
            .map_err(|e| tls(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(tls(ca, &"holds no CA certificate"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WorkloadError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, key_der) = read_pair(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls(cert, &e))
        }
    }
}

/// Checks X.509-SVIDs presented in the TLS handshake against the trust bundles of the moment.
#[derive(Debug)]
struct SvidVerifier {
    workloads: Arc<Workloads>,
    required: bool,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for SvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        match zt_identity::svid::verify_x509_svid(
            &self.workloads.bundles.load(),
            end_entity,
            intermediates,
            now,
        ) {
            Ok(svid) => {
                tracing::debug!(spiffe_id = %svid.id, "client X.509-SVID accepted");
                if let Ok(mut waiting) = self.workloads.handshakes.lock() {
                    if waiting.len() >= MAX_HANDSHAKES {
                        waiting.clear();
                    }
                    waiting.insert(svid.thumbprint.clone(), Arc::new(svid));
                }
                Ok(rustls::server::danger::ClientCertVerified::assertion())
            }
            Err(e) => {
                tracing::warn!(error = %e, "client certificate refused at the TLS handshake");
                metrics::counter!("ztinfra_auth_refusals_total", "reason" => "client_certificate")
                    .increment(1);
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))),
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn settings(bundle: &Path) -> WorkloadSettings {
        WorkloadSettings {
            trust_domains: vec![TrustDomainSource {
                name: "example.org".into(),
                bundle: bundle.to_owned(),
            }],
            agents: vec![AgentMapping {
                spiffe_id: "spiffe://example.org/agents/*".into(),
                agent: "triage".into(),
                may_claim: vec!["model".into()],
            }],
            ..WorkloadSettings::default()
        }
    }

    /// A CA of `domain`, as PEM, and an X.509-SVID it issued for `id`.
    fn domain(domain: &str, id: &str) -> (String, X509Svid) {
        let ca = Ca::create(
            domain,
            rcgen::KeyPair::generate().unwrap(),
            crate::now_ms() / 1000,
            1,
            [1; 16],
        )
        .unwrap();
        let now = crate::now_ms() / 1000;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = ca
            .issue(&SpiffeId::parse(id).unwrap(), &key, now, now + 600, [2; 16])
            .unwrap();
        let bundles = TrustBundles::new([TrustBundle::parse(domain, &ca.cert_pem()).unwrap()]);
        let svid = zt_identity::svid::verify_x509_svid(&bundles, &cert, &[], now).unwrap();
        (ca.cert_pem(), svid)
    }

    #[test]
    fn mappings_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = domain("example.org", "spiffe://example.org/agents/a");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, pem).unwrap();
        let keys = dir.path().join("keys");
        assert!(Workloads::load(settings(&bundle), "ztinfra.local", &keys).is_ok());
        let mut bad = settings(&bundle);
        bad.agents[0].may_claim = vec!["broker".into()];
        let e = Workloads::load(bad, "ztinfra.local", &keys).unwrap_err();
        assert!(e.to_string().contains("may claim only"), "{e}");
        let mut bad = settings(&bundle);
        bad.callers.push(CallerMapping {
            spiffe_id: "spiffe://example.org/gw".into(),
            name: "gw".into(),
            role: "approver".into(),
        });
        assert!(Workloads::load(bad, "ztinfra.local", &keys).is_err());
        let mut bad = settings(&bundle);
        bad.agents[0].spiffe_id = "spiffe://Example.org/*".into();
        assert!(Workloads::load(bad, "ztinfra.local", &keys).is_err());
        let missing = settings(&dir.path().join("absent.pem"));
        assert!(matches!(
            Workloads::load(missing, "ztinfra.local", &keys),
            Err(WorkloadError::File { .. })
        ));
    }

    #[test]
    fn a_ca_of_another_domain_than_the_sessions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "other.local", 1).unwrap();
        assert!(matches!(
            init_ca(dir.path(), "other.local", 1),
            Err(WorkloadError::CaExists(_))
        ));
        let e =
            Workloads::load(WorkloadSettings::default(), "ztinfra.local", dir.path()).unwrap_err();
        assert!(matches!(e, WorkloadError::CaDomain { .. }), "{e}");
        // Rotated to the sessions' domain, the previous certificate is still trusted.
        rotate_ca(dir.path(), Some("ztinfra.local"), 1).unwrap();
        let w = Workloads::load(WorkloadSettings::default(), "ztinfra.local", dir.path()).unwrap();
        assert_eq!(w.ca().unwrap().domain(), "ztinfra.local");
        assert_eq!(w.own_authorities.len(), 2);
        let bundle = w.own_bundle(&serde_json::json!({"keys": []}));
        assert_eq!(bundle["keys"].as_array().unwrap().len(), 2);
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_changed_bundle_is_read_again_and_a_broken_one_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (first, first_svid) = domain("example.org", "spiffe://example.org/agents/a");
        let (second, second_svid) = domain("example.org", "spiffe://example.org/agents/b");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, &first).unwrap();
        let w = Workloads::load(settings(&bundle), "ztinfra.local", dir.path()).unwrap();
        assert!(matches!(w.map(&first_svid), Mapped::Agent(a) if a.agent == "triage"));
        assert!(!w.reload_if_changed());
        let x509 =
            |w: &Workloads| w.bundles().get("example.org").unwrap().x509_authorities()[0].clone();
        let before = x509(&w);
        std::fs::write(&bundle, format!("{second}\n")).unwrap();
        assert!(w.reload_if_changed());
        assert_ne!(x509(&w), before);
        std::fs::write(&bundle, "not a bundle at all").unwrap();
        assert!(!w.reload_if_changed());
        assert_ne!(x509(&w), before, "the last good bundle stays");
        // The mapping is by SPIFFE ID, whichever CA issued the SVID.
        assert!(matches!(w.map(&second_svid), Mapped::Agent(_)));
    }
}
