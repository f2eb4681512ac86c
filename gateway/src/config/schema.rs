//! The key schema of the file, checked before deserialising so that every unknown key is reported at once,
//! each with its position and the nearest valid key.

use toml_edit::{Item, TableLike, Value};

use super::Diagnostic;

/// What a key may hold.
#[derive(Clone, Copy)]
enum Shape {
    /// A table with exactly these keys.
    Table(&'static [(&'static str, Shape)]),
    /// An array of tables of this shape.
    Tables(&'static [(&'static str, Shape)]),
    /// A table whose keys are free (header names, …) holding plain values.
    FreeMap,
    /// An array whose items are strings or tables of this shape.
    StringsOrTables(&'static [(&'static str, Shape)]),
    /// A table of free names, each a table of this shape (`[rate_limits.NAME]`).
    NamedTables(&'static [(&'static str, Shape)]),
    /// Any plain value; its type is checked by serde.
    Value,
}

const TIMEOUTS: &[(&str, Shape)] = &[
    ("connect", Shape::Value),
    ("read", Shape::Value),
    ("write", Shape::Value),
    ("idle", Shape::Value),
];
const HEADER_RULES: &[(&str, Shape)] = &[
    ("add", Shape::FreeMap),
    ("set", Shape::FreeMap),
    ("remove", Shape::Value),
];
const SERVER: &[(&str, Shape)] = &[("addr", Shape::Value), ("weight", Shape::Value)];
const HEALTH: &[(&str, Shape)] = &[
    ("path", Shape::Value),
    ("interval", Shape::Value),
    ("timeout", Shape::Value),
    ("healthy_threshold", Shape::Value),
    ("unhealthy_threshold", Shape::Value),
    ("host", Shape::Value),
];
const UPSTREAM: &[(&str, Shape)] = &[
    ("name", Shape::Value),
    ("servers", Shape::StringsOrTables(SERVER)),
    ("balance", Shape::Value),
    ("protocol", Shape::Value),
    ("health", Shape::Table(HEALTH)),
    ("timeouts", Shape::Table(TIMEOUTS)),
    ("max_tries", Shape::Value),
];
const ROUTE: &[(&str, Shape)] = &[
    ("name", Shape::Value),
    ("hosts", Shape::Value),
    ("path_prefix", Shape::Value),
    ("methods", Shape::Value),
    ("headers", Shape::FreeMap),
    ("priority", Shape::Value),
    ("upstream", Shape::Value),
    ("strip_prefix", Shape::Value),
    ("redirect_https", Shape::Value),
    ("max_body_bytes", Shape::Value),
    ("timeouts", Shape::Table(TIMEOUTS)),
    ("request_headers", Shape::Table(HEADER_RULES)),
    ("response_headers", Shape::Table(HEADER_RULES)),
    ("auth", Shape::Value),
    ("on_store_error", Shape::Value),
    ("rate_limits", Shape::Value),
    ("scopes", Shape::Value),
    (
        "cors",
        Shape::Table(&[
            ("origins", Shape::Value),
            ("methods", Shape::Value),
            ("headers", Shape::Value),
            ("expose_headers", Shape::Value),
            ("credentials", Shape::Value),
            ("max_age", Shape::Value),
        ]),
    ),
    (
        "canary",
        Shape::Table(&[
            ("upstream", Shape::Value),
            ("weight", Shape::Value),
            ("header", Shape::Value),
            ("cookie", Shape::Value),
            ("sticky", Shape::Value),
            ("window", Shape::Value),
            ("min_requests", Shape::Value),
            ("max_error_ratio", Shape::Value),
            ("max_p99_ratio", Shape::Value),
            ("override_secret_env", Shape::Value),
            ("force_at_zero", Shape::Value),
        ]),
    ),
    (
        "security_headers",
        Shape::Table(&[
            ("hsts", Shape::Value),
            ("hsts_max_age", Shape::Value),
            ("hsts_include_subdomains", Shape::Value),
            ("content_type_options", Shape::Value),
            ("referrer_policy", Shape::Value),
            ("frame_options", Shape::Value),
        ]),
    ),
];
const RATE_LIMIT: &[(&str, Shape)] = &[
    ("key", Shape::Value),
    ("limit", Shape::Value),
    ("period", Shape::Value),
    ("burst", Shape::Value),
    ("scope", Shape::Value),
    ("fail", Shape::Value),
    ("expected_replicas", Shape::Value),
    ("headers", Shape::Value),
    (
        "overrides",
        Shape::NamedTables(&[("limit", Shape::Value), ("burst", Shape::Value)]),
    ),
];
const ROOT: &[(&str, Shape)] = &[
    (
        "server",
        Shape::Table(&[
            ("threads", Shape::Value),
            ("work_stealing", Shape::Value),
            ("reuseport", Shape::Value),
            ("shutdown_grace", Shape::Value),
            ("upgrade_sock", Shape::Value),
        ]),
    ),
    (
        "entrypoints",
        Shape::Table(&[
            ("http", Shape::Value),
            ("https", Shape::Value),
            ("admin", Shape::Value),
        ]),
    ),
    (
        "tenancy",
        Shape::Table(&[("base_domains", Shape::Value), ("reserved", Shape::Value)]),
    ),
    (
        "limits",
        Shape::Table(&[
            ("max_header_bytes", Shape::Value),
            ("max_headers", Shape::Value),
            ("header_timeout", Shape::Value),
            ("body_timeout", Shape::Value),
            ("h2_idle_timeout", Shape::Value),
            ("max_body_bytes", Shape::Value),
        ]),
    ),
    (
        "forwarding",
        Shape::Table(&[
            ("trusted_proxies", Shape::Value),
            ("underscores_in_headers", Shape::Value),
        ]),
    ),
    (
        "log",
        Shape::Table(&[
            ("access_log", Shape::Value),
            ("format", Shape::Value),
            ("level", Shape::Value),
        ]),
    ),
    (
        "auth",
        Shape::Table(&[
            (
                "jwt",
                Shape::Table(&[
                    ("secret_env", Shape::Value),
                    ("secret_file", Shape::Value),
                    (
                        "keys",
                        Shape::Tables(&[
                            ("kid", Shape::Value),
                            ("secret_env", Shape::Value),
                            ("secret_file", Shape::Value),
                        ]),
                    ),
                    ("tenant_claim", Shape::Value),
                    ("leeway", Shape::Value),
                    ("issuer", Shape::Value),
                    ("audience", Shape::Value),
                    ("max_token_bytes", Shape::Value),
                    ("jwks_file", Shape::Value),
                    ("jwks_url", Shape::Value),
                    ("jwks_refresh", Shape::Value),
                ]),
            ),
            (
                "api_keys",
                Shape::Table(&[
                    ("lookup_url", Shape::Value),
                    ("cache_ttl", Shape::Value),
                    ("timeout", Shape::Value),
                    ("failures_per_minute", Shape::Value),
                ]),
            ),
        ]),
    ),
    ("rate_limits", Shape::NamedTables(RATE_LIMIT)),
    (
        "tracing",
        Shape::Table(&[
            ("otlp_endpoint", Shape::Value),
            ("service_name", Shape::Value),
            ("sample_ratio", Shape::Value),
        ]),
    ),
    (
        "tenant_stats",
        Shape::Table(&[
            ("top_k", Shape::Value),
            ("interval", Shape::Value),
            ("max_tenants", Shape::Value),
            ("idle_evict", Shape::Value),
        ]),
    ),
    (
        "dns",
        Shape::Table(&[
            ("nameservers", Shape::Value),
            ("refresh", Shape::Value),
            ("timeout", Shape::Value),
        ]),
    ),
    (
        "redis",
        Shape::Table(&[
            ("url_env", Shape::Value),
            ("cluster", Shape::Value),
            ("ca_file", Shape::Value),
            ("timeout", Shape::Value),
            ("revocation_cache", Shape::Value),
        ]),
    ),
    (
        "tls",
        Shape::Table(&[
            ("handshake_timeout", Shape::Value),
            (
                "certificates",
                Shape::Tables(&[
                    ("cert", Shape::Value),
                    ("key", Shape::Value),
                    ("default", Shape::Value),
                ]),
            ),
            (
                "acme",
                Shape::Table(&[
                    ("directory", Shape::Value),
                    ("email", Shape::Value),
                    ("ca_root", Shape::Value),
                    ("domains", Shape::Value),
                    ("challenge", Shape::Value),
                    ("storage", Shape::Value),
                    ("storage_key_env", Shape::Value),
                    ("lock_lease", Shape::Value),
                    (
                        "eab",
                        Shape::Table(&[("kid", Shape::Value), ("hmac_env", Shape::Value)]),
                    ),
                    ("retry_initial", Shape::Value),
                    ("retry_max", Shape::Value),
                    ("order_timeout", Shape::Value),
                    (
                        "dns",
                        Shape::Table(&[
                            ("provider", Shape::Value),
                            ("server", Shape::Value),
                            ("zone", Shape::Value),
                            ("key_name", Shape::Value),
                            ("algorithm", Shape::Value),
                            ("secret_env", Shape::Value),
                            ("command", Shape::Value),
                            ("timeout", Shape::Value),
                        ]),
                    ),
                ]),
            ),
            (
                "on_demand",
                Shape::Table(&[
                    ("ask", Shape::Value),
                    ("challenge", Shape::Value),
                    ("ask_timeout", Shape::Value),
                    ("cache_ttl", Shape::Value),
                    ("wait", Shape::Value),
                    ("max_concurrent_orders", Shape::Value),
                    ("orders_per_minute", Shape::Value),
                    ("orders_per_hour", Shape::Value),
                    ("tenant_orders_per_hour", Shape::Value),
                    ("cache_size", Shape::Value),
                    ("asks_per_second", Shape::Value),
                    ("client_asks_per_minute", Shape::Value),
                ]),
            ),
        ]),
    ),
    (
        "admin",
        Shape::Table(&[("names", Shape::Value), ("token_env", Shape::Value)]),
    ),
    ("upstreams", Shape::Tables(UPSTREAM)),
    ("routes", Shape::Tables(ROUTE)),
];

/// Reports every key of `doc` that the schema does not know, with the nearest known key when one is close.
pub(super) fn check_keys(doc: &toml_edit::Table, out: &mut Vec<Diagnostic>) {
    check_table(doc, ROOT, "", out);
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
