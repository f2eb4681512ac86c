//! Configurations of our own gateway measured as rows beside it in one comparison (`--variants`): where
//! its cost goes (the access log, the security headers; bare Pingora is `--bare-pingora`) and how it uses
//! several cores (`--threads 2` with a socket per thread, one shared socket, or a work-stealing pool).

use serde::Serialize;

/// A change to the scenario's gateway configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Variant {
    /// The access log off (it is on in every row otherwise, as in every peer).
    NoAccessLog,
    /// The route's default security headers off (HSTS, nosniff, Referrer-Policy).
    NoSecurityHeaders,
    /// With `--threads` ≥ 2: one service per thread, each with its own SO_REUSEPORT socket, runtime and
    /// upstream pool (the default).
    Reuseport,
    /// With `--threads` ≥ 2: one service whose single-threaded runtimes share one socket and one pool.
    SharedSocket,
    /// With `--threads` ≥ 2: one work-stealing runtime.
    WorkStealing,
    /// `compressed`: the route's compression at its defaults (zstd, br, gzip, level 1): what a browser
    /// offering all three gets (zstd).
    CompressionDefaults,
    /// `compressed`: no compression: the proxying of the JSON alone, to tell it from the encoding.
    NoCompression,
}

/// Why a variant cannot be measured in this comparison.
#[derive(Debug, thiserror::Error)]
pub enum VariantError {
    #[error("--variants {0}: needs --threads 2 or more")]
    OneThread(&'static str),
    #[error("--variants {0}: the scenario's configuration has no `{1}` to change")]
    Missing(&'static str, &'static str),
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::NoAccessLog => "no_access_log",
            Variant::NoSecurityHeaders => "no_security_headers",
            Variant::Reuseport => "reuseport",
            Variant::SharedSocket => "shared_socket",
            Variant::WorkStealing => "work_stealing",
            Variant::CompressionDefaults => "compression_defaults",
            Variant::NoCompression => "no_compression",
        }
    }

    /// The row's name.
    pub fn name(self) -> String {
        format!("gateway-{}", self.label().replace('_', "-"))
    }

    /// What the row changes, for the report's notes.
    pub fn note(self) -> &'static str {
        match self {
            Variant::NoAccessLog => "the gateway with its access log off",
            Variant::NoSecurityHeaders => {
                "the gateway without the route's default security headers"
            }
            Variant::Reuseport => {
                "one service per thread, each with its own SO_REUSEPORT socket and upstream pool"
            }
            Variant::SharedSocket => {
                "one service: single-threaded runtimes sharing one socket and one pool"
            }
            Variant::WorkStealing => "one work-stealing runtime",
            Variant::CompressionDefaults => {
                "the route's compression at its defaults (zstd, br, gzip; level 1): this client gets zstd"
            }
            Variant::NoCompression => "the route without compression: the JSON as the upstream sent it",
        }
    }

    /// The scenario's gateway configuration `toml` changed for this variant.
    pub fn apply(self, toml: &str, threads: usize) -> Result<String, VariantError> {
        let server = |keys: &str| -> Result<String, VariantError> {
            if threads < 2 {
                return Err(VariantError::OneThread(self.label()));
            }
            let line = format!("threads = {threads}\n");
            if !toml.contains(&line) {
                return Err(VariantError::Missing(self.label(), "threads"));
            }
            Ok(toml.replacen(&line, &format!("{line}{keys}\n"), 1))
        };
        match self {
            Variant::NoAccessLog => {
                if !toml.contains("access_log = true\n") {
                    return Err(VariantError::Missing(self.label(), "access_log"));
                }
                Ok(toml.replacen("access_log = true\n", "access_log = false\n", 1))
            }
            Variant::NoSecurityHeaders => {
                let route = "name = \"bench\"\n";
                if !toml.contains(route) {
                    return Err(VariantError::Missing(self.label(), "the bench route"));
                }
                Ok(toml.replacen(
                    route,
                    &format!("{route}security_headers = {{ hsts = false, content_type_options = false, referrer_policy = \"\" }}\n"),
                    1,
                ))
            }
            Variant::CompressionDefaults | Variant::NoCompression => {
                let line = "compression = { algorithms = [\"gzip\"], levels = { gzip = 1 } }\n";
                if !toml.contains(line) {
                    return Err(VariantError::Missing(self.label(), "compression"));
                }
                let new = match self {
                    Variant::CompressionDefaults => "compression = {}\n",
                    _ => "",
                };
                Ok(toml.replacen(line, new, 1))
            }
            Variant::Reuseport => server("reuseport = true"),
            Variant::SharedSocket => server("reuseport = false"),
            Variant::WorkStealing => server("work_stealing = true\nreuseport = false"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn toml(threads: usize) -> String {
        let a = "127.0.0.1:1".parse().expect("addr");
        Scenario::Plain.gateway_toml(a, a, a, a, None).replacen(
            "threads = 1",
            &format!("threads = {threads}"),
            1,
        )
    }

    #[test]
    fn each_variant_changes_its_keys_only() {
        let base = toml(1);
        let off = Variant::NoAccessLog.apply(&base, 1).expect("applies");
        assert!(off.contains("access_log = false") && !off.contains("access_log = true"));
        let sec = Variant::NoSecurityHeaders.apply(&base, 1).expect("applies");
        assert!(sec.contains("security_headers = { hsts = false"));
        assert!(matches!(
            Variant::Reuseport.apply(&base, 1),
            Err(VariantError::OneThread(_))
        ));
        let two = toml(2);
        let stealing = Variant::WorkStealing.apply(&two, 2).expect("applies");
        assert!(stealing.contains("threads = 2\nwork_stealing = true\nreuseport = false\n"));
        assert_eq!(Variant::SharedSocket.name(), "gateway-shared-socket");
        let a = "127.0.0.1:1".parse().expect("addr");
        let gz = Scenario::Compressed.gateway_toml(a, a, a, a, None);
        let d = Variant::CompressionDefaults.apply(&gz, 1).expect("applies");
        assert!(d.contains("compression = {}\n") && !d.contains("levels"));
        let none = Variant::NoCompression.apply(&gz, 1).expect("applies");
        assert!(!none.contains("compression"));
        assert!(matches!(
            Variant::NoCompression.apply(&base, 1),
            Err(VariantError::Missing(..))
        ));
    }
}
