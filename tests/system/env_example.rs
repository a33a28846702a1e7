//! `.env.example` documents every setting of every service, with its real default.

use std::collections::BTreeMap;

use serde_json::Value;

const ENV_EXAMPLE: &str = include_str!("../../.env.example");

/// `CAVLO_…` variable name → default, as the services' `Default` impls say.
fn settings() -> BTreeMap<String, String> {
    let mut settings = BTreeMap::new();
    for config in [
        serde_json::to_value(gateway::config::Config::default()).unwrap(),
        serde_json::to_value(moderator::config::Config::default()).unwrap(),
        serde_json::to_value(history::config::Config::default()).unwrap(),
        serde_json::to_value(media::config::Config::default()).unwrap(),
        serde_json::to_value(archiver::config::Config::default()).unwrap(),
    ] {
        flatten("CAVLO", &config, &mut settings);
    }
    settings
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(fields) => {
            let separator = if prefix == "CAVLO" { "_" } else { "__" };
            for (key, value) in fields {
                flatten(
                    &format!("{prefix}{separator}{}", key.to_uppercase()),
                    value,
                    out,
                );
            }
        }
        Value::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Array(items) if items.is_empty() => {
            out.insert(prefix.to_owned(), "[]".to_owned());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// Variable → value as written in `.env.example` (commented out or not).
fn documented() -> BTreeMap<String, String> {
    ENV_EXAMPLE
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter(|line| line.starts_with("CAVLO_"))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn env_example_lists_every_setting_with_its_default() {
    let mut documented = documented();
    assert_eq!(
        documented.remove("CAVLO_CONFIG").as_deref(),
        Some(""),
        "CAVLO_CONFIG is documented"
    );
    // Names without "__" are compose's own variables, not service settings.
    documented.retain(|key, _| key.contains("__"));
    let settings = settings();
    for (key, default) in &settings {
        assert_eq!(
            documented.get(key),
            Some(default),
            "{key} in .env.example with default {default:?}"
        );
    }
    let stale: Vec<_> = documented
        .keys()
        .filter(|key| !settings.contains_key(*key))
        .collect();
    assert!(
        stale.is_empty(),
        ".env.example documents settings that do not exist: {stale:?}"
    );
}
