//! Layered configuration: built-in defaults, then an optional TOML file, then
//! environment variables.
//!
//! Environment variables start with `CAVLO_` and use `__` between levels, so
//! `CAVLO_NATS__URL` sets `nats.url` and `CAVLO_GATEWAY__MAX_CONNECTIONS` sets
//! `gateway.max_connections`. Every service reads the same variables and takes
//! the sections it knows, so one `.env` file can serve the whole system.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Prefix of every environment variable cavlo reads.
pub const ENV_PREFIX: &str = "CAVLO_";

/// A secret that never appears in logs or `Debug` output.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XXXXXXXX")
    }
}

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Loads `T`, starting from `T::default()`.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .extract()
        .map_err(|err| ConfigError(Box::new(err)))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        section: Section,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default)]
    struct Section {
        size: u32,
        name: String,
    }

    impl Default for Section {
        fn default() -> Self {
            Self {
                size: 1,
                name: "default".into(),
            }
        }
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment::Jail's closure signature is fixed"
    )]
    fn env_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("cavlo.toml", "[section]\nsize = 2\nname = \"file\"")?;
            jail.set_env("CAVLO_SECTION__NAME", "env");
            let sample: Sample = load(Some(Path::new("cavlo.toml"))).unwrap();
            assert_eq!(sample.section.size, 2);
            assert_eq!(sample.section.name, "env");
            let sample: Sample = load(None).unwrap();
            assert_eq!(sample.section.size, 1);
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(load::<Sample>(Some(Path::new("/nonexistent/cavlo.toml"))).is_err());
    }
}
