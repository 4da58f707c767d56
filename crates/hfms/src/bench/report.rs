//! Where results go: JSON lines (one object per level, written as each level
//! ends) and aligned tables for people.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::BenchArgs;
use super::stats::Summary;

enum Sink {
    None,
    Stdout,
    File(BufWriter<File>, String),
}

pub struct Output {
    sink: Sink,
    base_url: String,
    label: Option<String>,
    /// 1-minute load averages seen at the start of the levels since the
    /// last table (a busy machine makes timings meaningless: say so).
    loads: Vec<f64>,
}

/// The 1-minute load average (Linux), `None` elsewhere.
fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Output {
    pub fn open(json: Option<&str>, args: &BenchArgs) -> Result<Output> {
        let sink = match json {
            None => Sink::None,
            Some("-") => Sink::Stdout,
            Some(path) => {
                let f = File::create(path).with_context(|| format!("--json {path}: cannot create"))?;
                Sink::File(BufWriter::new(f), path.to_string())
            }
        };
        Ok(Output {
            sink,
            base_url: args.base_url.clone(),
            label: args.label.clone(),
            loads: Vec::new(),
        })
    }

    /// A JSON object with the fields every line has, for the level that
    /// just ended (its load average is the one [`Output::level_start`] read).
    pub fn record(&mut self, mode: &str, model: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mode".into(), json!(mode));
        if let Some(label) = &self.label {
            m.insert("label".into(), json!(label));
        }
        m.insert("base_url".into(), json!(self.base_url));
        m.insert("model".into(), json!(model));
        m.insert(
            "timestamp".into(),
            json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        m.insert("hfms_version".into(), json!(env!("CARGO_PKG_VERSION")));
        m.insert("loadavg_1m".into(), json!(self.loads.last()));
        m
    }

    /// Notes the machine's load as a level starts (reported with the level).
    pub fn level_start(&mut self) {
        if let Some(l) = loadavg_1m() {
            self.loads.push(l);
        }
    }

    /// Writes one JSON line.
    pub fn write(&mut self, record: Map<String, Value>) -> Result<()> {
        let line = Value::Object(record).to_string();
        match &mut self.sink {
            Sink::None => {}
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Sink::File(f, path) => {
                writeln!(f, "{line}")
                    .and_then(|_| f.flush())
                    .with_context(|| format!("writing {path}"))?;
            }
        }
        Ok(())
    }

    /// An aligned table: a title, a header row, one row per level, then the
    /// first error of each level that had one, `notes`, and the machine's
    /// load. On stdout, or stderr when stdout carries the JSON lines.
    pub fn table(
        &mut self,
        title: &str,
        headers: &[&str],
        rows: Vec<(Vec<String>, Option<String>)>,
        notes: &[String],
    ) -> Result<()> {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &rows {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let parts: Vec<String> = cells
                .zip(&widths)
                .map(|(c, w)| format!("{}{c}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("  {}\n", parts.join("  "))
        };
        let mut text = format!("{title}\n");
        text.push_str(&line(&mut headers.iter().copied()));
        for (cells, _) in &rows {
            text.push_str(&line(&mut cells.iter().map(String::as_str)));
        }
        for (_, err) in &rows {
            if let Some(e) = err {
                text.push_str(&format!("  first error, {e}\n"));
            }
        }
        for n in notes {
            text.push_str(&format!("  {n}\n"));
        }
        if !self.loads.is_empty() {
            let loads: Vec<String> = self.loads.iter().map(|l| format!("{l:.2}")).collect();
            text.push_str(&format!(
                "  machine load (1-min average) as each level started: {}\n",
                loads.join(" ")
            ));
            self.loads.clear();
        }
        text.push('\n');
        self.note(&text)
    }

    /// Text for people, where the tables go.
    fn note(&mut self, text: &str) -> Result<()> {
        if matches!(self.sink, Sink::Stdout) {
            eprint!("{text}");
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        if let Sink::File(mut f, path) = self.sink {
            f.flush().with_context(|| format!("writing {path}"))?;
        }
        Ok(())
    }
}

/// `{name}_p50_ms`, `_p90_ms`, `_p99_ms`, `_mean_ms` of a summary in ms.
pub fn ms(name: &str, s: &Summary) -> Vec<(String, Value)> {
    vec![
        (format!("{name}_p50_ms"), json!(s.p50)),
        (format!("{name}_p90_ms"), json!(s.p90)),
        (format!("{name}_p99_ms"), json!(s.p99)),
        (format!("{name}_mean_ms"), json!(s.mean)),
    ]
}

/// A number of milliseconds for a table: 3 significant figures or so.
pub fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// "p50/p90/p99".
pub fn fmt_triple(s: &Summary) -> String {
    format!("{}/{}/{}", fmt_ms(s.p50), fmt_ms(s.p90), fmt_ms(s.p99))
}

pub fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn fmt_count(v: u64) -> String {
    v.to_string()
}
