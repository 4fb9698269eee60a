//! Typed, error-reporting access to GGUF metadata values.
//!
//! GGUF writers are loose about integer widths (a token id may be stored as u32, i32 or u64), so
//! the accessors accept any integer type that fits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::error::TokenizerError;

pub(super) struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

type Result<T> = std::result::Result<T, TokenizerError>;

impl<'a> Meta<'a> {
    pub(super) fn new(path: &'a Path, map: &'a HashMap<String, Value>) -> Self {
        Self { path, map }
    }

    pub(super) fn missing(&self, key: &str) -> TokenizerError {
        TokenizerError::GgufMissingKey { path: self.path.to_path_buf(), key: key.to_string() }
    }

    pub(super) fn bad_value(&self, key: &str, message: String) -> TokenizerError {
        TokenizerError::GgufBadValue { path: self.path.to_path_buf(), key: key.to_string(), message }
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.bad_value(key, format!("expected a string, found {:?}", v.value_type()))),
        }
    }

    pub(super) fn required_string(&self, key: &str) -> Result<&'a str> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn u32(&self, key: &str) -> Result<Option<u32>> {
        self.map
            .get(key)
            .map(|v| integer(v).and_then(|i| u32::try_from(i).ok()))
            .map(|v| v.ok_or_else(|| self.bad_value(key, "expected a non-negative 32-bit integer".into())))
            .transpose()
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => match integer(v) {
                Some(i) => Ok(Some(i != 0)),
                None => Err(self.bad_value(key, format!("expected a bool, found {:?}", v.value_type()))),
            },
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.bad_value(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }

    pub(super) fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.bad_value(key, format!("element {i} is {:?}, not a string", v.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub(super) fn i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                integer(v).and_then(|x| i32::try_from(x).ok()).ok_or_else(|| {
                    self.bad_value(key, format!("element {i} is {:?}, not a 32-bit integer", v.value_type()))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub(super) fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                v => Err(self.bad_value(key, format!("element {i} is {:?}, not a float", v.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Any GGUF integer value widened to i64 (`None` for non-integers and u64 values beyond i64).
fn integer(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}
