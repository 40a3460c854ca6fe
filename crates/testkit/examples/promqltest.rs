//! Runs promqltest scripts: `cargo run -p m3query-testkit --example promqltest -- FILE...`.
//! Prints each failure, the breakdown by cause and `N passed, M failed`; exits 1 on failures.

use std::path::PathBuf;

use m3query_testkit::{RunOptions, run_and_report};

fn main() {
    let paths: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let opts = RunOptions::default();
    let mut out = std::io::stdout().lock();
    match run_and_report(&paths, &opts, &mut out) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error writing report: {e}");
            std::process::exit(2);
        }
    }
}
