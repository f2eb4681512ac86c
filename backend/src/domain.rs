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

    /// Each rule at its bound, one past it, and the parts a shortcut would skip.
    #[test]
    fn validators_at_their_bounds() {
        let label = |c: char, n: usize| c.to_string().repeat(n);
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 characters.
        let domain_253 = format!(
            "{}.{}.{}.{}",
            label('a', 63),
            label('b', 63),
            label('c', 63),
            label('d', 61)
        );
        assert_eq!(domain_253.len(), 253);
        assert!(is_domain(&domain_253));
        assert!(!is_domain(&format!("{domain_253}e")), "254 characters");
        assert!(!is_domain("localhost"), "one label");
        assert!(!is_domain("a..b"), "an empty label");
        assert!(is_domain("Shop.Example.COM"), "case does not matter");

        let domain = format!("{}.{}", label('b', 63), label('c', 60)); // 124 characters
        let email = |local: usize| format!("{}@{domain}", label('a', local));
        assert_eq!(email(129).len(), 254);
        assert!(is_email(&email(129)));
        assert!(!is_email(&email(130)), "255 characters");
        assert!(!is_email("@b.co"), "an empty mailbox");
        assert!(
            !is_email("a@b@c"),
            "the domain after the last @ is no domain"
        );
        assert!(is_email("a@b@c.de"), "the last @ splits");
        assert!(!is_email("a\tb@c.de"), "a tab");

        assert!(check_password(&"x".repeat(1024)).is_ok());
        assert_eq!(
            check_password(&"x".repeat(1025)),
            Err("must be at most 1024 characters")
        );
        assert_eq!(check_password(""), Err("must be at least 8 characters"));
        // Characters, not bytes: 8 two-byte characters pass, 4 of them (8 bytes) do not.
        assert!(check_password(&"é".repeat(8)).is_ok());
        assert!(check_password(&"é".repeat(4)).is_err());
        assert!(check_password(&"é".repeat(1024)).is_ok(), "2 048 bytes");
    }
}
