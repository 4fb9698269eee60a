//! Tool calling on chat completions: `tools` and `tool_choice` → a system message that
//! describes the functions, and a constraint that makes a call well formed; the output → a
//! `tool_calls` entry when it is one.
//!
//! A call is the JSON object `{"name": …, "arguments": {…}}`, its arguments constrained by the
//! function's `parameters` schema:
//! - `"required"`: the output is a call to one of the tools;
//! - a named function: a call to that one;
//! - `"auto"` (the default with tools): a call, or text that does not start with `{`;
//! - `"none"`: plain chat, tools neither described nor called.
//!
//! Models whose chat templates describe tools themselves do it in their own words; the
//! system message here gives every model the same description.

use serde_json::{json, Value};
use shardline_structured::Constraint;

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::ApiError;
use crate::openai::{FunctionCallOut, ToolCallOut};

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

impl ToolCall {
    /// OpenAI's shape, with a fresh call id; `index` for stream deltas.
    pub(crate) fn out(self, index: Option<usize>) -> ToolCallOut {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!("call_{:08x}", NEXT.fetch_add(1, Ordering::Relaxed));
        ToolCallOut {
            index,
            id,
            kind: "function",
            function: FunctionCallOut { name: self.name, arguments: self.arguments },
        }
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
