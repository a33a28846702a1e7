//! A JSON Web Key Set fetched from an identity provider.
//!
//! Keys are fetched on first use, again when the set is older than
//! `max_age` (so a key the provider removed stops working), and whenever a
//! token names a `kid` the cached set lacks (a key the provider just
//! published). Never more than once per `refetch_interval`, so a flood of
//! tokens with made-up `kid`s cannot turn the gateway into a load generator
//! against the provider. A failed fetch keeps the last set in use.

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
    max_age: Duration,
    cache: Mutex<Cache>,
    /// Held across the HTTP fetch so concurrent misses wait for one fetch
    /// instead of each starting their own; hence a tokio mutex.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    /// The last fetch, whether it worked or not.
    tried_at: Option<Instant>,
    /// The last fetch that worked: when `keys` were current.
    fetched_at: Option<Instant>,
}

impl Jwks {
    /// A key set at `url`, not fetched yet. Fails only if no HTTP client
    /// can be built (no TLS roots on the machine).
    pub fn new(
        url: String,
        refetch_interval: Duration,
        max_age: Duration,
    ) -> Result<Self, reqwest::Error> {
        // async-nats already brings rustls with ring; reuse that provider
        // rather than compiling a second crypto library. Installing fails
        // harmlessly if another part of the process did it first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
        Ok(Self {
            url,
            http,
            refetch_interval,
            max_age,
            cache: Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key `kid` for `alg`, fetching the set first if the key is
    /// unknown or the set too old, and the last fetch long enough ago.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, JwksError> {
        let known = self.cached(kid, alg);
        let _fetching = match known {
            Some(key) if self.is_current() => return Ok(key),
            // A known key in an old set: one token waits for the fetch, the
            // others use the old set meanwhile, so a provider that hangs
            // delays one login per refetch interval, not every one.
            Some(key) => match self.fetching.try_lock() {
                Ok(fetching) => fetching,
                Err(_) => return Ok(key),
            },
            None => self.fetching.lock().await,
        };
        if let Some(key) = self.cached(kid, alg).filter(|_| self.is_current()) {
            return Ok(key);
        }
        let recently = {
            let cache = self.cache.lock().expect("jwks cache lock poisoned");
            cache
                .tried_at
                .is_some_and(|at| at.elapsed() < self.refetch_interval)
        };
        if recently {
            return self.cached(kid, alg).ok_or(JwksError::UnknownKey);
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.lock().expect("jwks cache lock poisoned");
        cache.tried_at = Some(Instant::now());
        let failed = match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched_at = cache.tried_at;
                None
            }
            Err(err) => {
                tracing::warn!(cause = %err, url = %self.url, "key set fetch failed; keeping the last one");
                Some(err)
            }
        };
        drop(cache);
        match (self.cached(kid, alg), failed) {
            (Some(key), _) => Ok(key),
            (None, Some(err)) => Err(err),
            (None, None) => Err(JwksError::UnknownKey),
        }
    }

    /// Whether the cached set is recent enough to trust without a fetch.
    fn is_current(&self) -> bool {
        let cache = self.cache.lock().expect("jwks cache lock poisoned");
        cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.max_age)
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
