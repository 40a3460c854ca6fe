//! Times parse, `format_query` and `parse_query` on long operator chains (`1 + 1 + ...`):
//! `cargo run --release -p m3query-promql --example chain_timing -- 1000 5000 20000`.

use std::time::Instant;

fn main() {
    // `--corpus FILE`: prints format_query and parse_query of each line (to diff versions).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--corpus") {
        let text =
            std::fs::read_to_string(args.get(2).map_or("", String::as_str)).unwrap_or_default();
        for q in text.lines() {
            println!("Q {q}");
            match m3query_promql::format_query(q) {
                Ok(s) => println!("F {s}"),
                Err(e) => println!("FE {e}"),
            }
            match m3query_promql::parse_query(q) {
                Ok(s) => println!("P {s}"),
                Err(e) => println!("PE {e}"),
            }
        }
        return;
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 3_000, 5_000, 20_000]
    } else {
        sizes
    };
    for n in sizes {
        let q = vec!["1"; n].join(" + ");
        let t = Instant::now();
        let parsed = m3query_promql::parse(&q).is_ok();
        let parse = t.elapsed();
        let t = Instant::now();
        let formatted = m3query_promql::format_query(&q).map(|s| s.len());
        let format = t.elapsed();
        let t = Instant::now();
        let tree = m3query_promql::parse_query(&q).is_ok();
        let tree_t = t.elapsed();
        println!(
            "{n:>6} terms: parse {parse:>10.3?} (ok {parsed}), format_query {format:>10.3?} ({formatted:?}), parse_query {tree_t:>10.3?} (ok {tree})"
        );
    }
}
