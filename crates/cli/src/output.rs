//! Human and JSON output: sizes, tables, progress bars, and error reports with exit codes.

use crate::exit;
use crate::stdio::{errln, outln};
use hart_store::StoreError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `1.5 MiB`-style sizes.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress bar on stderr when it is a terminal and output is for a person; hidden
/// otherwise (piped, --json, --quiet).
pub fn bar(total: u64, what: &str, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Run `f` while a ticker thread moves `pb` to `position` ten times a second. The ticker
/// ends with `f` on every way out, a panic included, at once (it waits on a channel that `f`'s
/// end closes, not in a sleep: a sleeping ticker would hold every command up to 100 ms).
pub fn ticking<T>(pb: &ProgressBar, position: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let (done, ticks) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ticks.recv_timeout(Duration::from_millis(100)) {
                pb.set_position(position.load(Ordering::Relaxed));
            }
        });
        // Dropped when `f` returns or unwinds: the ticker sees the channel close.
        let _done = done;
        f()
    })
}

/// Print an error (what, cause, what to do) and return its exit code.
pub fn report_error(e: &anyhow::Error, json: bool) -> u8 {
    // (A reader that closed stdout is not an error: `stdio` and `outfile` end output there,
    // so no error reaches this point for it.)
    let store = e.chain().find_map(|c| c.downcast_ref::<StoreError>());
    let (code, hint) = match store {
        Some(StoreError::NotFound { .. }) | Some(StoreError::NoStore { .. }) => (exit::NOT_FOUND, None),
        Some(StoreError::Locked { .. }) => {
            (exit::LOCKED, Some("another `hart` command is writing to this store; run yours when it has finished"))
        }
        Some(StoreError::Corrupt { .. }) => {
            (exit::ERROR, Some("run `hart fsck`; if it reports problems, restore the store from a copy"))
        }
        Some(StoreError::Damaged { .. }) => (exit::DAMAGED, None),
        Some(StoreError::StoreDamaged { .. }) => (exit::DAMAGED, None),
        Some(StoreError::Poisoned(_)) => (exit::ERROR, Some("run the command again: opening the store recovers it")),
        _ => match e.downcast_ref::<UserError>() {
            Some(u) => (u.code, None),
            None => (exit::ERROR, None),
        },
    };
    if json {
        let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
        let v = serde_json::json!({ "error": e.to_string(), "causes": causes, "hint": hint, "exit_code": code });
        if outln!("{v}").is_ok() && !crate::stdio::closed() {
            return code;
        }
        // stdout cannot take the report (it may be what failed): stderr gets it.
    }
    errln!("error: {e}");
    for c in e.chain().skip(1) {
        errln!("  cause: {c}");
    }
    if let Some(h) = hint {
        errln!("  hint: {h}");
    }
    code
}

/// An error in what the user asked for, with its exit code.
#[derive(Debug)]
pub struct UserError {
    pub msg: String,
    pub code: u8,
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for UserError {}

pub fn user(msg: impl Into<String>, code: u8) -> anyhow::Error {
    anyhow::Error::new(UserError { msg: msg.into(), code })
}

/// Leaf values shown to people: text when printable, hex otherwise.
pub fn value_preview(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r') => format!("{s:?}"),
        _ => format!("0x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}
