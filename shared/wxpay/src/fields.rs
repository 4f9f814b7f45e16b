//! Reading typed fields out of a decoded message, with errors that name the field.

use std::str::FromStr;

use thiserror::Error;

use crate::xml::XmlMap;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FieldError {
    #[error("required field {0} is missing")]
    Missing(String),
    #[error("field {field} is invalid: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// A required field parsed with `FromStr`.
pub(crate) fn req<T>(map: &XmlMap, name: &str) -> Result<T, FieldError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match map.non_empty(name) {
        None => Err(FieldError::Missing(name.to_string())),
        Some(v) => parse(name, v),
    }
}

/// An optional field: absent or empty → `None`; present but invalid → error.
pub(crate) fn opt<T>(map: &XmlMap, name: &str) -> Result<Option<T>, FieldError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    map.non_empty(name).map(|v| parse(name, v)).transpose()
}

pub(crate) fn opt_string(map: &XmlMap, name: &str) -> Option<String> {
    map.non_empty(name).map(str::to_string)
}

fn parse<T>(name: &str, v: &str) -> Result<T, FieldError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| FieldError::Invalid {
        field: name.to_string(),
        problem: e.to_string(),
    })
}
