//! Series selectors (`match[]`): `up{job="api"}`, `{__name__=~"http_.*"}`, parsed with the same
//! parser as queries so both accept the same syntax (UTF-8 names in quotes included).

use m3query_model::Matcher;
use m3query_promql::parser::{self, Expr};

use crate::error::ApiError;

fn bad(param: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_data(format!("invalid parameter {param:?}: {msg}"))
}

/// Parses one series selector into matchers, as Prometheus's `ParseMetricSelector` does:
/// only a plain vector selector is allowed, and it must select something.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, ApiError> {
    let expr = parser::parse(s).map_err(|e| bad("match[]", e))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(bad("match[]", format!("{s:?} is not a series selector")));
    };
    if vs.original_offset_ms != 0 || vs.offset_expr.is_some() {
        return Err(bad(
            "match[]",
            format!("{s:?}: a series selector takes no offset"),
        ));
    }
    if vs.timestamp.is_some() || vs.start_or_end.is_some() {
        return Err(bad(
            "match[]",
            format!("{s:?}: a series selector takes no @"),
        ));
    }
    if !m3query_storage::matchers_select_something(&vs.matchers) {
        return Err(bad(
            "match[]",
            "match[] must contain at least one non-empty matcher",
        ));
    }
    Ok(vs.matchers)
}

/// Every `match[]` of a request.
pub fn parse_match_params<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Vec<Vec<Matcher>>, ApiError> {
    values.map(parse_selector).collect()
}

/// The matchers of every selector in a PromQL expression (for `/api/v1/query_exemplars`).
pub fn selectors_of(query: &str) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let expr = parser::parse(query).map_err(|e| bad("query", e))?;
    let mut out = Vec::new();
    collect(&expr, &mut out);
    Ok(out)
}

/// Without recursion: the tree may be thousands of levels deep (`a + a + ...`).
fn collect(e: &Expr, out: &mut Vec<Vec<Matcher>>) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::VectorSelector(vs) => out.push(vs.matchers.clone()),
            Expr::MatrixSelector(ms) => out.push(ms.vs.matchers.clone()),
            // Children pushed in reverse, so selectors come out in the order written.
            e => {
                let n = stack.len();
                stack.extend(e.children());
                stack[n..].reverse();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let m = parse_selector(r#"up{job=~"a|b", x!="y"}"#).expect("valid");
        assert_eq!(m.len(), 3);
        assert!(m.iter().any(|m| m.to_string() == r#"__name__="up""#));
        assert!(parse_selector(r#"{__name__=~"http_.*"}"#).is_ok());
        for bad in [
            "rate(up[5m])",
            "up offset 5m",
            r#"{job=""}"#,
            "up{",
            r#"{a=~"("}"#,
            "1",
        ] {
            let e = parse_selector(bad).expect_err(bad);
            assert_eq!(e.kind, crate::ErrorType::BadData, "{bad}");
        }
    }

    #[test]
    fn selectors_in_expressions() {
        let s = selectors_of(r#"sum(rate(a[5m])) / on() b{x="1"} + max_over_time(c[1h:1m])"#)
            .expect("parses");
        assert_eq!(s.len(), 3);
        assert!(selectors_of("1 +").is_err());
    }
}
