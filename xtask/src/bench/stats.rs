//! Summaries of samples: median, nearest-rank p99, min and max.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Samples with their median, p99 (nearest rank: of 20 samples, the
/// maximum), min and max.
pub(crate) fn series(samples: &[f64]) -> Value {
    json!({
        "n": samples.len(),
        "median": median(samples),
        "p99": p99(samples),
        "min": sorted(samples).first(),
        "max": sorted(samples).last(),
        "samples": samples,
    })
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

pub(crate) fn median(samples: &[f64]) -> f64 {
    let v = sorted(samples);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank p99: the ⌈0.99·n⌉-th smallest sample.
pub(crate) fn p99(samples: &[f64]) -> f64 {
    let v = sorted(samples);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (0.99 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
