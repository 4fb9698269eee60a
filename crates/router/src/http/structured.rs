//! A request's structured-output fields → one [`Constraint`]: OpenAI's `response_format`
//! (`json_object`, `json_schema`), vLLM's `guided_json` / `guided_regex` / `guided_choice` /
//! `guided_grammar` and their newer `structured_outputs` object. Shapes are checked here (400
//! naming the field); the constraint itself is compiled, and its errors reported, by the engine.

use serde_json::Value;
use shardline_structured::Constraint;

use super::error::ApiError;
use crate::openai::StructuredOutputFields;

fn bad(param: &str, message: String) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

/// A schema given as an object, or as a string holding one (vLLM accepts both).
fn schema(param: &str, v: &Value) -> Result<Constraint, ApiError> {
    match v {
        Value::String(s) => serde_json::from_str(s)
            .map(Constraint::JsonSchema)
            .map_err(|e| bad(param, format!("{param} is not a JSON schema: {e}"))),
        Value::Object(_) | Value::Bool(_) => Ok(Constraint::JsonSchema(v.clone())),
        other => Err(bad(param, format!("{param} must be a JSON schema object, got {other}"))),
    }
}

fn response_format(rf: &Value) -> Result<Option<Constraint>, ApiError> {
    let p = "response_format";
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let s = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| bad(p, "response_format json_schema needs json_schema.schema".into()))?;
            schema(p, s).map(Some)
        }
        Some(other) => Err(bad(p, format!("response_format type `{other}` is not text, json_object or json_schema"))),
        None => Err(bad(p, "response_format needs a `type`".into())),
    }
}

fn structured_outputs(v: &Value) -> Result<Vec<Constraint>, ApiError> {
    let p = "structured_outputs";
    let obj = v.as_object().ok_or_else(|| bad(p, format!("{p} must be an object")))?;
    let mut found = Vec::new();
    for (key, value) in obj {
        let text =
            |what: &str| value.as_str().map(String::from).ok_or_else(|| bad(p, format!("{p}.{key} must be {what}")));
        found.push(match key.as_str() {
            "json" => schema(p, value)?,
            "json_object" if value.as_bool() == Some(true) => Constraint::JsonObject,
            "regex" => Constraint::Regex(text("a string")?),
            "grammar" => Constraint::Grammar(text("a string")?),
            "choice" => Constraint::Choice(
                serde_json::from_value(value.clone())
                    .map_err(|_| bad(p, format!("{p}.choice must be a list of strings")))?,
            ),
            _ => return Err(bad(p, format!("{p}.{key} is not json, json_object, regex, choice or grammar"))),
        });
    }
    Ok(found)
}

/// The request's constraint, if any; more than one is an error.
pub(super) fn constraint(f: &StructuredOutputFields) -> Result<Option<Constraint>, ApiError> {
    let mut found: Vec<Constraint> = Vec::new();
    if let Some(rf) = &f.response_format {
        found.extend(response_format(rf)?);
    }
    if let Some(v) = &f.guided_json {
        found.push(schema("guided_json", v)?);
    }
    found.extend(f.guided_regex.clone().map(Constraint::Regex));
    found.extend(f.guided_choice.clone().map(Constraint::Choice));
    found.extend(f.guided_grammar.clone().map(Constraint::Grammar));
    if let Some(v) = &f.structured_outputs {
        found.extend(structured_outputs(v)?);
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(ApiError::bad_request("give one structured-output constraint, not several")),
    }
}
