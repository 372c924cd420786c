//! stdout and stderr the way a Unix tool writes them: never a panic.
//!
//! A reader that closes stdout (`hart ls | head -1`, `hart ingest DIR | head`) has read what it
//! wanted: the first write that meets the closed pipe (EPIPE) ends output quietly, every later
//! write to stdout is dropped, and the command goes on to the end of its work (ingest still
//! stores and commits every file) and exits with the code that work earns (0 when all went
//! well; README "Exit codes"). SIGPIPE is ignored by the Rust runtime, so EPIPE is how the
//! closed pipe shows. Any other stdout error (a full disk behind `> file`, `> /dev/full`)
//! is an error, reported as "cannot write to stdout: …".
//!
//! stderr is best effort: a message that cannot be written (stderr closed, or a pipe whose
//! reader left) is dropped; it never stops a command.
//!
//! Use [`outln!`] and [`errln!`] instead of `println!` / `eprintln!` (which panic on a
//! closed pipe), and [`stdout`] with `write!` for longer output.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when stdout's reader went away; output ends there.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// stdout's reader has gone (a write met EPIPE): nothing more is written to it.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// A locked stdout that turns EPIPE into the quiet end of output (see the module doc). Hold
/// it only for a run of writes: it locks stdout.
pub struct Stdout(io::StdoutLock<'static>);

/// stdout, locked, for `write!`/`writeln!`.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if closed() {
            return Ok(buf.len());
        }
        match self.0.write(buf) {
            Err(e) => absorb(e).map(|()| buf.len()),
            ok => ok,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if closed() {
            return Ok(());
        }
        self.0.flush().or_else(absorb)
    }
}

/// EPIPE ends output (Ok); any other error names stdout.
fn absorb(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
        return Ok(());
    }
    Err(io::Error::new(e.kind(), format!("cannot write to stdout: {e}")))
}

/// One line on stdout (what [`outln!`] expands to).
pub fn line(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = stdout();
    writeln!(out, "{args}")?;
    out.flush()
}

/// One line on stderr, dropped if it cannot be written (what [`errln!`] expands to).
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// `println!` that never panics: evaluates to `io::Result<()>`, `Ok` also when stdout's
/// reader has gone (see the module doc).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdio::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (a message that cannot be written is dropped).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::stdio::err_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};
