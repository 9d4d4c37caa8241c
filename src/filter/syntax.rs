//! The small syntax predicates of list lines: names, options, comments and cosmetic rules.

/// Options that leave `||name^` a rule about the whole host as seen by DNS.
pub(crate) fn is_host_wide_option(option: &str) -> bool {
    matches!(
        option.trim().to_ascii_lowercase().as_str(),
        "important" | "third-party" | "3p" | "all" | "document" | "doc" | "popup" | "badfilter"
    )
}

pub(crate) fn has_option(rule: &str, wanted: &str) -> bool {
    rule.rsplit_once('$').is_some_and(|(_, options)| {
        options
            .split(',')
            .any(|o| o.trim().eq_ignore_ascii_case(wanted))
    })
}

/// A pattern with fewer than three characters besides anchors and wildcards (`*`, `|`, `.`,
/// `^$all`) matches nearly every URL and so every name; a list that holds one is broken.
pub(crate) fn is_too_wide(line: &str) -> bool {
    let rule = line.strip_prefix("@@").unwrap_or(line);
    if rule.len() > 2 && rule.starts_with('/') && rule[1..].contains('/') {
        return false; // a regex
    }
    let pattern = rule.rsplit_once('$').map_or(rule, |(p, _)| p);
    pattern
        .bytes()
        .filter(|b| !matches!(b, b'*' | b'|' | b'^' | b'.' | b'/' | b':'))
        .count()
        < 3
}

/// `##`, `#@#`, `#?#`, `#$#`, `#%#` and friends: element hiding and scripts, nothing for DNS.
pub(crate) fn is_cosmetic(line: &str) -> bool {
    let bytes = line.as_bytes();
    if line.contains("$$") || line.contains("$@$") {
        return true;
    }
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'#' && bytes[i + 1..bytes.len().min(i + 5)].contains(&b'#') && {
            // `# comment #` in hosts lines is not cosmetic: the marker has no spaces inside.
            !bytes[i + 1..bytes.len().min(i + 5)].contains(&b' ')
        }
    })
}

/// Names that hosts files map for the machine itself; they are never blocked.
pub(crate) fn is_local_name(name: &str) -> bool {
    const LOCAL: &[&str] = &[
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
    ];
    LOCAL.iter().any(|l| l.eq_ignore_ascii_case(name))
}

pub(crate) fn strip_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// A DNS name as lists write it: labels of letters, digits, `-` and `_` (1–63 bytes each), at most
/// 253 bytes, one optional trailing dot. Case does not matter (hashing folds it).
pub(crate) fn is_domain(name: &str) -> bool {
    let name = strip_dot(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_syntax_accepts_list_style_names_only() {
        for ok in ["a", "ads.tracker.net", "Ads-1.X_y.org.", "xn--bcher-kva.de"] {
            assert!(is_domain(ok), "{ok}");
        }
        let long_label = "a".repeat(64) + ".org";
        let long_name = "a.".repeat(127) + "org";
        for bad in [
            "",
            ".",
            "a..b",
            ".a.org",
            "a b",
            "a/b",
            "ü.org",
            "*.a.org",
            &long_label,
            &long_name,
        ] {
            assert!(!is_domain(bad), "{bad}");
        }
    }

    #[test]
    fn cosmetic_markers_are_recognised() {
        assert!(is_cosmetic("##.banner"));
        assert!(is_cosmetic("shop.org#?#div:has(.ad)"));
        assert!(is_cosmetic("shop.org$$script"));
        assert!(!is_cosmetic("ads.net # comment # more"));
    }

    #[test]
    fn host_wide_options_are_case_insensitive() {
        assert!(is_host_wide_option("Important"));
        assert!(is_host_wide_option(" third-party"));
        assert!(!is_host_wide_option("script"));
        assert!(has_option("||a.org^$important,BadFilter", "badfilter"));
        assert!(!has_option("||a.org^", "badfilter"));
    }
}
