//! Runs Prometheus's PromQL test scripts (`../shared/promqltest/*.test`, beside the repo) and
//! asserts the pass count does not drop below [`PASS_FLOOR`], which only ever goes up.

use std::path::PathBuf;

use m3query_testkit::{RunOptions, run_files, write_report};

/// The number of evals known to pass. Raise it as the engine improves; never lower it.
const PASS_FLOOR: usize = 1778;

#[test]
fn promqltest_conformance_floor() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promqltest");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "test"))
            .collect(),
        Err(e) => panic!(
            "the promqltest scripts are expected at {} (shared/promqltest beside the repo): {e}",
            dir.display()
        ),
    };
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());
    let report = run_files(&files, &RunOptions::default());
    let mut out = Vec::new();
    write_report(&report, &mut out).expect("writing to a Vec");
    println!("{}", String::from_utf8_lossy(&out));
    assert!(
        report.passed >= PASS_FLOOR,
        "conformance dropped: {} passed, floor is {PASS_FLOOR}",
        report.passed
    );
}
