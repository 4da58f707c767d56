//! hfms: one binary that serves Hugging Face models through the OpenAI API.

// Every `unsafe` block says why it is sound (docs/design.md, Soundness).
#![deny(clippy::undocumented_unsafe_blocks)]

mod bench;
mod config;
mod discover_cmd;
mod hub_cmd;
mod keys_cmd;
mod serve;
mod skills_cmd;
mod telemetry;
mod usage_cmd;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hfms",
    version,
    about = "A unified Hugging Face model server with an OpenAI-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve models over the OpenAI API.
    Serve(Box<config::ServeArgs>),
    /// List every model found on disk and which skill serves it.
    Discover {
        #[command(flatten)]
        models: config::ModelArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the skills of this build: architectures, task, formats, weight
    /// types, platforms.
    Skills {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a model from the Hugging Face Hub into the hub cache
    /// (resumable, hash-checked), where `serve` and `discover` find it.
    Pull(Box<hub_cmd::PullArgs>),
    /// List the repos in the Hugging Face hub cache.
    Ls(hub_cmd::LsArgs),
    /// Delete a repo from the Hugging Face hub cache.
    Rm(hub_cmd::RmArgs),
    /// Load-test an OpenAI-compatible server: chat, embeddings, model swaps.
    Bench(Box<bench::BenchArgs>),
    /// Manage API keys in the server's database.
    Keys(Box<keys_cmd::KeysArgs>),
    /// Usage totals from the server's database (table or CSV).
    Usage(Box<usage_cmd::UsageArgs>),
    /// Detect hardware: CPU, CUDA, ROCm, Metal, OpenVINO, QNN.
    Hardware {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The skills of this build, with its GPU backends.
pub fn registry() -> hfms_engine::skills::Registry {
    #[allow(unused_mut)]
    let mut r = hfms_engine::skills::Registry::builtin();
    #[cfg(any(feature = "cuda", feature = "metal"))]
    for b in hfms_backend_candle::CandleBackend::available() {
        r = r.with_backend(b);
    }
    r
}

/// glibc raises its mmap threshold whenever a large block is freed; blocks
/// of that size then come from the heap and stay resident after free, so
/// the activations of the largest batch ever run would stay in the process
/// for good (measured: +35 MiB after a chat and embedding load on the two
/// test models). A fixed threshold returns large buffers to the system.
/// `MALLOC_MMAP_THRESHOLD_` in the environment still wins.
fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes the allocator's tuning; it is called
        // before the server starts its threads.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 << 10);
        }
    }
}

fn main() -> Result<()> {
    // The matches say which settings came from the command line or the
    // environment; the TOML file fills the rest.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sub = |name: &str| matches.subcommand_matches(name).cloned().unwrap_or_default();
    match cli.command {
        Command::Serve(args) => {
            let path = args.models.config.clone();
            let args = config::with_file(*args, &sub("serve"), path.as_deref(), &[])?;
            args.validate()?;
            if args.print_config {
                print!("{}", config::to_toml(&args)?);
                return Ok(());
            }
            let telemetry = telemetry::init(&args.log_format, args.otlp()?.as_ref())?;
            fix_malloc_mmap_threshold();
            let served = serve::run(args);
            telemetry.shutdown();
            served
        }
        Command::Discover { models, json } => {
            telemetry::init("text", None)?;
            let path = models.config.clone();
            // The file may also hold `serve`'s settings.
            let serve_only = config::setting_names::<config::ServeArgs>();
            let models = config::with_file(models, &sub("discover"), path.as_deref(), &serve_only)?;
            discover_cmd::run(&models, json)
        }
        Command::Skills { json } => skills_cmd::run(json),
        Command::Pull(args) => {
            telemetry::init("text", None)?;
            hub_cmd::pull(*args)
        }
        Command::Ls(args) => hub_cmd::ls(args),
        Command::Rm(args) => hub_cmd::rm(args),
        Command::Bench(args) => bench::run(*args),
        Command::Usage(args) => {
            telemetry::init("text", None)?;
            usage_cmd::run(*args)
        }
        Command::Keys(args) => {
            telemetry::init("text", None)?;
            keys_cmd::run(*args)
        }
        Command::Hardware { json } => {
            let report = hfms_hardware::detect_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", hfms_hardware::render_table(&report));
                println!("\n{}", hfms_engine::quant::kernel_set_report());
            }
            Ok(())
        }
    }
}
