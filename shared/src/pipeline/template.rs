//! `${expr}` templates: parsing, JMESPath evaluation and rendering of JSON values.
//!
//! Rules (the contract the API documents):
//! - `${expr}` is a JMESPath expression evaluated over the run context
//!   `{params, steps, event, task, run, now}`.
//! - A string that is exactly one template keeps the JSON type of the result; a missing path is `null`.
//! - A template inside a longer string is stringified: strings verbatim, numbers/booleans/arrays/objects as
//!   compact JSON. A `null` there is an error (it is almost always a typo'd path, and an empty string or
//!   the word "null" inside a URL would fail much later and much less clearly).
//! - `$${` is an escape for a literal `${` (`"$${HOME}"` renders as `"${HOME}"`). No other `$` is special.
//! - Only string values are templated; object keys are not.
//! - Integral floats produced by JMESPath arithmetic-like functions (`sum`, `max`, ...) are returned as
//!   integers when they fit exactly, so `${length(x)}` and `${sum(xs)}` give `3`, not `3.0`.

use std::fmt;

use jmespath::ast::Ast;
use jmespath::{Context, Rcvar, Variable};
use serde_json::{Map, Number, Value};

/// A template could not be compiled or evaluated, or produced an unusable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
}

impl TemplateError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The top-level names a template may start from.
pub const CONTEXT_ROOTS: &[&str] = &["params", "steps", "event", "task", "run", "now", "secrets"];

/// One piece of a templated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    Literal(String),
    Expr(&'a str),
}

/// Splits a string into literal text and `${...}` expressions.
///
/// The closing `}` is found with JMESPath's lexical rules in mind, so braces inside multi-select hashes
/// (`${ {a: params.a} }`), quoted identifiers, raw strings and JSON literals do not end the template early.
pub(crate) fn parse_segments(s: &str) -> Result<Vec<Segment<'_>>, TemplateError> {
    let bytes = s.as_bytes();
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut lit_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"$${") {
            literal.push_str(&s[lit_start..i]);
            literal.push_str("${");
            i += 3;
            lit_start = i;
        } else if bytes[i..].starts_with(b"${") {
            literal.push_str(&s[lit_start..i]);
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            let body_start = i + 2;
            let end = find_template_end(bytes, body_start).ok_or_else(|| {
                TemplateError::new(format!(
                    "unterminated template starting at character {}: missing `}}`",
                    s[..i].chars().count()
                ))
            })?;
            let expr = s[body_start..end].trim();
            if expr.is_empty() {
                return Err(TemplateError::new("empty template `${}`"));
            }
            segments.push(Segment::Expr(expr));
            i = end + 1;
            lit_start = i;
        } else {
            i += 1;
        }
    }
    literal.push_str(&s[lit_start..]);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// Index of the `}` closing a template whose body starts at `start`.
fn find_template_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return None;
                }
            }
            b'{' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// True when the string contains at least one `${...}` (escapes excluded). Unparseable strings count as
/// templated so that callers skip literal checks and let the template error speak.
pub fn contains_template(s: &str) -> bool {
    match parse_segments(s) {
        Ok(segments) => segments.iter().any(|s| matches!(s, Segment::Expr(_))),
        Err(_) => true,
    }
}

/// The expression when the whole string is exactly one template, e.g. `"${params.n}"` → `params.n`.
pub fn whole_template(s: &str) -> Option<&str> {
    match parse_segments(s).ok()?.as_slice() {
        [Segment::Expr(expr)] => Some(expr),
        _ => None,
    }
}

/// Compiles a JMESPath expression and checks what can be checked without data: syntax, function names,
/// zero slice steps, and that top-level names are context roots (`params`, `steps`, ...).
pub fn check_expression(expr: &str) -> Result<(), TemplateError> {
    let compiled = compile(expr)?;
    let mut problems = Vec::new();
    check_ast(compiled.as_ast(), true, &mut problems);
    match problems.into_iter().next() {
        None => Ok(()),
        Some(problem) => Err(TemplateError::new(format!("in `{expr}`: {problem}"))),
    }
}

/// Checks every template inside a string.
pub fn check_string(s: &str) -> Result<(), TemplateError> {
    for segment in parse_segments(s)? {
        if let Segment::Expr(expr) = segment {
            check_expression(expr)?;
        }
    }
    Ok(())
}

fn compile(expr: &str) -> Result<jmespath::Expression<'static>, TemplateError> {
    jmespath::compile(expr).map_err(|e| {
        TemplateError::new(format!(
            "invalid JMESPath expression `{expr}`: {} (column {})",
            e.reason, e.column
        ))
    })
}

fn check_ast(ast: &Ast, at_root: bool, problems: &mut Vec<String>) {
    match ast {
        Ast::Field { name, .. } => {
            if at_root && !CONTEXT_ROOTS.contains(&name.as_str()) {
                problems.push(format!(
                    "unknown name `{name}`; templates can read {}",
                    CONTEXT_ROOTS.join(", ")
                ));
            }
        }
        Ast::Function { name, args, .. } => {
            if jmespath::DEFAULT_RUNTIME.get_function(name).is_none() {
                problems.push(format!("unknown function `{name}()`"));
            }
            for arg in args {
                check_ast(arg, at_root, problems);
            }
        }
        Ast::Slice { step: 0, .. } => problems.push("slice step cannot be 0".to_string()),
        Ast::Comparison { lhs, rhs, .. } | Ast::And { lhs, rhs, .. } | Ast::Or { lhs, rhs, .. } => {
            check_ast(lhs, at_root, problems);
            check_ast(rhs, at_root, problems);
        }
        // The right-hand side is evaluated against the left-hand side's result, not the context.
        Ast::Subexpr { lhs, rhs, .. } | Ast::Projection { lhs, rhs, .. } => {
            check_ast(lhs, at_root, problems);
            check_ast(rhs, false, problems);
        }
        Ast::Condition {
            predicate, then, ..
        } => {
            check_ast(predicate, at_root, problems);
            check_ast(then, at_root, problems);
        }
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            check_ast(node, at_root, problems)
        }
        // Expression references (`sort_by(xs, &name)`) are evaluated per element.
        Ast::Expref { ast, .. } => check_ast(ast, false, problems),
        Ast::MultiList { elements, .. } => {
            for element in elements {
                check_ast(element, at_root, problems);
            }
        }
        Ast::MultiHash { elements, .. } => {
            for pair in elements {
                check_ast(&pair.value, at_root, problems);
            }
        }
        Ast::Identity { .. } | Ast::Index { .. } | Ast::Literal { .. } | Ast::Slice { .. } => {}
    }
}

/// The run context converted once for many evaluations.
pub(crate) struct Searchable {
    data: Rcvar,
}

impl Searchable {
    pub(crate) fn new(ctx: &Value) -> Result<Self, TemplateError> {
        let variable = Variable::from_serializable(ctx)
            .map_err(|e| TemplateError::new(format!("cannot build template context: {e}")))?;
        Ok(Self {
            data: Rcvar::new(variable),
        })
    }

    pub(crate) fn eval(&self, expr: &str) -> Result<Rcvar, TemplateError> {
        let compiled = compile(expr)?;
        let mut context = Context::new(compiled.as_str(), &jmespath::DEFAULT_RUNTIME);
        jmespath::interpret(&self.data, compiled.as_ast(), &mut context)
            .map_err(|e| TemplateError::new(format!("cannot evaluate `{expr}`: {}", e.reason)))
    }

    pub(crate) fn eval_value(&self, expr: &str) -> Result<Value, TemplateError> {
        let result = self.eval(expr)?;
        let value = serde_json::to_value(&*result)
            .map_err(|e| TemplateError::new(format!("cannot convert result of `{expr}`: {e}")))?;
        Ok(normalize_numbers(value))
    }
}

fn normalize_numbers(value: Value) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < EXACT => Value::Number(Number::from(f as i64)),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

fn render_string(s: &str, ctx: &Searchable) -> Result<Value, TemplateError> {
    let segments = parse_segments(s)?;
    if let [Segment::Expr(expr)] = segments.as_slice() {
        return ctx.eval_value(expr);
    }
    let mut out = String::with_capacity(s.len());
    for segment in segments {
        match segment {
            Segment::Literal(text) => out.push_str(&text),
            Segment::Expr(expr) => match ctx.eval_value(expr)? {
                Value::Null => {
                    return Err(TemplateError::new(format!(
                        "`${{{expr}}}` is null (missing path?) inside the string \"{}\"",
                        Truncated(s)
                    )))
                }
                Value::String(text) => out.push_str(&text),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

pub(crate) fn render_with(value: &Value, ctx: &Searchable) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => render_string(s, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_with(item, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_with(v, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Renders every string inside `value` against `ctx` (see the module documentation for the rules).
pub fn render(value: &Value, ctx: &Value) -> Result<Value, TemplateError> {
    render_with(value, &Searchable::new(ctx)?)
}

/// The JMESPath expression of an `if`: either a bare expression or one whole `${...}` template.
pub fn condition_expression(expr: &str) -> &str {
    whole_template(expr).unwrap_or(expr.trim())
}

/// Evaluates an `if` with JMESPath truthiness: `false`, `null`, `""`, `[]` and `{}` are falsy; everything
/// else (including `0`) is truthy. Accepts `params.x` and `${params.x}` alike.
pub fn eval_condition(expr: &str, ctx: &Value) -> Result<bool, TemplateError> {
    let expr = condition_expression(expr);
    if expr.is_empty() {
        return Err(TemplateError::new("empty condition"));
    }
    Ok(Searchable::new(ctx)?.eval(expr)?.is_truthy())
}

/// Shortens long strings in error messages.
struct Truncated<'a>(&'a str);

impl fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 120;
        if self.0.chars().count() <= MAX {
            f.write_str(self.0)
        } else {
            let cut: String = self.0.chars().take(MAX).collect();
            write!(f, "{cut}…")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_respect_jmespath_quoting() {
        let s = r#"a ${ {x: params.a} } b ${'}'} c ${`{"k": 1}`.k} d"#;
        let exprs: Vec<_> = parse_segments(s)
            .unwrap()
            .into_iter()
            .filter_map(|s| match s {
                Segment::Expr(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(exprs, vec!["{x: params.a}", "'}'", r#"`{"k": 1}`.k"#]);
    }

    #[test]
    fn escape_yields_literal_dollar_brace() {
        assert_eq!(
            parse_segments("$${HOME}/x").unwrap(),
            vec![Segment::Literal("${HOME}/x".into())]
        );
        assert!(!contains_template("$${HOME}"));
    }
}
