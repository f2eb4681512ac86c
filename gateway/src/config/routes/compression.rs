//! `compression = { … }` of a route: which content codings the edge may apply to its responses, to
//! which content types, from what size, at what level.

use super::*;

/// A content coding the edge can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Brotli,
    Gzip,
}

impl Coding {
    /// The token in `Accept-Encoding` / `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    fn of(token: &str) -> Option<Coding> {
        match token {
            "zstd" => Some(Coding::Zstd),
            "br" => Some(Coding::Brotli),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }

    /// The levels each coding accepts.
    fn levels(self) -> std::ops::RangeInclusive<i64> {
        match self {
            Coding::Zstd => 1..=19,
            Coding::Brotli => 0..=11,
            Coding::Gzip => 1..=9,
        }
    }
}

/// A content type the route compresses: `type/subtype` or `type/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypePattern {
    Exact(String),
    AnySubtype(String),
}

impl TypePattern {
    /// Whether the media type `mime` (lowercase, without parameters) matches.
    pub fn matches(&self, mime: &str) -> bool {
        match self {
            TypePattern::Exact(t) => t == mime,
            TypePattern::AnySubtype(top) => mime
                .split_once('/')
                .is_some_and(|(t, sub)| t == top && !sub.is_empty()),
        }
    }
}

/// A route's compression, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionSpec {
    /// In the server's order of preference (among codings a client accepts equally).
    pub algorithms: Vec<Coding>,
    pub types: Vec<TypePattern>,
    /// Responses announcing a smaller `Content-Length` are sent as they are.
    pub min_bytes: u64,
    pub level_gzip: u32,
    pub level_br: u32,
    pub level_zstd: u32,
}

impl CompressionSpec {
    pub fn level(&self, c: Coding) -> u32 {
        match c {
            Coding::Gzip => self.level_gzip,
            Coding::Brotli => self.level_br,
            Coding::Zstd => self.level_zstd,
        }
    }
}

/// Types compressed unless `types` says otherwise: text formats an API and its pages send.
/// (`text/event-stream` never is: an encoder holds back small events until it has enough to emit.)
pub const DEFAULT_TYPES: &[&str] = &[
    "application/json",
    "application/problem+json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
    "text/*",
];
pub const DEFAULT_MIN_BYTES: u64 = 1024;
/// Default levels, chosen by measurement (README, "Compression"; `gateway/benches/compression.rs`): on
/// API JSON, level 1 of each coding saves 69–87 % of the bytes at 2.7–5.3 µs of CPU per KB saved, and
/// every next level costs 15–100× that per further KB saved (gzip 4: 44 µs/KB; br 4: 303 µs/KB; zstd 3:
/// nothing saved). Level 1 is also nginx's default `gzip_comp_level`.
pub const DEFAULT_LEVEL_GZIP: u32 = 1;
pub const DEFAULT_LEVEL_BR: u32 = 1;
pub const DEFAULT_LEVEL_ZSTD: u32 = 1;

pub(super) fn validate_compression(
    c: &Spanned<file::CompressionFile>,
    diags: &mut Vec<Diagnostic>,
) -> CompressionSpec {
    let f = c.get_ref();
    let mut algorithms = Vec::new();
    match &f.algorithms {
        None => algorithms = vec![Coding::Zstd, Coding::Brotli, Coding::Gzip],
        Some(list) => {
            for a in list {
                match Coding::of(a.get_ref()) {
                    Some(coding) if algorithms.contains(&coding) => {
                        diags.push(Diagnostic::at(a, "listed twice"))
                    }
                    Some(coding) => algorithms.push(coding),
                    None => diags.push(Diagnostic::at(
                        a,
                        format!("unknown coding `{}`: zstd, br or gzip", a.get_ref()),
                    )),
                }
            }
            if list.is_empty() {
                diags.push(Diagnostic::at(
                    c,
                    "compression.algorithms is empty: name zstd, br or gzip, or leave compression out",
                ));
            }
        }
    }
    let mut types = Vec::new();
    match &f.types {
        None => {
            types = DEFAULT_TYPES
                .iter()
                .map(|t| type_pattern(t).unwrap_or_else(|| TypePattern::Exact((*t).to_string())))
                .collect()
        }
        Some(list) => {
            for t in list {
                match type_pattern(&t.get_ref().to_ascii_lowercase()) {
                    Some(p) => types.push(p),
                    None => diags.push(Diagnostic::at(
                        t,
                        format!(
                            "`{}` is not a media type (`application/json`) or a type with any subtype (`text/*`)",
                            t.get_ref()
                        ),
                    )),
                }
            }
        }
    }
    let min_bytes = match &f.min_bytes {
        None => DEFAULT_MIN_BYTES,
        Some(m) if *m.get_ref() >= 0 => *m.get_ref() as u64,
        Some(m) => {
            diags.push(Diagnostic::at(m, "min_bytes must be 0 or more"));
            DEFAULT_MIN_BYTES
        }
    };
    let levels = f.levels.as_ref();
    let level = |v: Option<&Spanned<i64>>,
                 coding: Coding,
                 default: u32,
                 diags: &mut Vec<Diagnostic>| match v {
        None => default,
        Some(l) if coding.levels().contains(l.get_ref()) => *l.get_ref() as u32,
        Some(l) => {
            let r = coding.levels();
            diags.push(Diagnostic::at(
                l,
                format!(
                    "{} levels go from {} to {}",
                    coding.token(),
                    r.start(),
                    r.end()
                ),
            ));
            default
        }
    };
    CompressionSpec {
        algorithms,
        types,
        min_bytes,
        level_gzip: level(
            levels.and_then(|l| l.gzip.as_ref()),
            Coding::Gzip,
            DEFAULT_LEVEL_GZIP,
            diags,
        ),
        level_br: level(
            levels.and_then(|l| l.br.as_ref()),
            Coding::Brotli,
            DEFAULT_LEVEL_BR,
            diags,
        ),
        level_zstd: level(
            levels.and_then(|l| l.zstd.as_ref()),
            Coding::Zstd,
            DEFAULT_LEVEL_ZSTD,
            diags,
        ),
    }
}

fn type_pattern(t: &str) -> Option<TypePattern> {
    let (top, sub) = t.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match sub {
        "*" if token(top) => Some(TypePattern::AnySubtype(top.to_string())),
        _ if token(top) && token(sub) => Some(TypePattern::Exact(t.to_string())),
        _ => None,
    }
}
