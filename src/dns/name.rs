//! DNS name helpers: validation of labels and zones, normalisation for lookups.

/// True for a DNS label usable as a device name: 1-63 letters, digits or '-', not starting or
/// ending with '-'.
pub fn is_valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True for a zone name such as `mesh` or `home.arpa` (dots allowed, no trailing dot needed).
pub fn is_valid_zone(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_valid_label)
}

/// Lower-cases a domain and strips one trailing dot; `None` when it is not a usable domain
/// (used for block/allow entries typed by the owner).
pub fn normalize_domain(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_valid_label("laptop"));
        assert!(is_valid_label("my-phone2"));
        assert!(!is_valid_label("-x"));
        assert!(!is_valid_label("a.b"));
        assert!(!is_valid_label(""));
        assert!(!is_valid_label(&"a".repeat(64)));
    }

    #[test]
    fn domains_normalise() {
        assert_eq!(
            normalize_domain("Ads.Example.COM."),
            Some("ads.example.com".into())
        );
        assert_eq!(normalize_domain("bad domain"), None);
        assert_eq!(normalize_domain(""), None);
    }
}
