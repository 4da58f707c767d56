//! `hfms skills`: every skill of this build — the architectures it claims,
//! its task, the formats and weight types it loads, the platforms it runs on.

use anyhow::Result;
use serde_json::{Value, json};

use crate::discover_cmd::aligned;

/// One JSON object per skill.
pub fn list(registry: &hfms_engine::skills::Registry) -> Vec<Value> {
    registry
        .skills()
        .map(|info| {
            let weight_types: serde_json::Map<String, Value> = info
                .formats
                .iter()
                .map(|f| (f.as_str().to_string(), json!(f.weight_types())))
                .collect();
            json!({
                "name": info.name,
                "family": info.family,
                "task": info.task.as_str(),
                "architectures": info.architectures,
                "formats": info.formats,
                "weight_types": weight_types,
                "platforms": registry.platforms(info),
            })
        })
        .collect()
}

pub fn table(skills: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let joined = |v: &Value| {
        v.as_array()
            .map_or(String::new(), |a| a.iter().map(text).collect::<Vec<_>>().join(", "))
    };
    let mut rows = vec![
        ["SKILL", "FAMILY", "TASK", "FORMATS", "PLATFORMS", "ARCHITECTURES"]
            .map(String::from)
            .to_vec(),
    ];
    for s in skills {
        rows.push(vec![
            text(&s["name"]),
            text(&s["family"]),
            text(&s["task"]),
            joined(&s["formats"]),
            joined(&s["platforms"]),
            joined(&s["architectures"]),
        ]);
    }
    let mut out = String::new();
    for (i, line) in aligned(&rows).into_iter().enumerate() {
        out += &line;
        out.push('\n');
        if i == 0 {
            continue;
        }
        if let Some(types) = skills[i - 1]["weight_types"].as_object() {
            for (format, list) in types {
                out += &format!("    {format}: {}\n", joined(list));
            }
        }
    }
    out
}

pub fn run(json: bool) -> Result<()> {
    let skills = list(&crate::registry());
    if json {
        println!("{}", serde_json::to_string_pretty(&skills)?);
    } else {
        print!("{}", table(&skills));
    }
    Ok(())
}
