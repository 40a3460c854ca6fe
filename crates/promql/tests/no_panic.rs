//! The engine never panics, whatever the expression: odd token soups, deep nesting, extreme
//! numbers, offsets and `@` times. Every input ends in a result or an error.

use m3query_model::Labels;
use m3query_promql::{Engine, EngineOptions, QueryOptions};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};
use proptest::prelude::*;

fn store() -> MemStorage {
    let s = MemStorage::new();
    let mut app = s.appender();
    for (i, name) in ["a", "b_total", "c_bucket"].iter().enumerate() {
        for j in 0..3 {
            let mut pairs = vec![("__name__", name.to_string()), ("job", format!("j{j}"))];
            if *name == "c_bucket" {
                pairs.push(("le", ["0.1", "1", "+Inf"][j].to_string()));
            }
            let l = Labels::from_pairs(pairs);
            for k in 0..20i64 {
                let v = if k == 7 {
                    f64::NAN
                } else {
                    (k * (i as i64 + 1) + j as i64) as f64
                };
                app.append(&l, k * 30_000, v).expect("append");
            }
        }
    }
    app.commit().expect("commit");
    s
}

const TOKENS: &[&str] = &[
    "a",
    "b_total",
    "c_bucket",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "5m",
    "1s",
    "0",
    "1",
    "-1",
    "0.5",
    "1e308",
    "NaN",
    "Inf",
    "-Inf",
    "\"x\"",
    "'y'",
    "job",
    "=",
    "!=",
    "=~",
    "!~",
    "\"j.*\"",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "==",
    "!=",
    ">",
    "<",
    ">=",
    "<=",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "by",
    "without",
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "stddev",
    "limitk",
    "limit_ratio",
    "group",
    "offset",
    "@",
    "start()",
    "end()",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "label_replace",
    "label_join",
    "sort",
    "sort_by_label",
    "absent",
    "absent_over_time",
    "scalar",
    "vector",
    "time()",
    "timestamp",
    "predict_linear",
    "quantile_over_time",
    "holt_winters",
    "info",
    "double_exponential_smoothing",
    "anchored",
    "smoothed",
    "step()",
    "range()",
    "fill(0)",
    "9223372036854775807",
    "-9223372036854775808",
    "1y",
    "1000y",
    "le",
    "__name__",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 1..14).prop_map(|v| v.join(" "))
}

/// Structurally valid expressions with random parts, to reach the evaluator.
fn valid_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("a".to_string()),
        Just("b_total{job=~\"j.*\"}".to_string()),
        Just("c_bucket".to_string()),
        Just("nothing".to_string()),
        any::<f64>().prop_map(|f| format!("({f:?})")),
        Just("time()".to_string()),
        (-3i64..3).prop_map(|n| format!("vector({n})")),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "^", "> bool", "== bool", "and", "or", "unless",
                    "atan2"
                ])
            )
                .prop_map(|(l, r, op)| format!("({l}) {op} ({r})")),
            (
                inner.clone(),
                prop::sample::select(vec!["sum", "avg", "max", "min", "count", "stddev", "group"])
            )
                .prop_map(|(e, f)| format!("{f} by (job) ({e})")),
            (inner.clone(), -2.0f64..5.0).prop_map(|(e, k)| format!("topk({k}, {e})")),
            (inner.clone(), -1.0f64..2.0).prop_map(|(e, q)| format!("quantile({q}, {e})")),
            (inner.clone(), -1.5f64..1.5).prop_map(|(e, q)| format!("limit_ratio({q}, {e})")),
            inner
                .clone()
                .prop_map(|e| format!("histogram_quantile(0.9, {e})")),
            inner.clone().prop_map(|e| format!("sort_desc({e})")),
            inner.clone().prop_map(|e| format!("abs({e})")),
            inner
                .clone()
                .prop_map(|e| format!("label_replace({e}, \"x\", \"$1\", \"job\", \"(.*)\")")),
            (
                inner.clone(),
                prop::sample::select(vec![
                    "rate",
                    "sum_over_time",
                    "changes",
                    "deriv",
                    "irate",
                    "max_over_time",
                    "quantile_over_time(0.5,"
                ]),
                1u32..900
            )
                .prop_map(|(e, f, r)| {
                    if f.ends_with(',') {
                        format!("{f} ({e})[{r}s:10s])")
                    } else {
                        format!("{f}(({e})[{r}s:7s])")
                    }
                }),
            (
                prop::sample::select(vec!["rate", "increase", "delta", "resets", "changes"]),
                1u32..600,
                any::<bool>(),
                -600i64..600
            )
                .prop_map(|(f, r, anch, off)| format!(
                    "{f}(b_total[{r}s]{} offset {off}s)",
                    if anch { " anchored" } else { "" }
                )),
            (inner, -100_000i64..100_000).prop_map(|(e, t)| format!("({e}) + a @ {t}")),
        ]
    })
}

/// One level of a deep expression, wrapped around what the levels below built.
#[derive(Debug, Clone)]
enum Layer {
    Paren,
    Call(&'static str),
    Aggregate,
    Neg,
    Subquery,
    /// `<below> op leaf op leaf ...`.
    Chain(&'static str, &'static str, usize),
}

/// Deep and long expressions: hundreds of nested parentheses, calls, aggregations, unary
/// minus and subqueries (past the parser's nesting limit), mixed with operator chains of
/// thousands of terms, so that every recursive walk (parse, type check, plan, evaluation,
/// printing, JSON, drop) meets trees deeper than any real query.
fn deep_expr() -> impl Strategy<Value = String> {
    let op = prop::sample::select(vec![
        " + ",
        " - ",
        " * ",
        " / ",
        " ^ ",
        " or ",
        " and ",
        " unless ",
        " > bool ",
        " atan2 ",
        " + on(job) ",
        " or ignoring(x) ",
    ]);
    let leaf = prop::sample::select(vec!["a", "1", "b_total", "-a", "time()", "(a)"]);
    let layer = prop_oneof![
        3 => Just(Layer::Paren),
        2 => prop::sample::select(vec!["abs", "ceil", "sort", "vector_of_scalar"]).prop_map(Layer::Call),
        1 => Just(Layer::Aggregate),
        2 => Just(Layer::Neg),
        1 => Just(Layer::Subquery),
        2 => (op.clone(), leaf.clone(), 1usize..60).prop_map(|(o, l, n)| Layer::Chain(o, l, n)),
        1 => (op, leaf.clone(), 500usize..3000).prop_map(|(o, l, n)| Layer::Chain(o, l, n)),
    ];
    (leaf, prop::collection::vec(layer, 0..1400)).prop_map(|(leaf, layers)| {
        let mut s = leaf.to_string();
        let mut subqueries = 0;
        for l in layers {
            s = match l {
                Layer::Paren => format!("({s})"),
                Layer::Call("vector_of_scalar") => format!("vector(scalar({s}))"),
                Layer::Call(f) => format!("{f}({s})"),
                Layer::Aggregate => format!("sum by (job) ({s})"),
                Layer::Neg => format!("-{s}"),
                // Each level re-evaluates the one below over a longer range: a few suffice.
                Layer::Subquery if subqueries >= 30 => s,
                Layer::Subquery => {
                    subqueries += 1;
                    format!("max_over_time(({s})[1m:20s])")
                }
                Layer::Chain(op, leaf, n) => {
                    let mut c = s;
                    for _ in 0..n {
                        c.push_str(op);
                        c.push_str(leaf);
                    }
                    c
                }
            };
        }
        s
    })
}

fn run_both(s: &MemStorage, engine: &Engine, q: &str) {
    let ctx = Context::background();
    let opts = QueryOptions::default();
    let _ = engine.instant_query(s, &ctx, q, 300_000, &opts);
    let _ = engine.range_query(s, &ctx, q, -60_000, 600_000, 45_000, &opts);
    let _ = m3query_promql::format_query(q);
    let _ = m3query_promql::parse_query(q);
}

proptest! {
    // Each case is up to ~20,000 tree levels: fewer cases, each a lot of work.
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn deep_and_long_expressions_never_crash(q in deep_expr()) {
        let s = store();
        let engine = Engine::new(EngineOptions { max_samples: 5_000_000, ..EngineOptions::default() });
        run_both(&s, &engine, &q);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn token_soup_never_panics(q in token_soup()) {
        let s = store();
        let engine = Engine::new(EngineOptions { max_samples: 50_000, ..EngineOptions::default() });
        run_both(&s, &engine, &q);
    }

    #[test]
    fn valid_expressions_never_panic(q in valid_expr()) {
        let s = store();
        let engine = Engine::new(EngineOptions { max_samples: 50_000, ..EngineOptions::default() });
        run_both(&s, &engine, &q);
    }

    #[test]
    fn arbitrary_text_never_panics(q in "\\PC{0,40}") {
        let _ = m3query_promql::parse(&q);
        let _ = m3query_promql::format_query(&q);
    }
}

#[test]
fn extremes_never_panic() {
    let s = store();
    let engine = Engine::new(EngineOptions {
        max_samples: 50_000,
        ..EngineOptions::default()
    });
    let deep = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
    let minus = format!("{}1", "-".repeat(5000));
    for q in [
        deep.as_str(),
        minus.as_str(),
        "a @ 9223372036854775",
        "a @ -9223372036854775",
        "a offset 292y",
        "a offset -292y",
        "rate(a[292y])",
        "a[1000y:1ms]",
        "sum_over_time(a[1y:1ms])",
        "a offset 9223372036s",
        "count_values(\"\", a)",
        "label_replace(a, \"\", \"x\", \"job\", \"(\")",
        "topk(1e300, a)",
        "limitk(-1e300, a)",
        "double_exponential_smoothing(a[5m], 2, 0.5)",
        "histogram_quantile(NaN, c_bucket)",
        "{__name__=~\".+\"}",
        "info(a, {job=~\".*\"})",
    ] {
        run_both(&s, &engine, q);
    }
}
