//! The key schema of the file, checked before deserialising so that every unknown key is reported at once,
//! each with its position and the nearest valid key.

use toml_edit::{Item, TableLike, Value};

use super::Diagnostic;

/// What a key may hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// A table with exactly these keys.
    Table(&'static [(&'static str, Shape)]),
    /// An array of tables of this shape.
    Tables(&'static [(&'static str, Shape)]),
    /// A table whose keys are free (header names, …) holding plain values.
    FreeMap,
    /// A string, or a table of this shape (one server entry).
    StringOrTable(&'static [(&'static str, Shape)]),
    /// An array whose items are strings or tables of this shape.
    StringsOrTables(&'static [(&'static str, Shape)]),
    /// A table of free names, each a table of this shape (`[rate_limits.NAME]`).
    NamedTables(&'static [(&'static str, Shape)]),
    /// Any plain value; its type is checked by serde.
    Value,
}

/// A type of the file (`config::file`) and the keys it accepts. Tables get theirs from
/// `file_tables!`, which reads them off the struct's own fields; containers derive theirs from what they
/// hold, so the reference can never drift from what serde accepts.
pub trait Shaped {
    const SHAPE: Shape;
}

macro_rules! plain {
    ($($t:ty),*) => { $(impl Shaped for $t { const SHAPE: Shape = Shape::Value; })* };
}
plain!(bool, i64, u64, f64, String);

impl<T: Shaped> Shaped for Option<T> {
    const SHAPE: Shape = T::SHAPE;
}

impl<T: Shaped> Shaped for toml::Spanned<T> {
    const SHAPE: Shape = T::SHAPE;
}

impl<T: Shaped> Shaped for Vec<T> {
    const SHAPE: Shape = match T::SHAPE {
        Shape::Table(keys) => Shape::Tables(keys),
        Shape::StringOrTable(keys) => Shape::StringsOrTables(keys),
        _ => Shape::Value,
    };
}

impl<T: Shaped> Shaped for std::collections::BTreeMap<String, T> {
    const SHAPE: Shape = match T::SHAPE {
        Shape::Table(keys) => Shape::NamedTables(keys),
        _ => Shape::FreeMap,
    };
}

/// Defines structs of the file and their [`Shaped`] impl: a table whose keys are the fields' names.
macro_rules! file_tables {
    ($(
        $(#[$sattr:meta])*
        pub struct $name:ident {
            $(
                $(#[$fattr:meta])*
                pub $field:ident : $ty:ty
            ),* $(,)?
        }
    )*) => {
        $(
            $(#[$sattr])*
            pub struct $name {
                $( $(#[$fattr])* pub $field: $ty, )*
            }

            impl Shaped for $name {
                const SHAPE: Shape = Shape::Table(&[$((stringify!($field), <$ty as Shaped>::SHAPE)),*]);
            }
        )*
    };
}

pub(super) fn check_keys(doc: &toml_edit::Table, root: Shape, out: &mut Vec<Diagnostic>) {
    if let Shape::Table(root) = root {
        check_table(doc, root, "", out);
    }
}

fn check_table(
    table: &dyn TableLike,
    keys: &[(&str, Shape)],
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    for (name, item) in table.iter() {
        let child_path = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        match keys.iter().find(|(k, _)| *k == name) {
            Some((_, shape)) => check_item(item, *shape, &child_path, out),
            None => {
                let span = table
                    .get_key_value(name)
                    .and_then(|(k, _)| k.span())
                    .or_else(|| item.span());
                let where_ = if path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{path}`")
                };
                let mut message = format!("unknown key `{name}` {where_}");
                if let Some(best) = nearest(name, keys.iter().map(|(k, _)| *k)) {
                    message.push_str(&format!(" (did you mean `{best}`?)"));
                } else {
                    let all: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
                    message.push_str(&format!("; expected one of: {}", all.join(", ")));
                }
                out.push(Diagnostic::new(span, message));
            }
        }
    }
}

fn check_item(item: &Item, shape: Shape, path: &str, out: &mut Vec<Diagnostic>) {
    match shape {
        Shape::Table(keys) => {
            if let Some(t) = item.as_table_like() {
                check_table(t, keys, path, out);
            }
        }
        Shape::Tables(keys) => match item {
            Item::ArrayOfTables(arr) => {
                for (i, t) in arr.iter().enumerate() {
                    check_table(t, keys, &format!("{path}[{i}]"), out);
                }
            }
            Item::Value(Value::Array(arr)) => {
                for (i, v) in arr.iter().enumerate() {
                    if let Value::InlineTable(t) = v {
                        check_table(t, keys, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        },
        Shape::StringOrTable(keys) => {
            if let Some(t) = item.as_table_like() {
                check_table(t, keys, path, out);
            }
        }
        Shape::StringsOrTables(keys) => {
            if let Item::Value(Value::Array(arr)) = item {
                for (i, v) in arr.iter().enumerate() {
                    if let Value::InlineTable(t) = v {
                        check_table(t, keys, &format!("{path}[{i}]"), out);
                    }
                }
            } else if let Item::ArrayOfTables(arr) = item {
                for (i, t) in arr.iter().enumerate() {
                    check_table(t, keys, &format!("{path}[{i}]"), out);
                }
            }
        }
        Shape::NamedTables(keys) => {
            if let Some(t) = item.as_table_like() {
                for (name, inner) in t.iter() {
                    if let Some(inner) = inner.as_table_like() {
                        check_table(inner, keys, &format!("{path}.{name}"), out);
                    }
                }
            }
        }
        Shape::FreeMap | Shape::Value => {}
    }
}

/// The known key closest to `name`, if it is close enough to be a likely typo.
fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key() {
        assert_eq!(
            nearest("hots", ["hosts", "name"].into_iter()),
            Some("hosts")
        );
        assert_eq!(
            nearest("pathprefix", ["path_prefix", "name"].into_iter()),
            Some("path_prefix")
        );
        assert_eq!(nearest("zzzzzz", ["hosts", "name"].into_iter()), None);
    }
}
