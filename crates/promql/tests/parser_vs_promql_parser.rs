//! Differential check of our parser against `promql-parser` over every expression in the
//! promqltest scripts (`../shared/promqltest`, beside the repo; skipped when absent):
//! whatever promql-parser accepts we accept too, and the expressions it rejects are printed,
//! which is the list of its gaps that made us write our own parser.

use std::path::PathBuf;

#[test]
fn we_accept_everything_promql_parser_accepts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promqltest");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no scripts at {}", dir.display());
        return;
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    let re = regex::Regex::new(r"^eval(?:_\w+)?\s+(?:instant\s+(?:at\s+\S+\s+)?|range\s+from\s+\S+\s+to\s+\S+\s+step\s+\S+\s+)(.+)$")
        .expect("valid regex");
    let (mut total, mut theirs_rejected) = (0, Vec::new());
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable script");
        for line in text.lines().map(str::trim) {
            let Some(c) = re.captures(line) else { continue };
            let expr = &c[1];
            total += 1;
            let ours = m3query_promql::parse(expr);
            let theirs = promql_parser::parser::parse(expr);
            assert!(
                !(theirs.is_ok() && ours.is_err()),
                "promql-parser accepts but we reject {expr:?}: {:?}",
                ours.err()
            );
            if let Err(e) = theirs {
                theirs_rejected.push(format!("{expr}    # {e}"));
            }
        }
    }
    eprintln!(
        "promql-parser rejects {} of {total} script expressions (all accepted by ours):",
        theirs_rejected.len()
    );
    for r in &theirs_rejected {
        eprintln!("  {r}");
    }
    assert!(total > 0);
}
