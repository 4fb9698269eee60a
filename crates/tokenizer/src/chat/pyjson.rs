//! `tojson` as transformers defines it for chat templates: Python's
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! minijinja's built-in `tojson` differs in ways that change the prompt: it uses compact
//! separators (`{"a":1}` vs Python's `{"a": 1}`) and HTML-escapes `<`, `>`, `&` and `'`.
//! We walk minijinja values directly so map order is the template's (Python dict) order.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

pub(super) fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v).map_err(|_| invalid("indent must be an integer or a string"))?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let opts = Options { indent, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    write_value(&mut out, &value, &opts, 0)?;
    Ok(Value::from(out))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {}", message.into()))
}

struct Options {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// Python's layout: `", "` / `": "` separators without indent, `","` + newline with one, and
/// `[]` / `{}` for empty containers either way.
fn write_value(out: &mut String, v: &Value, opts: &Options, depth: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match v.as_i64() {
            Some(i) => out.push_str(&i.to_string()),
            None => {
                let f = f64::try_from(v.clone()).map_err(|_| invalid(format!("unsupported number {v}")))?;
                // Rust's Debug float format matches Python's repr for the usual cases (1.0, 2.5).
                out.push_str(&format!("{f:?}"));
            }
        },
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), opts, depth, |out, i| {
                write_value(out, &items[i], opts, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            write_container(out, ('{', '}'), keys.len(), opts, depth, |out, i| {
                let key = &keys[i];
                match key.as_str() {
                    Some(s) => write_string(out, s, opts.ensure_ascii),
                    None => write_string(out, &key.to_string(), opts.ensure_ascii),
                }
                out.push_str(": ");
                write_value(out, &v.get_item(key)?, opts, depth + 1)
            })?;
        }
        other => return Err(invalid(format!("cannot serialize a value of kind {other:?}"))),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    opts: &Options,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        match &opts.indent {
            Some(unit) => {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&unit.repeat(depth + 1));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(out, i)?;
    }
    if let Some(unit) = &opts.indent {
        out.push('\n');
        out.push_str(&unit.repeat(depth));
    }
    out.push(close);
    Ok(())
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    fn render(src: &str) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", super::tojson);
        env.render_str(src, ()).unwrap()
    }

    #[test]
    fn python_separators_keep_order_and_do_not_html_escape() {
        let out = render(r#"{{ {"name": "f<x>", "args": [1, 2.5, true, none], "empty": {}, "s": "é\n"} | tojson }}"#);
        assert_eq!(out, r#"{"name": "f<x>", "args": [1, 2.5, true, null], "empty": {}, "s": "é\n"}"#);
    }

    #[test]
    fn python_indent_layout() {
        let out = render(r#"{{ {"b": [1, {"a": []}]} | tojson(indent=2) }}"#);
        assert_eq!(out, "{\n  \"b\": [\n    1,\n    {\n      \"a\": []\n    }\n  ]\n}");
    }

    #[test]
    fn ensure_ascii_and_sort_keys() {
        let out = render(r#"{{ {"z": "é😀", "a": 1} | tojson(ensure_ascii=true, sort_keys=true) }}"#);
        assert_eq!(out, r#"{"a": 1, "z": "\u00e9\ud83d\ude00"}"#);
    }
}
