//! `hart`: the Hartonomous command line. Parses arguments, opens the store, runs one command,
//! and maps errors to messages and exit codes (see `hart --help`, README "Exit codes").

// `println!` and friends panic when a pipe closes: output goes through `stdio`.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod commands;
mod outfile;
mod output;
mod stdio;
mod sync;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes, stable for scripts.
pub mod exit {
    /// Something went wrong (the message says what); also an ingest or sync in which every
    /// input failed.
    pub const ERROR: u8 = 1;
    /// Bad arguments.
    pub const USAGE: u8 = 2;
    /// The named atom, object or store does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Some inputs could not be ingested (or synced); the others were.
    pub const PARTIAL: u8 = 4;
    /// `fsck` found problems.
    pub const FSCK: u8 = 5;
    /// Another process is writing to the store.
    pub const LOCKED: u8 = 6;
    /// Stored data is damaged: a read stopped before the damaged part (no wrong byte was
    /// written), or a write was refused until `hart fsck --repair`.
    pub const DAMAGED: u8 = 7;
}

#[derive(Parser)]
#[command(name = "hart", version, about = "Hartonomous: a content-addressed, geometric store for any file", long_about = None)]
#[command(after_help = AFTER_HELP)]
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

/// What `hart --help` says below the commands.
const AFTER_HELP: &str = "\
Output: a reader that closes stdout early (`hart ls | head -1`) ends the output quietly; the
command still finishes its work (ingest stores and commits every file) and exits as it would
have. Errors go to stderr (with --json, to stdout as a JSON object).

Exit codes: 0 ok, 1 error (also: every input of an ingest or sync failed), 2 usage,
3 not found (atom, object, or no store at --store), 4 some inputs failed (the others were
stored), 5 fsck found problems, 6 store locked by another writer, 7 stored data is damaged
(a read stopped before the damaged part, or a write was refused: see `hart fsck`).";

#[derive(Subcommand)]
enum Command {
    /// Store files and directories (recursively) as atoms; prints each object's root.
    #[command(after_help = INGEST_HELP)]
    Ingest {
        /// Files and directories to store (directories recursively, in name order; symlinks
        /// to files are followed, to directories not).
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
        /// Every entry of the ingestion log: failed, removed and unchanged ones too.
        #[arg(long)]
        all: bool,
    },
    /// Write an object's bytes (or any atom's) to stdout or a file.
    #[command(after_help = CAT_HELP)]
    Cat {
        /// Root: content hash (or unique prefix), Hilbert key h_xy:h_yz:h_zm, or #OBJECT_ID.
        id: String,
        /// Write to FILE instead of stdout: a regular file is replaced only once the whole
        /// object is written; a device, FIFO or symlink is written through, never replaced.
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
        /// Objects to remove: #OBJECT_ID, or a root as content hash (or unique prefix) or
        /// Hilbert key h_xy:h_yz:h_zm.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Collect atoms no object needs any more.
    Gc,
    /// Read the whole log (past damage), recount references, re-hash atoms, check indexes, and
    /// rebuild every object with its tree verified; names every damaged stretch and the objects
    /// that need it.
    Fsck {
        /// First rebuild every derived file (indexes, reference counts, the ingestion log's
        /// state, the manifest) from the log, reading past damaged frames. Records in them are
        /// left out (quarantined); nothing is deleted from the log. Takes the writer's lock.
        #[arg(long)]
        repair: bool,
    },
    /// Repair a damaged embedded store: rebuild every derived file from the log (reading past
    /// damaged frames, as `fsck --repair`), ingest good copies of damaged files (which heals
    /// the atoms they hold), then check the store as `fsck` does.
    Repair {
        /// Files or directories holding good copies of what was damaged (`hart fsck` names
        /// the objects; `hart ls --all` shows them as failed after a repair).
        #[arg(long, value_name = "PATH", num_args = 1..)]
        from: Vec<PathBuf>,
    },
    /// Measure ingest, cat and lookups against baselines measured in the same run.
    Bench(bench::BenchArgs),
    /// Copy every live object of this store into another (embedded ↔ PostgreSQL) and verify it.
    #[command(after_help = sync::HELP)]
    Sync(sync::SyncArgs),
    /// The PostgreSQL database given by --database-url: schema migrations.
    #[command(subcommand)]
    Db(DbCommand),
}

/// What `hart ingest --help` says below the options.
const INGEST_HELP: &str = "\
Each file is read to its end, whatever size the file system reports (files of /proc report
0): what was read is what is stored. Unreadable files and entries are reported on stderr and
skipped. Creates the store if there is none.

Exit codes: 0 every input stored, 4 some inputs failed (the others were stored), 1 every input
failed (nothing stored) or another error.";

/// What `hart cat --help` says below the options.
const CAT_HELP: &str = "\
With -o FILE, a regular file (or a new path) gets the object whole or not at all: it is
written to a temporary file beside FILE, which replaces FILE only once the store returned
every byte; on failure (the output's, or damage the store found) FILE is left as it was. A
device, FIFO or symlink at FILE (/dev/null, /dev/stdout, a link to a file) is written
through, never replaced.

Written to stdout, or through to a device, FIFO or symlink, the bytes are a stream: a failure
is signalled by a non-zero exit code and a message on stderr, and the bytes already written
may be a prefix of the object. A reader that closes stdout early ends the stream quietly
(exit 0).";

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

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand and every argument a user can see has help text (issue 12: `hart rm
    /// --help` showed `<IDS>...` and nothing else).
    #[test]
    fn every_argument_and_subcommand_has_help_text() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: argument {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{p}: no description"));
                }
                check(sub, &p, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        check(&cmd, "hart", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
