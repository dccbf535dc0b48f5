//! Field errors, reported like a compiler's: after serde names one failing field, the key is
//! set aside ([`remove_at`]) so the rest of the component can be checked in the same pass, and
//! a misspelt name gets the nearest known one ([`with_suggestion`], [`closest`]).

use serde_json::Value;

/// One step of a serde path, for setting a failing key aside.
pub(crate) enum PathStep {
    Key(String),
    Index(usize),
}

impl PathStep {
    pub(crate) fn from_segment(s: &serde_path_to_error::Segment) -> Option<PathStep> {
        match s {
            serde_path_to_error::Segment::Map { key } => Some(PathStep::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(PathStep::Index(*index)),
            _ => None,
        }
    }
}

/// Removes the value at `steps` from `root`; returns the removed key's name (the last step).
pub(crate) fn remove_at(root: &mut Value, steps: &[PathStep]) -> Option<String> {
    let (last, parents) = steps.split_last()?;
    let mut at = root;
    for step in parents {
        at = match (step, at) {
            (PathStep::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (PathStep::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match (last, at) {
        (PathStep::Key(k), Value::Object(m)) => m.remove(k).map(|_| k.clone()),
        (PathStep::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            Some(i.to_string())
        }
        _ => None,
    }
}

/// serde's message with "did you mean" added when it names an unknown field or variant and
/// lists the expected ones.
pub(crate) fn with_suggestion(message: &str) -> String {
    let unknown = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let expected = message
        .split_once("expected one of ")
        .or_else(|| message.split_once("expected "))
        .map(|(_, list)| list);
    match (unknown, expected) {
        (Some(word), Some(list)) => {
            let candidates = list.split('`').skip(1).step_by(2);
            match closest(word, candidates) {
                Some(near) => format!("{message}; did you mean `{near}`?"),
                None => message.to_string(),
            }
        }
        _ => message.to_string(),
    }
}

/// The candidate nearest `word` by edit distance, if it is near enough to be a typo (at most a
/// third of the word's length, at least 1, in edits).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of neighbours as one edit (optimal string alignment), by
/// characters: `otpl` is one edit from `otlp`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
