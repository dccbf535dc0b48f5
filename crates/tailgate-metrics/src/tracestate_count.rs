//! A span's count scaled by the sampling threshold its `tracestate` records (`ot=th`): a span
//! sampled at probability p stands for 1/p spans. As in the collector, a fractional count is
//! rounded up or down at random in proportion, so sums stay unbiased.

use tailgate_otlp::tracestate::{MAX_ADJUSTED_COUNT, TraceState};

/// `(count, adjusted)` for a span's raw `trace_state`: 1 and `false` without a usable
/// threshold.
pub fn adjusted_count(trace_state: &[u8], rng: &mut u64) -> (u64, bool) {
    if trace_state.is_empty() || !trace_state.windows(3).any(|w| w == b"ot=") {
        return (1, false);
    }
    let Ok(trace_state) = std::str::from_utf8(trace_state) else {
        return (1, false);
    };
    let Some(th) = TraceState::parse(trace_state)
        .ok()
        .and_then(|s| s.threshold())
    else {
        return (1, false);
    };
    let denominator = MAX_ADJUSTED_COUNT - th.unsigned();
    if denominator == 0 {
        return (1, false);
    }
    let quotient = MAX_ADJUSTED_COUNT / denominator;
    let remainder = MAX_ADJUSTED_COUNT % denominator;
    if remainder == 0 {
        return (quotient, true);
    }
    // xorshift64*, as the collector's.
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    let draw = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (quotient + u64::from(draw % denominator < remainder), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_scales_the_count_and_rounds_without_bias() {
        let mut rng = 7;
        assert_eq!(adjusted_count(b"", &mut rng), (1, false));
        assert_eq!(
            adjusted_count(b"ot=rv:00000000000001", &mut rng),
            (1, false)
        );
        assert_eq!(adjusted_count(b"ot=th:8", &mut rng), (2, true));
        assert_eq!(adjusted_count(b"vendor=x,ot=th:c", &mut rng), (4, true));
        assert_eq!(adjusted_count(b"ot=th:0", &mut rng), (1, true));
        // 10%: 10 on average.
        let n = 10_000;
        let total: u64 = (0..n)
            .map(|_| adjusted_count(b"ot=th:e6666666666666", &mut rng).0)
            .sum();
        let mean = total as f64 / f64::from(n);
        assert!((mean - 10.0).abs() < 0.05, "{mean}");
    }
}
