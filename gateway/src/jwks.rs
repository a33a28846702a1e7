//! A JSON Web Key Set fetched from an identity provider.
//!
//! Keys are fetched on first use and again whenever a token names a `kid`
//! the cached set lacks (providers rotate keys), but at most once per
//! `refetch_interval`, so a flood of tokens with made-up `kid`s cannot turn
//! the gateway into a load generator against the provider.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

/// How long one key-set fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The set has no usable key with that `kid`.
    #[error("no key with that kid")]
    UnknownKey,
    /// The set could not be fetched or parsed.
    #[error("cannot fetch key set: {0}")]
    Fetch(#[from] reqwest::Error),
}

/// A cached, lazily refreshed key set.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    refetch_interval: Duration,
    cache: Mutex<Cache>,
    /// Held across the HTTP fetch so concurrent misses wait for one fetch
    /// instead of each starting their own; hence a tokio mutex.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Option<Instant>,
}

impl Jwks {
    /// A key set at `url`, not fetched yet. Fails only if no HTTP client
    /// can be built (no TLS roots on the machine).
    pub fn new(url: String, refetch_interval: Duration) -> Result<Self, reqwest::Error> {
        // async-nats already brings rustls with ring; reuse that provider
        // rather than compiling a second crypto library. Installing fails
        // harmlessly if another part of the process did it first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
        Ok(Self {
            url,
            http,
            refetch_interval,
            cache: Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key `kid` for `alg`, fetching the set if the key is unknown and
    /// the last fetch is old enough.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, JwksError> {
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        let recently = {
            let cache = self.cache.lock().expect("jwks cache lock poisoned");
            cache
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.refetch_interval)
        };
        if recently {
            return Err(JwksError::UnknownKey);
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.lock().expect("jwks cache lock poisoned");
        cache.fetched_at = Some(Instant::now());
        cache.keys = fetched?;
        drop(cache);
        self.cached(kid, alg).ok_or(JwksError::UnknownKey)
    }

    fn cached(&self, kid: &str, alg: Algorithm) -> Option<DecodingKey> {
        let cache = self.cache.lock().expect("jwks cache lock poisoned");
        cache
            .keys
            .get(kid)
            .filter(|(key_alg, _)| *key_alg == alg)
            .map(|(_, key)| key.clone())
    }

    async fn fetch(&self) -> Result<HashMap<String, (Algorithm, DecodingKey)>, JwksError> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())?
            .json()
            .await?;
        let keys: HashMap<_, _> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let alg = key_algorithm(jwk)?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, (alg, key)))
            })
            .collect();
        tracing::info!(keys = keys.len(), url = %self.url, "fetched key set");
        Ok(keys)
    }
}

/// The algorithm a key is for: its `alg` if given, else what its type implies.
fn key_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), _) => Some(Algorithm::RS256),
        (Some(KeyAlgorithm::ES256), _) => Some(Algorithm::ES256),
        (Some(_), _) => None,
        (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        (None, _) => None,
    }
}
