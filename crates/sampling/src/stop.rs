//! When a sequence ends: stop token ids, EOS, max_tokens, and stop strings over streamed text.

use serde::Serialize;

use crate::params::SamplingParams;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// max_tokens reached.
    Length,
}

impl FinishReason {
    /// The name OpenAI's API, vLLM's metrics and our JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The finish reason due to the token just generated (`generated_len` counts it), if any.
pub fn check_token_stop(
    token: u32,
    generated_len: usize,
    params: &SamplingParams,
    eos_token_ids: &[u32],
) -> Option<FinishReason> {
    if params.stop_token_ids.contains(&token) || (!params.ignore_eos && eos_token_ids.contains(&token)) {
        Some(FinishReason::Stop)
    } else if generated_len >= params.max_tokens {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// What a streamed delta releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is final (never part of a stop string).
    pub emit: String,
    /// A stop string appeared; `emit` holds the text before it and nothing follows.
    pub stopped: bool,
}

/// Finds stop strings in streamed text, holding back only a tail that could still begin one,
/// so a client never sees text that later turns out to be part of a stop string. The stop
/// string itself is not emitted (vLLM's default).
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome { emit: String::new(), stopped: true };
        }
        self.held.push_str(delta);
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let emit = self.held[..pos].to_string();
            self.held.clear();
            return StopOutcome { emit, stopped: true };
        }
        let keep = self.longest_partial_suffix();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopOutcome { emit, stopped: false }
    }

    /// Releases what is held back at the end of generation.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            for (len, _) in s.char_indices().skip(1) {
                if len > best && self.held.ends_with(&s[..len]) {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool, Vec<String>) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        let mut emitted = Vec::new();
        for d in deltas {
            let o = m.push(d);
            emitted.push(o.emit.clone());
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true, emitted);
            }
        }
        out.push_str(&m.finish());
        (out, false, emitted)
    }

    #[test]
    fn stop_split_across_deltas_is_found_and_excluded() {
        let (out, stopped, emitted) = run(&["STOP"], &["hello S", "TO", "P world"]);
        assert_eq!((out.as_str(), stopped), ("hello ", true));
        assert_eq!(emitted[0], "hello ", "the possible start of a stop string is held back");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped, _) = run(&["world", "lo"], &["hello world"]);
        assert_eq!((out.as_str(), stopped), ("hel", true));
    }

    #[test]
    fn held_prefix_is_flushed_when_no_stop_follows() {
        let (out, stopped, emitted) = run(&["STOP"], &["abc ST", "x"]);
        assert_eq!((out.as_str(), stopped), ("abc STx", false));
        assert_eq!(emitted, vec!["abc ", "STx"]);
        let (out, stopped, _) = run(&["STOP"], &["ends with ST"]);
        assert_eq!((out.as_str(), stopped), ("ends with ST", false));
    }

    #[test]
    fn unicode_stops_and_text() {
        let (out, stopped, _) = run(&["東京"], &["Café 東", "京 tower"]);
        assert_eq!((out.as_str(), stopped), ("Café ", true));
        let (out, _, _) = run(&["🚀!"], &["go 🚀", "🚀 done"]);
        assert_eq!(out, "go 🚀🚀 done");
    }

    #[test]
    fn token_rules() {
        let p = SamplingParams { max_tokens: 3, stop_token_ids: vec![7], ..Default::default() };
        assert_eq!(check_token_stop(7, 1, &p, &[2]), Some(FinishReason::Stop));
        assert_eq!(check_token_stop(2, 1, &p, &[2]), Some(FinishReason::Stop));
        assert_eq!(check_token_stop(5, 2, &p, &[2]), None);
        assert_eq!(check_token_stop(5, 3, &p, &[2]), Some(FinishReason::Length));
        // A stop token on the last allowed step reports Stop, as vLLM does.
        assert_eq!(check_token_stop(2, 3, &p, &[2]), Some(FinishReason::Stop));
        let ignore = SamplingParams { ignore_eos: true, ..p };
        assert_eq!(check_token_stop(2, 1, &ignore, &[2]), None);
        assert_eq!(check_token_stop(7, 1, &ignore, &[2]), Some(FinishReason::Stop), "stop ids still apply");
        assert_eq!(check_token_stop(2, 3, &ignore, &[2]), Some(FinishReason::Length));
    }

    #[test]
    fn text_equal_to_a_stop_prefix_is_held_then_flushed() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ST"), StopOutcome { emit: String::new(), stopped: false });
        assert_eq!(m.push("O"), StopOutcome { emit: String::new(), stopped: false });
        assert_eq!(m.finish(), "STO");
        assert_eq!(m.finish(), "", "finish drains once");
    }

    #[test]
    fn nothing_after_a_stop_and_no_stops_passes_through() {
        let mut m = StopMatcher::new(&["!".to_string()]);
        assert_eq!(m.push("hi!there"), StopOutcome { emit: "hi".into(), stopped: true });
        assert_eq!(m.push("more"), StopOutcome { emit: String::new(), stopped: true });
        assert_eq!(m.finish(), "");
        let (out, stopped, emitted) = run(&[], &["a", "b", "c"]);
        assert_eq!((out.as_str(), stopped), ("abc", false));
        assert_eq!(emitted, vec!["a", "b", "c"], "without stops nothing is held back");
    }

    #[test]
    fn overlapping_stop_prefixes_hold_the_longest_candidate() {
        // "aab" is a stop: after "xaa" both "a" and "aa" could start it; keep the longest.
        let (out, stopped, emitted) = run(&["aab"], &["xaa", "ab"]);
        assert_eq!((out.as_str(), stopped), ("xa", true));
        assert_eq!(emitted[0], "x");
        // A stop spread over many single-char deltas.
        let (out, stopped, _) = run(&["</s>"], &["ok", "<", "/", "s", ">", "tail"]);
        assert_eq!((out.as_str(), stopped), ("ok", true));
    }

    #[test]
    fn finish_reason_serializes_like_openai() {
        assert_eq!(serde_json::to_string(&FinishReason::Stop).unwrap(), r#""stop""#);
        assert_eq!(serde_json::to_string(&FinishReason::Length).unwrap(), r#""length""#);
    }
}
