//! `hfms pull`, `hfms ls`, `hfms rm`: the Hugging Face hub cache from the
//! command line (what `huggingface-cli download`, `scan-cache` and
//! `delete-cache` do, in the same cache).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use hfms_hub::cache::human_bytes;
use hfms_hub::pull::{PullEvent, PullOptions};
use hfms_hub::{HubConfig, RepoSpec};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::{DownloadArgs, HubCacheArgs};
use crate::discover_cmd::aligned;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `ORG/NAME[:QUANT][@REVISION]`: a safetensors repo, or a GGUF repo's
    /// file with that quantisation (Q4_K_M when not given, as llama.cpp's
    /// `-hf`).
    pub model: String,

    /// Fetch only the files matching this glob (instead of the automatic
    /// choice of config, tokenizer and weights); repeatable.
    #[arg(long)]
    pub include: Vec<String>,

    /// Leave out the files matching this glob; repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,

    #[command(flatten)]
    pub cache: HubCacheArgs,

    #[command(flatten)]
    pub download: DownloadArgs,

    /// Print the outcome as JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub cache: HubCacheArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// `ORG/NAME`: the repo to delete from the cache (every revision).
    pub model: String,
    #[command(flatten)]
    pub cache: HubCacheArgs,
}

/// Progress on stderr: bars on a terminal, a line per step otherwise.
struct Reporter {
    bars: Option<MultiProgress>,
    state: Mutex<ReportState>,
}

#[derive(Default)]
struct ReportState {
    overall: Option<ProgressBar>,
    files: HashMap<String, ProgressBar>,
    /// Bytes per file, for the overall bar.
    done: HashMap<String, u64>,
    /// Plain mode: the last quarter printed per file, and when.
    printed: HashMap<String, (u64, Instant)>,
}

impl Reporter {
    fn new() -> Self {
        Reporter {
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
            state: Mutex::new(ReportState::default()),
        }
    }

    /// A finished line above the bars (they redraw below it).
    fn say(&self, line: String) {
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn bytes_style(template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    fn event(&self, e: PullEvent) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            PullEvent::Resolved {
                repo,
                revision,
                commit,
                files,
                total_bytes,
                download_bytes,
            } => {
                let cached = files.iter().filter(|f| f.cached).count();
                eprintln!(
                    "pull {repo}@{revision} (commit {}): {} file{}, {} to download{}",
                    commit.chars().take(12).collect::<String>(),
                    files.len(),
                    if files.len() == 1 { "" } else { "s" },
                    human_bytes(download_bytes),
                    if cached > 0 {
                        format!(", {cached} already cached ({} in all)", human_bytes(total_bytes))
                    } else {
                        String::new()
                    }
                );
                if let Some(mp) = &self.bars
                    && download_bytes > 0
                {
                    let pb = mp.add(ProgressBar::new(download_bytes));
                    pb.set_style(Self::bytes_style(
                        "{prefix:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ));
                    pb.set_prefix("total");
                    st.overall = Some(pb);
                }
            }
            PullEvent::Progress { file, completed, total } => {
                st.done.insert(file.clone(), completed);
                let sum: u64 = st.done.values().sum();
                if let Some(o) = &st.overall {
                    o.set_position(sum);
                }
                if let Some(mp) = &self.bars {
                    let pb = st.files.entry(file.clone()).or_insert_with(|| {
                        let pb = mp.insert_from_back(1, ProgressBar::new(total));
                        pb.set_style(Self::bytes_style("{prefix:>10} [{bar:40}] {bytes}/{total_bytes} {msg}"));
                        pb.set_prefix("file");
                        pb.set_message(file.clone());
                        pb
                    });
                    pb.set_position(completed);
                } else if total >= 1 << 20 {
                    // Plain lines for files worth watching; small ones
                    // get their one line when done.
                    let quarter = completed * 4 / total;
                    let (last, at) = st.printed.get(&file).copied().unwrap_or((u64::MAX, Instant::now()));
                    if last != quarter && (last == u64::MAX || quarter > last || at.elapsed() > Duration::from_secs(10))
                    {
                        eprintln!(
                            "  {file}: {}% ({} of {})",
                            completed * 100 / total,
                            human_bytes(completed),
                            human_bytes(total)
                        );
                        st.printed.insert(file, (quarter, Instant::now()));
                    }
                }
            }
            PullEvent::FileDone {
                file,
                total,
                cached,
                verified,
            } => {
                if let Some(pb) = st.files.remove(&file) {
                    pb.finish_and_clear();
                }
                let line = format!(
                    "  {file}: {} {}",
                    human_bytes(total),
                    match (cached, verified) {
                        (true, _) => "(cached)",
                        (false, true) => "(verified)",
                        (false, false) => "(size checked only: the Hub's ETag is not a hash)",
                    }
                );
                self.say(line)
            }
            PullEvent::Evicted { repo } => {
                let line = format!("  evicted {repo} from the cache (--max-cache-gb)");
                self.say(line)
            }
            PullEvent::Done {
                model,
                path,
                downloaded_bytes,
                seconds,
                offline,
                ..
            } => {
                if let Some(o) = st.overall.take() {
                    o.finish_and_clear();
                }
                let rate = if seconds > 0.0 {
                    format!(" at {}/s", human_bytes((downloaded_bytes as f64 / seconds) as u64))
                } else {
                    String::new()
                };
                eprintln!(
                    "pulled {model}{}: {} in {seconds:.1} s{rate}\n  {}",
                    if offline { " (from the cache: offline)" } else { "" },
                    human_bytes(downloaded_bytes),
                    path.display()
                );
            }
        }
    }
}

pub fn pull(args: PullArgs) -> Result<()> {
    let spec = RepoSpec::parse(&args.model)?;
    let cfg = HubConfig::from_env(args.cache.dir()?);
    let opts = PullOptions {
        include: args.include,
        exclude: args.exclude,
        max_cache_bytes: args.download.max_cache_bytes(),
        evictable: None,
        reserved: None,
    };
    let reporter = Reporter::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = rt.block_on(hfms_hub::pull(&cfg, &spec, &opts, &|e| reporter.event(e)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    Ok(())
}

pub fn ls(args: LsArgs) -> Result<()> {
    let dir = args.cache.dir()?;
    let repos = hfms_hub::scan_cache(&dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&repos)?);
        return Ok(());
    }
    let mut rows = vec![
        ["REPO", "SIZE", "FILES", "REFS", "LAST USED", "PATH"]
            .map(String::from)
            .to_vec(),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in &repos {
        let refs = if r.refs.is_empty() {
            r.revisions
                .iter()
                .map(|c| c.chars().take(12).collect::<String>())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            r.refs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",")
        };
        let mut size = human_bytes(r.size_bytes);
        if r.incomplete_bytes > 0 {
            size.push_str(&format!(" (+{} partial)", human_bytes(r.incomplete_bytes)));
        }
        let ago =
            humantime::format_duration(Duration::from_secs(now.saturating_sub(r.last_used) / 60 * 60)).to_string();
        rows.push(vec![
            r.repo.clone(),
            size,
            r.files.to_string(),
            refs,
            if r.last_used == 0 {
                "-".into()
            } else {
                format!("{ago} ago")
            },
            r.path.display().to_string(),
        ]);
    }
    for line in aligned(&rows) {
        println!("{line}");
    }
    let total: u64 = repos.iter().map(|r| r.size_bytes + r.incomplete_bytes).sum();
    println!("{} repos, {} in {}", repos.len(), human_bytes(total), dir.display());
    Ok(())
}

pub fn rm(args: RmArgs) -> Result<()> {
    let spec = RepoSpec::parse(&args.model)?;
    if spec.quant.is_some() || spec.revision != "main" || args.model.contains('@') {
        bail!("hfms rm takes ORG/NAME: it deletes every file and revision of the repo");
    }
    let dir = args.cache.dir()?;
    let freed = hfms_hub::remove_repo(&dir, &spec.repo)?;
    println!(
        "removed {} from {} ({} freed)",
        spec.repo,
        dir.display(),
        human_bytes(freed)
    );
    Ok(())
}
