use super::*;
use jsonwebtoken::{EncodingKey, Header};

fn who(token: Option<&str>) -> Credentials {
    Credentials {
        token: token.map(Into::into),
        ..Credentials::default()
    }
}

fn addr(space: &str, doc: &str) -> DocAddress {
    DocAddress::parse(space, doc).unwrap()
}

fn grant(space: &str, doc: &str, mode: Mode) -> Grant {
    Grant {
        space: space.into(),
        doc: doc.into(),
        mode,
    }
}

#[test]
fn grants_match_space_doc_and_wildcards_and_the_best_mode_wins() {
    let claims = Claims {
        sub: "ann".into(),
        exp: None,
        iat: None,
        from_app: false,
        access: vec![
            grant("team", "*", Mode::Ro),
            grant("team", "plan", Mode::Rw),
        ],
    };
    assert_eq!(claims.doc_mode(&addr("team", "plan")), Some(Mode::Rw));
    assert_eq!(claims.doc_mode(&addr("team", "notes")), Some(Mode::Ro));
    assert_eq!(claims.doc_mode(&addr("other", "plan")), None);
    assert_eq!(claims.doc_mode(&addr("@ann", "x")), Some(Mode::Rw));
    assert_eq!(claims.doc_mode(&addr("@bob", "x")), None);
    assert_eq!(claims.space_mode("team"), Some(Mode::Ro));
    assert_eq!(claims.space_mode("@ann"), Some(Mode::Rw));
}

#[tokio::test]
async fn tokens_verify_and_fail_with_a_clear_reason() {
    let key = SigningKey::Secret("s3cret".into());
    let auth = Auth::with_secret("s3cret");
    let token = mint(&key, "ann", vec![grant("team", "*", Mode::Ro)], 60).unwrap();
    let permit = auth
        .doc(&who(Some(&token)), &addr("team", "d"))
        .await
        .unwrap();
    assert_eq!(permit.mode, Mode::Ro);
    assert_eq!(permit.sub.as_deref(), Some("ann"));
    assert_eq!(
        auth.doc(&who(Some(&token)), &addr("x", "d")).await,
        Err(AuthError::Denied("x/d".into()))
    );
    assert_eq!(
        auth.doc(&who(None), &addr("team", "d")).await,
        Err(AuthError::Missing)
    );
    let forged = mint(&SigningKey::Secret("other".into()), "ann", vec![], 60).unwrap();
    assert!(matches!(
        auth.doc(&who(Some(&forged)), &addr("@ann", "d")).await,
        Err(AuthError::Invalid(_))
    ));
    // Not valid yet (nbf an hour ahead), and an empty subject.
    let claims = |sub: &str, nbf: i64| serde_json::json!({ "sub": sub, "exp": now_ms() / 1000 + 7200, "nbf": nbf, "access": [] });
    let signed = |c: serde_json::Value| {
        jsonwebtoken::encode(&Header::default(), &c, &EncodingKey::from_secret(b"s3cret")).unwrap()
    };
    let later = signed(claims("ann", now_ms() / 1000 + 3600));
    assert!(matches!(
        auth.doc(&who(Some(&later)), &addr("@ann", "d")).await,
        Err(AuthError::Invalid(m)) if m.contains("nbf")
    ));
    let now = signed(claims("ann", now_ms() / 1000));
    assert!(auth.doc(&who(Some(&now)), &addr("@ann", "d")).await.is_ok());
    let nobody = signed(claims("", now_ms() / 1000));
    assert!(matches!(
        auth.doc(&who(Some(&nobody)), &addr("x", "d")).await,
        Err(AuthError::Invalid(m)) if m.contains("sub")
    ));
    let expired = mint(&key, "ann", vec![], -60).unwrap();
    assert_eq!(
        auth.doc(&who(Some(&expired)), &addr("@ann", "d")).await,
        Err(AuthError::Expired)
    );
    assert_eq!(
        Auth::open()
            .doc(&who(None), &addr("x", "d"))
            .await
            .unwrap()
            .mode,
        Mode::Rw
    );
}
