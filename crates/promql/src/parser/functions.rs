//! Function signatures, as Prometheus's `promql/parser/functions.go` declares them: argument
//! types, variadic count, return type and whether the function is experimental. The engine's
//! implementations live in `crate::functions`, keyed by the same names.

use super::ast::ValueType as T;

/// A PromQL function's signature.
#[derive(Debug, PartialEq)]
pub struct Function {
    /// The name as called in PromQL.
    pub name: &'static str,
    /// The argument types, in order.
    pub arg_types: &'static [T],
    /// 0: exactly `arg_types`; n > 0: the last type may repeat up to n more times... as
    /// Prometheus counts it (the last argument is optional and may repeat); -1: unlimited.
    pub variadic: i32,
    /// The type of the result.
    pub return_type: T,
    /// Whether it needs `enable-experimental-functions`, as in Prometheus.
    pub experimental: bool,
}

const fn f(
    name: &'static str,
    arg_types: &'static [T],
    variadic: i32,
    return_type: T,
    experimental: bool,
) -> Function {
    Function {
        name,
        arg_types,
        variadic,
        return_type,
        experimental,
    }
}

/// Every function the parser knows.
pub static FUNCTIONS: &[Function] = &[
    f("abs", &[T::Vector], 0, T::Vector, false),
    f("absent", &[T::Vector], 0, T::Vector, false),
    f("absent_over_time", &[T::Matrix], 0, T::Vector, false),
    f("acos", &[T::Vector], 0, T::Vector, false),
    f("acosh", &[T::Vector], 0, T::Vector, false),
    f("asin", &[T::Vector], 0, T::Vector, false),
    f("asinh", &[T::Vector], 0, T::Vector, false),
    f("atan", &[T::Vector], 0, T::Vector, false),
    f("atanh", &[T::Vector], 0, T::Vector, false),
    f("avg_over_time", &[T::Matrix], 0, T::Vector, false),
    f("ceil", &[T::Vector], 0, T::Vector, false),
    f("changes", &[T::Matrix], 0, T::Vector, false),
    f(
        "clamp",
        &[T::Vector, T::Scalar, T::Scalar],
        0,
        T::Vector,
        false,
    ),
    f("clamp_max", &[T::Vector, T::Scalar], 0, T::Vector, false),
    f("clamp_min", &[T::Vector, T::Scalar], 0, T::Vector, false),
    f("cos", &[T::Vector], 0, T::Vector, false),
    f("cosh", &[T::Vector], 0, T::Vector, false),
    f("count_over_time", &[T::Matrix], 0, T::Vector, false),
    f("days_in_month", &[T::Vector], 1, T::Vector, false),
    f("day_of_month", &[T::Vector], 1, T::Vector, false),
    f("day_of_week", &[T::Vector], 1, T::Vector, false),
    f("day_of_year", &[T::Vector], 1, T::Vector, false),
    f("deg", &[T::Vector], 0, T::Vector, false),
    f("end", &[], 0, T::Scalar, true),
    f("delta", &[T::Matrix], 0, T::Vector, false),
    f("deriv", &[T::Matrix], 0, T::Vector, false),
    f("exp", &[T::Vector], 0, T::Vector, false),
    f("first_over_time", &[T::Matrix], 0, T::Vector, false),
    f("floor", &[T::Vector], 0, T::Vector, false),
    f("histogram_avg", &[T::Vector], 0, T::Vector, false),
    f("histogram_count", &[T::Vector], 0, T::Vector, false),
    f("histogram_sum", &[T::Vector], 0, T::Vector, false),
    f("histogram_stddev", &[T::Vector], 0, T::Vector, false),
    f("histogram_stdvar", &[T::Vector], 0, T::Vector, false),
    f(
        "histogram_fraction",
        &[T::Scalar, T::Scalar, T::Vector],
        0,
        T::Vector,
        false,
    ),
    f(
        "histogram_quantile",
        &[T::Scalar, T::Vector],
        0,
        T::Vector,
        false,
    ),
    f(
        "histogram_quantiles",
        &[T::Vector, T::String, T::Scalar, T::Scalar],
        9,
        T::Vector,
        true,
    ),
    f(
        "double_exponential_smoothing",
        &[T::Matrix, T::Scalar, T::Scalar],
        0,
        T::Vector,
        true,
    ),
    f("hour", &[T::Vector], 1, T::Vector, false),
    f("idelta", &[T::Matrix], 0, T::Vector, false),
    f("increase", &[T::Matrix], 0, T::Vector, false),
    f("info", &[T::Vector, T::Vector], 1, T::Vector, true),
    f("irate", &[T::Matrix], 0, T::Vector, false),
    f(
        "label_replace",
        &[T::Vector, T::String, T::String, T::String, T::String],
        0,
        T::Vector,
        false,
    ),
    f(
        "label_join",
        &[T::Vector, T::String, T::String, T::String],
        -1,
        T::Vector,
        false,
    ),
    f("max_of", &[T::Scalar, T::Scalar], 0, T::Scalar, true),
    f("last_over_time", &[T::Matrix], 0, T::Vector, false),
    f("min_of", &[T::Scalar, T::Scalar], 0, T::Scalar, true),
    f("ln", &[T::Vector], 0, T::Vector, false),
    f("log10", &[T::Vector], 0, T::Vector, false),
    f("log2", &[T::Vector], 0, T::Vector, false),
    f("mad_over_time", &[T::Matrix], 0, T::Vector, true),
    f("max_over_time", &[T::Matrix], 0, T::Vector, false),
    f("min_over_time", &[T::Matrix], 0, T::Vector, false),
    f("ts_of_first_over_time", &[T::Matrix], 0, T::Vector, true),
    f("ts_of_max_over_time", &[T::Matrix], 0, T::Vector, true),
    f("ts_of_min_over_time", &[T::Matrix], 0, T::Vector, true),
    f("ts_of_last_over_time", &[T::Matrix], 0, T::Vector, true),
    f("minute", &[T::Vector], 1, T::Vector, false),
    f("month", &[T::Vector], 1, T::Vector, false),
    f("pi", &[], 0, T::Scalar, false),
    f(
        "predict_linear",
        &[T::Matrix, T::Scalar],
        0,
        T::Vector,
        false,
    ),
    f("present_over_time", &[T::Matrix], 0, T::Vector, false),
    f(
        "quantile_over_time",
        &[T::Scalar, T::Matrix],
        0,
        T::Vector,
        false,
    ),
    f("rad", &[T::Vector], 0, T::Vector, false),
    f("range", &[], 0, T::Scalar, true),
    f("rate", &[T::Matrix], 0, T::Vector, false),
    f("resets", &[T::Matrix], 0, T::Vector, false),
    f("round", &[T::Vector, T::Scalar], 1, T::Vector, false),
    f("scalar", &[T::Vector], 0, T::Scalar, false),
    f("sgn", &[T::Vector], 0, T::Vector, false),
    f("sin", &[T::Vector], 0, T::Vector, false),
    f("sinh", &[T::Vector], 0, T::Vector, false),
    f("sort", &[T::Vector], 0, T::Vector, false),
    f("sort_desc", &[T::Vector], 0, T::Vector, false),
    f(
        "sort_by_label",
        &[T::Vector, T::String],
        -1,
        T::Vector,
        true,
    ),
    f(
        "sort_by_label_desc",
        &[T::Vector, T::String],
        -1,
        T::Vector,
        true,
    ),
    f("sqrt", &[T::Vector], 0, T::Vector, false),
    f("start", &[], 0, T::Scalar, true),
    f("start_timestamp", &[T::Vector], 0, T::Vector, true),
    f("step", &[], 0, T::Scalar, true),
    f("stddev_over_time", &[T::Matrix], 0, T::Vector, false),
    f("stdvar_over_time", &[T::Matrix], 0, T::Vector, false),
    f("sum_over_time", &[T::Matrix], 0, T::Vector, false),
    f("tan", &[T::Vector], 0, T::Vector, false),
    f("tanh", &[T::Vector], 0, T::Vector, false),
    f("time", &[], 0, T::Scalar, false),
    f("timestamp", &[T::Vector], 0, T::Vector, false),
    f("vector", &[T::Scalar], 0, T::Vector, false),
    f("year", &[T::Vector], 1, T::Vector, false),
];

/// Looks a function up by its exact name.
pub fn get_function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_found() {
        for (i, a) in FUNCTIONS.iter().enumerate() {
            assert!(
                FUNCTIONS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
            assert_eq!(get_function(a.name).map(|f| f.name), Some(a.name));
        }
        assert!(get_function("nope").is_none());
    }
}
