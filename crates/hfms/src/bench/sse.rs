//! A server-sent-events decoder for OpenAI-style streams: bytes in (in
//! whatever pieces the network delivers them), the `data` of each event out.
//!
//! Follows the parts of the SSE specification these streams use: lines end
//! with `\n`, `\r\n` or `\r`; `data:` lines (one optional space after the
//! colon is dropped) accumulate, joined by `\n`, until a blank line ends the
//! event; comments (`:`) and other fields (`event:`, `id:`, `retry:`) are
//! skipped. Self-contained so the integration tests can include it.

#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// `data` lines of the event not yet ended.
    data: Vec<String>,
    /// The previous byte was `\r`: a following `\n` belongs to that line end.
    after_cr: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Feeds bytes; returns the data of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// The stream ended: an event whose blank line never came still counts.
    pub fn finish(&mut self) -> Option<String> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.end_line(&mut events);
        events.pop()
    }

    fn end_line(&mut self, events: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if !self.data.is_empty() {
                events.push(std::mem::take(&mut self.data).join("\n"));
            }
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.find(':') {
            Some(0) => return, // a comment
            Some(i) => {
                let v = &text[i + 1..];
                (&text[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&text[..], ""),
        };
        if field == "data" {
            self.data.push(value.to_string());
        }
    }
}
