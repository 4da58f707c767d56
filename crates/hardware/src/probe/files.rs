//! Small file helpers shared by the probes: reading sysfs/procfs values,
//! listing numbered directories, finding runtime libraries.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::HardwareError;

pub(crate) fn read_text(path: &Path) -> Result<String, HardwareError> {
    fs::read_to_string(path).map_err(|source| HardwareError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The file's content without surrounding whitespace; `None` if it cannot be
/// read or is empty (sysfs attributes are optional on many drivers).
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Parses `key value` lines (KFD topology `properties` files).
pub(crate) fn parse_space_separated(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// Parses `Key: value` lines (`/proc/meminfo`, NVIDIA `information` files);
/// keys and values are trimmed, tabs included.
pub(crate) fn parse_colon_separated(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Entries of `dir` whose names are `prefix` followed by a number, sorted by
/// that number (so `node10` comes after `node9`).
pub(crate) fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    numbered.sort();
    numbered
}

/// Sorted names of the entries of `dir` (empty if it cannot be read).
pub(crate) fn sorted_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Counts the CPUs in a kernel cpu list such as `0-3,8-11` or `5`.
pub(crate) fn count_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0usize;
    for range in list.trim().split(',').filter(|range| !range.is_empty()) {
        match range.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().ok()?;
                let last: usize = last.trim().parse().ok()?;
                count += last.checked_sub(first)? + 1;
            }
            None => {
                range.trim().parse::<usize>().ok()?;
                count += 1;
            }
        }
    }
    Some(count)
}

/// `*` and `?` matching on a single file name, enough for library patterns
/// like `libopenvino_c.so.*` and `ld.so.conf` includes like `*.conf`.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Classic greedy matcher with backtracking to the last `*`.
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Paths matching `pattern`, where only the last component may hold
/// wildcards; sorted.
fn glob_last_component(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(file_pattern)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let file_pattern = file_pattern.to_string_lossy();
    if !file_pattern.contains(['*', '?']) {
        return if pattern.exists() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    sorted_names(dir)
        .into_iter()
        .filter(|name| wildcard_match(&file_pattern, name))
        .map(|name| dir.join(name))
        .collect()
}

/// The first file in `dirs` matching one of `patterns` (tried in order for
/// each directory, so an earlier directory wins, as with the dynamic loader).
pub(crate) fn find_library(dirs: &[PathBuf], patterns: &[&str]) -> Option<PathBuf> {
    dirs.iter().find_map(|dir| {
        patterns.iter().find_map(|pattern| {
            glob_last_component(&dir.join(pattern))
                .into_iter()
                .find(|path| path.is_file())
        })
    })
}

/// `dirs` joined for a "not found in: ..." reason.
pub(crate) fn describe_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no directories)".to_string();
    }
    dirs.iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The library search path the dynamic loader would use on the host at
/// `root`: `LD_LIBRARY_PATH` (live host only), the directories in
/// `etc/ld.so.conf` and its includes, then the usual system directories,
/// plus `/usr/lib/wsl/lib` where WSL puts the NVIDIA driver. Existing
/// directories only, without duplicates.
pub fn default_library_dirs(root: &Path, ld_library_path: Option<&str>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(list) = ld_library_path {
        dirs.extend(list.split(':').filter(|entry| !entry.is_empty()).map(PathBuf::from));
    }
    let under_root = |absolute: &str| root.join(absolute.trim_start_matches('/'));
    let mut conf_dirs = Vec::new();
    read_ld_so_conf(root, &under_root("/etc/ld.so.conf"), &mut conf_dirs, 0);
    dirs.extend(conf_dirs);
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    for standard in [
        "/lib64".to_string(),
        "/usr/lib64".to_string(),
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib".to_string(),
        "/usr/lib".to_string(),
        "/usr/local/lib".to_string(),
        "/usr/lib/wsl/lib".to_string(),
    ] {
        dirs.push(under_root(&standard));
    }
    let mut unique = Vec::new();
    for dir in dirs {
        if dir.is_dir() && !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// Appends the directories named in an `ld.so.conf`-style file, following
/// `include` lines (bounded depth, so an include loop cannot hang a probe).
fn read_ld_so_conf(root: &Path, conf: &Path, dirs: &mut Vec<PathBuf>, depth: usize) {
    const MAX_INCLUDE_DEPTH: usize = 4;
    if depth > MAX_INCLUDE_DEPTH {
        return;
    }
    let Ok(text) = fs::read_to_string(conf) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if let Some(pattern) = line.strip_prefix("include") {
            let pattern = pattern.trim();
            // Relative includes are relative to the including file's directory.
            let pattern_path = if pattern.starts_with('/') {
                root.join(pattern.trim_start_matches('/'))
            } else {
                conf.parent().unwrap_or(root).join(pattern)
            };
            for included in glob_last_component(&pattern_path) {
                read_ld_so_conf(root, &included, dirs, depth + 1);
            }
        } else if line.starts_with('/') {
            dirs.push(root.join(line.trim_start_matches('/')));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_library_names() {
        assert!(wildcard_match("libopenvino_c.so.*", "libopenvino_c.so.2440"));
        assert!(wildcard_match("*.conf", "x86_64-linux-gnu.conf"));
        assert!(wildcard_match("libQnnHtpV*Stub.so", "libQnnHtpV68Stub.so"));
        assert!(!wildcard_match("libopenvino_c.so.*", "libopenvino_c.so"));
        assert!(!wildcard_match("*.conf", "ld.so.cache"));
        assert!(wildcard_match("a?c", "abc"));
    }

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(count_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(count_cpu_list("5\n"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn key_value_parsers_trim_tabs() {
        let info = parse_colon_separated("Model: \t\t NVIDIA A10\nBus Location: \t 0000:65:00.0\n");
        assert_eq!(info["Model"], "NVIDIA A10");
        assert_eq!(info["Bus Location"], "0000:65:00.0");
        let props = parse_space_separated("simd_count 416\ngfx_target_version 90010\n");
        assert_eq!(props["simd_count"], "416");
    }
}
