use super::*;

const NOW: i64 = 1_800_000_000;

/// A test trust domain: its CA (made by the code under test) and its JWT key.
struct Domain {
    ca: Ca,
    jwt_key: rcgen::KeyPair,
}

fn domain(name: &str) -> Domain {
    let key = rcgen::KeyPair::generate().unwrap();
    Domain {
        ca: Ca::create(name, key, NOW - 3600, 30, [7; 16]).unwrap(),
        jwt_key: rcgen::KeyPair::generate().unwrap(),
    }
}

impl Domain {
    fn bundle_json(&self) -> String {
        let raw = self.jwt_key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({
            "spiffe_sequence": 3,
            "keys": [
                self.ca.public_jwk(),
                {"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "k1",
                 "x": b64(&raw[1..33]), "y": b64(&raw[33..65])},
            ],
        })
        .to_string()
    }

    fn bundles(&self) -> TrustBundles {
        TrustBundles::new([TrustBundle::parse(self.ca.domain(), &self.bundle_json()).unwrap()])
    }

    fn svid(&self, id: &str, not_after: i64) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        self.ca
            .issue(
                &SpiffeId::parse(id).unwrap(),
                &key,
                NOW - 60,
                not_after,
                [9; 16],
            )
            .unwrap()
    }

    fn jwt(&self, claims: serde_json::Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let key = jsonwebtoken::EncodingKey::from_ec_der(self.jwt_key.serialized_der());
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// A certificate made outside the CA, with the given names and CA flag, signed by `signer`
/// (itself when `None`).
fn hand_made(uris: &[&str], is_ca: bool, signer: Option<&Domain>) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).to_owned().try_into().unwrap()))
        .collect();
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.not_before = offset_time(NOW - 60).unwrap();
    params.not_after = offset_time(NOW + 600).unwrap();
    match signer {
        None => params.self_signed(&key).unwrap().der().clone(),
        Some(d) => {
            let issuer = rcgen::Issuer::from_ca_cert_der(d.ca.certificate(), &d.ca.key).unwrap();
            params.signed_by(&key, &issuer).unwrap().der().clone()
        }
    }
}

#[test]
fn spiffe_ids_follow_the_rules() {
    let id = SpiffeId::parse("spiffe://example.org/agent/triage").unwrap();
    assert_eq!(id.trust_domain(), "example.org");
    assert_eq!(id.path(), "/agent/triage");
    assert!(id.matches("spiffe://example.org/agent/*"));
    assert!(id.matches("spiffe://example.org/agent/triage"));
    assert!(!id.matches("spiffe://example.org/agent/tri*"));
    assert!(!id.matches("spiffe://example.org/agent/triage/*"));
    for bad in [
        "http://example.org/a",
        "spiffe://Example.org/a",
        "spiffe://example.org:8080/a",
        "spiffe://user@example.org/a",
        "spiffe:///a",
        "spiffe://example.org/a/",
        "spiffe://example.org//a",
        "spiffe://example.org/a/../b",
        "spiffe://example.org/a?x=1",
        "spiffe://example.org/a#f",
        "spiffe://example.org/a%20b",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn an_issued_svid_verifies_with_its_domain_bundle() {
    let d = domain("example.org");
    let cert = d.svid("spiffe://example.org/agent/triage", NOW + 600);
    let svid = verify_x509_svid(&d.bundles(), &cert, &[], NOW).unwrap();
    assert_eq!(svid.id.as_str(), "spiffe://example.org/agent/triage");
    assert_eq!(svid.thumbprint, thumbprint(&cert));
    assert_eq!(svid.expires, NOW + 600);
    // A PEM bundle of the same CA works as well.
    let pem = TrustBundles::new([TrustBundle::parse("example.org", &d.ca.cert_pem()).unwrap()]);
    verify_x509_svid(&pem, &cert, &[], NOW).unwrap();
}

#[test]
fn svids_that_break_a_rule_are_refused() {
    let d = domain("example.org");
    let other = domain("other.org");
    let bundles = d.bundles();
    let expired = d.svid("spiffe://example.org/agent/a", NOW + 10);
    assert!(matches!(
        verify_x509_svid(&bundles, &expired, &[], NOW + 20),
        Err(SvidError::Chain { .. })
    ));
    // Signed by another domain's CA, claiming this domain: the chain fails.
    let forged = hand_made(&["spiffe://example.org/agent/a"], false, Some(&other));
    assert!(matches!(
        verify_x509_svid(&bundles, &forged, &[], NOW),
        Err(SvidError::Chain { .. })
    ));
    // A domain nobody configured.
    let foreign = other.svid("spiffe://other.org/agent/a", NOW + 600);
    assert_eq!(
        verify_x509_svid(&bundles, &foreign, &[], NOW),
        Err(SvidError::UnknownDomain("other.org".into()))
    );
    let self_signed = hand_made(&["spiffe://example.org/agent/a"], false, None);
    assert!(matches!(
        verify_x509_svid(&bundles, &self_signed, &[], NOW),
        Err(SvidError::Chain { .. })
    ));
    let two = hand_made(
        &[
            "spiffe://example.org/agent/a",
            "spiffe://example.org/agent/b",
        ],
        false,
        Some(&d),
    );
    assert_eq!(
        verify_x509_svid(&bundles, &two, &[], NOW),
        Err(SvidError::UriSans(2))
    );
    let none = hand_made(&[], false, Some(&d));
    assert_eq!(
        verify_x509_svid(&bundles, &none, &[], NOW),
        Err(SvidError::UriSans(0))
    );
    let ca_leaf = hand_made(&["spiffe://example.org/agent/a"], true, Some(&d));
    assert_eq!(
        verify_x509_svid(&bundles, &ca_leaf, &[], NOW),
        Err(SvidError::CaLeaf)
    );
    let not_spiffe = hand_made(&["https://example.org/agent/a"], false, Some(&d));
    assert!(matches!(
        verify_x509_svid(&bundles, &not_spiffe, &[], NOW),
        Err(SvidError::BadId { .. })
    ));
}

#[test]
fn jwt_svids_are_checked_by_the_rules() {
    let d = domain("example.org");
    let bundles = d.bundles();
    let claims = |aud: serde_json::Value, exp: Option<i64>| {
        let mut c =
            serde_json::json!({"sub": "spiffe://example.org/agent/triage", "aud": aud, "iat": NOW});
        if let Some(exp) = exp {
            c["exp"] = exp.into();
        }
        c
    };
    let good = d.jwt(
        claims(serde_json::json!(["other", "ztinfra"]), Some(NOW + 60)),
        "k1",
    );
    let svid = UnverifiedJwtSvid(&good)
        .verify(&bundles, "ztinfra", NOW)
        .unwrap();
    assert_eq!(svid.id.as_str(), "spiffe://example.org/agent/triage");
    assert_eq!(svid.expires, NOW + 60);

    let cases = [
        (
            d.jwt(claims("ztinfra".into(), Some(NOW + 60)), "k2"),
            "unknown key",
        ),
        (
            d.jwt(claims("elsewhere".into(), Some(NOW + 60)), "k1"),
            "audience",
        ),
        (d.jwt(claims("ztinfra".into(), None), "k1"), "no exp"),
        (d.jwt(claims("ztinfra".into(), Some(NOW)), "k1"), "expired"),
        (
            d.jwt(
                serde_json::json!({"sub": "spiffe://example.org", "aud": "ztinfra", "exp": NOW + 60}),
                "k1",
            ),
            "a trust domain is no workload",
        ),
    ];
    for (token, why) in &cases {
        assert!(
            UnverifiedJwtSvid(token)
                .verify(&bundles, "ztinfra", NOW)
                .is_err(),
            "{why}"
        );
    }
    // Another domain's key cannot sign for this one.
    let other = domain("other.org");
    let forged = other.jwt(claims("ztinfra".into(), Some(NOW + 60)), "k1");
    assert_eq!(
        UnverifiedJwtSvid(&forged).verify(&bundles, "ztinfra", NOW),
        Err(SvidError::JwtSignature)
    );
    // HS256 with the public key as a secret, the classic confusion, is refused by algorithm.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims("ztinfra".into(), Some(NOW + 60)),
        &jsonwebtoken::EncodingKey::from_secret(b"k").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        UnverifiedJwtSvid(&hs).verify(&bundles, "ztinfra", NOW),
        Err(SvidError::JwtAlgorithm(_))
    ));
}

#[test]
fn a_csr_gives_only_its_key_and_the_ca_survives_a_round_trip_through_pem() {
    let d = domain("example.org");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let public = csr_public_key(&csr).unwrap();
    let again = Ca::from_pem(&d.ca.key_pem(), &d.ca.cert_pem()).unwrap();
    assert_eq!(again.domain(), "example.org");
    let id = SpiffeId::parse("spiffe://example.org/agent/a").unwrap();
    let cert = again.issue(&id, &public, NOW, NOW + 7200, [1; 16]).unwrap();
    let svid = verify_x509_svid(&d.bundles(), &cert, &[], NOW).unwrap();
    // Capped at one hour, whatever was asked; the CSR's CA flag and DNS name are not copied.
    assert_eq!(svid.expires, NOW + MAX_SVID_SECS);
    assert!(
        csr_public_key(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err()
    );
    let outside = SpiffeId::parse("spiffe://other.org/agent/a").unwrap();
    assert!(
        again
            .issue(&outside, &public, NOW, NOW + 60, [1; 16])
            .is_err()
    );
    // A key and a certificate that do not belong together.
    let stranger = domain("example.org");
    assert!(Ca::from_pem(&stranger.ca.key_pem(), &d.ca.cert_pem()).is_err());
}
