//! Reading list text: one line at a time into rules, and a whole list into accept or reject.
//!
//! Each line is one of: blank, a comment (`!`, `#`, an `[Adblock Plus 2.0]` header), a rule that
//! does not apply to DNS (cosmetic `##` rules, hosts entries for `localhost`), a plain-domain rule
//! (hosts lines, bare names, `||name^`, `@@||name^`, optionally with options that do not narrow
//! the rule below a whole host, such as `$important` or `$third-party`), or any other network rule,
//! which the `adblock` crate must accept and which then goes to its engine. Anything else is an
//! invalid line, reported with its number and skipped.

use std::net::IpAddr;

use adblock::lists::{parse_filter, FilterParseError, ParseOptions, ParsedLine};

use super::names::{label_count, name_hash};
use super::syntax::{
    has_option, is_cosmetic, is_domain, is_host_wide_option, is_local_name, is_too_wide, strip_dot,
};
use super::{ListError, ListSource};

/// Lines longer than this are not rules (issue 4's "10 MB lines").
pub const MAX_LINE_BYTES: usize = 4096;
/// Per list, the first this many line errors are reported one by one, the rest as a count.
pub const MAX_LINE_ERRORS: usize = 100;

/// Where parsed rules go.
pub(crate) trait RuleSink {
    /// A name that is blocked with its subdomains.
    fn block(&mut self, hash: u64, labels: usize);
    /// A name that is allowed with its subdomains (beats every block).
    fn allow(&mut self, hash: u64, labels: usize);
    /// `||name^$badfilter`: cancels the plain block of exactly that name.
    fn unblock(&mut self, hash: u64, labels: usize);
    /// A rule for the `adblock` engine, already accepted by its parser.
    fn engine_rule(&mut self, rule: &str, exception: bool);
}

/// A sink that only counts (used to check a list without building it).
#[derive(Default)]
pub(crate) struct CountingSink;

impl RuleSink for CountingSink {
    fn block(&mut self, _: u64, _: usize) {}
    fn allow(&mut self, _: u64, _: usize) {}
    fn unblock(&mut self, _: u64, _: usize) {}
    fn engine_rule(&mut self, _: &str, _: bool) {}
}

/// What one line turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// Blank, comment or header.
    Comment,
    /// A well-formed line with nothing for DNS (cosmetic rule, `localhost` entry).
    Ignored,
    /// This many rules.
    Rules(usize),
}

/// What a list held, for reports such as `cloudpc lists`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListSummary {
    /// Rules taken from the list (a hosts line with three names counts three).
    pub rules: usize,
    /// Lines skipped because they could not be used.
    pub invalid_lines: usize,
}

/// Parses a whole list into `sink`. Line errors go to `errors` (at most [`MAX_LINE_ERRORS`] one
/// by one, then a count). `Err` means the list as a whole is not a list; `sink` may then hold some
/// of its rules already, which the caller must discard.
pub(crate) fn parse_list(
    source: &ListSource,
    sink: &mut impl RuleSink,
    errors: &mut Vec<ListError>,
) -> Result<ListSummary, ListError> {
    let whole = |message: &str| ListError {
        origin: source.origin.clone(),
        line: 0,
        message: message.to_string(),
    };
    let text = source.text.strip_prefix('\u{feff}').unwrap_or(&source.text);
    if text.as_bytes().contains(&0) {
        return Err(whole("contains binary data (NUL bytes); not a filter list"));
    }
    if matches!(text.trim_start().as_bytes().first(), Some(b'<' | b'{')) {
        return Err(whole(
            "looks like an HTML, XML or JSON document, not a filter list",
        ));
    }
    let mut summary = ListSummary::default();
    let mut content_lines = 0usize;
    let first_error = errors.len();
    for (index, line) in text.lines().enumerate() {
        match parse_line(line, sink) {
            Ok(LineKind::Comment) => {}
            Ok(LineKind::Ignored) => content_lines += 1,
            Ok(LineKind::Rules(n)) => {
                content_lines += 1;
                summary.rules += n;
            }
            Err(message) => {
                content_lines += 1;
                summary.invalid_lines += 1;
                if summary.invalid_lines <= MAX_LINE_ERRORS {
                    errors.push(ListError {
                        origin: source.origin.clone(),
                        line: index + 1,
                        message,
                    });
                }
            }
        }
    }
    if summary.invalid_lines * 2 > content_lines {
        errors.truncate(first_error);
        return Err(whole(&format!(
            "{} of {} rule lines are invalid; not a filter list",
            summary.invalid_lines, content_lines
        )));
    }
    if summary.rules == 0 && content_lines > 0 {
        errors.truncate(first_error);
        return Err(whole("has content but no rule usable for DNS"));
    }
    if summary.invalid_lines > MAX_LINE_ERRORS {
        errors.push(whole(&format!(
            "{} more invalid lines not shown",
            summary.invalid_lines - MAX_LINE_ERRORS
        )));
    }
    Ok(summary)
}

/// Checks a list without building anything: `Ok` with its counts, or why it is rejected whole.
pub fn check_list(source: &ListSource) -> Result<ListSummary, ListError> {
    parse_list(source, &mut CountingSink, &mut Vec::new())
}

/// Parses one line. `Err` carries a message that names the problem but not the line's text.
fn parse_line(line: &str, sink: &mut impl RuleSink) -> Result<LineKind, String> {
    if line.len() > MAX_LINE_BYTES {
        return Err(format!("line longer than {MAX_LINE_BYTES} bytes"));
    }
    let line = line.trim();
    if line.is_empty() || line.starts_with('!') || (line.starts_with('[') && line.ends_with(']')) {
        return Ok(LineKind::Comment);
    }
    if line.starts_with('#') {
        return Ok(if is_cosmetic(line) {
            LineKind::Ignored
        } else {
            LineKind::Comment
        });
    }
    // Hosts format: an address, then names, then maybe a `#` comment.
    let mut fields = line.split_whitespace();
    if let Some(first) = fields.next() {
        if first.parse::<IpAddr>().is_ok() {
            return parse_hosts_names(fields, sink);
        }
    }
    if is_cosmetic(line) {
        return Ok(LineKind::Ignored);
    }
    if let Some(rest) = line.strip_prefix("@@") {
        if let Some(name) = anchored_name(rest) {
            let name = strip_dot(name);
            sink.allow(name_hash(name), label_count(name));
            return Ok(LineKind::Rules(1));
        }
        return engine_line(line, true, sink);
    }
    if line.starts_with("||") {
        if let Some(name) = anchored_name(line) {
            let name = strip_dot(name);
            if has_option(line, "badfilter") {
                sink.unblock(name_hash(name), label_count(name));
            } else {
                sink.block(name_hash(name), label_count(name));
            }
            return Ok(LineKind::Rules(1));
        }
        return engine_line(line, false, sink);
    }
    // A plain name, maybe `*.`-prefixed, maybe with a trailing `# comment`.
    let bare = match line.find(" #").or_else(|| line.find("\t#")) {
        Some(i) => line[..i].trim_end(),
        None => line,
    };
    let bare = bare.strip_prefix("*.").unwrap_or(bare);
    if is_domain(bare) {
        let name = strip_dot(bare);
        if is_local_name(name) {
            return Ok(LineKind::Ignored);
        }
        sink.block(name_hash(name), label_count(name));
        return Ok(LineKind::Rules(1));
    }
    engine_line(line, false, sink)
}

/// The names of a hosts line after its address.
fn parse_hosts_names<'a>(
    fields: impl Iterator<Item = &'a str>,
    sink: &mut impl RuleSink,
) -> Result<LineKind, String> {
    let mut rules = 0;
    let mut seen = 0;
    for name in fields.take_while(|f| !f.starts_with('#')) {
        seen += 1;
        let name = strip_dot(name);
        if is_local_name(name) || name.parse::<IpAddr>().is_ok() {
            continue;
        }
        if !is_domain(name) {
            return Err("hosts line has a name with characters not allowed in domain names".into());
        }
        sink.block(name_hash(name), label_count(name));
        rules += 1;
    }
    match (seen, rules) {
        (0, _) => Err("hosts line has an address but no name".into()),
        (_, 0) => Ok(LineKind::Ignored),
        (_, n) => Ok(LineKind::Rules(n)),
    }
}

/// For `||name^` forms (input starts with `||`): `Some(name)` when the rule is exactly a whole-host
/// anchor whose options do not narrow it; `None` when it is some other rule for the engine.
fn anchored_name(rule: &str) -> Option<&str> {
    let body = rule.strip_prefix("||")?;
    let (pattern, options) = match body.find('$') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let name = pattern
        .strip_suffix("^|")
        .or_else(|| pattern.strip_suffix('^'))
        .unwrap_or(pattern);
    let host_wide = options.is_none_or(|o| o.split(',').all(is_host_wide_option));
    (is_domain(name) && host_wide).then_some(name)
}

/// Any other ABP network rule: the `adblock` parser decides.
fn engine_line(line: &str, exception: bool, sink: &mut impl RuleSink) -> Result<LineKind, String> {
    if is_too_wide(line) {
        return Err("rule would match almost every name".into());
    }
    match parse_filter(line, false, ParseOptions::default()) {
        Ok(ParsedLine::Network(_)) => {
            sink.engine_rule(line, exception);
            Ok(LineKind::Rules(1))
        }
        Ok(ParsedLine::Cosmetic(_)) => Ok(LineKind::Ignored),
        Err(FilterParseError::Network(e)) => Err(format!("rule rejected: {e}")),
        Err(FilterParseError::Empty) => Ok(LineKind::Comment),
        // Cosmetic or other rules that do not apply to DNS.
        Err(_) => Ok(LineKind::Ignored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Recorder {
        block: Vec<u64>,
        allow: Vec<u64>,
        unblock: Vec<u64>,
        engine: Vec<String>,
    }

    impl RuleSink for Recorder {
        fn block(&mut self, h: u64, _: usize) {
            self.block.push(h);
        }
        fn allow(&mut self, h: u64, _: usize) {
            self.allow.push(h);
        }
        fn unblock(&mut self, h: u64, _: usize) {
            self.unblock.push(h);
        }
        fn engine_rule(&mut self, rule: &str, _: bool) {
            self.engine.push(rule.to_string());
        }
    }

    fn parse(line: &str) -> (Result<LineKind, String>, Recorder) {
        let mut r = Recorder::default();
        (parse_line(line, &mut r), r)
    }

    fn list(text: &str) -> ListSource {
        ListSource {
            origin: "t.txt".into(),
            text: text.into(),
        }
    }

    #[test]
    fn anchors_hosts_and_plain_lines_are_plain_name_rules() {
        for line in [
            "||ads.tracker.net^",
            "||Ads.Tracker.Net^$important,third-party",
            "0.0.0.0 ads.tracker.net",
            "127.0.0.1\tads.tracker.net # a comment",
            ":: ads.tracker.net",
            "ads.tracker.net",
            "*.ads.tracker.net",
            "ads.tracker.net.",
        ] {
            let (kind, r) = parse(line);
            assert_eq!(kind, Ok(LineKind::Rules(1)), "{line}");
            assert_eq!(r.block, vec![name_hash("ads.tracker.net")], "{line}");
            assert!(r.engine.is_empty(), "{line}");
        }
    }

    #[test]
    fn hosts_line_with_several_names_blocks_each_but_not_localhost() {
        let (kind, r) = parse("127.0.0.1 localhost one.ads.net two.ads.net");
        assert_eq!(kind, Ok(LineKind::Rules(2)));
        assert_eq!(
            r.block,
            vec![name_hash("one.ads.net"), name_hash("two.ads.net")]
        );
        assert_eq!(
            parse("::1 localhost ip6-localhost").0,
            Ok(LineKind::Ignored)
        );
    }

    #[test]
    fn exceptions_are_allow_rules() {
        let (kind, r) = parse("@@||cdn.shop.org^");
        assert_eq!(kind, Ok(LineKind::Rules(1)));
        assert_eq!(r.allow, vec![name_hash("cdn.shop.org")]);
    }

    #[test]
    fn comments_headers_and_cosmetics_are_not_rules() {
        assert_eq!(parse("! Title: x").0, Ok(LineKind::Comment));
        assert_eq!(parse("[Adblock Plus 2.0]").0, Ok(LineKind::Comment));
        assert_eq!(parse("# hosts comment").0, Ok(LineKind::Comment));
        assert_eq!(parse("   ").0, Ok(LineKind::Comment));
        assert_eq!(parse("##.ad-banner").0, Ok(LineKind::Ignored));
        assert_eq!(parse("shop.org#@#.sponsored").0, Ok(LineKind::Ignored));
    }

    #[test]
    fn other_network_rules_go_to_the_engine() {
        for line in [
            "||ads*.tracker.net^",
            "/^ad[0-9]+\\./",
            "||tracker.net^$script",
            "@@||shop.org^$domain=other.org",
            "&ad_type=",
        ] {
            let (kind, r) = parse(line);
            assert_eq!(kind, Ok(LineKind::Rules(1)), "{line}");
            assert_eq!(r.engine, vec![line.to_string()], "{line}");
        }
    }

    #[test]
    fn badfilter_cancels_instead_of_blocking() {
        let (_, r) = parse("||ads.tracker.net^$badfilter");
        assert!(r.block.is_empty());
        assert_eq!(r.unblock, vec![name_hash("ads.tracker.net")]);
    }

    #[test]
    fn unusable_lines_are_errors() {
        assert!(parse(&"a".repeat(5000)).0.is_err());
        assert!(parse("0.0.0.0 bad/name").0.is_err());
        assert!(parse("||*^").0.is_err());
        assert!(parse("*").0.is_err());
    }

    #[test]
    fn broken_lines_are_reported_with_line_numbers() {
        let mut errors = vec![];
        let text = "! c\n||a.ads.net^\n0.0.0.0 bad/name\n||b.ads.net^\n";
        let summary = parse_list(&list(text), &mut CountingSink, &mut errors).unwrap();
        assert_eq!(summary.rules, 2);
        assert_eq!(summary.invalid_lines, 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 3);
        assert_eq!(errors[0].origin, "t.txt");
    }

    #[test]
    fn binary_html_and_mostly_invalid_lists_are_rejected_whole() {
        for text in [
            "||a.ads.net^\n\0\0\0",
            "<!DOCTYPE html>\n<html><body>404</body></html>\n",
            "0.0.0.0 a/b\n0.0.0.0 c/d\n||ok.ads.net^\n",
            "##.banner\n",
        ] {
            let err = check_list(&list(text)).unwrap_err();
            assert_eq!(err.line, 0, "{text:?}");
        }
    }

    #[test]
    fn empty_and_comment_only_lists_are_accepted() {
        assert_eq!(check_list(&list("")).unwrap().rules, 0);
        assert_eq!(
            check_list(&list("! nothing yet\n# here\n")).unwrap().rules,
            0
        );
    }

    #[test]
    fn line_errors_are_capped_with_a_count() {
        let mut text = String::new();
        for _ in 0..200 {
            text.push_str("0.0.0.0 a/b\n||ok.ads.net^\n||ok2.ads.net^\n");
        }
        let mut errors = vec![];
        parse_list(&list(&text), &mut CountingSink, &mut errors).unwrap();
        assert_eq!(errors.len(), MAX_LINE_ERRORS + 1);
        assert_eq!(errors.last().map(|e| e.line), Some(0));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::filter::FilterSet;

    #[test]
    fn fuzz_list_files() {
        let seeds = vec![
            "# hosts\n0.0.0.0 ads.example\n127.0.0.1 t.example # c\n".to_string(),
            "||tracker.example^\n@@||ok.example^\n! comment\n/ads[0-9]+/\n".to_string(),
            "plain.example\n*.wild.example\n".to_string(),
        ];
        crate::fuzz::run("list_files", crate::fuzz::text(seeds), |text| {
            let src = ListSource {
                origin: "fuzz.txt".into(),
                text: text.clone(),
            };
            let _ = check_list(&src);
            let (set, _errors) = FilterSet::build(&[src], &[], &[]);
            let _ = set.check("ads.example");
        });
    }
}
