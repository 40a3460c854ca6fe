//! Series selectors (`match[]`): `up{job="api"}`, `{__name__=~"http_.*"}`.

use m3query_model::{MatchOp, Matcher};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{self, Expr};

use crate::error::ApiError;

/// Parses one series selector into matchers, as Prometheus's `ParseMetricSelector` does:
/// only a plain vector selector is allowed, and it must select something.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, ApiError> {
    let bad = |msg: String| ApiError::bad_data(format!("invalid parameter \"match[]\": {msg}"));
    let expr = parser::parse(s).map_err(bad)?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(bad(format!("{s:?} is not a series selector")));
    };
    if vs.offset.is_some() || vs.at.is_some() {
        return Err(bad(format!(
            "{s:?}: a series selector takes no offset or @"
        )));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(bad(format!(
            "{s:?}: `or` inside a selector is not supported"
        )));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(m3query_model::METRIC_NAME, name.clone()));
    }
    for m in &vs.matchers.matchers {
        let op = match &m.op {
            PMatchOp::Equal => MatchOp::Equal,
            PMatchOp::NotEqual => MatchOp::NotEqual,
            PMatchOp::Re(_) => MatchOp::RegexMatch,
            PMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
        };
        out.push(
            Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| bad(e.to_string()))?,
        );
    }
    if !m3query_storage::matchers_select_something(&out) {
        return Err(bad(
            "match[] must contain at least one non-empty matcher".to_string()
        ));
    }
    Ok(out)
}

/// Every `match[]` of a request.
pub fn parse_match_params<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Vec<Vec<Matcher>>, ApiError> {
    values.map(parse_selector).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let m = parse_selector(r#"up{job=~"a|b", x!="y"}"#).expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].to_string(), r#"__name__="up""#);
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
}
