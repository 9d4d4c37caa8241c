//! The list engine: block lists (ABP, hosts and plain-domain syntax), config allow/block names,
//! and the atomic swap of the set in force.
//!
//! # How to drive it
//!
//! ```
//! use cloudpc::filter::{Filter, FilterSet, ListSource, Verdict};
//!
//! let lists = [ListSource { origin: "my.txt".into(), text: "||ads.tracker.net^\n".into() }];
//! let (set, errors) = FilterSet::build(&lists, &["spy.org".into()], &["ok.ads.tracker.net".into()]);
//! assert!(errors.is_empty());
//! let filter = Filter::new(set);
//! assert_eq!(filter.load().check("x.ads.tracker.net"), Verdict::Block);
//! assert_eq!(filter.load().check("ok.ads.tracker.net"), Verdict::Allow);
//! assert_eq!(filter.load().check("cdn.spy.org"), Verdict::Block);
//! assert_eq!(filter.load().check("news.org"), Verdict::Pass);
//! ```
//!
//! 1. Read lists with a [`ListLoader`] (files; it keeps each list's last good copy, so a list
//!    that breaks on disk keeps filtering with its previous text), or bring your own
//!    [`ListSource`]s ([`check_list`] says whether a text is a list at all).
//!    [`DEFAULT_LIST_TEXT`] is the bundled list, compiled into the binary. `cloudpc run` uses a
//!    [`ListManager`] (`subscribe.rs`), which does both for files and `http(s)://` lists: it
//!    downloads URL lists in the background ([`fetch()`]), keeps their last good copies in the
//!    state dir and says when to rebuild.
//! 2. [`FilterSet::build`] compiles them with the config `block`/`allow` names. Build off the
//!    query path (e.g. `spawn_blocking`): a million names take about a second.
//! 3. [`Filter::store`] swaps the new set in; queries in flight finish on the old one and never
//!    wait. [`Filter::load`] + [`FilterSet::check`] is the per-query call.
//!
//! # Semantics
//!
//! - `||name^`, hosts lines (`0.0.0.0 name`, `127.0.0.1 a b`, `:: name`), bare `name` lines and
//!   config `block` names block the name and all its subdomains (`||name` without `^` and
//!   `*.name` are read the same way). `localhost`-style hosts entries are ignored. Options that
//!   do not narrow a rule below the whole host (`$important`, `$third-party`, `$all`,
//!   `$document`, `$popup`) keep `||name^` a plain name; `$badfilter` cancels it.
//! - `@@||name^` and config `allow` names allow the name and its subdomains and beat every block,
//!   including `$important` ones.
//! - Other ABP network rules (wildcards, regexes, rules with narrowing options) go to the
//!   `adblock` engine, which sees each query as a request for `https://name/` of type `other`
//!   (so a `/regex/` sees that URL, not the bare name); inside the engine ABP precedence applies
//!   (`$important` beats `@@`). Cosmetic rules are ignored. Lists made of plain names never touch
//!   the engine.
//! - A line that cannot be used is reported as `origin:line: message` and skipped. A text that
//!   is not a list (NUL bytes, HTML, more than half its rule lines invalid, or content without a
//!   single usable rule) is rejected whole (line 0) and adds nothing.
//!
//! # Cost
//!
//! Plain names live in a hash set of 64-bit name hashes (≈12 bytes per name); a check hashes the
//! query's suffixes in one pass and probes once per suffix, without allocating. See
//! `names.rs` for the layout.

pub mod fetch;
mod load;
pub(crate) mod names;
mod parse;
pub mod policy;
mod set;
pub mod subscribe;
mod syntax;

use std::sync::Arc;

pub use fetch::{fetch, FetchError, FetchLimits, Fetched, HostResolver, ListUrl, Validators};
pub use load::{ListLoader, DEFAULT_MAX_LIST_BYTES};
pub use parse::{check_list, ListSummary, MAX_LINE_BYTES, MAX_LINE_ERRORS};
pub use policy::{Groups, Policy, PolicySettings};
pub use set::{FilterSet, RuleCounts};
pub use subscribe::{ListManager, ListSettings, ListStatus, SubscribeError, UpdateOutcome};

/// The bundled default list (ABP syntax), compiled in so the binary filters even without the
/// file on disk.
pub const DEFAULT_LIST_TEXT: &str = include_str!("../../blocklists/default.txt");

/// Origin used for [`default_list`] in errors.
pub const DEFAULT_LIST_ORIGIN: &str = "built-in default list";

/// The bundled default list as a [`ListSource`].
pub fn default_list() -> ListSource {
    ListSource {
        origin: DEFAULT_LIST_ORIGIN.to_string(),
        text: DEFAULT_LIST_TEXT.to_string(),
    }
}

/// What the filter says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matches.
    Pass,
    /// A block rule matches and no allow rule does.
    Block,
    /// An allow rule matches (beats every block).
    Allow,
}

/// One list's text and where it came from (used in error messages).
#[derive(Debug, Clone)]
pub struct ListSource {
    pub origin: String,
    pub text: String,
}

/// A rule that could not be used, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    pub origin: String,
    /// 1-based line; 0 = the list as a whole.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.origin, self.line, self.message)
    }
}

impl std::error::Error for ListError {}

/// The filter in force, swapped atomically on reload.
pub struct Filter {
    current: arc_swap::ArcSwap<FilterSet>,
}

impl Filter {
    /// A filter with `set` in force.
    pub fn new(set: FilterSet) -> Filter {
        Filter {
            current: arc_swap::ArcSwap::from_pointee(set),
        }
    }
    /// The set in force.
    pub fn load(&self) -> arc_swap::Guard<Arc<FilterSet>> {
        self.current.load()
    }
    /// Replaces the set in force. The old set is freed when the last query using it finishes.
    pub fn store(&self, set: FilterSet) {
        self.current.store(Arc::new(set));
    }
}

#[cfg(test)]
mod tests;

/// The line of `text` that names `name` or the closest of its parent domains, as a rule of
/// one of the usual forms (`||name^`, `@@||name^`, a hosts line, a bare name), for telling a
/// person which rule of a list matched ("test a domain"). `allow` looks for exceptions
/// (`@@`) only, otherwise for blocking lines only. A rule that matches by pattern only (a
/// regex, a wildcard) is not found; the caller then names the list alone.
pub fn rule_naming<'t>(text: &'t str, name: &str, allow: bool) -> Option<&'t str> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let candidates: Vec<&str> = std::iter::successors(Some(name.as_str()), |n| {
        n.split_once('.')
            .map(|(_, rest)| rest)
            .filter(|r| !r.is_empty())
    })
    .collect();
    let mut best: Option<(usize, &str)> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('!') {
            continue;
        }
        let (exception, body) = match l.strip_prefix("@@") {
            Some(b) => (true, b),
            None => (false, l),
        };
        if exception != allow {
            continue;
        }
        let named: Vec<&str> = if let Some(r) = body.strip_prefix("||") {
            let end = r.find(['^', '$', '/']).unwrap_or(r.len());
            vec![&r[..end]]
        } else {
            let mut parts = body.split_whitespace();
            let first = parts.next().unwrap_or("");
            if first.parse::<std::net::IpAddr>().is_ok() {
                parts.take_while(|p| !p.starts_with('#')).collect()
            } else {
                vec![first]
            }
        };
        for n in named {
            let n = n.trim_end_matches('.');
            if let Some(rank) = candidates.iter().position(|c| c.eq_ignore_ascii_case(n)) {
                if best.is_none_or(|(r, _)| rank < r) {
                    best = Some((rank, l));
                }
            }
        }
        if best.is_some_and(|(r, _)| r == 0) {
            break;
        }
    }
    best.map(|(_, l)| l)
}

#[cfg(test)]
mod naming_tests {
    use super::rule_naming;

    #[test]
    fn the_closest_naming_rule_is_found_in_every_usual_form() {
        let list = "! comment\n||tracker.example^\n0.0.0.0 ads.example.org other.example\n\
                    bare.example\n@@||ok.tracker.example^\n||ads.tracker.example^$third-party\n";
        assert_eq!(
            rule_naming(list, "x.ads.tracker.example", false),
            Some("||ads.tracker.example^$third-party")
        );
        assert_eq!(
            rule_naming(list, "deep.tracker.example", false),
            Some("||tracker.example^")
        );
        assert_eq!(
            rule_naming(list, "other.example", false),
            Some("0.0.0.0 ads.example.org other.example")
        );
        assert_eq!(
            rule_naming(list, "a.bare.example", false),
            Some("bare.example")
        );
        assert_eq!(
            rule_naming(list, "ok.tracker.example", true),
            Some("@@||ok.tracker.example^")
        );
        assert_eq!(rule_naming(list, "nothing.test", false), None);
    }

    #[test]
    fn fuzz_rule_naming() {
        let seeds = vec![
            "||a.example^\n@@||b.a.example^$important\n0.0.0.0 c.example d.example # x".to_string(),
            "127.0.0.1\n||^\n@@\n||.\n a..b \n".to_string(),
        ];
        crate::fuzz::run("rule_naming", crate::fuzz::text(seeds), |text| {
            for (name, allow) in [("x.a.example", false), ("b.a.example", true), ("", false)] {
                if let Some(line) = rule_naming(text, name, allow) {
                    assert!(text.lines().any(|l| l.trim() == line), "a line of the list");
                    assert_eq!(line.starts_with("@@"), allow);
                }
            }
        });
    }
}
