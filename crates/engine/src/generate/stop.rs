//! Stop strings: generated text is released to the client only once it can no
//! longer be the start of a stop string, so a stop string is never emitted,
//! even when it spans several tokens or stream chunks.

#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    released: usize,
    stopped: bool,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// All text generated so far (released or held).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Bytes released so far.
    pub fn released(&self) -> usize {
        self.released
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Add decoded text. Returns the text that may now be shown; after a
    /// stop string matched, `stopped()` is true and the text ends before it.
    pub fn push(&mut self, delta: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(delta);
        let pending = &self.text[self.released..];
        // Earliest stop string in the unreleased text.
        let hit = self.stops.iter().filter_map(|s| pending.find(s.as_str())).min();
        if let Some(at) = hit {
            let out = pending[..at].to_string();
            self.released += at;
            self.text.truncate(self.released);
            self.stopped = true;
            return out;
        }
        let hold = self.held_suffix(pending);
        let upto = pending.len() - hold;
        let out = pending[..upto].to_string();
        self.released += upto;
        out
    }

    /// Release whatever was held back (generation ended without a stop).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }

    /// Longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix(&self, pending: &str) -> usize {
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > pending.len() {
                    break;
                }
                if k > hold && pending.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for d in deltas {
            out.push(s.push(d));
            if s.stopped() {
                return (out, true);
            }
        }
        out.push(s.finish());
        (out, false)
    }

    #[test]
    fn stop_inside_one_delta() {
        let (out, stopped) = run(&["STOP"], &["abcSTOPdef"]);
        assert!(stopped);
        assert_eq!(out.concat(), "abc");
    }

    #[test]
    fn stop_across_deltas_is_never_emitted() {
        let (out, stopped) = run(&["\n\nUser:"], &["Hi", "\n", "\nUs", "er:", " more"]);
        assert!(stopped);
        assert_eq!(out, vec!["Hi", "", "", ""]);
        assert_eq!(out.concat(), "Hi");
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let (out, stopped) = run(&["abc"], &["xa", "b", "d"]);
        assert!(!stopped);
        assert_eq!(out, vec!["x", "", "abd", ""]);
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        // "é" is held as a possible start of "é!"; then "zz" comes first.
        let (out, stopped) = run(&["é!", "zz"], &["aé", "zzé!"]);
        assert!(stopped);
        assert_eq!(out, vec!["a", "é"]);
        let (out, _) = run(&["ü"], &["Grü", "ße"]);
        assert_eq!(out.concat(), "Gr");
    }
}
