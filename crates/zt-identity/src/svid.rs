//! SPIFFE workload identity: SPIFFE IDs, trust bundles, X.509-SVIDs and JWT-SVIDs in, and the
//! service's own small issuing CA out.
//!
//! Everything here is pure: bundles arrive as text, certificates as DER, tokens as text, and the
//! time as a number of seconds. An [`X509Svid`] or a [`JwtSvid`] exists only as the result of a
//! verifying function ([`verify_x509_svid`], [`UnverifiedJwtSvid::verify`]), which hold the SPIFFE
//! rules (the X.509-SVID and JWT-SVID specifications of spiffe.io):
//!
//! - an X.509-SVID's leaf has exactly one URI SAN, a SPIFFE ID; it is not a CA and may not sign
//!   certificates or CRLs; its chain leads to an X.509 authority of the bundle of the trust domain
//!   its SPIFFE ID names (a certificate signed by another domain's authority does not count); it
//!   is within its validity period (path validation by `rustls-webpki`, time passed in);
//! - a JWT-SVID names its key (`kid`) and is signed with an RSA or ECDSA algorithm by that key in
//!   the `sub` trust domain's bundle; `sub` is a SPIFFE ID, `aud` contains the expected audience,
//!   `exp` is present and in the future.

use std::collections::HashMap;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Deserialize;
use sha2::Digest as _;

/// The longest SPIFFE ID (the SPIFFE ID specification's limit).
pub const MAX_ID_BYTES: usize = 2048;

/// The longest an X.509-SVID issued by this service lives.
pub const MAX_SVID_SECS: i64 = 3600;

/// Why a SPIFFE identity is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("`{id}` is not a SPIFFE ID: {why}")]
    BadId { id: String, why: &'static str },
    #[error("the bundle of `{domain}` cannot be read: {why}")]
    BadBundle { domain: String, why: String },
    #[error("the certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("an X.509-SVID has exactly one URI SAN, a SPIFFE ID; this certificate has {0}")]
    UriSans(usize),
    #[error("the certificate is a CA (or may sign certificates): it is not an X.509-SVID")]
    CaLeaf,
    #[error("the trust domain `{0}` is not trusted here")]
    UnknownDomain(String),
    #[error("the certificate does not chain to the bundle of `{domain}`: {why}")]
    Chain { domain: String, why: String },
    #[error("the JWT-SVID cannot be read: {0}")]
    MalformedJwt(String),
    #[error("the JWT-SVID's algorithm `{0}` is not allowed (RS, PS or ES algorithms only)")]
    JwtAlgorithm(String),
    #[error("the JWT-SVID names no key (`kid`)")]
    JwtNoKid,
    #[error("the bundle of `{domain}` has no JWT authority `{kid}`")]
    JwtUnknownKey { domain: String, kid: String },
    #[error("the JWT-SVID's signature does not verify")]
    JwtSignature,
    #[error("the JWT-SVID is not for this service: `aud` does not contain `{0}`")]
    JwtAudience(String),
    #[error("the JWT-SVID has no `exp`")]
    JwtNoExpiry,
    #[error("the JWT-SVID expired at {0}")]
    JwtExpired(i64),
    #[error("the certificate signing request cannot be used: {0}")]
    BadCsr(String),
    #[error("the certificate cannot be issued: {0}")]
    Issue(String),
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`, checked against the SPIFFE ID rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    text: String,
    /// Where the path begins in `text`.
    path_at: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses a SPIFFE ID: lowercase trust domain of `a-z 0-9 . - _`, a path of non-empty
    /// segments of `A-Z a-z 0-9 . - _` (no `.` or `..` segment, no trailing `/`), no port, user,
    /// query or fragment, at most [`MAX_ID_BYTES`].
    pub fn parse(text: &str) -> Result<Self, SvidError> {
        let bad = |why| SvidError::BadId {
            id: text.chars().take(256).collect(),
            why,
        };
        if text.len() > MAX_ID_BYTES {
            return Err(bad("longer than 2048 bytes"));
        }
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not begin with `spiffe://`"))?;
        let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(domain).map_err(bad)?;
        if !path.is_empty() {
            for segment in path.split('/').skip(1) {
                if segment.is_empty() {
                    return Err(bad("its path has an empty segment or a trailing `/`"));
                }
                if segment == "." || segment == ".." {
                    return Err(bad("its path has a `.` or `..` segment"));
                }
                if !segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(bad(
                        "its path may hold only letters, digits, `.`, `-` and `_`",
                    ));
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            path_at: SCHEME.len() + domain.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn trust_domain(&self) -> &str {
        self.text
            .get(SCHEME.len()..self.path_at)
            .unwrap_or_default()
    }

    /// The path, `/`-prefixed, or empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        self.text.get(self.path_at..).unwrap_or_default()
    }

    /// Whether this ID is `pattern`, or lies under it when `pattern` ends with `/*` (the
    /// segments below, at any depth).
    pub fn matches(&self, pattern: &str) -> bool {
        match pattern.strip_suffix("/*") {
            Some(prefix) => self
                .text
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
            None => self.text == pattern,
        }
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A trust domain name: 1 to 255 of `a-z 0-9 . - _`.
pub fn check_trust_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("its trust domain is empty");
    }
    if domain.len() > 255 {
        return Err("its trust domain is longer than 255 bytes");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(
            "its trust domain may hold only lowercase letters, digits, `.`, `-` and `_` (no port, user or uppercase)",
        );
    }
    Ok(())
}

/// One trust domain's authorities: CA certificates for X.509-SVIDs, public keys (by `kid`) for
/// JWT-SVIDs.
pub struct TrustBundle {
    domain: String,
    x509: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    jwt: HashMap<String, (jsonwebtoken::DecodingKey, Option<jsonwebtoken::Algorithm>)>,
    /// `spiffe_sequence`, when the bundle is in the SPIFFE format.
    pub sequence: Option<u64>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("domain", &self.domain)
            .field("x509_authorities", &self.x509.len())
            .field("jwt_authorities", &self.jwt.len())
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// The SPIFFE bundle format: a JWK set whose keys say their `use`.
#[derive(Deserialize)]
struct SpiffeBundle {
    keys: Vec<serde_json::Value>,
    #[serde(default)]
    spiffe_sequence: Option<u64>,
}

impl TrustBundle {
    /// Reads `domain`'s bundle from `text`: the SPIFFE bundle format (JSON), or PEM CA
    /// certificates (X.509 authorities only). A bundle with no authority is refused.
    pub fn parse(domain: &str, text: &str) -> Result<Self, SvidError> {
        let bad = |why: String| SvidError::BadBundle {
            domain: domain.to_owned(),
            why,
        };
        check_trust_domain(domain).map_err(|why| bad(why.to_owned()))?;
        let mut bundle = Self::empty(domain);
        if text.trim_start().starts_with('{') {
            let parsed: SpiffeBundle =
                serde_json::from_str(text).map_err(|e| bad(format!("not a SPIFFE bundle: {e}")))?;
            bundle.sequence = parsed.spiffe_sequence;
            for (n, key) in parsed.keys.iter().enumerate() {
                match key.get("use").and_then(|u| u.as_str()) {
                    Some("x509-svid") => {
                        let der = key
                            .get("x5c")
                            .and_then(|c| c.as_array())
                            .and_then(|c| c.first())
                            .and_then(|c| c.as_str())
                            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                            .ok_or_else(|| {
                                bad(format!("key {n} (`x509-svid`) has no `x5c` certificate"))
                            })?;
                        bundle.add_authority(CertificateDer::from(der))?;
                    }
                    Some("jwt-svid") => {
                        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone())
                            .map_err(|e| bad(format!("key {n} (`jwt-svid`): {e}")))?;
                        let kid = jwk
                            .common
                            .key_id
                            .clone()
                            .ok_or_else(|| bad(format!("key {n} (`jwt-svid`) has no `kid`")))?;
                        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
                            .map_err(|e| bad(format!("key `{kid}`: {e}")))?;
                        let alg = jwk
                            .common
                            .key_algorithm
                            .and_then(|a| a.to_string().parse().ok());
                        bundle.jwt.insert(kid, (key, alg));
                    }
                    // Other uses are for others.
                    _ => {}
                }
            }
        } else {
            for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
                let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
                bundle.add_authority(cert)?;
            }
        }
        if bundle.x509.is_empty() && bundle.jwt.is_empty() {
            return Err(bad("it holds no authority".into()));
        }
        Ok(bundle)
    }

    fn empty(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            x509: Vec::new(),
            anchors: Vec::new(),
            jwt: HashMap::new(),
            sequence: None,
        }
    }

    /// A bundle of X.509 authorities only (this service's own CA certificates).
    pub fn from_authorities(
        domain: &str,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SvidError> {
        let mut bundle = Self::empty(domain);
        for cert in certs {
            bundle.add_authority(cert)?;
        }
        Ok(bundle)
    }

    /// Adds an X.509 authority (a CA certificate, DER).
    pub fn add_authority(&mut self, der: CertificateDer<'static>) -> Result<(), SvidError> {
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| SvidError::BadBundle {
                domain: self.domain.clone(),
                why: format!("a CA certificate cannot be read: {e}"),
            })?
            .to_owned();
        self.anchors.push(anchor);
        self.x509.push(der);
        Ok(())
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The X.509 authorities (CA certificates, DER).
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509
    }

    /// How many JWT authorities the bundle has.
    pub fn jwt_authorities(&self) -> usize {
        self.jwt.len()
    }
}

/// The trust domains this service trusts, by name.
#[derive(Debug, Default)]
pub struct TrustBundles {
    domains: HashMap<String, TrustBundle>,
}

impl TrustBundles {
    pub fn new(bundles: impl IntoIterator<Item = TrustBundle>) -> Self {
        Self {
            domains: bundles.into_iter().map(|b| (b.domain.clone(), b)).collect(),
        }
    }

    pub fn get(&self, domain: &str) -> Option<&TrustBundle> {
        self.domains.get(domain)
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.domains.values()
    }

    fn domain(&self, id: &SpiffeId) -> Result<&TrustBundle, SvidError> {
        self.domains
            .get(id.trust_domain())
            .ok_or_else(|| SvidError::UnknownDomain(id.trust_domain().to_owned()))
    }
}

/// A verified X.509-SVID: the workload's SPIFFE ID, and the certificate's SHA-256 thumbprint in
/// the form RFC 8705 binds tokens to (`x5t#S256`: base64url, no padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Svid {
    pub id: SpiffeId,
    pub thumbprint: String,
    /// The leaf's `notAfter`, in seconds.
    pub expires: i64,
}

/// RFC 8705's `x5t#S256` of a certificate.
pub fn thumbprint(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
}

/// Checks an X.509-SVID presented with `intermediates` against `bundles` at `now` (seconds).
pub fn verify_x509_svid(
    bundles: &TrustBundles,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: i64,
) -> Result<X509Svid, SvidError> {
    let (id, expires) = read_leaf(end_entity)?;
    let bundle = bundles.domain(&id)?;
    let chain = |why: String| SvidError::Chain {
        domain: bundle.domain.clone(),
        why,
    };
    let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(|e| chain(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or_default(),
    ));
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &bundle.anchors,
        intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| chain(e.to_string()))?;
    Ok(X509Svid {
        id,
        thumbprint: thumbprint(end_entity),
        expires,
    })
}

/// The SPIFFE ID and expiry of an X.509-SVID leaf, after the checks that need no authority.
fn read_leaf(der: &[u8]) -> Result<(SpiffeId, i64), SvidError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    if let Ok(Some(constraints)) = cert.basic_constraints()
        && constraints.value.ca
    {
        return Err(SvidError::CaLeaf);
    }
    if let Ok(Some(usage)) = cert.key_usage()
        && (usage.value.key_cert_sign() || usage.value.crl_sign())
    {
        return Err(SvidError::CaLeaf);
    }
    let names = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    let uris: Vec<&str> = names
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(SvidError::UriSans(uris.len()));
    };
    let id = SpiffeId::parse(uri)?;
    if id.path().is_empty() {
        return Err(SvidError::BadId {
            id: id.text,
            why: "a workload's SPIFFE ID has a path",
        });
    }
    Ok((id, cert.validity().not_after.timestamp()))
}

/// Signature algorithms a JWT-SVID may use (the JWT-SVID specification's list, less ES512,
/// which the JOSE library does not verify).
pub(crate) const JWT_SVID_ALGORITHMS: [jsonwebtoken::Algorithm; 8] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::PS512,
];

/// A JWT-SVID as presented: text until [`verify`](Self::verify) says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct UnverifiedJwtSvid<'a>(pub &'a str);

/// A verified JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvid {
    pub id: SpiffeId,
    pub expires: i64,
}

#[derive(Deserialize)]
struct JwtSvidClaims {
    sub: String,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

impl UnverifiedJwtSvid<'_> {
    /// Verifies the token against `bundles` for `audience` at `now` (seconds).
    pub fn verify(
        self,
        bundles: &TrustBundles,
        audience: &str,
        now: i64,
    ) -> Result<JwtSvid, SvidError> {
        let header = jsonwebtoken::decode_header(self.0)
            .map_err(|e| SvidError::MalformedJwt(e.to_string()))?;
        if !JWT_SVID_ALGORITHMS.contains(&header.alg) {
            return Err(SvidError::JwtAlgorithm(format!("{:?}", header.alg)));
        }
        if let Some(typ) = &header.typ
            && typ != "JWT"
            && typ != "JOSE"
        {
            return Err(SvidError::MalformedJwt(format!(
                "its `typ` is `{typ}`, not `JWT` or `JOSE`"
            )));
        }
        let kid = header.kid.ok_or(SvidError::JwtNoKid)?;
        // The key is found through the trust domain the token names; the signature is checked
        // before anything else the claims say is believed.
        let unverified: JwtSvidClaims = unverified_claims(self.0)?;
        let id = SpiffeId::parse(&unverified.sub)?;
        if id.path().is_empty() {
            return Err(SvidError::BadId {
                id: id.text,
                why: "a workload's SPIFFE ID has a path",
            });
        }
        let bundle = bundles.domain(&id)?;
        let (key, key_alg) = bundle
            .jwt
            .get(&kid)
            .ok_or_else(|| SvidError::JwtUnknownKey {
                domain: bundle.domain.clone(),
                kid: kid.clone(),
            })?;
        if key_alg.is_some_and(|a| a != header.alg) {
            return Err(SvidError::JwtAlgorithm(format!(
                "{:?} (the key `{kid}` is for another)",
                header.alg
            )));
        }
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<JwtSvidClaims>(self.0, key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => SvidError::JwtSignature,
                _ => SvidError::MalformedJwt(e.to_string()),
            })?
            .claims;
        let audience_ok = match &claims.aud {
            Some(aud) => aud.contains(audience),
            None => false,
        };
        if !audience_ok {
            return Err(SvidError::JwtAudience(audience.to_owned()));
        }
        let exp = claims.exp.ok_or(SvidError::JwtNoExpiry)?;
        if now >= exp {
            return Err(SvidError::JwtExpired(exp));
        }
        Ok(JwtSvid {
            id: SpiffeId::parse(&claims.sub)?,
            expires: exp,
        })
    }
}

pub(crate) fn unverified_claims<T: serde::de::DeserializeOwned>(
    token: &str,
) -> Result<T, SvidError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| SvidError::MalformedJwt("not three dot-separated parts".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| SvidError::MalformedJwt(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| SvidError::MalformedJwt(e.to_string()))
}

/// This service's issuing CA: a self-signed ECDSA P-256 root for its trust domain, whose key
/// signs X.509-SVIDs for sessions.
pub struct Ca {
    domain: String,
    key: rcgen::KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.domain)
    }
}

fn offset_time(secs: i64) -> Result<time::OffsetDateTime, SvidError> {
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| SvidError::Issue(e.to_string()))
}

/// A certificate serial number: 16 bytes from the caller, made positive.
fn serial(mut random: [u8; 16]) -> rcgen::SerialNumber {
    random[0] &= 0x7f;
    random[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&random)
}

impl Ca {
    /// A new root for `domain`, valid from `now` for `days`, with a key its caller generated.
    pub fn create(
        domain: &str,
        key: rcgen::KeyPair,
        now: i64,
        days: i64,
        random: [u8; 16],
    ) -> Result<Self, SvidError> {
        check_trust_domain(domain).map_err(|why| SvidError::Issue(why.to_owned()))?;
        let cert = Self::root_params(domain, now, days, random)?
            .self_signed(&key)
            .map_err(|e| SvidError::Issue(e.to_string()))?
            .der()
            .clone();
        Ok(Self {
            domain: domain.to_owned(),
            key,
            cert,
        })
    }

    fn root_params(
        domain: &str,
        now: i64,
        days: i64,
        random: [u8; 16],
    ) -> Result<rcgen::CertificateParams, SvidError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ZT-Infra");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{domain} issuing CA"));
        let uri = format!("{SCHEME}{domain}")
            .try_into()
            .map_err(|e: rcgen::Error| SvidError::Issue(e.to_string()))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset_time(now - 60)?;
        params.not_after = offset_time(now + days * 86_400)?;
        params.serial_number = Some(serial(random));
        Ok(params)
    }

    /// The CA kept on disk: its key (PKCS#8 PEM) and certificate (PEM).
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, SvidError> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| SvidError::Issue(format!("the CA key cannot be read: {e}")))?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            return Err(SvidError::Issue(
                "the CA certificate is not the CA key's".into(),
            ));
        }
        let domain = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(SCHEME),
                    _ => None,
                })
            })
            .ok_or_else(|| SvidError::Issue("the CA certificate names no trust domain".into()))?
            .to_owned();
        Ok(Self { domain, key, cert })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> String {
        pem_certificate(&self.cert)
    }

    /// The private key, PKCS#8 PEM: only for writing it to its 0600 file.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA's public key as a JWK (`kty: EC`, P-256), for the SPIFFE bundle.
    pub fn public_jwk(&self) -> serde_json::Value {
        let raw = self.key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": b64(raw.get(1..33).unwrap_or_default()),
            "y": b64(raw.get(33..65).unwrap_or_default()),
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert)],
        })
    }

    /// Issues an X.509-SVID for `id` (which must be in this CA's trust domain) to the holder of
    /// `public_key`, valid from `now` to `not_after` (at most [`MAX_SVID_SECS`] later).
    pub fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl rcgen::PublicKeyData,
        now: i64,
        not_after: i64,
        random: [u8; 16],
    ) -> Result<CertificateDer<'static>, SvidError> {
        if id.trust_domain() != self.domain {
            return Err(SvidError::Issue(format!(
                "`{id}` is not in this CA's trust domain `{}`",
                self.domain
            )));
        }
        let uri = id
            .as_str()
            .to_owned()
            .try_into()
            .map_err(|e: rcgen::Error| SvidError::Issue(e.to_string()))?;
        self.sign_leaf(
            vec![rcgen::SanType::URI(uri)],
            public_key,
            now,
            not_after.min(now + MAX_SVID_SECS),
            random,
        )
    }

    /// Issues the service's own server certificate: the SPIFFE ID
    /// `spiffe://<domain>/ztinfra/server` and `names` (DNS names or IP addresses) as its
    /// subject alternative names, valid for `days`.
    pub fn issue_server(
        &self,
        names: &[String],
        public_key: &impl rcgen::PublicKeyData,
        now: i64,
        days: i64,
        random: [u8; 16],
    ) -> Result<CertificateDer<'static>, SvidError> {
        let bad = |e: rcgen::Error| SvidError::Issue(e.to_string());
        let mut sans = vec![rcgen::SanType::URI(
            format!("{SCHEME}{}/ztinfra/server", self.domain)
                .try_into()
                .map_err(bad)?,
        )];
        for name in names {
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(name.clone().try_into().map_err(bad)?),
            });
        }
        self.sign_leaf(sans, public_key, now, now + days * 86_400, random)
    }

    fn sign_leaf(
        &self,
        sans: Vec<rcgen::SanType>,
        public_key: &impl rcgen::PublicKeyData,
        now: i64,
        not_after: i64,
        random: [u8; 16],
    ) -> Result<CertificateDer<'static>, SvidError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ZT-Infra");
        params.subject_alt_names = sans;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset_time(now - 30)?;
        params.not_after = offset_time(not_after)?;
        params.serial_number = Some(serial(random));
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.cert, &self.key)
            .map_err(|e| SvidError::Issue(e.to_string()))?;
        params
            .signed_by(public_key, &issuer)
            .map(|c| c.der().clone())
            .map_err(|e| SvidError::Issue(e.to_string()))
    }
}

/// The public key of a PEM certificate signing request, once its signature verifies (the
/// request's names and extensions are ignored: the CA decides them).
pub fn csr_public_key(pem: &str) -> Result<rcgen::PublicKey, SvidError> {
    rcgen::CertificateSigningRequestParams::from_pem(pem)
        .map(|csr| csr.public_key)
        .map_err(|e| SvidError::BadCsr(e.to_string()))
}

/// A certificate as PEM.
pub fn pem_certificate(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests;
