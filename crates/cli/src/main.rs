//! `hart`: the Hartonomous command line. Parses arguments, opens the store, runs one command,
//! and maps errors to messages and exit codes (see `hart --help`, README "Exit codes").

mod bench;
mod commands;
mod output;
mod sync;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes, stable for scripts.
pub mod exit {
    /// Something went wrong (the message says what).
    pub const ERROR: u8 = 1;
    /// Bad arguments.
    pub const USAGE: u8 = 2;
    /// The named atom, object or store does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Some inputs could not be ingested; the others were.
    pub const PARTIAL: u8 = 4;
    /// `fsck` found problems.
    pub const FSCK: u8 = 5;
    /// Another process is writing to the store.
    pub const LOCKED: u8 = 6;
}

#[derive(Parser)]
#[command(name = "hart", version, about = "Hartonomous: a content-addressed, geometric store for any file", long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 some inputs failed, 5 fsck found problems, 6 store locked."
)]
pub struct Cli {
    /// Store directory (default: the user's data directory, e.g. ~/.local/share/hartonomous).
    #[arg(long, global = true, env = "HART_STORE", value_name = "DIR")]
    store: Option<PathBuf>,

    /// Use this PostgreSQL database instead of the embedded store (a postgres:// URL or a
    /// key=value connection string; prepare it with `hart db migrate`).
    #[arg(long, global = true, env = "HART_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store files and directories (recursively) as atoms; prints each object's root.
    Ingest {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Treat every file as this modality instead of detecting it (binary, text).
        #[arg(long)]
        modality: Option<hart_core::Modality>,
        /// Decoder threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// List objects (completed ones; --all for the whole ingestion log).
    Ls {
        #[arg(long)]
        all: bool,
    },
    /// Write an object's bytes (or any atom's) to stdout or a file.
    Cat {
        /// Root: content hash (or unique prefix), Hilbert key h_xy:h_yz:h_zm, or #OBJECT_ID.
        id: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show one atom: key, hash, modality, position, value or children, geometry, references.
    Show {
        /// Content hash (or unique prefix), Hilbert key h_xy:h_yz:h_zm, or #OBJECT_ID.
        id: String,
        /// List every child (default: the first 16).
        #[arg(long)]
        all: bool,
    },
    /// Atoms and bytes per modality, deduplication ratio, stored bytes.
    Stats,
    /// Remove objects: by root (every live object with that root) or #OBJECT_ID.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Collect atoms no object needs any more.
    Gc,
    /// Recount references, re-hash atoms, check indexes, rebuild every object.
    Fsck,
    /// Measure ingest, cat and lookups against baselines measured in the same run.
    Bench(bench::BenchArgs),
    /// Copy every live object of this store into another (embedded ↔ PostgreSQL) and verify it.
    #[command(after_help = sync::HELP)]
    Sync(sync::SyncArgs),
    /// The PostgreSQL database given by --database-url: schema migrations.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply every pending schema migration.
    Migrate,
    /// List the schema migrations and which are applied.
    Status,
}

/// Log events of the backends (a retried transaction, a pack read around) go to stderr:
/// warnings and errors by default, more with `HART_LOG` (e.g. `HART_LOG=hart_pg=debug`).
fn init_log() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HART_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    init_log();
    match commands::run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = output::report_error(&e, cli.json);
            ExitCode::from(code)
        }
    }
}
