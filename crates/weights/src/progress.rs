//! Progress bar for weight loading, drawn only when stderr is a terminal so logs and test output
//! stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts loaded tensors (or bytes) against a known total.
pub struct LoadProgress {
    bar: ProgressBar,
}

impl LoadProgress {
    /// A bar over `total` units labelled `label` (e.g. "loading weights").
    pub fn new(total: u64, label: &str) -> Self {
        Self::with_target(total, label, std::io::stderr().is_terminal())
    }

    /// A bar that is never drawn, for callers that know they are not interactive.
    pub fn hidden(total: u64) -> Self {
        Self::with_target(total, "", false)
    }

    fn with_target(total: u64, label: &str, visible: bool) -> Self {
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        LoadProgress { bar }
    }

    /// Advances by `n` units.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Units done so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Marks the load complete and leaves the final state on screen (when drawn).
    pub fn finish(&self) {
        self.bar.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_hidden() {
        let p = LoadProgress::hidden(10);
        p.inc(3);
        p.inc(4);
        assert_eq!(p.position(), 7);
        p.finish();
        assert_eq!(p.position(), 10, "finishing fills the bar");
    }
}
