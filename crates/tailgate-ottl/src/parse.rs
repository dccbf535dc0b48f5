//! Tokenizer and recursive-descent parser for the supported subset.

use regex::Regex;

use crate::lex::{ParseError, Token, TokenKind, err_at, tokenize};

/// Which telemetry a condition is evaluated against; decides which paths exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Span,
    SpanEvent,
}

/// A data reference, resolved at parse time so evaluation never looks at strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    Name,
    Kind,
    StatusCode,
    TraceState,
    StartTimeUnixNano,
    EndTimeUnixNano,
    Attribute(String),
    ResourceAttribute(String),
    /// Span event context: the event's time.
    TimeUnixNano,
    /// Span event context: fields of the span the event belongs to.
    SpanName,
    SpanKind,
    SpanStatusCode,
    SpanAttribute(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Path(Path),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone)]
pub(crate) enum BoolExpr {
    Const(bool),
    Cmp(Expr, CmpOp, Expr),
    IsMatch(Expr, Regex),
    Not(Box<BoolExpr>),
    And(Box<BoolExpr>, Box<BoolExpr>),
    Or(Box<BoolExpr>, Box<BoolExpr>),
}

/// A parsed condition, ready to evaluate many times.
#[derive(Debug, Clone)]
pub struct Condition {
    pub(crate) source: String,
    pub(crate) scope: Scope,
    pub(crate) expr: BoolExpr,
}

impl Condition {
    /// Parses `source` for evaluation in `scope`.
    pub fn parse(source: &str, scope: Scope) -> Result<Condition, ParseError> {
        let tokens = tokenize(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            scope,
        };
        let expr = p.or_expr()?;
        if let Some(t) = p.peek() {
            return Err(p.error(
                t.offset,
                format!(
                    "unexpected {} after the end of the condition",
                    t.kind.describe()
                ),
            ));
        }
        Ok(Condition {
            source: source.to_string(),
            scope,
            expr,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Attribute keys this condition reads, so callers can tell which attributes matter.
    pub fn attribute_keys(&self) -> Vec<&str> {
        fn walk_expr<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
            match e {
                Expr::Path(
                    Path::Attribute(k) | Path::ResourceAttribute(k) | Path::SpanAttribute(k),
                ) => out.push(k),
                Expr::Add(a, b) | Expr::Sub(a, b) => {
                    walk_expr(a, out);
                    walk_expr(b, out);
                }
                _ => {}
            }
        }
        fn walk<'a>(e: &'a BoolExpr, out: &mut Vec<&'a str>) {
            match e {
                BoolExpr::Const(_) => {}
                BoolExpr::Cmp(a, _, b) => {
                    walk_expr(a, out);
                    walk_expr(b, out);
                }
                BoolExpr::IsMatch(a, _) => walk_expr(a, out),
                BoolExpr::Not(a) => walk(a, out),
                BoolExpr::And(a, b) | BoolExpr::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.expr, &mut out);
        out
    }
}

struct Parser {
    tokens: (String, Vec<Token>),
    pos: usize,
    scope: Scope,
}

const SPAN_PATHS: &str = "name, kind, status.code, trace_state, start_time_unix_nano, end_time_unix_nano, attributes[\"key\"], resource.attributes[\"key\"]";
const EVENT_PATHS: &str = "name, time_unix_nano, attributes[\"key\"], span.name, span.kind, span.status.code, span.attributes[\"key\"], resource.attributes[\"key\"]";

impl Parser {
    fn src(&self) -> &str {
        &self.tokens.0
    }

    fn peek(&self) -> Option<Token> {
        self.tokens.1.get(self.pos).cloned()
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.peek();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn end_offset(&self) -> usize {
        self.src().len()
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> ParseError {
        err_at(self.src(), offset, message)
    }

    fn expect(&mut self, kind: TokenKind) -> Result<Token, ParseError> {
        match self.next() {
            Some(t) if t.kind == kind => Ok(t),
            Some(t) => Err(self.error(
                t.offset,
                format!("expected {}, found {}", kind.describe(), t.kind.describe()),
            )),
            None => Err(self.error(
                self.end_offset(),
                format!("expected {}, found the end", kind.describe()),
            )),
        }
    }

    fn peek_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: TokenKind::Ident(ref s), .. }) if s == word)
    }

    fn or_expr(&mut self) -> Result<BoolExpr, ParseError> {
        let mut left = self.and_expr()?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.and_expr()?;
            left = BoolExpr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<BoolExpr, ParseError> {
        let mut left = self.not_expr()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.not_expr()?;
            left = BoolExpr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<BoolExpr, ParseError> {
        if self.peek_keyword("not") {
            self.pos += 1;
            return Ok(BoolExpr::Not(Box::new(self.not_expr()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<BoolExpr, ParseError> {
        let Some(t) = self.peek() else {
            return Err(self.error(self.end_offset(), "expected a condition, found the end"));
        };
        if t.kind == TokenKind::LParen {
            // A parenthesis opens a boolean group; arithmetic grouping is not in the subset.
            self.pos += 1;
            let inner = self.or_expr()?;
            self.expect(TokenKind::RParen)?;
            return Ok(inner);
        }
        if let TokenKind::Ident(ref word) = t.kind {
            if word == "IsMatch" {
                self.pos += 1;
                self.expect(TokenKind::LParen)?;
                let target = self.value_expr()?;
                self.expect(TokenKind::Comma)?;
                let pat_tok = self.next();
                let Some(Token {
                    kind: TokenKind::Str(pattern),
                    offset,
                }) = pat_tok
                else {
                    return Err(self.error(
                        t.offset,
                        "IsMatch takes a string literal pattern as its second argument",
                    ));
                };
                let regex = Regex::new(&pattern)
                    .map_err(|e| self.error(offset, format!("invalid regex: {e}")))?;
                self.expect(TokenKind::RParen)?;
                return Ok(BoolExpr::IsMatch(target, regex));
            }
            let after = self.tokens.1.get(self.pos + 1).map(|t| t.kind.clone());
            let is_bare_bool = (word == "true" || word == "false")
                && !matches!(after, Some(TokenKind::Op(op)) if matches!(op, "==" | "!=" | "<" | ">" | "<=" | ">="));
            if is_bare_bool {
                self.pos += 1;
                return Ok(BoolExpr::Const(word == "true"));
            }
        }
        let left = self.value_expr()?;
        let op = match self.next() {
            Some(Token {
                kind: TokenKind::Op(op),
                offset,
            }) => match op {
                "==" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                ">" => CmpOp::Gt,
                "<=" => CmpOp::Le,
                ">=" => CmpOp::Ge,
                other => {
                    return Err(
                        self.error(offset, format!("expected a comparison, found `{other}`"))
                    );
                }
            },
            Some(other) => {
                return Err(self.error(
                    other.offset,
                    format!(
                        "expected a comparison (== != < > <= >=), found {}",
                        other.kind.describe()
                    ),
                ));
            }
            None => {
                return Err(self.error(
                    self.end_offset(),
                    "expected a comparison (== != < > <= >=), found the end",
                ));
            }
        };
        let right = self.value_expr()?;
        Ok(BoolExpr::Cmp(left, op, right))
    }

    fn value_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.value()?;
        loop {
            match self.peek() {
                Some(Token {
                    kind: TokenKind::Op("+"),
                    ..
                }) => {
                    self.pos += 1;
                    left = Expr::Add(Box::new(left), Box::new(self.value()?));
                }
                Some(Token {
                    kind: TokenKind::Op("-"),
                    ..
                }) => {
                    self.pos += 1;
                    left = Expr::Sub(Box::new(left), Box::new(self.value()?));
                }
                _ => return Ok(left),
            }
        }
    }

    fn value(&mut self) -> Result<Expr, ParseError> {
        let Some(t) = self.next() else {
            return Err(self.error(self.end_offset(), "expected a value, found the end"));
        };
        match t.kind {
            TokenKind::Str(s) => Ok(Expr::Str(s)),
            TokenKind::Int(i) => Ok(Expr::Int(i)),
            TokenKind::Float(f) => Ok(Expr::Float(f)),
            TokenKind::Op("-") => match self.next() {
                Some(Token {
                    kind: TokenKind::Int(i),
                    ..
                }) => Ok(Expr::Int(-i)),
                Some(Token {
                    kind: TokenKind::Float(f),
                    ..
                }) => Ok(Expr::Float(-f)),
                _ => Err(self.error(t.offset, "`-` must be followed by a number")),
            },
            TokenKind::Ident(word) => self.ident_value(word, t.offset),
            other => Err(self.error(
                t.offset,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    fn ident_value(&mut self, word: String, offset: usize) -> Result<Expr, ParseError> {
        if let Some(v) = enum_value(&word) {
            return Ok(Expr::Int(v));
        }
        match word.as_str() {
            "true" => return Ok(Expr::Bool(true)),
            "false" => return Ok(Expr::Bool(false)),
            "nil" => return Ok(Expr::Nil),
            _ => {}
        }
        if word.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            return Err(self.error(
                offset,
                format!("unsupported function or enum `{word}`; supported: IsMatch, SPAN_KIND_*, STATUS_CODE_*"),
            ));
        }
        // Collect a dotted path, then an optional ["key"].
        let mut segments = vec![word];
        while matches!(
            self.peek(),
            Some(Token {
                kind: TokenKind::Dot,
                ..
            })
        ) {
            self.pos += 1;
            match self.next() {
                Some(Token {
                    kind: TokenKind::Ident(s),
                    ..
                }) => segments.push(s),
                _ => return Err(self.error(offset, "expected a name after `.`")),
            }
        }
        let mut key = None;
        if matches!(
            self.peek(),
            Some(Token {
                kind: TokenKind::LBracket,
                ..
            })
        ) {
            self.pos += 1;
            match self.next() {
                Some(Token {
                    kind: TokenKind::Str(s),
                    ..
                }) => key = Some(s),
                _ => return Err(self.error(offset, "expected a string key inside `[...]`")),
            }
            self.expect(TokenKind::RBracket)?;
        }
        let dotted = segments.join(".");
        let path = resolve_path(self.scope, &dotted, key);
        path.map(Expr::Path).ok_or_else(|| {
            let allowed = match self.scope {
                Scope::Span => SPAN_PATHS,
                Scope::SpanEvent => EVENT_PATHS,
            };
            let scope = match self.scope {
                Scope::Span => "span",
                Scope::SpanEvent => "spanevent",
            };
            self.error(
                offset,
                format!("unsupported path `{dotted}` in the {scope} context; allowed: {allowed}"),
            )
        })
    }
}

fn resolve_path(scope: Scope, dotted: &str, key: Option<String>) -> Option<Path> {
    match (scope, dotted, key) {
        (Scope::Span, "name", None) => Some(Path::Name),
        (Scope::Span, "kind", None) => Some(Path::Kind),
        (Scope::Span, "status.code", None) => Some(Path::StatusCode),
        (Scope::Span, "trace_state", None) => Some(Path::TraceState),
        (Scope::Span, "start_time_unix_nano", None) => Some(Path::StartTimeUnixNano),
        (Scope::Span, "end_time_unix_nano", None) => Some(Path::EndTimeUnixNano),
        (Scope::Span, "attributes", Some(k)) => Some(Path::Attribute(k)),
        (Scope::SpanEvent, "name", None) => Some(Path::Name),
        (Scope::SpanEvent, "time_unix_nano", None) => Some(Path::TimeUnixNano),
        (Scope::SpanEvent, "attributes", Some(k)) => Some(Path::Attribute(k)),
        (Scope::SpanEvent, "span.name", None) => Some(Path::SpanName),
        (Scope::SpanEvent, "span.kind", None) => Some(Path::SpanKind),
        (Scope::SpanEvent, "span.status.code", None) => Some(Path::SpanStatusCode),
        (Scope::SpanEvent, "span.attributes", Some(k)) => Some(Path::SpanAttribute(k)),
        (_, "resource.attributes", Some(k)) => Some(Path::ResourceAttribute(k)),
        _ => None,
    }
}

fn enum_value(word: &str) -> Option<i64> {
    Some(match word {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}
