//! Bucket boundaries.

use super::is_custom_buckets_schema;

/// The upper bound of bucket `index` (the lower bound of bucket `index + 1`) in `schema`.
///
/// Custom buckets: `custom_values[index]`, +Inf at `index == len`, -Inf at `index == -1`
/// (and outside that range, which only invalid layouts reach). Exponential schemas:
/// `2^(index / 2^schema)`, with the top bucket capped at `f64::MAX` as Prometheus does.
///
/// For schemas > 0 the fractional part is computed with `exp2`, while Prometheus uses a
/// precomputed table; a few of that table's entries differ from ours in the last one or two
/// units of precision (neither is always the correctly rounded value). Bucket membership of
/// any real observation is the same; printed boundaries may differ in the 16th digit.
pub fn bucket_bound(index: i32, schema: i32, custom_values: &[f64]) -> f64 {
    if is_custom_buckets_schema(schema) {
        let len = custom_values.len() as i64;
        let i = i64::from(index);
        return if i >= len {
            f64::INFINITY
        } else if i < 0 {
            f64::NEG_INFINITY
        } else {
            custom_values[i as usize]
        };
    }
    exponential_bound(index, schema)
}

fn exponential_bound(index: i32, schema: i32) -> f64 {
    if schema <= 0 {
        let exp = i64::from(index) << (-schema).min(62);
        if exp == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exp);
    }
    let per = 1i64 << schema;
    let i = i64::from(index);
    let frac_idx = i & (per - 1);
    let frac = 0.5 * (frac_idx as f64 / per as f64).exp2();
    let exp = (i >> schema) + 1;
    if frac_idx == 0 && exp == 1025 {
        return f64::MAX;
    }
    ldexp(frac, exp)
}

/// `x * 2^exp` without overflow in the intermediate power (like Go's `math.Ldexp`).
fn ldexp(x: f64, exp: i64) -> f64 {
    let mut x = x;
    let mut e = exp.clamp(-2200, 2200);
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
    }
    x * 2f64.powi(e as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_bounds() {
        assert_eq!(bucket_bound(0, 0, &[]), 1.0);
        assert_eq!(bucket_bound(1, 0, &[]), 2.0);
        assert_eq!(bucket_bound(-1, 0, &[]), 0.5);
        assert_eq!(bucket_bound(1, -2, &[]), 16.0);
        assert_eq!(bucket_bound(2, 1, &[]), 2.0);
        assert!((bucket_bound(1, 1, &[]) - std::f64::consts::SQRT_2).abs() < 1e-15);
        assert_eq!(bucket_bound(1024, 0, &[]), f64::MAX);
        assert_eq!(bucket_bound(-1074, 0, &[]), f64::from_bits(1));
        assert_eq!(bucket_bound(-1075, 0, &[]), 0.0);
        assert_eq!(bucket_bound(1024 * 256, 8, &[]), f64::MAX);
        // Monotonic across a schema's fraction table.
        let mut prev = 0.0;
        for i in -600..600 {
            let b = bucket_bound(i, 3, &[]);
            assert!(b > prev, "{i}");
            prev = b;
        }
    }

    #[test]
    fn custom_bounds() {
        let c = [1.0, 5.0];
        assert_eq!(bucket_bound(-1, -53, &c), f64::NEG_INFINITY);
        assert_eq!(bucket_bound(0, -53, &c), 1.0);
        assert_eq!(bucket_bound(1, -53, &c), 5.0);
        assert_eq!(bucket_bound(2, -53, &c), f64::INFINITY);
    }
}
