//! Request inputs read field by field, so that every refusal names the field in plain words
//! (never a deserializer's `expected u64` or `invalid length 0, expected struct …`): JSON bodies,
//! query strings (unknown and repeated parameters refused on every merchant route), path segments.

use std::collections::BTreeMap;

use axum::extract::rejection::PathRejection;
use serde_json::{Map, Value};
use wxpay::money::MAX_FEN;

use super::ApiError;

/// Longest name of an unknown field or parameter repeated in a message.
const MAX_NAME_SHOWN: usize = 40;

fn shown(name: &str) -> String {
    name.chars().take(MAX_NAME_SHOWN).collect()
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("validation_error", message)
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A JSON object body, its fields taken one by one.
pub(crate) struct JsonObject {
    fields: Map<String, Value>,
}

impl JsonObject {
    /// Parses `body` as one JSON object whose fields are all in `known`; `what` names the body
    /// ("a refund request").
    pub(crate) fn parse(body: &[u8], what: &str, known: &[&str]) -> Result<Self, ApiError> {
        Self::parse_refusing(body, what, known, &[])
    }

    /// [`Self::parse`], with fields that are refused with their own message (`(field, message)`)
    /// rather than as unknown: a field a client may well send, whose refusal needs a reason.
    pub(crate) fn parse_refusing(
        body: &[u8],
        what: &str,
        known: &[&str],
        refused: &[(&str, &str)],
    ) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            let message = if e.is_eof() {
                format!("the request body ends before {what} is complete JSON")
            } else {
                format!(
                    "the request body is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            };
            ApiError::bad_request("invalid_json", message)
        })?;
        let Value::Object(fields) = value else {
            return Err(invalid(format!(
                "the request body must be a JSON object: {what}"
            )));
        };
        if let Some((_, why)) = refused.iter().find(|(f, _)| fields.contains_key(*f)) {
            return Err(invalid(*why));
        }
        if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown field {:?}: {what} has only the fields {}",
                shown(unknown),
                list(known)
            )));
        }
        Ok(JsonObject { fields })
    }

    /// An optional string: absent or `null` is `None`.
    pub(crate) fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("{name} must be a string"))),
        }
    }

    /// A required string (not `null`).
    pub(crate) fn required_string(&mut self, name: &str) -> Result<String, ApiError> {
        self.string(name)?
            .ok_or_else(|| invalid(format!("{name} is required")))
    }

    /// A required amount in fen: a whole number from 1 to [`MAX_FEN`].
    pub(crate) fn fen(&mut self, name: &str) -> Result<u64, ApiError> {
        let bad = || {
            invalid(format!(
                "{name} must be a whole number of fen from 1 to {MAX_FEN}"
            ))
        };
        match self.fields.remove(name) {
            None | Some(Value::Null) => Err(invalid(format!("{name} is required"))),
            // `100.0` is the integer 100 to JSON (and to JSON Schema's `integer`); `100.5` is not.
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(v), _) if (1..=MAX_FEN).contains(&v) => Ok(v),
                (None, Some(f)) if f.fract() == 0.0 && (1.0..=MAX_FEN as f64).contains(&f) => {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    // whole and within 1..=MAX_FEN (< 2^53), so exact
                    Ok(f as u64)
                }
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }

    /// An optional object of string values: absent or `null` is `None`.
    pub(crate) fn string_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        match self.fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(invalid(format!(
                        "{name}: the value of {:?} must be a string",
                        shown(&k)
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(invalid(format!(
                "{name} must be an object of string keys and string values"
            ))),
        }
    }
}

/// A query string's parameters, each at most once and all in `known` (else `400 invalid_query`,
/// the same on every merchant route: a misspelt `refersh=true` must not be silently ignored).
pub(crate) fn query(
    raw: Option<&str>,
    known: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_query", m);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| bad("the query string is not valid URL encoding".to_owned()))?;
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        let Some(name) = known.iter().copied().find(|n| *n == k) else {
            return Err(bad(format!(
                "unknown query parameter {:?}: this route takes {}",
                shown(&k),
                list(known)
            )));
        };
        if out.insert(name, v).is_some() {
            return Err(bad(format!(
                "query parameter {name} is given more than once"
            )));
        }
    }
    Ok(out)
}

/// A `true`/`false` query parameter.
pub(crate) fn query_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must be true or false"),
        )),
    }
}

/// A path that does not decode (e.g. `%FF`, not UTF-8) is a 400 in the JSON envelope, said in
/// words rather than the extractor's.
pub(crate) fn path_error(r: PathRejection) -> ApiError {
    tracing::debug!(rejection = %r.body_text(), "path refused");
    ApiError::bad_request(
        "invalid_path",
        "the path is not valid: a path segment must be percent-encoded UTF-8",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_refused_with_the_field_named() {
        let known = ["a", "n", "m"];
        let parse = |s: &str| JsonObject::parse(s.as_bytes(), "a test request", &known);
        assert_eq!(parse("{").err().map(|e| e.code), Some("invalid_json"));
        assert!(
            parse("[1]")
                .err()
                .is_some_and(|e| e.message.contains("JSON object"))
        );
        let e = parse(r#"{"zz":1}"#).err().map(|e| e.message);
        assert!(e.is_some_and(|m| m.contains("\"zz\"") && m.contains("a, n, m")));
        for (json, needle) in [
            (r#"{"n":"1"}"#, "n must be a whole number of fen"),
            (r#"{"n":-1}"#, "n must be a whole number of fen"),
            (r#"{"n":1.5}"#, "n must be a whole number of fen"),
            (r#"{"n":0.0}"#, "n must be a whole number of fen"),
            (r#"{"n":0}"#, "n must be a whole number of fen"),
            (r#"{"n":1e30}"#, "n must be a whole number of fen"),
            (r#"{}"#, "n is required"),
        ] {
            let mut o = parse(json).unwrap();
            let m = o.fen("n").unwrap_err().message;
            assert!(m.contains(needle), "{json}: {m}");
        }
        assert_eq!(parse(r#"{"n":59.0}"#).unwrap().fen("n").unwrap(), 59);
        let mut o = parse(r#"{"a":5,"m":{"k":1}}"#).unwrap();
        assert_eq!(o.string("a").unwrap_err().message, "a must be a string");
        assert!(o.string_map("m").unwrap_err().message.starts_with("m:"));
    }

    #[test]
    fn queries_refuse_unknown_and_repeated_parameters() {
        assert_eq!(query(None, &["refresh"]).unwrap().len(), 0);
        let q = query(Some("refresh=true"), &["refresh"]).unwrap();
        assert_eq!(q.get("refresh").map(String::as_str), Some("true"));
        let e = query(Some("refresh=true&refresh=false"), &["refresh"]).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "invalid_query",
                "query parameter refresh is given more than once"
            )
        );
        let e = query(Some("verbose=1"), &[]).unwrap_err();
        assert!(e.message.contains("takes none"), "{}", e.message);
        assert!(query_bool("refresh", "1").is_err());
    }
}
