//! Tenant plans: the limits a plan grants, a tenant's overrides of them, and the checks of what a
//! platform admin sends. Pure: no I/O here (the rows are in `db::plans`, the endpoints in
//! `http::routes::plans`).

use serde_json::{Map, Value};

/// Every limit a plan sets, by its field name, with the range a value must lie in.
pub const FIELDS: &[(&str, i64, i64)] = &[
    ("requests_per_second", 1, 1_000_000_000),
    ("burst", 0, 1_000_000_000),
    ("concurrency_weight", 1, 1_000),
    ("monthly_requests", 0, i64::MAX / 2),
    ("storage_bytes", 0, i64::MAX / 2),
    ("max_upload_bytes", 0, i64::MAX / 2),
    ("max_api_keys", 0, 1_000_000),
    ("max_users", 0, 1_000_000),
];

/// What a plan grants (one row of `plans`, or a plan with a tenant's overrides applied).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Limits {
    pub requests_per_second: i64,
    pub burst: i64,
    pub concurrency_weight: i32,
    pub monthly_requests: i64,
    pub storage_bytes: i64,
    pub max_upload_bytes: i64,
    pub max_api_keys: i32,
    pub max_users: i32,
}

/// A field a platform admin sent that cannot be taken: its name (dotted under `overrides`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `name` may name a plan (as the table's check says).
pub fn is_plan_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// The limits in `obj` (a JSON object of plan fields), each checked: unknown fields, non-integers and
/// values out of range are refused with the field named (`prefix` + the field). Fields absent are
/// absent from the result.
pub fn parse_fields(
    obj: &Map<String, Value>,
    prefix: &str,
) -> Result<Vec<(&'static str, i64)>, FieldError> {
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let Some(&(name, min, max)) = FIELDS.iter().find(|(n, ..)| n == k) else {
            return Err(field_error(
                format!("{prefix}{k}"),
                format!(
                    "no such field; a plan has {}",
                    FIELDS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let n = v
            .as_i64()
            .ok_or_else(|| field_error(format!("{prefix}{k}"), "must be a whole number"))?;
        if !(min..=max).contains(&n) {
            return Err(field_error(
                format!("{prefix}{k}"),
                format!("must be between {min} and {max}"),
            ));
        }
        out.push((name, n));
    }
    Ok(out)
}

impl Limits {
    /// These limits with `fields` replacing their namesakes.
    pub fn with(&self, fields: &[(&str, i64)]) -> Limits {
        let mut l = self.clone();
        for &(k, v) in fields {
            let small = || i32::try_from(v).unwrap_or(i32::MAX);
            match k {
                "requests_per_second" => l.requests_per_second = v,
                "burst" => l.burst = v,
                "concurrency_weight" => l.concurrency_weight = small(),
                "monthly_requests" => l.monthly_requests = v,
                "storage_bytes" => l.storage_bytes = v,
                "max_upload_bytes" => l.max_upload_bytes = v,
                "max_api_keys" => l.max_api_keys = small(),
                "max_users" => l.max_users = small(),
                _ => {}
            }
        }
        l
    }

    /// A whole plan from `obj`: every field present and valid.
    pub fn from_object(obj: &Map<String, Value>) -> Result<Limits, FieldError> {
        let fields = parse_fields(obj, "")?;
        if let Some((missing, ..)) = FIELDS
            .iter()
            .find(|(n, ..)| !fields.iter().any(|(f, _)| f == n))
        {
            return Err(field_error(*missing, "is required"));
        }
        let zero = Limits {
            requests_per_second: 0,
            burst: 0,
            concurrency_weight: 0,
            monthly_requests: 0,
            storage_bytes: 0,
            max_upload_bytes: 0,
            max_api_keys: 0,
            max_users: 0,
        };
        Ok(zero.with(&fields))
    }

    /// The policy the gateway enforces for `tenant` on these limits.
    pub fn policy(
        &self,
        tenant: &str,
        plan: &str,
        version: i64,
        suspended: bool,
    ) -> contracts::plans::TenantPolicy {
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let w = |v: i32| u32::try_from(v).unwrap_or(0);
        contracts::plans::TenantPolicy {
            tenant: tenant.to_string(),
            plan: plan.to_string(),
            version,
            suspended,
            requests_per_second: u(self.requests_per_second),
            burst: u(self.burst),
            concurrency_weight: w(self.concurrency_weight).max(1),
            monthly_requests: u(self.monthly_requests),
            storage_bytes: u(self.storage_bytes),
            max_upload_bytes: u(self.max_upload_bytes),
            max_api_keys: w(self.max_api_keys),
            max_users: w(self.max_users),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn fields_are_named_when_refused() {
        let e = parse_fields(&obj(serde_json::json!({"burst": -1})), "overrides.").unwrap_err();
        assert_eq!(e.field, "overrides.burst");
        let e = parse_fields(&obj(serde_json::json!({"colour": 1})), "overrides.").unwrap_err();
        assert_eq!(e.field, "overrides.colour");
        assert!(e.message.contains("no such field"));
        let e = parse_fields(&obj(serde_json::json!({"max_users": 1.5})), "").unwrap_err();
        assert_eq!(e.field, "max_users");
        let e = parse_fields(&obj(serde_json::json!({"requests_per_second": 0})), "").unwrap_err();
        assert_eq!(
            e.field, "requests_per_second",
            "a plan allows at least one request per second"
        );
        let e = Limits::from_object(&obj(serde_json::json!({"burst": 1}))).unwrap_err();
        assert_eq!(e.field, "requests_per_second");
        assert_eq!(e.message, "is required");
    }

    #[test]
    fn overrides_replace_only_their_fields() {
        let all = serde_json::json!({
            "requests_per_second": 5, "burst": 10, "concurrency_weight": 1, "monthly_requests": 100,
            "storage_bytes": 1000, "max_upload_bytes": 100, "max_api_keys": 2, "max_users": 3
        });
        let base = Limits::from_object(&obj(all)).expect("a whole plan");
        let o = parse_fields(&obj(serde_json::json!({"burst": 50, "max_users": 9})), "")
            .expect("valid overrides");
        let l = base.with(&o);
        assert_eq!((l.burst, l.max_users, l.requests_per_second), (50, 9, 5));
        let p = l.policy("acme", "free", 3, false);
        assert_eq!((p.burst, p.max_users, p.version), (50, 9, 3));
    }

    #[test]
    fn plan_names() {
        assert!(is_plan_name("free") && is_plan_name("pro-2026") && is_plan_name("e_1"));
        assert!(!is_plan_name("") && !is_plan_name("Pro") && !is_plan_name("-x"));
        assert!(!is_plan_name(&"a".repeat(41)));
    }
}
