//! Values parsed once at the edge of the service.

/// The scopes an integration may be granted: API keys and OAuth clients alike.
pub const SCOPES: &[&str] = &["files:read", "files:write", "users:read"];

/// A plausible email address (the mailbox is proven by use, not by regex).
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty() && s.len() <= 254 && is_domain(domain) && !s.chars().any(char::is_whitespace)
}

/// A tenant subdomain: one DNS label (the gateway routes by the same rule).
pub use contracts::is_label as is_subdomain;

/// A domain name of at least two labels.
pub fn is_domain(s: &str) -> bool {
    s.len() <= 253 && s.contains('.') && s.split('.').all(|l| is_subdomain(&l.to_ascii_lowercase()))
}

/// Password policy: 8 to 1024 characters.
pub fn check_password(p: &str) -> Result<(), &'static str> {
    match p.chars().count() {
        0..=7 => Err("must be at least 8 characters"),
        1025.. => Err("must be at most 1024 characters"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators() {
        assert!(is_email("a@b.co"));
        assert!(!is_email("a@b"));
        assert!(!is_email("a b@c.de"));
        assert!(is_subdomain("acme-2"));
        assert!(!is_subdomain("-x"));
        assert!(!is_subdomain("Acme"));
        assert!(is_domain("shop.example.com"));
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
    }
}
