//! The merchant's own data on a refund: string keys and values, validated once at the edge,
//! stored with the refund, part of its idempotency check and echoed wherever the refund is shown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// At most this many keys.
pub const MAX_KEYS: usize = 20;
/// A key has 1 to this many characters.
pub const MAX_KEY_CHARS: usize = 40;
/// A value has at most this many characters.
pub const MAX_VALUE_CHARS: usize = 500;

/// Validated metadata (sorted by key, so its hash and its JSON are canonical).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetadataError {
    #[error("metadata has {0} keys; at most {MAX_KEYS} are allowed")]
    TooManyKeys(usize),
    #[error("metadata keys must have 1 to {MAX_KEY_CHARS} characters")]
    KeyLength,
    #[error("metadata value of {key:?} has more than {MAX_VALUE_CHARS} characters")]
    ValueLength { key: String },
    #[error("metadata key {key:?} or its value contains a control character")]
    Control { key: String },
}

impl Metadata {
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if map.len() > MAX_KEYS {
            return Err(MetadataError::TooManyKeys(map.len()));
        }
        for (k, v) in &map {
            let key_chars = k.chars().count();
            if key_chars == 0 || key_chars > MAX_KEY_CHARS {
                return Err(MetadataError::KeyLength);
            }
            let shown: String = k.chars().take(MAX_KEY_CHARS).collect();
            if v.chars().count() > MAX_VALUE_CHARS {
                return Err(MetadataError::ValueLength { key: shown });
            }
            if k.chars().chain(v.chars()).any(char::is_control) {
                return Err(MetadataError::Control { key: shown });
            }
        }
        Ok(Metadata(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_and_values_within_their_limits_are_accepted() {
        // GIVEN 20 keys of 40 characters and values of 500 (multi-byte ones count as one)
        let m: BTreeMap<String, String> = (0..MAX_KEYS)
            .map(|i| (format!("{i:0>40}"), "退".repeat(MAX_VALUE_CHARS)))
            .collect();
        // THEN accepted
        assert_eq!(Metadata::new(m.clone()).unwrap().as_map(), &m);
        assert!(Metadata::new(BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn anything_over_a_limit_is_refused_naming_it() {
        let many: BTreeMap<String, String> = (0..=MAX_KEYS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(
            Metadata::new(many),
            Err(MetadataError::TooManyKeys(MAX_KEYS + 1))
        );
        assert_eq!(
            Metadata::new(map(&[("", "v")])),
            Err(MetadataError::KeyLength)
        );
        assert_eq!(
            Metadata::new(map(&[(&"k".repeat(41), "v")])),
            Err(MetadataError::KeyLength)
        );
        assert_eq!(
            Metadata::new(map(&[("order_ref", &"v".repeat(501))])),
            Err(MetadataError::ValueLength {
                key: "order_ref".into()
            })
        );
        assert_eq!(
            Metadata::new(map(&[("k", "a\nb")])),
            Err(MetadataError::Control { key: "k".into() })
        );
    }
}
