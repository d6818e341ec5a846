//! A value of the KV store: any bytes (binary-safe). In JSON (the client protocol, the log's
//! JSON commands, results and snapshots) a value is either a string, its UTF-8 text, or an
//! object `{"base64": STRING}` holding its bytes in standard base64 with padding (RFC 4648,
//! section 4). Values are written as a string when they are UTF-8 text that JSON does not
//! inflate beyond its base64 form, else as the object; both forms are always read.
//!
//! Owns: the value type and its two JSON forms. Never: changes a value's bytes on the way
//! through (a value read back is the value written, byte for byte).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The key of the JSON object form of a value.
pub const BASE64_FIELD: &str = "base64";

/// A value: any bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(Vec<u8>);

impl Value {
    /// A value holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Value {
        Value(bytes)
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value as text when it is written as a JSON string: valid UTF-8 whose JSON escapes
    /// do not make it longer than its base64 form. `None`: it is written as `{"base64":...}`.
    pub fn as_text(&self) -> Option<&str> {
        let text = std::str::from_utf8(&self.0).ok()?;
        (json_escaped_len(text) <= base64_len(self.0.len())).then_some(text)
    }

    /// The value for a message: quoted text (its first 200 characters), or its size when it
    /// is not text.
    pub fn describe(&self) -> String {
        match std::str::from_utf8(&self.0) {
            Ok(text) if text.chars().count() <= 200 => format!("{text:?}"),
            Ok(text) => {
                let head: String = text.chars().take(200).collect();
                format!("{head:?}... ({} bytes)", self.0.len())
            }
            Err(_) => format!("{} bytes that are not UTF-8 text", self.0.len()),
        }
    }
}

/// Bytes of `text` as a JSON string's content (serde_json's escapes).
fn json_escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Length of the padded base64 form of `bytes` bytes.
fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value(text.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value(text.into_bytes())
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        Value(bytes)
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Value {
        Value(bytes.to_vec())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => write!(f, "{text:?}"),
            None => write!(f, "{{base64: {}}}", STANDARD.encode(&self.0)),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_text() {
            Some(text) => serializer.serialize_str(text),
            None => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(BASE64_FIELD, &STANDARD.encode(&self.0))?;
                map.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a value: a string, or {"base64": STRING}"#)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Value, E> {
        Ok(Value::from(text))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Value, E> {
        Ok(Value::from(text))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != BASE64_FIELD {
                return Err(de::Error::custom(format!(
                    r#"a value object has only the field "{BASE64_FIELD}", not {key:?}"#
                )));
            }
            if bytes.is_some() {
                return Err(de::Error::custom(format!(
                    r#"a value object has "{BASE64_FIELD}" once"#
                )));
            }
            let text: String = map.next_value()?;
            bytes = Some(STANDARD.decode(text.as_bytes()).map_err(|e| {
                de::Error::custom(format!(
                    "\"{BASE64_FIELD}\" is not standard base64 with padding: {e}"
                ))
            })?);
        }
        bytes
            .map(Value)
            .ok_or_else(|| de::Error::custom(format!(r#"a value object needs "{BASE64_FIELD}""#)))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    //! Proves both JSON forms round-trip any bytes, text stays a plain string (so text values
    //! are written as earlier builds wrote them), and malformed objects are refused.
    use super::*;

    fn round_trip(value: &Value) -> String {
        let json = serde_json::to_string(value).unwrap();
        assert_eq!(&serde_json::from_str::<Value>(&json).unwrap(), value);
        json
    }

    #[test]
    fn text_is_a_string_and_bytes_are_base64() {
        assert_eq!(round_trip(&Value::from("héllo")), r#""héllo""#);
        assert_eq!(round_trip(&Value::from("")), r#""""#);
        assert_eq!(round_trip(&Value::from("a\nb")), r#""a\nb""#);
        assert_eq!(
            round_trip(&Value::from(vec![0xff, 0x00, 0x01])),
            r#"{"base64":"/wAB"}"#
        );
        // Text that JSON would inflate beyond base64 goes as base64.
        let controls = Value::from(vec![1u8; 30]);
        assert!(controls.as_text().is_none());
        assert!(round_trip(&controls).starts_with(r#"{"base64":"#));
        // Every byte value survives.
        let all: Vec<u8> = (0..=255u8).collect();
        round_trip(&Value::from(all));
        assert_eq!(
            serde_json::from_str::<Value>(r#"{"base64":"aGk="}"#).unwrap(),
            Value::from("hi")
        );
    }

    #[test]
    fn malformed_objects_are_refused() {
        for bad in [
            r#"{"base64":"not base64!"}"#,
            r#"{"base64":"aGk"}"#,
            r#"{"b64":"aGk="}"#,
            r#"{}"#,
            r#"{"base64":"aGk=","base64":"aGk="}"#,
            r#"{"base64":1}"#,
            "1",
            "null",
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn describe_names_text_or_size() {
        assert_eq!(Value::from("v").describe(), r#""v""#);
        assert_eq!(
            Value::from(vec![0xff; 3]).describe(),
            "3 bytes that are not UTF-8 text"
        );
        assert!(Value::from("x".repeat(300))
            .describe()
            .ends_with("... (300 bytes)"));
    }
}
