//! Deep and long expressions end in a result or an error, never in a stack overflow (which
//! aborts the whole server) nor in quadratic time.
//!
//! Everything runs on a thread with a 2 MiB stack, what tokio's blocking pool (where the
//! server calls the engine) and rayon's workers have: the crate's entry points must move the
//! recursive work to their own large stack (`m3query_promql::deep`) themselves.

use m3query_model::Labels;
use m3query_promql::parser::{MAX_NESTING, MAX_TREE_DEPTH};
use m3query_promql::{Engine, EngineOptions, Error, QueryOptions};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

/// The stack tokio gives its blocking threads unless configured otherwise.
const CALLER_STACK: usize = 2 << 20;

fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(CALLER_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn store() -> MemStorage {
    let s = MemStorage::new();
    let mut app = s.appender();
    for j in 0..2 {
        let l = Labels::from_pairs(vec![
            ("__name__", "a".to_string()),
            ("job", format!("j{j}")),
        ]);
        for k in 0..10i64 {
            app.append(&l, k * 30_000, k as f64).expect("append");
        }
    }
    app.commit().expect("commit");
    s
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    ParseError,
}

/// Runs `q` through every entry point; each must answer, or reject it as a parse error.
fn outcome(s: &MemStorage, q: &str) -> Outcome {
    let engine = Engine::new(EngineOptions::default());
    let ctx = Context::background();
    let opts = QueryOptions::default();
    let results = [
        engine.instant_query(s, &ctx, q, 270_000, &opts).map(|_| ()),
        engine
            .range_query(s, &ctx, q, 0, 270_000, 90_000, &opts)
            .map(|_| ()),
        m3query_promql::parse(q).map(|_| ()),
        m3query_promql::parse_query(q).map(|_| ()),
        m3query_promql::format_query(q).map(|_| ()),
    ];
    let mut parse_errors = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => {}
            Err(Error::Parse(_)) => parse_errors += 1,
            // The prettier's output grows with the square of a chain's length.
            Err(Error::TooLarge(_)) if i == 4 => {}
            Err(e) => panic!("{}...: {e}", &q[..q.len().min(60)]),
        }
    }
    match parse_errors {
        0 => Outcome::Ok,
        5 => Outcome::ParseError,
        n => panic!(
            "{n} of 5 entry points rejected {}...",
            &q[..q.len().min(60)]
        ),
    }
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

fn nested(open: &str, leaf: &str, close: &str, n: usize) -> String {
    format!("{}{leaf}{}", open.repeat(n), close.repeat(n))
}

#[test]
fn long_chains_evaluate() {
    on_small_stack(|| {
        let s = store();
        for q in [
            chain("1", " + ", 1_200),
            chain("a", " or ", 1_200),
            chain("a", " * ", 1_200),
            chain("2", " ^ ", 1_200),
            chain("a", " + on(job) ", 1_200),
            chain("a", " > bool ", 1_200),
            chain("-a", " - ", 1_200),
            chain("(a + 1)", " / ", 1_200),
            chain("sum(a)", " + ", 1_200),
            chain("rate(a[1m])", " or ", 1_200),
        ] {
            assert_eq!(outcome(&s, &q), Outcome::Ok, "{}", &q[..40]);
        }
    });
}

/// The deepest trees the parser accepts: each of them walked by the engine on its own stack.
#[test]
fn the_deepest_accepted_trees_evaluate() {
    on_small_stack(|| {
        let s = store();
        let n = MAX_TREE_DEPTH - 1;
        for q in [
            chain("1", " + ", n),
            chain("a", " or ", n),
            chain("a", " * ", n),
            chain("2", " ^ ", n),
            chain("a", " unless on(job) ", n),
            chain("a", " == bool ", n),
            // Each level a parenthesised chain.
            format!(
                "{}a{}",
                "(".repeat(MAX_NESTING - 2),
                " + 1) * 2".repeat(MAX_NESTING - 2)
            ),
            // Nesting and chains together, near both limits.
            format!(
                "{} + {}",
                nested("abs(", "a", ")", MAX_NESTING - 2),
                chain("-a", " + ", n - MAX_NESTING)
            ),
            nested("max_over_time(", "a", "[1m:30s])", MAX_NESTING / 2 - 2),
        ] {
            let depth = m3query_promql::parse(&q).map(|e| e.depth());
            assert!(depth.is_ok(), "{}: {depth:?}", &q[..40]);
            assert_eq!(outcome(&s, &q), Outcome::Ok, "{}", &q[..40]);
        }
    });
}

/// 100,000 terms or levels: parsed and rejected as too deep (in milliseconds), or answered.
#[test]
fn hundred_thousand_terms_or_levels_end_in_an_answer() {
    on_small_stack(|| {
        let s = store();
        let n = 100_000;
        for q in [
            chain("1", " + ", n),
            chain("a", " or ", n),
            chain("a", "*", n),
            chain("2", "^", n),
            nested("(", "a", ")", n),
            format!("{}1", "-".repeat(n)),
            format!("{}a", "- ".repeat(n)),
            nested("abs(", "a", ")", n),
            nested("sum(", "a", ")", n),
            nested("(", "a", ")[1m:]", n),
            nested("rate((", "a", ")[1m:])", n),
            format!("a[{}]", chain("1m", "+", n)),
            format!("a offset {}", nested("(", "1m", ")", n)),
        ] {
            let t = std::time::Instant::now();
            let o = outcome(&s, &q);
            assert_eq!(o, Outcome::ParseError, "{}", &q[..40]);
            let err = m3query_promql::parse(&q).expect_err("too deep");
            assert!(
                err.to_string().contains("nested too deeply"),
                "{}: {err}",
                &q[..40]
            );
            // Generous: the point is that nothing is quadratic (that took minutes).
            assert!(
                t.elapsed().as_secs() < 60,
                "{}: {:?}",
                &q[..40],
                t.elapsed()
            );
        }
    });
}

/// The message the HTTP layer answers with (400 `bad_data`), in Prometheus's shape.
#[test]
fn too_deep_is_a_parse_error_with_a_position() {
    let q = nested("(", "a", ")", MAX_NESTING + 5);
    let e = m3query_promql::parse(&q).expect_err("too deep");
    assert!(matches!(e, Error::Parse(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("1:1001: parse error: expression nested too deeply"),
        "{msg}"
    );
    let q = chain("1", "+", MAX_TREE_DEPTH + 1);
    let e = m3query_promql::parse(&q).expect_err("too deep");
    assert!(
        e.to_string()
            .starts_with("1:1: parse error: expression nested too deeply"),
        "{e}"
    );
}

/// Parse, print and translate are linear: 20,000 terms in well under the time the quadratic
/// versions needed for 1,000 (the bound is loose so that a busy machine cannot fail it).
#[test]
fn twenty_thousand_terms_are_fast() {
    on_small_stack(|| {
        let q = chain("x", " + ", 20_000);
        let t = std::time::Instant::now();
        m3query_promql::parse(&q).expect("parses");
        m3query_promql::parse_query(&q).expect("translates");
        match m3query_promql::format_query(&q) {
            Ok(_) | Err(Error::TooLarge(_)) => {}
            Err(e) => panic!("{e}"),
        }
        let short = chain("x", " + ", 2_000);
        assert!(m3query_promql::format_query(&short).is_ok());
        assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    });
}

/// A canceled context stops parse_query and format_query.
#[test]
fn canceled_requests_stop() {
    let ctx = Context::background();
    ctx.cancel();
    let q = chain("x", " + ", 10_000);
    let e = m3query_promql::parse_query_ctx(&q, &ctx).expect_err("canceled");
    assert!(matches!(e, Error::Canceled(_)), "{e:?}");
    let e = m3query_promql::format_query_ctx(&q, &ctx).expect_err("canceled");
    assert!(matches!(e, Error::Canceled(_)), "{e:?}");
}
