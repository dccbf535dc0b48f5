//! Where a YAML path (`processors.tail_sampling.policies[2].latency`) sits in the file's text,
//! so errors found after parsing — unknown keys, bad values, cross-reference problems — carry
//! a line and column as syntax errors do.
//!
//! Configs are written in block style; this reads that structure from indentation alone
//! (`key:` lines and `- ` list items). Inside flow collections (`[a, b]`, `{k: v}`) and
//! multi-line scalars it stops at the enclosing key: a path that cannot be followed to its
//! end is placed at its deepest key that can.

/// One step of a dotted YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Splits `a.b[2].c` into steps. Component IDs may contain `/`; a `.` always separates.
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Step::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Step::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Step::Key(rest.to_string()));
        }
    }
    out
}

/// An open mapping key or list item while walking the lines.
struct Frame {
    indent: usize,
    step: Step,
    /// List items seen directly under this frame.
    items: usize,
}

/// 1-based line and column of `path` in `text`, or of its deepest enclosing key found.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let target = steps(path);
    if target.is_empty() {
        return None;
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut root_items = 0usize;
    let mut best: Option<(usize, (usize, usize))> = None;
    for (line_no, line) in text.lines().enumerate() {
        let trimmed = line.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - trimmed.len();
        let mut content = trimmed;
        let is_item = content == "-" || content.starts_with("- ");
        // A list item at its key's own indent belongs to that key.
        while let Some(top) = stack.last() {
            let closes = if is_item {
                top.indent > indent || (top.indent == indent && matches!(top.step, Step::Index(_)))
            } else {
                top.indent >= indent
            };
            if !closes {
                break;
            }
            stack.pop();
        }
        while content == "-" || content.starts_with("- ") {
            let counter = match stack.last_mut() {
                Some(parent) => &mut parent.items,
                None => &mut root_items,
            };
            let index = *counter;
            *counter += 1;
            stack.push(Frame {
                indent,
                step: Step::Index(index),
                items: 0,
            });
            let after = content[1..].trim_start_matches(' ');
            indent += content.len() - after.len();
            content = after;
            record(&stack, &target, (line_no + 1, indent + 1), &mut best);
        }
        if let Some(key) = mapping_key(content) {
            stack.push(Frame {
                indent,
                step: Step::Key(key),
                items: 0,
            });
            record(&stack, &target, (line_no + 1, indent + 1), &mut best);
        }
        if best.is_some_and(|(depth, _)| depth == target.len()) {
            break;
        }
    }
    best.map(|(_, at)| at)
}

/// Remembers `at` when the open frames are the longest prefix of `target` seen so far.
fn record(
    stack: &[Frame],
    target: &[Step],
    at: (usize, usize),
    best: &mut Option<(usize, (usize, usize))>,
) {
    if stack.len() > target.len() {
        return;
    }
    let matches = stack.iter().zip(target).all(|(f, t)| f.step == *t);
    if matches && best.is_none_or(|(depth, _)| stack.len() > depth) {
        *best = Some((stack.len(), at));
    }
}

/// The key of a `key: value` or `key:` line, unquoted.
fn mapping_key(content: &str) -> Option<String> {
    let (key, rest) = if let Some(quote @ ('"' | '\'')) = content.chars().next() {
        let end = content[1..].find(quote)? + 1;
        (&content[1..end], &content[end + 1..])
    } else {
        let colon = content
            .find(": ")
            .or_else(|| content.strip_suffix(':').map(str::len))?;
        (&content[..colon], &content[colon..])
    };
    let rest = rest.trim_start_matches(' ');
    (rest.starts_with(':') && !key.is_empty() && !key.starts_with(['{', '[']))
        .then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
processors:
  # a comment
  tail_sampling:
    decision_wait: 10s
    policies:
      - name: keep-errors
        type: status_code
        status_code:
          status_codes: [ERROR]
      - name: keep-slow
        type: latency
        latency:
          threshold_ms: 2000
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters:
      - otlp/tempo
      - debug
";

    #[test]
    fn keys_items_and_nested_keys_are_found_at_their_line_and_column() {
        let at = |p: &str| locate(TEXT, p);
        assert_eq!(at("receivers"), Some((1, 1)));
        assert_eq!(at("receivers.otlp.protocols.grpc.endpoint"), Some((5, 9)));
        assert_eq!(at("processors.tail_sampling.decision_wait"), Some((9, 5)));
        assert_eq!(at("processors.tail_sampling.policies[0]"), Some((11, 9)));
        assert_eq!(
            at("processors.tail_sampling.policies[1].name"),
            Some((15, 9))
        );
        assert_eq!(
            at("processors.tail_sampling.policies[1].latency.threshold_ms"),
            Some((18, 11))
        );
        assert_eq!(at("service.pipelines.traces.exporters[1]"), Some((25, 9)));
    }

    #[test]
    fn a_path_into_a_flow_list_or_a_missing_key_stops_at_its_deepest_key() {
        let at = |p: &str| locate(TEXT, p);
        assert_eq!(
            at("processors.tail_sampling.policies[0].status_code.status_codes[0]"),
            Some((14, 11))
        );
        assert_eq!(
            at("processors.tail_sampling.policies[1].nope"),
            Some((15, 9))
        );
        assert_eq!(at("nothing.here"), None);
    }
}
