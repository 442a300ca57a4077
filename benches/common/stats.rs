//! Medians and spreads of repeated bench runs, as the closing notes report them.

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median [min..max]`, with decimals only for small values.
pub fn spread(xs: &[f64]) -> String {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = median(xs);
    let p = if m.abs() >= 100.0 { 0 } else { 2 };
    format!("{m:.p$} [{min:.p$}..{max:.p$}]")
}
