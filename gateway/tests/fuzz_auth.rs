//! Property tests of token verification, the gateway's decoder of the
//! first thing any client sends: whatever the token's header, claims and
//! signature, `verify` returns a typed answer and never panics; only a
//! token signed with the secret, unexpired and with a usable `sub`
//! verifies; and the name it yields is fit for other users' screens.
//!
//! CI runs proptest's default number of cases; the long run is
//! `PROPTEST_CASES=1000000 cargo test --release -p gateway --test fuzz_auth`.
//! proptest keeps the seed of any failing input it finds in
//! `fuzz_auth.proptest-regressions` next to this file, and the inputs in
//! `CORPUS` run every time.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bootstrap::config::Secret;
use gateway::auth::{AuthError, Authenticator, Verified};
use gateway::config::AuthConfig;
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use serde_json::{Value, json};

const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789";

/// Tokens that broke or nearly broke JWT libraries elsewhere: empty parts,
/// `alg: none`, JSON `null` claims, path-like and NUL `kid`s, padding.
const CORPUS: &[&str] = &[
    "",
    ".",
    "..",
    "...",
    "a.b.c",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.",
    "eyJhbGciOiJIUzI1NiJ9.e30.",
    "eyJhbGciOiJIUzI1NiJ9.bnVsbA.c2ln",
    "eyJhbGciOiJSUzI1NiIsImtpZCI6Ii4uLy4uLyJ9.e30.c2ln",
    "eyJhbGciOiJFUzI1NiIsImtpZCI6IlxcdTAwMDAifQ.e30.c2ln",
    "=====.=====.=====",
];

/// Verifies with an HS256 secret and a key set whose endpoint refuses
/// connections, so RS256 and ES256 tokens reach the key lookup too.
fn verify(token: &str) -> Result<Verified, AuthError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let auth = AUTH.get_or_init(|| {
        let config = AuthConfig {
            hs256_secret: Some(Secret(SECRET.into())),
            jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
            ..AuthConfig::default()
        };
        let _guard = runtime.enter();
        Authenticator::new(&config).expect("the authenticator is configured")
    });
    runtime.block_on(auth.verify(token))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// JSON values of every kind, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..2).prop_map(|ahead| Value::from(now() + ahead * 3600)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,80}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A field of a generated object: mostly its usual value, so that
/// generated tokens get past the first checks often, else any value, or
/// absent.
fn field(usual: Value) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => Just(Some(usual)),
        2 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

/// An object of `fields`, plus rarely some of `extra` keys with any value.
fn object(
    fields: Vec<(&'static str, Value)>,
    extra: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    let values: Vec<_> = values.into_iter().map(field).collect();
    (
        values,
        prop_oneof![
            3 => Just(Default::default()),
            1 => prop::collection::btree_map(prop::sample::select(extra), json_value(), 1..3),
        ],
    )
        .prop_map(move |(values, extra)| {
            let mut object = serde_json::Map::new();
            for (key, value) in extra {
                object.insert(key.to_owned(), value);
            }
            for (key, value) in names.iter().zip(values) {
                if let Some(value) = value {
                    object.insert((*key).to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

fn header() -> impl Strategy<Value = Value> {
    let algs = vec![
        "HS256", "HS256", "HS256", "RS256", "ES256", "none", "HS512", "EdDSA", "hs256", "",
    ];
    (
        object(
            vec![("typ", json!("JWT"))],
            &["kid", "cty", "crit", "jku", "jwk", "b64", "x5t"],
        ),
        prop::option::weighted(0.9, prop::sample::select(algs)),
    )
        .prop_map(|(mut header, alg)| {
            if let Some(alg) = alg {
                header["alg"] = json!(alg);
            }
            header
        })
}

fn claims() -> impl Strategy<Value = Value> {
    // Names that only a cleaning filter keeps off other users' screens:
    // controls, bidi overrides and isolates, zero-width characters.
    let tricky_name = "[a-zA-Z \\x00-\\x1f\u{7f}\u{200b}-\u{200f}\u{202a}-\u{202e}\u{2066}-\u{2069}\u{feff}]{0,100}";
    (
        object(
            vec![
                ("sub", json!("user-1")),
                ("name", json!("Ann")),
                ("exp", json!(now() + 3600)),
            ],
            &["aud", "iss", "nbf", "iat", "jti"],
        ),
        prop::option::of(tricky_name),
    )
        .prop_map(|(mut claims, name)| {
            if let Some(name) = name {
                claims["name"] = json!(name);
            }
            claims
        })
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON encodes"))
}

/// A token of `header` and `claims`, signed with the secret or ending in
/// `junk`.
fn token(header: &Value, claims: &Value, signed: bool, junk: &[u8]) -> String {
    let message = format!("{}.{}", encode(header), encode(claims));
    let signature = if signed {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs")
    } else {
        URL_SAFE_NO_PAD.encode(junk)
    };
    format!("{message}.{signature}")
}

/// What a verified token must satisfy, whatever it was made of; `made` is
/// its header and claims when the test built it.
fn check(token: &str, made: Option<(&Value, &Value)>, signed: bool) -> Result<(), TestCaseError> {
    let before = now();
    let Ok(verified) = verify(token) else {
        return Ok(());
    };
    prop_assert!(
        signed,
        "a token not signed with the secret verified: {}",
        token
    );
    if let Some((header, claims)) = made {
        prop_assert_eq!(&header["alg"], "HS256", "{}", token);
        prop_assert_eq!(
            verified.user.id.as_str(),
            claims["sub"].as_str().unwrap_or_default()
        );
        prop_assert!(claims["exp"].as_u64().is_some_and(|exp| exp > before));
    }
    prop_assert!(!verified.user.id.as_str().is_empty());
    prop_assert!(verified.expires_at > before);
    let name = &verified.user.name;
    prop_assert!(name.chars().count() <= 64, "{:?}", name);
    prop_assert!(
        !name
            .chars()
            .any(|c| c.is_control() || schemas::text::is_spoofing_char(c)),
        "{:?}",
        name
    );
    Ok(())
}

#[test]
fn the_corpus_is_refused() {
    for token in CORPUS {
        assert!(verify(token).is_err(), "{token:?} verified");
    }
}

proptest! {
    /// Any text at all.
    #[test]
    fn any_text_is_answered(text in ".{0,300}") {
        check(&text, None, false)?;
    }

    /// Three dot-separated base64url parts of any bytes.
    #[test]
    fn any_three_parts_are_answered(
        parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 3),
    ) {
        let token: Vec<String> = parts.iter().map(|part| URL_SAFE_NO_PAD.encode(part)).collect();
        check(&token.join("."), None, false)?;
    }

    /// Headers and claims shaped like a JWT's with any values, signed with
    /// the secret or not: only a well-formed, unexpired HS256 token with a
    /// `sub` verifies, as its `sub`.
    #[test]
    fn jwt_shaped_tokens_verify_only_when_they_should(
        header in header(),
        claims in claims(),
        signed in prop::bool::weighted(0.8),
        junk in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let token = token(&header, &claims, signed, &junk);
        check(&token, Some((&header, &claims)), signed)?;
    }
}
