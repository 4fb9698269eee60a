//! Tool calling on chat completions: `tools` and `tool_choice` → a system message that
//! describes the functions, and a constraint that makes a call well formed; the output → a
//! `tool_calls` entry when it is one.
//!
//! A call is the JSON object `{"name": …, "arguments": {…}}`, its arguments constrained by the
//! function's `parameters` schema:
//! - `"required"`: the output is a call to one of the tools;
//! - a named function: a call to that one;
//! - `"auto"` (the default with tools): a call, or text that does not start with `{` (a call
//!   in Hermes' `<tool_call>` tags, as Qwen2.5's template asks, is recognized but not
//!   constrained);
//! - `"none"`: plain chat, tools neither described nor called.
//!
//! A chat template with a tools section describes them in the model's own words (the tools
//! reach it as transformers passes them); for one without, a system message here does.
//!
//! Streams send a call as it is generated ([`CallStream`]): its name once known, then its
//! arguments piece by piece, as OpenAI's deltas.

use serde_json::{json, Value};
use shardline_structured::Constraint;

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::ApiError;
use crate::openai::{FunctionCallDelta, FunctionCallOut, ToolCallDelta, ToolCallOut};

struct Tool {
    name: String,
    description: String,
    parameters: Value,
}

enum Choice {
    Auto,
    Required,
    Named(String),
}

/// The tools a request may call, and how it must use them.
pub(crate) struct ToolSet {
    tools: Vec<Tool>,
    choice: Choice,
}

/// A call the model made.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ToolCall {
    pub(crate) name: String,
    /// The arguments as JSON text (OpenAI's shape).
    pub(crate) arguments: String,
}

/// A fresh call id.
fn call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("call_{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl ToolCall {
    /// OpenAI's shape, with a fresh call id.
    pub(crate) fn out(self) -> ToolCallOut {
        ToolCallOut {
            id: call_id(),
            kind: "function",
            function: FunctionCallOut { name: self.name, arguments: self.arguments },
        }
    }
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";

/// Whether output opening with `text` is (or may still be) a call: `{`, or Hermes' tag.
pub(crate) fn opens_call(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t.starts_with(HERMES_OPEN) || (!t.is_empty() && HERMES_OPEN.starts_with(t))
}

/// Where a call's text `{"name": "…", "arguments": …}` has its arguments: the name and the
/// byte offset the arguments start at. `Ok(None)` while the text is too short to say;
/// `Err(())` when it is not shaped so (the arguments first, say).
fn call_head(text: &str) -> Result<Option<(String, usize)>, ()> {
    // Matches `lit` after optional whitespace: true when matched, false when `rest` ends first.
    fn literal(rest: &mut &str, lit: &str) -> Result<bool, ()> {
        let r = rest.trim_start();
        match r.strip_prefix(lit) {
            Some(after) => {
                *rest = after;
                Ok(true)
            }
            None if lit.starts_with(r) => Ok(false),
            None => Err(()),
        }
    }
    // A call may come wrapped in Hermes' tags (Qwen2.5's and Hermes' templates ask for them).
    let mut rest = text.trim_start();
    match rest.strip_prefix(HERMES_OPEN) {
        Some(after) => rest = after,
        None if rest.starts_with('<') => return if HERMES_OPEN.starts_with(rest) { Ok(None) } else { Err(()) },
        None => {}
    }
    for lit in ["{", "\"name\"", ":"] {
        if !literal(&mut rest, lit)? {
            return Ok(None);
        }
    }
    let r = rest.trim_start();
    let mut strings = serde_json::Deserializer::from_str(r).into_iter::<String>();
    let name = match strings.next() {
        Some(Ok(name)) => name,
        None => return Ok(None),
        Some(Err(e)) if e.is_eof() => return Ok(None),
        Some(Err(_)) => return Err(()),
    };
    rest = &r[strings.byte_offset()..];
    for lit in [",", "\"arguments\"", ":"] {
        if !literal(&mut rest, lit)? {
            return Ok(None);
        }
    }
    // Complete once the arguments' first character is there (whitespace before it is not theirs).
    let arguments = rest.trim_start();
    Ok((!arguments.is_empty()).then(|| (name, text.len() - arguments.len())))
}

/// A complete call's name and its arguments' text as the model wrote it (so a streamed call's
/// pieces join into exactly what a whole response returns).
fn split_call(text: &str) -> Option<(String, &str)> {
    let (name, start) = call_head(text).ok()??;
    let body = text[start..].trim_end();
    let body = body.strip_suffix(HERMES_CLOSE).map_or(body, str::trim_end);
    let body = body.strip_suffix('}')?.trim_end();
    let arguments: Value = serde_json::from_str(body).ok()?;
    arguments.is_object().then_some((name, body))
}

/// A call streamed as it is generated. The object's closing brace (and whatever trails
/// arguments that may still grow) is held back: it ends the call, not the arguments.
pub(crate) struct CallStream {
    text: String,
    /// Byte offset of the arguments in `text`, once the head is complete.
    arguments_at: Option<usize>,
    /// Bytes of the arguments sent so far.
    sent: usize,
    /// The text is not shaped as expected: the call goes whole at the end.
    whole: bool,
}

/// How a streamed call ended.
pub(crate) enum CallEnd {
    /// A call: the deltas that complete it.
    Call(Vec<ToolCallDelta>),
    /// Cut short after its pieces began (by `max_tokens`): nothing more to send.
    Partial,
    /// Not a call after all: the text, to send as content.
    Text(String),
}

impl CallStream {
    pub(crate) fn new() -> Self {
        CallStream { text: String::new(), arguments_at: None, sent: 0, whole: false }
    }

    fn head(name: String) -> ToolCallDelta {
        ToolCallDelta {
            index: 0,
            id: Some(call_id()),
            kind: Some("function"),
            function: FunctionCallDelta { name: Some(name), arguments: String::new() },
        }
    }

    fn piece(arguments: &str) -> ToolCallDelta {
        ToolCallDelta {
            index: 0,
            id: None,
            kind: None,
            function: FunctionCallDelta { name: None, arguments: arguments.into() },
        }
    }

    /// Takes the next generated text; returns the deltas it completes.
    pub(crate) fn push(&mut self, tools: &ToolSet, text: &str) -> Vec<ToolCallDelta> {
        self.text.push_str(text);
        let mut out = Vec::new();
        if self.whole {
            return out;
        }
        let start = match self.arguments_at {
            Some(start) => start,
            None => match call_head(&self.text) {
                Ok(None) => return out,
                Ok(Some((name, start))) if tools.tools.iter().any(|t| t.name == name) => {
                    out.push(Self::head(name));
                    self.arguments_at = Some(start);
                    start
                }
                _ => {
                    self.whole = true;
                    return out;
                }
            },
        };
        let mut tail = &self.text[start..];
        // Hermes' closing tag, or what may grow into it, ends the call too.
        if let Some(at) =
            tail.rfind('<').filter(|&at| HERMES_CLOSE.starts_with(&tail[at..]) || tail[at..].starts_with(HERMES_CLOSE))
        {
            tail = &tail[..at];
        }
        let ready = tail.trim_end_matches(|c: char| c == '}' || c.is_whitespace()).len();
        if ready > self.sent {
            Self::add_piece(&mut out, &self.text[start + self.sent..start + ready]);
            self.sent = ready;
        }
        out
    }

    /// Appends `arguments` to the head when it goes out in the same delta (as OpenAI's first
    /// delta carries the first piece), else as a delta of its own.
    fn add_piece(out: &mut Vec<ToolCallDelta>, arguments: &str) {
        match out.last_mut() {
            Some(head) => head.function.arguments.push_str(arguments),
            None => out.push(Self::piece(arguments)),
        }
    }

    /// At the end of the output: what completes the call, or what it was instead.
    pub(crate) fn finish(self, tools: &ToolSet) -> CallEnd {
        let Some(call) = tools.parse_call(&self.text) else {
            return match self.arguments_at {
                Some(_) => CallEnd::Partial,
                None => CallEnd::Text(self.text),
            };
        };
        let mut out = Vec::new();
        if self.arguments_at.is_none() {
            out.push(Self::head(call.name));
        }
        if let Some(rest) = call.arguments.get(self.sent..).filter(|r| !r.is_empty()) {
            Self::add_piece(&mut out, rest);
        }
        CallEnd::Call(out)
    }
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

impl ToolSet {
    /// `None` without tools or with `tool_choice: "none"`.
    pub(crate) fn parse(tools: &Option<Vec<Value>>, choice: &Option<Value>) -> Result<Option<ToolSet>, ApiError> {
        let Some(list) = tools.as_ref().filter(|t| !t.is_empty()) else {
            return match choice.as_ref().and_then(Value::as_str) {
                None | Some("none") | Some("auto") => Ok(None),
                Some(_) => Err(bad("tool_choice", "tool_choice needs tools".into())),
            };
        };
        let mut parsed = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let f = t.get("function").filter(|_| t.get("type").and_then(Value::as_str) == Some("function"));
            let f = f.ok_or_else(|| {
                bad("tools", format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{…}}}}"))
            })?;
            let name = f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            let name = name.ok_or_else(|| bad("tools", format!("tools[{i}].function needs a name")))?.to_string();
            if parsed.iter().any(|p: &Tool| p.name == name) {
                return Err(bad("tools", format!("two tools are named `{name}`")));
            }
            let parameters = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
            if !parameters.is_object() {
                return Err(bad("tools", format!("tools[{i}].function.parameters must be a JSON schema object")));
            }
            let description = f.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
            parsed.push(Tool { name, description, parameters });
        }
        let choice = match choice {
            None => Choice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => return Ok(None),
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(bad("tool_choice", format!("tool_choice `{other}` is not none, auto or required")))
                }
            },
            Some(v) => {
                let name = v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
                let name = name.ok_or_else(|| {
                    bad("tool_choice", "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}".into())
                })?;
                if !parsed.iter().any(|t| t.name == name) {
                    return Err(bad(
                        "tool_choice",
                        format!("tool_choice names `{name}`, which is not among the tools"),
                    ));
                }
                Choice::Named(name.to_string())
            }
        };
        Ok(Some(ToolSet { tools: parsed, choice }))
    }

    /// The system message that describes the tools and the call format.
    pub(crate) fn system_prompt(&self) -> String {
        let list: Vec<Value> = self
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        let rule = match &self.choice {
            Choice::Auto => "To call a function, reply with only a JSON object {\"name\": <function name>, \"arguments\": <arguments object>}; otherwise answer normally.".to_string(),
            Choice::Required => "Reply with only a JSON object {\"name\": <function name>, \"arguments\": <arguments object>} calling one of them.".to_string(),
            Choice::Named(n) => format!("Reply with only a JSON object {{\"name\": \"{n}\", \"arguments\": <arguments object>}} calling `{n}`."),
        };
        format!("You can call these functions:\n{}\n{rule}", serde_json::to_string_pretty(&list).unwrap_or_default())
    }

    fn call_schema(tool: &Tool) -> Value {
        json!({"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": false})
    }

    /// What the output must match.
    pub(crate) fn constraint(&self) -> Constraint {
        let any_call = || json!({"anyOf": self.tools.iter().map(Self::call_schema).collect::<Vec<_>>()});
        match &self.choice {
            Choice::Named(n) => {
                let tool = self.tools.iter().find(|t| &t.name == n).expect("checked in parse");
                Constraint::JsonSchema(Self::call_schema(tool))
            }
            Choice::Required => Constraint::JsonSchema(any_call()),
            // Free text may not start with `{`: that opens a call.
            Choice::Auto => {
                Constraint::Grammar(format!("start: call | text\ncall: %json {}\ntext: /[^{{][\\s\\S]*/", any_call()))
            }
        }
    }

    /// Whether output that starts with `{` is a call (auto mode decides by the first byte).
    pub(crate) fn parse_call(&self, text: &str) -> Option<ToolCall> {
        if let Some((name, arguments)) = split_call(text) {
            let known = self.tools.iter().any(|t| t.name == name);
            return known.then(|| ToolCall { name, arguments: arguments.to_string() });
        }
        let v: Value = serde_json::from_str(text.trim()).ok()?;
        let name = v.get("name")?.as_str()?;
        self.tools.iter().any(|t| t.name == name).then(|| ToolCall {
            name: name.to_string(),
            arguments: v.get("arguments").map_or("{}".into(), Value::to_string),
        })
    }

    /// Whether every output is a call (so streams hold text back until it is complete).
    pub(crate) fn always_calls(&self) -> bool {
        !matches!(self.choice, Choice::Auto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> ToolSet {
        let list = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        ToolSet::parse(&Some(list), &Some(json!("required"))).unwrap().unwrap()
    }

    /// Streams `text` in pieces of `step` characters; returns the deltas' name and the joined
    /// arguments, and how many deltas carried arguments.
    fn stream(text: &str, step: usize) -> (Option<String>, String, usize, bool) {
        let tools = tools();
        let mut call = CallStream::new();
        let chars: Vec<char> = text.chars().collect();
        let mut deltas = Vec::new();
        for piece in chars.chunks(step) {
            deltas.extend(call.push(&tools, &piece.iter().collect::<String>()));
        }
        let is_call = match call.finish(&tools) {
            CallEnd::Call(rest) => {
                deltas.extend(rest);
                true
            }
            _ => false,
        };
        let name = deltas.first().and_then(|d| d.function.name.clone());
        assert!(deltas.iter().skip(1).all(|d| d.id.is_none() && d.function.name.is_none()), "one head");
        let arguments: String = deltas.iter().map(|d| d.function.arguments.as_str()).collect();
        let pieces = deltas.iter().filter(|d| !d.function.arguments.is_empty()).count();
        (name, arguments, pieces, is_call)
    }

    #[test]
    fn a_streamed_call_joins_into_the_whole_calls_arguments() {
        let args = r#"{"city": "Paris {left}", "nested": {"a": [1, {"b": "}"}]}}"#;
        for text in [
            format!(r#"{{"name":"get_weather","arguments":{args}}}"#),
            format!("{{ \"name\" : \"get_weather\" ,\n \"arguments\" : {args} }}\n"),
        ] {
            let whole = tools().parse_call(&text).unwrap();
            assert_eq!(whole.arguments, args, "the model's own text");
            for step in [1, 2, 3, 7, 1000] {
                let (name, joined, pieces, is_call) = stream(&text, step);
                assert!(is_call);
                assert_eq!(name.as_deref(), Some("get_weather"), "step {step}");
                assert_eq!(joined, args, "step {step}");
                if step < 4 {
                    assert!(pieces > 5, "arguments arrive piece by piece ({pieces})");
                }
            }
        }
    }

    #[test]
    fn other_shapes_are_sent_whole_or_as_text() {
        // The arguments before the name: sent whole at the end, re-serialized.
        let (name, joined, pieces, is_call) = stream(r#"{"arguments": {"x": 1}, "name": "get_weather"}"#, 2);
        assert!(is_call);
        assert_eq!((name.as_deref(), joined.as_str(), pieces), (Some("get_weather"), r#"{"x":1}"#, 1), "one delta");
        // Hermes' tags around a call, streamed in pieces.
        let args = r#"{"city": "Oslo"}"#;
        for step in [1, 4, 100] {
            let (name, joined, _, is_call) = stream(
                &format!("<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {args}}}\n</tool_call>"),
                step,
            );
            assert!(is_call);
            assert_eq!((name.as_deref(), joined.as_str()), (Some("get_weather"), args), "step {step}");
        }
        assert!(opens_call(" <tool") && opens_call("{") && !opens_call("<b>") && !opens_call("Hi"));
        // Not a call: text. A call cut short: neither.
        assert!(!stream("hello there", 3).3);
        let tools = tools();
        let mut call = CallStream::new();
        assert!(!call.push(&tools, r#"{"name": "get_weather", "arguments": {"ci"#).is_empty());
        assert!(matches!(call.finish(&tools), CallEnd::Partial));
        assert_eq!(call_head(r#"{"name": "get_wea"#), Ok(None));
        assert_eq!(call_head(r#"{"nope"#), Err(()));
    }
}
