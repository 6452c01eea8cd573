use base64::Engine as _;

use super::*;

fn detail(
    actions: &[&str],
    locations: Option<&[&str]>,
    max_uses: Option<u64>,
) -> AuthorizationDetail {
    AuthorizationDetail {
        kind: DETAIL_TYPE.into(),
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        locations: locations.map(|ls| ls.iter().map(|l| (*l).to_owned()).collect()),
        max_uses,
    }
}

#[test]
fn details_parse_and_every_bad_one_names_its_member() {
    let good = parse_details(
        r#"[{"type": "ztinfra_action", "actions": ["crm.invoices.read"], "locations": ["crm://invoices/2026-Q3/*"], "max_uses": 20}]"#,
    )
    .unwrap();
    assert_eq!(
        good,
        vec![detail(
            &["crm.invoices.read"],
            Some(&["crm://invoices/2026-Q3/*"]),
            Some(20)
        )]
    );
    for (text, at) in [
        ("{}", "authorization_details"),
        ("[]", "authorization_details"),
        ("not json", "authorization_details"),
        (r#"[{"actions": ["a"]}]"#, "authorization_details[0].type"),
        (
            r#"[{"type": "payment_initiation", "actions": ["a"]}]"#,
            "authorization_details[0].type",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": []}]"#,
            "authorization_details[0].actions",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["a..b"]}]"#,
            "authorization_details[0].actions[0]",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["a"], "locations": []}]"#,
            "authorization_details[0].locations",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["a"], "locations": ["*"]}]"#,
            "authorization_details[0].locations[0]",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["a"], "max_uses": 0}]"#,
            "authorization_details[0].max_uses",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["a"], "max_uses": -1}]"#,
            "authorization_details[0]",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["a"], "datatypes": ["x"]}]"#,
            "authorization_details[0]",
        ),
        (
            r#"[{"type": "ztinfra_action", "actions": ["ok"]}, 7]"#,
            "authorization_details[1].type",
        ),
    ] {
        let e = parse_details(text).unwrap_err();
        assert_eq!(e.at, at, "{text}: {e}");
    }
    assert_eq!(
        scope_details("crm.invoices.read  crm.invoices.list").unwrap(),
        vec![detail(
            &["crm.invoices.read", "crm.invoices.list"],
            None,
            None
        )]
    );
    assert_eq!(scope_details("  ").unwrap_err().at, "scope.actions");
}

#[test]
fn coverage_follows_the_action_hierarchy_and_location_prefixes() {
    let d = detail(
        &["crm.invoices"],
        Some(&["crm://invoices/2026-Q3/*", "crm://x"]),
        None,
    );
    assert!(d.covers("crm.invoices", "crm://x"));
    assert!(d.covers("crm.invoices.read", "crm://invoices/2026-Q3/7"));
    assert!(!d.covers("crm.invoicesX", "crm://x"));
    assert!(!d.covers("crm", "crm://x"));
    assert!(!d.covers("crm.invoices.read", "crm://x/1"));
    assert!(!d.covers("crm.invoices.read", "crm://invoices/2026-Q4/7"));
    let any = detail(&["a"], None, Some(2));
    let free = detail(&["a"], None, None);
    assert_eq!(matching(&[any.clone(), free.clone()], "a", "r"), vec![1, 0]);
    assert_eq!(matching(&[any, free], "b", "r"), Vec::<usize>::new());
}

#[test]
fn narrowing_is_allowed_and_every_widening_is_named() {
    let held = vec![
        detail(
            &["crm.invoices.read"],
            Some(&["crm://invoices/2026-Q3/*"]),
            Some(20),
        ),
        detail(&["crm.contacts"], None, None),
    ];
    // Narrower in every way, and a second entry taken from the second held one.
    let asked = vec![
        detail(
            &["crm.invoices.read"],
            Some(&["crm://invoices/2026-Q3/7"]),
            Some(5),
        ),
        detail(&["crm.contacts.read"], Some(&["crm://contacts/1"]), None),
    ];
    assert_eq!(narrow(Some(&held), &asked), Ok(vec![Some(0), Some(1)]));
    // A subject with no bounds of its own may grant anything (policies still decide).
    assert_eq!(narrow(None, &asked), Ok(vec![None, None]));

    let widen = |ask: AuthorizationDetail| narrow(Some(&held), &[ask]).unwrap_err();
    assert_eq!(
        widen(detail(
            &["crm.invoices.write"],
            Some(&["crm://invoices/2026-Q3/7"]),
            Some(1)
        )),
        Widening::Action {
            entry: 0,
            action: "crm.invoices.write".into()
        }
    );
    assert_eq!(
        widen(detail(
            &["crm.invoices"],
            Some(&["crm://invoices/2026-Q3/7"]),
            Some(1)
        )),
        Widening::Action {
            entry: 0,
            action: "crm.invoices".into()
        }
    );
    assert_eq!(
        widen(detail(
            &["crm.invoices.read"],
            Some(&["crm://invoices/*"]),
            Some(1)
        )),
        Widening::Location {
            entry: 0,
            location: "crm://invoices/*".into()
        }
    );
    assert_eq!(
        widen(detail(&["crm.invoices.read"], None, Some(1))),
        Widening::AnyLocation { entry: 0 }
    );
    let uses = widen(detail(
        &["crm.invoices.read"],
        Some(&["crm://invoices/2026-Q3/1"]),
        Some(21),
    ));
    assert_eq!(
        uses,
        Widening::Uses {
            entry: 0,
            asked: "21 uses".into(),
            limit: 20
        }
    );
    assert!(!uses.of_target());
    assert!(matches!(
        widen(detail(
            &["crm.invoices.read"],
            Some(&["crm://invoices/2026-Q3/1"]),
            None
        )),
        Widening::Uses { .. }
    ));
    // Spread over two held entries is not inside either.
    assert!(
        narrow(
            Some(&held),
            &[detail(
                &["crm.invoices.read", "crm.contacts.read"],
                None,
                None
            )]
        )
        .is_err()
    );
}

#[test]
fn the_act_chain_lists_the_current_actor_first() {
    let act = Actor {
        sub: "spiffe://d/agent/sub/session/2".into(),
        client_id: "sub".into(),
        act: Some(Box::new(Actor {
            sub: "spiffe://d/agent/orch/session/1".into(),
            client_id: "orch".into(),
            act: None,
        })),
    };
    let subs: Vec<&str> = act.chain().iter().map(|a| a.sub.as_str()).collect();
    assert_eq!(
        subs,
        [
            "spiffe://d/agent/sub/session/2",
            "spiffe://d/agent/orch/session/1"
        ]
    );
    let json = serde_json::to_value(&act).unwrap();
    assert_eq!(json["act"]["sub"], "spiffe://d/agent/orch/session/1");
    assert!(json["act"].get("act").is_none());
}

#[test]
fn may_act_names_a_session_or_an_agent() {
    let session = "spiffe://d/agent/retrieval/session/ab12";
    let allows = |v: serde_json::Value| may_act_allows(&v, session, "retrieval");
    assert!(allows(serde_json::json!({"sub": session})));
    assert!(allows(
        serde_json::json!({"sub": "spiffe://d/agent/retrieval"})
    ));
    assert!(allows(serde_json::json!({"client_id": "retrieval"})));
    assert!(!allows(serde_json::json!({"sub": "spiffe://d/agent/retr"})));
    assert!(!allows(
        serde_json::json!({"sub": "spiffe://d/agent/planner"})
    ));
    assert!(!allows(serde_json::json!({"client_id": "planner"})));
    assert!(!allows(serde_json::json!({"iss": "x"})));
    assert!(!allows(serde_json::json!("retrieval")));
}

/// A test issuer: a P-256 key made here (a test key), its JWKS, and a signer.
struct TestIssuer {
    key: jsonwebtoken::EncodingKey,
    jwks: jsonwebtoken::jwk::JwkSet,
}

fn test_issuer(kid: &str) -> TestIssuer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(raw.get(1..33).unwrap()), "y": b64(raw.get(33..65).unwrap()),
    }]});
    TestIssuer {
        key: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
        jwks: serde_json::from_value(jwks).unwrap(),
    }
}

impl TestIssuer {
    fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

#[test]
fn a_humans_token_verifies_only_with_its_issuers_key_audience_and_time() {
    let issuer = test_issuer("k1");
    let trusted = ExternalIssuer {
        issuer: "http://127.0.0.1:3000".into(),
        audiences: vec!["ztinfra-console".into()],
        keys: issuer.jwks.clone(),
    };
    let now = 1_800_000_000;
    let claims = serde_json::json!({
        "iss": "http://127.0.0.1:3000", "sub": "alice", "aud": ["ztinfra-console", "other"],
        "exp": now + 300, "iat": now, "may_act": {"client_id": "orchestrator"},
    });
    let token = issuer.sign("k1", &claims);
    assert_eq!(unverified_issuer(&token).unwrap(), "http://127.0.0.1:3000");
    let subject = UnverifiedExternalToken(&token)
        .verify(&trusted, now, 0)
        .unwrap();
    assert_eq!(subject.sub, "alice");
    assert_eq!(subject.exp, now + 300);
    assert_eq!(
        subject.may_act,
        Some(serde_json::json!({"client_id": "orchestrator"}))
    );

    let check = |token: &str, at: i64| UnverifiedExternalToken(token).verify(&trusted, at, 0);
    assert_eq!(
        check(&token, now + 300),
        Err(ExternalError::Expired(now + 300))
    );
    let with = |patch: serde_json::Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        issuer.sign("k1", &c)
    };
    assert_eq!(
        check(&with(serde_json::json!({"aud": "someone"})), now),
        Err(ExternalError::Audience)
    );
    assert_eq!(
        check(&with(serde_json::json!({"aud": null})), now),
        Err(ExternalError::Audience)
    );
    assert_eq!(
        check(&with(serde_json::json!({"exp": null})), now),
        Err(ExternalError::Expired(0))
    );
    assert_eq!(
        check(&with(serde_json::json!({"sub": null})), now),
        Err(ExternalError::NoSubject)
    );
    assert_eq!(
        check(&with(serde_json::json!({"nbf": now + 10})), now),
        Err(ExternalError::NotYetValid(now + 10))
    );
    assert!(matches!(
        check(&with(serde_json::json!({"iss": "https://evil"})), now),
        Err(ExternalError::UnknownIssuer(_))
    ));
    // Another key under the same name, and a name the set lacks.
    let stranger = test_issuer("k1");
    assert_eq!(
        check(&stranger.sign("k1", &claims), now),
        Err(ExternalError::BadSignature)
    );
    assert_eq!(
        check(&stranger.sign("k9", &claims), now),
        Err(ExternalError::UnknownKey("k9".into()))
    );
    // HS256 keyed with anything is refused before a key is looked at.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"x").unwrap(),
    )
    .unwrap();
    assert!(matches!(check(&hs, now), Err(ExternalError::Algorithm(_))));
    assert!(matches!(
        check("a.b.c", now),
        Err(ExternalError::Malformed(_))
    ));
}
