//! The one diagnostics helper every section's validation uses: a message at a span ([`Diagnostic`]),
//! rendered as `FILE:LINE:COL: message`, and the checks that repeat across sections (durations,
//! positive numbers, one of a list, socket addresses).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::duration::parse_duration;

/// One problem in a config file, located by byte span.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub(crate) span: Option<Range<usize>>,
    pub(crate) message: String,
    /// A warning does not refuse the file (`gateway validate --strict` makes it an error).
    pub(crate) warning: bool,
}

impl Diagnostic {
    pub(crate) fn new(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            warning: false,
        }
    }
    pub(crate) fn at<T>(s: &Spanned<T>, message: impl Into<String>) -> Self {
        Self::new(Some(s.span()), message)
    }
    /// A warning at `span`.
    pub(crate) fn warn(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            ..Self::new(span, message)
        }
    }
}

pub(crate) fn render(path: &Path, text: &str, mut diags: Vec<Diagnostic>) -> Vec<String> {
    diags.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    diags
        .into_iter()
        .map(|d| {
            let (line, col) = d.span.map_or((1, 1), |s| line_col(text, s.start));
            let kind = if d.warning { "warning: " } else { "" };
            format!("{}:{}:{}: {kind}{}", path.display(), line, col, d.message)
        })
        .collect()
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

pub(crate) fn duration_or(
    v: &Option<Spanned<String>>,
    default: Duration,
    diags: &mut Vec<Diagnostic>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() => {
                diags.push(Diagnostic::at(s, "duration must be greater than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                diags.push(Diagnostic::at(s, e));
                default
            }
        },
    }
}

pub(crate) fn opt_duration(
    v: &Option<Spanned<String>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    v.as_ref()
        .map(|_| duration_or(v, Duration::from_secs(1), diags))
}

/// An enumerated value: the choice `value` names, or a diagnostic at `span` listing every allowed
/// spelling (`{what} \`{value}\` is not one of a, b, c{note}`) and `None`.
pub(crate) fn pick<T: Copy>(
    value: &str,
    span: Range<usize>,
    what: &str,
    choices: &[(&str, T)],
    note: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
        return Some(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    diags.push(Diagnostic::new(
        Some(span),
        format!("{what} `{value}` is not one of {}{note}", names.join(", ")),
    ));
    None
}

/// An optional enumerated key: the first choice when absent or invalid (invalid is also a diagnostic,
/// see [`pick`]).
pub(crate) fn one_of<T: Copy>(
    v: &Option<Spanned<String>>,
    what: &str,
    choices: &[(&str, T)],
    note: &str,
    diags: &mut Vec<Diagnostic>,
) -> T {
    let default = choices[0].1;
    match v {
        None => default,
        Some(s) => pick(s.get_ref(), s.span(), what, choices, note, diags).unwrap_or(default),
    }
}

pub(crate) fn positive(
    v: &Option<Spanned<i64>>,
    default: u64,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> u64 {
    match v {
        None => default,
        Some(s) if *s.get_ref() > 0 => *s.get_ref() as u64,
        Some(s) => {
            diags.push(Diagnostic::at(
                s,
                format!("{what} must be a positive integer"),
            ));
            default
        }
    }
}

pub(crate) fn socket_addr(
    v: &Option<Spanned<String>>,
    key: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<SocketAddr> {
    let s = v.as_ref()?;
    match s.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            diags.push(Diagnostic::at(
                s,
                format!(
                    "{key}: `{}` is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                    s.get_ref()
                ),
            ));
            None
        }
    }
}
