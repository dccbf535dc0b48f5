//! The lexer: a condition's text into tokens, each with its byte offset for error columns.

use thiserror::Error;

/// A condition outside the supported subset, or not OTTL at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid OTTL condition `{condition}` at column {column}: {message}")]
pub struct ParseError {
    pub condition: String,
    /// 1-based character column.
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
}

impl TokenKind {
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenKind::Ident(s) => format!("`{s}`"),
            TokenKind::Str(s) => format!("string \"{s}\""),
            TokenKind::Int(i) => format!("number {i}"),
            TokenKind::Float(f) => format!("number {f}"),
            TokenKind::Op(o) => format!("`{o}`"),
            TokenKind::LParen => "`(`".into(),
            TokenKind::RParen => "`)`".into(),
            TokenKind::LBracket => "`[`".into(),
            TokenKind::RBracket => "`]`".into(),
            TokenKind::Dot => "`.`".into(),
            TokenKind::Comma => "`,`".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    /// Byte offset in the condition.
    pub(crate) offset: usize,
}

pub(crate) fn err_at(source: &str, offset: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        condition: source.to_string(),
        column: source[..offset].chars().count() + 1,
        message: message.into(),
    }
}

/// The tokens of `src` (returned with it, so the parser can point into it).
pub(crate) fn tokenize(src: &str) -> Result<(String, Vec<Token>), ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let (kind, end) = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => (TokenKind::LParen, i + 1),
            b')' => (TokenKind::RParen, i + 1),
            b'[' => (TokenKind::LBracket, i + 1),
            b']' => (TokenKind::RBracket, i + 1),
            b'.' => (TokenKind::Dot, i + 1),
            b',' => (TokenKind::Comma, i + 1),
            b'+' => (TokenKind::Op("+"), i + 1),
            b'-' => (TokenKind::Op("-"), i + 1),
            b'=' | b'!' | b'<' | b'>' => comparison(src, start)?,
            b'"' => string_literal(src, start)?,
            b'0'..=b'9' => number(src, start)?,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                (TokenKind::Ident(src[start..end].to_string()), end)
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(err_at(src, i, format!("unexpected character `{ch}`")));
            }
        };
        out.push(Token {
            kind,
            offset: start,
        });
        i = end;
    }
    Ok((src.to_string(), out))
}

/// `==`, `!=`, `<`, `>`, `<=`, `>=` at `start`, and where it ends.
fn comparison(src: &str, start: usize) -> Result<(TokenKind, usize), ParseError> {
    let bytes = src.as_bytes();
    let c = bytes[start];
    let two = bytes.get(start + 1) == Some(&b'=');
    let op = match (c, two) {
        (b'=', true) => "==",
        (b'!', true) => "!=",
        (b'<', true) => "<=",
        (b'>', true) => ">=",
        (b'<', false) => "<",
        (b'>', false) => ">",
        _ => {
            return Err(err_at(
                src,
                start,
                format!(
                    "unexpected `{}`; comparisons are == != < > <= >=",
                    c as char
                ),
            ));
        }
    };
    Ok((TokenKind::Op(op), start + op.len()))
}

/// The double-quoted string at `start`, unescaped, and where it ends.
fn string_literal(src: &str, start: usize) -> Result<(TokenKind, usize), ParseError> {
    let bytes = src.as_bytes();
    let mut s = String::new();
    let mut i = start + 1;
    loop {
        match bytes.get(i) {
            None => return Err(err_at(src, start, "unterminated string")),
            Some(b'"') => break,
            Some(b'\\') => {
                match bytes.get(i + 1) {
                    Some(b'"') => s.push('"'),
                    Some(b'\\') => s.push('\\'),
                    Some(b'n') => s.push('\n'),
                    Some(b't') => s.push('\t'),
                    _ => {
                        return Err(err_at(
                            src,
                            i,
                            "unsupported escape in string; allowed: \\\" \\\\ \\n \\t",
                        ));
                    }
                }
                i += 2;
            }
            Some(_) => {
                let ch = src[i..].chars().next().unwrap_or('?');
                s.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok((TokenKind::Str(s), i + 1))
}

/// The integer or decimal number at `start`, and where it ends.
fn number(src: &str, start: usize) -> Result<(TokenKind, usize), ParseError> {
    let bytes = src.as_bytes();
    let mut end = start;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
        end += 1;
    }
    let text = &src[start..end];
    let bad = || err_at(src, start, format!("bad number `{text}`"));
    let kind = if text.contains('.') {
        TokenKind::Float(text.parse().map_err(|_| bad())?)
    } else {
        TokenKind::Int(text.parse().map_err(|_| bad())?)
    };
    Ok((kind, end))
}
