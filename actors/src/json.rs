//! One way to read a JSON body: every surface (admin, `/v1`, session commands over REST and
//! WebSocket, push) parses through [`from_slice`], so a bad field is always named the same
//! way, in the message and as a path a client can act on (`model_name`, `servers[2].owner`).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A body that did not parse, with the field at fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Path of the offending field (`servers[2].endpoint_url`); `None` for the document itself.
    pub field: Option<String>,
    /// serde's description of what was wrong, without the path.
    pub reason: String,
    /// The bytes are not JSON at all (as opposed to JSON of the wrong shape).
    pub syntax: bool,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.field, self.syntax) {
            (_, true) => write!(f, "not valid JSON: {}", self.reason),
            (Some(field), false) => write!(f, "`{field}`: {}", self.reason),
            (None, false) => write!(f, "{}", self.reason),
        }
    }
}

impl std::error::Error for JsonError {}

/// Parses `bytes` as `T` (which may borrow from them), naming the field that failed.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let err = convert(e);
        // serde reads a struct from an array too, positionally, and then complains about an
        // element; every body here is an object, so say that.
        let array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let at_root = err.field.as_deref().is_none_or(|f| f.starts_with('['));
        if array && at_root && !err.syntax {
            JsonError {
                field: None,
                reason: "expected a JSON object, got an array".into(),
                syntax: false,
            }
        } else {
            err
        }
    })?;
    de.end().map_err(|e| JsonError {
        field: None,
        reason: e.to_string(),
        syntax: true,
    })?;
    Ok(value)
}

/// Converts an already-parsed value (a message whose `type` was read first), naming the field.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, JsonError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = field_of(&e.path().to_string());
        let reason = plain(e.into_inner().to_string());
        JsonError {
            field: with_missing(path, &reason),
            reason,
            syntax: false,
        }
    })
}

fn convert(e: serde_path_to_error::Error<serde_json::Error>) -> JsonError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let syntax = inner.is_syntax() || inner.is_eof();
    let reason = plain(inner.to_string());
    let field = if syntax {
        None
    } else {
        with_missing(field_of(&path), &reason)
    };
    JsonError {
        field,
        reason,
        syntax,
    }
}

/// serde names the Rust type it expected ("expected struct RequestHead with 5 elements"), which
/// means nothing to a client: say what JSON was expected instead.
fn plain(reason: String) -> String {
    let Some(at) = reason.find("expected struct ") else {
        return reason;
    };
    let got = reason[..at].trim_end().trim_end_matches(',');
    // "invalid length 1" is serde reading an array into a struct.
    let got = if got.starts_with("invalid length") {
        "invalid type: array"
    } else {
        got
    };
    format!("{got}, expected a JSON object")
}

/// "missing field `x`" is reported at the object that lacks it, and so is "duplicate field
/// `x`": append `x` to the path.
fn with_missing(path: Option<String>, reason: &str) -> Option<String> {
    let missing = reason
        .strip_prefix("missing field `")
        .or_else(|| reason.strip_prefix("duplicate field `"))
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (Some(p), Some(m)) => Some(format!("{p}.{m}")),
        (None, Some(m)) => Some(m.to_string()),
        (p, None) => p,
    }
}

/// serde_path_to_error writes the document root as `.`; that names no field.
fn field_of(path: &str) -> Option<String> {
    (path != "." && !path.is_empty()).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Reg {
        model_name: String,
        servers: Option<Vec<Entry>>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Entry {
        owner: String,
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let e = from_slice::<Reg>(br#"{"model_name":123}"#).expect_err("wrong type");
        assert_eq!(e.field.as_deref(), Some("model_name"));
        assert!(!e.syntax);
        assert!(e
            .to_string()
            .starts_with("`model_name`: invalid type: integer `123`"));
    }

    #[test]
    fn a_nested_field_is_named_with_its_index() {
        let e = from_slice::<Reg>(br#"{"model_name":"m","servers":[{"owner":"a"},{"owner":1}]}"#)
            .expect_err("wrong type");
        assert_eq!(e.field.as_deref(), Some("servers[1].owner"));
    }

    #[test]
    fn broken_json_names_no_field() {
        let e = from_slice::<Reg>(br#"{"model_name":"#).expect_err("eof");
        assert!(e.syntax);
        assert_eq!(e.field, None);
        let trailing = from_slice::<Reg>(br#"{"model_name":"m"} x"#).expect_err("trailing");
        assert!(trailing.syntax);
    }

    #[test]
    fn the_expected_rust_type_is_described_as_json_and_a_duplicate_field_is_named() {
        let e = from_slice::<Reg>(b" [1]").expect_err("array");
        assert_eq!(e.reason, "expected a JSON object, got an array");
        assert_eq!(e.field, None);
        let e = from_slice::<Reg>(br#"{"model_name":"m","servers":[7]}"#).expect_err("element");
        assert_eq!(e.field.as_deref(), Some("servers[0]"));
        assert_eq!(
            e.reason,
            "invalid type: integer `7`, expected a JSON object"
        );
        let e = from_slice::<Reg>(b"\"text\"").expect_err("string");
        assert_eq!(
            e.reason,
            "invalid type: string \"text\", expected a JSON object"
        );
        let e = from_slice::<Reg>(br#"{"model_name":"a","model_name":"b"}"#).expect_err("twice");
        assert_eq!(e.field.as_deref(), Some("model_name"));
        assert!(e.reason.contains("duplicate field"), "{e}");
    }

    #[test]
    fn a_missing_field_is_described() {
        let e = from_slice::<Reg>(b"{}").expect_err("missing");
        assert!(e.to_string().contains("missing field `model_name`"), "{e}");
        assert_eq!(e.field.as_deref(), Some("model_name"));
    }
}
