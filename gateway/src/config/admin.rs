//! `[admin]`: who may use the admin listener (`[entrypoints] admin`) and its endpoints.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;

use super::file::AdminFile;
use super::{is_hostname, Diagnostic};

/// `[admin]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Host names (besides the listener's own address) that requests may name in `Host`.
    pub names: Vec<String>,
    /// A bearer token every endpoint but `/healthz` and `/readyz` requires. Never in `Debug` output.
    pub token: Option<AdminToken>,
}

/// The admin bearer token.
#[derive(Clone)]
pub struct AdminToken(pub Vec<u8>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

pub(super) fn validate_admin(
    a: &AdminFile,
    listener: Option<SocketAddr>,
    listener_at: Option<Range<usize>>,
    diags: &mut Vec<Diagnostic>,
) -> AdminSettings {
    let mut names = Vec::new();
    for n in &a.names {
        let v = n.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if is_hostname(&v) {
            names.push(v);
        } else {
            diags.push(Diagnostic::at(
                n,
                format!("admin.names: `{}` is not a host name", n.get_ref()),
            ));
        }
    }
    let token = a
        .token_env
        .as_ref()
        .and_then(|t| match std::env::var(t.get_ref()) {
            Ok(v) if v.trim().len() >= 16 => Some(AdminToken(v.trim().as_bytes().to_vec())),
            Ok(_) => {
                diags.push(Diagnostic::at(
                    t,
                    format!("`{}` must hold at least 16 characters", t.get_ref()),
                ));
                None
            }
            Err(_) => {
                diags.push(Diagnostic::at(
                    t,
                    format!("environment variable `{}` is not set", t.get_ref()),
                ));
                None
            }
        });
    if let Some(addr) = listener {
        if !addr.ip().is_loopback() && a.token_env.is_none() {
            diags.push(Diagnostic::warn(
                listener_at,
                format!("entrypoints.admin {addr} is beyond loopback and [admin] has no token_env: anyone who reaches it reads the metrics, routes and certificates"),
            ));
        }
    }
    AdminSettings { names, token }
}
