//! Credentials and settings from the AWS CLI's files (`~/.aws/credentials`, `~/.aws/config`, or the files
//! `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` name) for the profile `AWS_PROFILE` names (else
//! `default`). `object_store` reads the `AWS_*` variables and instance metadata itself, not these files;
//! variables and explicit settings win over them.

use std::collections::HashMap;
use std::env;
use std::fs;
use std::path::PathBuf;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// The profile's settings applied to `builder` where neither the environment nor `explicit` set them.
pub fn apply(mut builder: AmazonS3Builder, explicit: &[(String, String)]) -> AmazonS3Builder {
    let explicit_keys =
        explicit.iter().any(|(k, _)| k.parse::<AmazonS3ConfigKey>().ok() == Some(AmazonS3ConfigKey::AccessKeyId));
    let env_keys = env::var_os("AWS_ACCESS_KEY_ID").is_some();
    let profile = env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let home = env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        env::var_os(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials").and_then(|p| fs::read_to_string(p).ok());
    let config = file("AWS_CONFIG_FILE", "config").and_then(|p| fs::read_to_string(p).ok());
    let mut settings = HashMap::new();
    // In `config` a profile's section is `[profile NAME]` (but `[default]`); in `credentials` it is `[NAME]`.
    if let Some(text) = &config {
        let section = if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
        settings.extend(section_of(text, &section));
    }
    if let Some(text) = &credentials {
        settings.extend(section_of(text, &profile));
    }
    for (name, key) in [
        ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
        ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
        ("aws_session_token", AmazonS3ConfigKey::Token),
    ] {
        if let (false, false, Some(value)) = (explicit_keys, env_keys, settings.get(name)) {
            builder = builder.with_config(key, value);
        }
    }
    for (name, key) in [("region", AmazonS3ConfigKey::Region), ("endpoint_url", AmazonS3ConfigKey::Endpoint)] {
        if let (None, Some(value)) = (builder.get_config_value(&key), settings.get(name)) {
            builder = builder.with_config(key, value);
        }
    }
    builder
}

/// The `key = value` lines of `[section]` in an INI text.
fn section_of(text: &str, section: &str) -> HashMap<String, String> {
    let mut inside = false;
    let mut found = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            inside = line[1..line.len() - 1].trim() == section;
        } else if inside && !line.starts_with(['#', ';']) {
            if let Some((key, value)) = line.split_once('=') {
                found.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections() {
        let text =
            "[default]\naws_access_key_id = A\n[profile dev]\nregion=eu-west-1\n# x = y\nendpoint_url = http://h:1\n";
        assert_eq!(section_of(text, "default").get("aws_access_key_id").map(String::as_str), Some("A"));
        let dev = section_of(text, "profile dev");
        assert_eq!(dev.get("region").map(String::as_str), Some("eu-west-1"));
        assert_eq!(dev.get("endpoint_url").map(String::as_str), Some("http://h:1"));
        assert_eq!(dev.len(), 2);
    }
}
