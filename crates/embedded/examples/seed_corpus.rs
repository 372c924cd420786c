//! Regenerate the fuzz seed corpus from a real store and the files it was made from:
//!
//! ```text
//! cargo run --release -- --store /tmp/x ingest /usr/share/common-licenses
//! cargo run -p hart-embedded --example seed_corpus -- /tmp/x /usr/share/common-licenses
//! ```
//!
//! Seeds are written to `crates/embedded/fuzz/seeds/<target>/` (not kept: `scripts/fuzz.sh`
//! minimizes them with the corpus into `corpus/`).

use hart_embedded::fuzzing;
use std::path::Path;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(store), Some(files)) = (args.next(), args.next()) else {
        eprintln!("usage: seed_corpus STORE_DIR FILES_DIR (a real store and the files it holds)");
        std::process::exit(2);
    };
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("seeds");
    let mut n = 0;
    for (target, name, bytes) in fuzzing::seeds(Path::new(&store), Path::new(&files)) {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
        n += 1;
    }
    println!("wrote {n} seeds under {}", out.display());
}
