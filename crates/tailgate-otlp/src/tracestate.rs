//! OpenTelemetry probability sampling in W3C `tracestate` (OTEP 235): the 56-bit threshold
//! (`ot=th:`) a sampler records, the 56-bit randomness (`ot=rv:` or the trace ID's low 56 bits)
//! it compares against, and rewriting a span's trace state without losing its other members.
//!
//! Parsing and serialising follow the collector's `pkg/sampling` exactly (`W3CTraceState`,
//! `OpenTelemetryTraceState`): the same inputs are rejected, and a rewritten trace state puts
//! the `ot` member first, `rv` before `th` before the other `ot` fields, as it does — so the
//! same traffic through Tailgate and the collector leaves byte-identical trace states.

use crate::TraceId;

/// 2^56: thresholds and randomness are 56-bit.
pub const MAX_ADJUSTED_COUNT: u64 = 1 << 56;
/// Hex digits of a full-precision threshold or randomness value.
const HEX_DIGITS: usize = 14;
/// The W3C limits the collector enforces.
const W3C_LENGTH_MAX: usize = 1024;
const W3C_MEMBERS_MAX: usize = 32;
const W3C_KEY_LENGTH_MAX: usize = 256;
const W3C_TENANT_LENGTH_MAX: usize = 241;
const W3C_SYSTEM_LENGTH_MAX: usize = 14;
const OT_LENGTH_MAX: usize = 256;

/// A sampling threshold: a trace is kept when its randomness is at least this. 0 keeps
/// everything; [`Threshold::NEVER`] (2^56) keeps nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

impl Threshold {
    pub const ALWAYS: Threshold = Threshold(0);
    pub const NEVER: Threshold = Threshold(MAX_ADJUSTED_COUNT);

    /// `unsigned` must be below 2^56 (or equal, for never).
    pub fn from_unsigned(unsigned: u64) -> Threshold {
        assert!(unsigned <= MAX_ADJUSTED_COUNT, "thresholds are 56-bit");
        Threshold(unsigned)
    }

    pub fn unsigned(self) -> u64 {
        self.0
    }

    /// The threshold of a sampling probability, at full precision, as the collector computes
    /// it: probabilities of 1 or more always sample, those below 2^-56 (0 included) never do.
    pub fn from_probability(probability: f64) -> Threshold {
        if probability >= 1.0 {
            return Threshold::ALWAYS;
        }
        if probability.is_nan() || probability < 1.0 / MAX_ADJUSTED_COUNT as f64 {
            return Threshold::NEVER;
        }
        let scaled = (probability * MAX_ADJUSTED_COUNT as f64).round() as u64;
        Threshold(MAX_ADJUSTED_COUNT - scaled.min(MAX_ADJUSTED_COUNT))
    }

    /// The probability of keeping a trace (1 for always, 0 for never).
    pub fn probability(self) -> f64 {
        (MAX_ADJUSTED_COUNT - self.0) as f64 / MAX_ADJUSTED_COUNT as f64
    }

    pub fn should_sample(self, randomness: Randomness) -> bool {
        self.0 <= randomness.0
    }

    /// The `th` value: up to 14 hex digits, trailing zeros removed; `"0"` for always, empty
    /// for never (which is never written).
    pub fn tvalue(self) -> String {
        match self {
            Threshold::ALWAYS => "0".to_string(),
            Threshold::NEVER => String::new(),
            Threshold(unsigned) => {
                let digits = format!("{unsigned:014x}");
                digits.trim_end_matches('0').to_string()
            }
        }
    }

    /// Parses a `th` value (1 to 14 hex digits; missing digits are trailing zeros).
    pub fn parse_tvalue(s: &str) -> Option<Threshold> {
        if s.is_empty() || s.len() > HEX_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let unsigned = u64::from_str_radix(s, 16).ok()?;
        Some(Threshold(unsigned << (4 * (HEX_DIGITS - s.len()))))
    }
}

/// A trace's 56 random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Randomness(u64);

impl Randomness {
    /// The low 56 bits of the trace ID (W3C Trace Context level 2 random trace IDs).
    pub fn from_trace_id(id: &TraceId) -> Randomness {
        let low = u64::from_be_bytes(id.0[8..].try_into().expect("8 bytes"));
        Randomness(low & (MAX_ADJUSTED_COUNT - 1))
    }

    pub fn unsigned(self) -> u64 {
        self.0
    }

    /// Parses an `rv` value (exactly 14 hex digits).
    fn parse_rvalue(s: &str) -> Option<Randomness> {
        if s.len() != HEX_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Randomness)
    }
}

/// A parsed W3C trace state: its `ot` member's sampling fields and every other member, in
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState<'a> {
    rvalue: Option<&'a str>,
    tvalue: Option<String>,
    /// `ot` fields other than `rv` and `th`, as `key:value`.
    ot_extra: Vec<(&'a str, &'a str)>,
    /// Members other than `ot`, as `key=value`.
    members: Vec<(&'a str, &'a str)>,
}

/// The trace state could not be parsed (the collector counts such spans and leaves them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unparseable;

impl<'a> TraceState<'a> {
    /// Parses a W3C trace state; the empty string is an empty state.
    pub fn parse(input: &'a str) -> Result<TraceState<'a>, Unparseable> {
        let mut state = TraceState::default();
        if input.is_empty() {
            return Ok(state);
        }
        if input.len() > W3C_LENGTH_MAX || !valid_w3c(input) {
            return Err(Unparseable);
        }
        let mut items = 0;
        let mut failed = false;
        // The collector's scanner stops at the end of the input: one trailing separator
        // does not count as a member.
        let body = input.strip_suffix(',').unwrap_or(input);
        for member in body.split(',') {
            items += 1;
            if items >= W3C_MEMBERS_MAX {
                return Err(Unparseable);
            }
            let member = member.trim_matches([' ', '\t']);
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            if key.len() > W3C_KEY_LENGTH_MAX {
                failed = true;
                continue;
            }
            if let Some((tenant, system)) = key.split_once('@')
                && (tenant.len() > W3C_TENANT_LENGTH_MAX || system.len() > W3C_SYSTEM_LENGTH_MAX)
            {
                failed = true;
                continue;
            }
            if key == "ot" {
                failed |= state.parse_ot(value).is_err();
            } else {
                state.members.push((key, value));
            }
        }
        if failed { Err(Unparseable) } else { Ok(state) }
    }

    fn parse_ot(&mut self, value: &'a str) -> Result<(), Unparseable> {
        self.rvalue = None;
        self.tvalue = None;
        self.ot_extra.clear();
        if value.len() > OT_LENGTH_MAX || !valid_ot(value) {
            return Err(Unparseable);
        }
        let mut failed = false;
        for field in value.split(';') {
            let Some((key, v)) = field.split_once(':') else {
                continue;
            };
            match key {
                "rv" => match Randomness::parse_rvalue(v) {
                    Some(_) => self.rvalue = Some(v),
                    None => {
                        self.rvalue = None;
                        failed = true;
                    }
                },
                "th" => match Threshold::parse_tvalue(v) {
                    Some(_) => self.tvalue = Some(v.to_string()),
                    None => {
                        self.tvalue = None;
                        failed = true;
                    }
                },
                _ => self.ot_extra.push((key, v)),
            }
        }
        if failed { Err(Unparseable) } else { Ok(()) }
    }

    /// The explicit randomness (`ot=rv:`), if present.
    pub fn randomness(&self) -> Option<Randomness> {
        self.rvalue.and_then(Randomness::parse_rvalue)
    }

    /// The recorded threshold (`ot=th:`), if present.
    pub fn threshold(&self) -> Option<Threshold> {
        self.tvalue.as_deref().and_then(Threshold::parse_tvalue)
    }

    /// Records that the span was sampled at `th`: a threshold already there that is stricter
    /// (higher) is never lowered, and then nothing changes (`false`).
    pub fn update_threshold(&mut self, th: Threshold) -> bool {
        if self.threshold().is_some_and(|existing| existing > th) {
            return false;
        }
        let tvalue = th.tvalue();
        self.tvalue = (!tvalue.is_empty()).then_some(tvalue);
        true
    }

    /// The W3C string, `ot` member first.
    pub fn serialize(&self) -> String {
        let mut ot: Vec<String> = Vec::new();
        if let Some(rv) = self.rvalue {
            ot.push(format!("rv:{rv}"));
        }
        if let Some(th) = &self.tvalue {
            ot.push(format!("th:{th}"));
        }
        ot.extend(self.ot_extra.iter().map(|(k, v)| format!("{k}:{v}")));
        let mut out: Vec<String> = Vec::with_capacity(self.members.len() + 1);
        if !ot.is_empty() {
            out.push(format!("ot={}", ot.join(";")));
        }
        out.extend(self.members.iter().map(|(k, v)| format!("{k}={v}")));
        out.join(",")
    }
}

/// What a trace's spans say about its sampling: the first explicit randomness, and whether any
/// span carries OpenTelemetry sampling information at all (`rv` or `th`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplingInfo {
    pub randomness: Option<Randomness>,
    pub present: bool,
}

impl SamplingInfo {
    /// Scans trace states in order, as the collector does (unparseable ones are skipped).
    pub fn scan<'s>(trace_states: impl IntoIterator<Item = &'s str>) -> SamplingInfo {
        let mut info = SamplingInfo::default();
        for raw in trace_states {
            if raw.is_empty() || !raw.contains("ot=") {
                continue;
            }
            let Ok(state) = TraceState::parse(raw) else {
                continue;
            };
            if let Some(rv) = state.randomness() {
                info.randomness = Some(rv);
                info.present = true;
                return info;
            }
            info.present |= state.threshold().is_some();
        }
        info
    }

    /// The trace's randomness: explicit `rv` if any span has one, else the trace ID's.
    pub fn randomness_or(&self, id: &TraceId) -> Randomness {
        self.randomness
            .unwrap_or_else(|| Randomness::from_trace_id(id))
    }
}

/// The outcome of recording a threshold on one span's trace state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThresholdUpdate {
    /// The new trace state to write.
    Rewrite(String),
    /// A stricter threshold is already recorded: leave the span as it is.
    Unchanged,
    /// The trace state does not parse: leave the span, count it.
    Unparseable,
}

/// Records `th` on a span's trace state `raw`.
pub fn record_threshold(raw: &str, th: Threshold) -> ThresholdUpdate {
    match TraceState::parse(raw) {
        Err(Unparseable) => ThresholdUpdate::Unparseable,
        Ok(mut state) => {
            if state.update_threshold(th) {
                ThresholdUpdate::Rewrite(state.serialize())
            } else {
                ThresholdUpdate::Unchanged
            }
        }
    }
}

fn is_lc_alpha(c: u8) -> bool {
    c.is_ascii_lowercase()
}

fn is_lc_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn valid_key_chars(s: &[u8]) -> bool {
    s.iter()
        .all(|&c| is_lc_alnum(c) || matches!(c, b'_' | b'-' | b'*' | b'/'))
}

fn valid_w3c_key(key: &str) -> bool {
    let k = key.as_bytes();
    if k.is_empty() {
        return false;
    }
    if let Some((tenant, system)) = key.split_once('@') {
        let (t, s) = (tenant.as_bytes(), system.as_bytes());
        return !t.is_empty()
            && !s.is_empty()
            && is_lc_alnum(t[0])
            && is_lc_alpha(s[0])
            && valid_key_chars(&t[1..])
            && valid_key_chars(&s[1..]);
    }
    is_lc_alpha(k[0]) && valid_key_chars(&k[1..])
}

fn is_nonblank_value_char(c: u8) -> bool {
    (0x21..=0x2B).contains(&c) || (0x2D..=0x3C).contains(&c) || (0x3E..=0x7E).contains(&c)
}

fn valid_w3c_value(value: &str) -> bool {
    let v = value.as_bytes();
    let Some((&last, rest)) = v.split_last() else {
        return false;
    };
    v.len() <= 256
        && is_nonblank_value_char(last)
        && rest.iter().all(|&c| c == b' ' || is_nonblank_value_char(c))
}

fn valid_w3c(input: &str) -> bool {
    input
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .all(|member| match member.find('=') {
            Some(eq) if eq >= 1 => {
                valid_w3c_key(&member[..eq]) && valid_w3c_value(&member[eq + 1..])
            }
            _ => false,
        })
}

fn valid_ot(input: &str) -> bool {
    if input.is_empty() || input.ends_with(';') {
        return false;
    }
    input.split(';').all(|member| match member.find(':') {
        Some(colon) if colon >= 1 => {
            let (key, value) = (&member.as_bytes()[..colon], &member.as_bytes()[colon + 1..]);
            is_lc_alpha(key[0])
                && key[1..].iter().all(|&c| is_lc_alnum(c))
                && value
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_the_collectors_encoding() {
        // Values from the specification's examples and the collector's tests.
        assert_eq!(Threshold::from_probability(0.5).tvalue(), "8");
        assert_eq!(Threshold::from_probability(0.25).tvalue(), "c");
        assert_eq!(Threshold::from_probability(1.0).tvalue(), "0");
        assert_eq!(Threshold::from_probability(0.1).tvalue(), "e6666666666666");
        assert_eq!(Threshold::from_probability(0.05).tvalue(), "f3333333333333");
        assert_eq!(Threshold::from_probability(0.0), Threshold::NEVER);
        assert_eq!(Threshold::parse_tvalue("8").unwrap().probability(), 0.5);
        assert_eq!(
            Threshold::parse_tvalue("c"),
            Some(Threshold::from_probability(0.25))
        );
        assert_eq!(
            Threshold::parse_tvalue("123456789abcdef"),
            None,
            "15 digits"
        );
        assert_eq!(Threshold::parse_tvalue("g"), None);
    }

    #[test]
    fn randomness_is_the_low_56_bits_of_the_trace_id() {
        let mut id = [0xffu8; 16];
        id[9..].copy_from_slice(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde]);
        let r = Randomness::from_trace_id(&TraceId(id));
        assert_eq!(r.unsigned(), 0x12_3456_789a_bcde);
        assert!(Threshold::from_probability(0.5).should_sample(Randomness(1 << 55)));
        assert!(!Threshold::from_probability(0.5).should_sample(Randomness((1 << 55) - 1)));
    }

    #[test]
    fn recording_puts_ot_first_and_keeps_every_other_member() {
        let th = Threshold::from_probability(0.25);
        assert_eq!(
            record_threshold("", th),
            ThresholdUpdate::Rewrite("ot=th:c".into())
        );
        assert_eq!(
            record_threshold("vendor=x, ot=rv:0123456789abcd;p:1", th),
            ThresholdUpdate::Rewrite("ot=rv:0123456789abcd;th:c;p:1,vendor=x".into())
        );
        assert_eq!(
            record_threshold("ot=th:8", th),
            ThresholdUpdate::Rewrite("ot=th:c".into()),
            "a less strict threshold is raised"
        );
        assert_eq!(
            record_threshold("ot=th:e", th),
            ThresholdUpdate::Unchanged,
            "a stricter threshold is never lowered"
        );
        assert_eq!(
            record_threshold("ot=th:zz", th),
            ThresholdUpdate::Unparseable
        );
        assert_eq!(record_threshold("Bad=1", th), ThresholdUpdate::Unparseable);
    }

    #[test]
    fn sampling_info_takes_the_first_rv_and_notes_any_th() {
        let info = SamplingInfo::scan(["", "ot=th:8", "ot=rv:00000000000001"]);
        assert!(info.present);
        assert_eq!(info.randomness, Some(Randomness(1)));
        let info = SamplingInfo::scan(["vendor=1"]);
        assert!(!info.present);
        let info = SamplingInfo::scan(["ot=th:8"]);
        assert!(info.present && info.randomness.is_none());
    }
}
