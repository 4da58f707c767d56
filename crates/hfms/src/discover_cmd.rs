//! `hfms discover`: every model found, which skill serves it, and why not
//! when none does.

use anyhow::Result;
use hfms_engine::discover::{ModelDescription, discover};
use hfms_hub::cache::human_bytes;

use crate::config::ModelArgs;

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Rows of cells (the header first) as lines, each column padded to its
/// widest cell.
pub fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        widths.resize(widths.len().max(r.len()), 0);
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect()
}

pub fn table(models: &[ModelDescription]) -> String {
    let header = [
        "ID", "ALIASES", "SKILL", "TASK", "FORMAT", "PARAMS", "SIZE", "DTYPE", "CONTEXT", "HARDWARE",
    ];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for d in models {
        rows.push([
            d.id.clone(),
            d.aliases.join(","),
            d.skill.clone().unwrap_or_else(|| "-".into()),
            d.task.map(|t| t.as_str().to_string()).unwrap_or_else(|| "-".into()),
            d.format.as_str().to_string(),
            d.parameters.map(human_count).unwrap_or_else(|| "-".into()),
            human_bytes(d.size_bytes),
            d.dtype.clone().unwrap_or_else(|| "-".into()),
            d.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            if d.hardware.is_empty() {
                "-".into()
            } else {
                d.hardware.join(",")
            },
        ]);
    }
    let mut table = vec![header.map(String::from).to_vec()];
    table.extend(rows.iter().map(|r| r.to_vec()));
    let lines = aligned(&table);
    let mut out = lines[0].clone() + "\n";
    for (line, d) in lines[1..].iter().zip(models) {
        out += line;
        out.push('\n');
        out += &format!("    {}\n", d.path.display());
        if let Some(e) = &d.error {
            out += &format!("    not servable: {e}\n");
        }
    }
    if models.is_empty() {
        out += "(no models found)\n";
    }
    out
}

pub fn run(args: &ModelArgs, json: bool) -> Result<()> {
    let found = discover(&crate::registry(), &args.discover_config()?);
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print!("{}", table(&found));
    }
    Ok(())
}
