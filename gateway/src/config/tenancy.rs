//! `[tenancy]`: which host labels are tenants (under which base domains), and which are reserved.

use std::collections::HashSet;

use super::file::TenancyFile;
use super::{is_hostname, is_label, Diagnostic};

#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    pub base_domains: Vec<String>,
    pub reserved: HashSet<String>,
}

/// Validates `[tenancy]`.
pub(super) fn validate_tenancy(raw: &TenancyFile, diags: &mut Vec<Diagnostic>) -> Tenancy {
    let mut tenancy = Tenancy::default();
    for d in &raw.base_domains {
        let v = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if !is_hostname(&v) {
            diags.push(Diagnostic::at(
                d,
                format!(
                    "tenancy.base_domains: `{}` is not a domain name",
                    d.get_ref()
                ),
            ));
        } else {
            tenancy.base_domains.push(v);
        }
    }
    for r in &raw.reserved {
        let v = r.get_ref().to_ascii_lowercase();
        if !is_label(&v) {
            diags.push(Diagnostic::at(
                r,
                format!("tenancy.reserved: `{}` is not a DNS label", r.get_ref()),
            ));
        } else {
            tenancy.reserved.insert(v);
        }
    }
    tenancy
}
