//! Evaluation with OTTL's comparison rules.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::parse::{BoolExpr, CmpOp, Condition, Expr, Path};

/// A value read from telemetry or written as a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Nil,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Bytes(Cow<'a, [u8]>),
}

/// What a condition reads: implemented by the span and span-event views of the pipeline.
pub trait Context {
    /// The value at `path`, or [`Value::Nil`] when absent (e.g. a missing attribute).
    fn get(&self, path: &Path) -> Value<'_>;
}

impl Condition {
    /// True when the condition holds for `ctx`.
    pub fn eval(&self, ctx: &dyn Context) -> bool {
        eval_bool(&self.expr, ctx)
    }
}

fn eval_bool(e: &BoolExpr, ctx: &dyn Context) -> bool {
    match e {
        BoolExpr::Const(b) => *b,
        BoolExpr::Not(a) => !eval_bool(a, ctx),
        BoolExpr::And(a, b) => eval_bool(a, ctx) && eval_bool(b, ctx),
        BoolExpr::Or(a, b) => eval_bool(a, ctx) || eval_bool(b, ctx),
        BoolExpr::IsMatch(target, regex) => match eval_value(target, ctx) {
            Value::Str(s) => regex.is_match(&s),
            Value::Int(i) => regex.is_match(&i.to_string()),
            Value::Float(f) => regex.is_match(&f.to_string()),
            Value::Bool(b) => regex.is_match(if b { "true" } else { "false" }),
            Value::Nil | Value::Bytes(_) => false,
        },
        BoolExpr::Cmp(a, op, b) => compare(&eval_value(a, ctx), *op, &eval_value(b, ctx)),
    }
}

fn eval_value<'c>(e: &Expr, ctx: &'c dyn Context) -> Value<'c> {
    match e {
        Expr::Path(p) => ctx.get(p),
        Expr::Str(s) => Value::Str(Cow::Owned(s.clone())),
        Expr::Int(i) => Value::Int(*i),
        Expr::Float(f) => Value::Float(*f),
        Expr::Bool(b) => Value::Bool(*b),
        Expr::Nil => Value::Nil,
        Expr::Add(a, b) => arith(
            eval_value(a, ctx),
            eval_value(b, ctx),
            i64::checked_add,
            |x, y| x + y,
        ),
        Expr::Sub(a, b) => arith(
            eval_value(a, ctx),
            eval_value(b, ctx),
            i64::checked_sub,
            |x, y| x - y,
        ),
    }
}

/// Integer arithmetic stays integral; anything involving a float is float; other types give nil.
fn arith<'a>(
    a: Value<'_>,
    b: Value<'_>,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Value<'a> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => int_op(x, y).map(Value::Int).unwrap_or(Value::Nil),
        (Value::Int(x), Value::Float(y)) => Value::Float(float_op(x as f64, y)),
        (Value::Float(x), Value::Int(y)) => Value::Float(float_op(x, y as f64)),
        (Value::Float(x), Value::Float(y)) => Value::Float(float_op(x, y)),
        _ => Value::Nil,
    }
}

/// OTTL semantics: values of different types are never equal and never ordered; nil equals
/// only nil; booleans and nil have equality but no order.
fn compare(a: &Value<'_>, op: CmpOp, b: &Value<'_>) -> bool {
    let ordering: Option<Ordering> = match (a, b) {
        (Value::Nil, Value::Nil) => return matches!(op, CmpOp::Eq | CmpOp::Le | CmpOp::Ge),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Float(y)) => (*x as f64).partial_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Bool(x), Value::Bool(y)) => {
            return match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                _ => false,
            };
        }
        (Value::Bytes(x), Value::Bytes(y)) => {
            return match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                _ => false,
            };
        }
        _ => None,
    };
    match ordering {
        None => op == CmpOp::Ne,
        Some(o) => match op {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        },
    }
}
