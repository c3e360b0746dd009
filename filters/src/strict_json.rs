//! JSON parsed the way Sluice reads a request: like `serde_json::Value`, but a duplicate key
//! in any object is an error.
//!
//! Parsers disagree on duplicates (most keep the last value, some the first, some refuse), and
//! `serde_json` keeps the last one silently: a body with two `model`s, or two `content`s, would
//! be routed, authorized and scanned on one value while an upstream acted on the other.
//! Refusing them closes that gap.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Parses `raw` as JSON, refusing duplicate object keys.
pub fn parse(raw: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One lookup per key: the vacant slot is filled once its value is parsed.
            match out.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(Strict)?);
                }
                Entry::Occupied(dup) => {
                    let shown: String = dup.key().chars().take(64).collect();
                    return Err(A::Error::custom(format!("duplicate key `{shown}`")));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_serde_json_but_no_duplicate_keys() {
        let text = r#"{"a":[1,-2,3.5,"x",null,true],"b":{"c":{}},"d":"\u0041"}"#;
        let ours = parse(text.as_bytes()).unwrap_or(Value::Null);
        let theirs: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        assert_eq!(ours, theirs);
        for dup in [r#"{"model":"a","model":"b"}"#, r#"{"m":[{"c":1,"c":2}]}"#] {
            let e = parse(dup.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("duplicate key"), "{dup}: {e}");
        }
        assert!(parse(b"{} trailing").is_err());
    }
}
