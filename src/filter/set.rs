//! [`FilterSet`]: the compiled rules of every list plus the config overrides, and the check.

use std::borrow::Cow;
use std::collections::HashSet;

use adblock::lists::ParseOptions;
use adblock::request::Request;
use adblock::Engine;

use super::names::{label_count, name_hash, NameSet, NameSetBuilder, Suffixes};
use super::parse::{parse_list, RuleSink};
use super::syntax::is_domain;
use super::{ListError, ListSource, Verdict};

/// How many rules of each kind a [`FilterSet`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// Distinct names blocked with their subdomains (hash set).
    pub blocked_names: usize,
    /// Distinct names allowed with their subdomains (hash set).
    pub allowed_names: usize,
    /// Other rules, matched by the `adblock` engine.
    pub engine_rules: usize,
}

/// A compiled set of rules: built once from lists and config, then only read (shared through
/// [`super::Filter`]).
#[derive(Default)]
pub struct FilterSet {
    block: NameSet,
    allow: NameSet,
    engine: Option<EngineRules>,
}

/// The rules that are not plain names, in the `adblock` engine.
struct EngineRules {
    engine: Engine,
    rules: usize,
    /// With no `@@` rule in the engine, a name the hash set blocks needs no engine lookup.
    has_exceptions: bool,
}

impl FilterSet {
    /// Compiles `lists` plus the config `block` and `allow` names.
    ///
    /// Unusable lines are reported and skipped; a list rejected as a whole (line 0 error)
    /// contributes no rule at all. Config names that are not domain names are reported with
    /// origin `filter.block` / `filter.allow` and their 1-based position.
    pub fn build(
        lists: &[ListSource],
        block: &[String],
        allow: &[String],
    ) -> (FilterSet, Vec<ListError>) {
        let mut rules = Collector::default();
        let mut errors = Vec::new();
        for source in lists {
            let mark = rules.mark();
            if let Err(e) = parse_list(source, &mut rules, &mut errors) {
                rules.rollback(mark);
                errors.push(e);
            }
        }
        for (origin, names, is_allow) in [
            ("filter.block", block, false),
            ("filter.allow", allow, true),
        ] {
            for (i, name) in names.iter().enumerate() {
                let trimmed = name.trim();
                let name = trimmed.strip_prefix("*.").unwrap_or(trimmed);
                if !is_domain(name) {
                    errors.push(ListError {
                        origin: origin.to_string(),
                        line: i + 1,
                        message: "not a domain name (letters, digits, '-', '_' and dots)".into(),
                    });
                    continue;
                }
                let (hash, labels) = (name_hash(name), label_count(name));
                if is_allow {
                    rules.allow.push(hash, labels);
                } else {
                    rules.block.push(hash, labels);
                }
            }
        }
        if !rules.unblock.is_empty() {
            let cancelled: HashSet<u64> = rules.unblock.hashes().iter().copied().collect();
            rules.block.retain(|h| !cancelled.contains(h));
        }
        let engine = (rules.engine_rules > 0).then(|| {
            let mut set = adblock::lists::FilterSet::new(false);
            set.add_filter_list(
                std::mem::take(&mut rules.engine_text),
                ParseOptions::default(),
            );
            EngineRules {
                engine: Engine::new_with_filter_set(set),
                rules: rules.engine_rules,
                has_exceptions: rules.engine_exceptions > 0,
            }
        });
        let set = FilterSet {
            block: rules.block.build(),
            allow: rules.allow.build(),
            engine,
        };
        tracing::debug!(counts = ?set.counts(), errors = errors.len(), "filter set built");
        (set, errors)
    }

    /// Checks a name (lower-case ASCII without trailing dot; other case and one trailing dot are
    /// tolerated). An allow rule on the name or any parent beats every block.
    pub fn check(&self, name: &str) -> Verdict {
        let suffixes = Suffixes::of(name);
        if self.allow.matches(&suffixes) {
            return Verdict::Allow;
        }
        let blocked = self.block.matches(&suffixes);
        match &self.engine {
            None => {
                if blocked {
                    Verdict::Block
                } else {
                    Verdict::Pass
                }
            }
            Some(e) if blocked && !e.has_exceptions => Verdict::Block,
            Some(e) => e.check(name, blocked),
        }
    }

    /// Number of rules (distinct names plus engine rules).
    pub fn len(&self) -> usize {
        let c = self.counts();
        c.blocked_names + c.allowed_names + c.engine_rules
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rules by kind.
    pub fn counts(&self) -> RuleCounts {
        RuleCounts {
            blocked_names: self.block.len(),
            allowed_names: self.allow.len(),
            engine_rules: self.engine.as_ref().map_or(0, |e| e.rules),
        }
    }

    /// Heap bytes of the name sets (the engine's own memory is not counted).
    pub fn name_set_bytes(&self) -> usize {
        self.block.heap_bytes() + self.allow.heap_bytes()
    }
}

impl EngineRules {
    /// Asks the engine about `https://name/` as a request of type `other`, which is how a
    /// hostname-only (DNS) request looks to ABP rules. When the hash set already blocked the name
    /// only the exceptions are consulted.
    fn check(&self, name: &str, blocked: bool) -> Verdict {
        let name: Cow<'_, str> = {
            let bare = name.strip_suffix('.').unwrap_or(name);
            if bare.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(bare.to_ascii_lowercase())
            } else {
                Cow::Borrowed(bare)
            }
        };
        let url = format!("https://{name}/");
        let request = Request::preparsed(&url, &name, "", "other", true, "GET");
        if blocked {
            let result = self
                .engine
                .check_network_request_subset(&request, true, false);
            return if result.exception.is_some() {
                Verdict::Allow
            } else {
                Verdict::Block
            };
        }
        let result = self.engine.check_network_request(&request);
        if result.exception.is_some() {
            Verdict::Allow
        } else if result.should_block() {
            Verdict::Block
        } else {
            Verdict::Pass
        }
    }
}

/// Rules gathered while parsing, before the sets are built.
#[derive(Default)]
struct Collector {
    block: NameSetBuilder,
    allow: NameSetBuilder,
    unblock: NameSetBuilder,
    engine_text: String,
    engine_rules: usize,
    engine_exceptions: usize,
}

/// The sizes of a [`Collector`] before a list, to drop that list's rules if it is rejected.
struct Mark([usize; 6]);

impl Collector {
    fn mark(&self) -> Mark {
        Mark([
            self.block.len(),
            self.allow.len(),
            self.unblock.len(),
            self.engine_text.len(),
            self.engine_rules,
            self.engine_exceptions,
        ])
    }

    fn rollback(&mut self, Mark(m): Mark) {
        self.block.truncate(m[0]);
        self.allow.truncate(m[1]);
        self.unblock.truncate(m[2]);
        self.engine_text.truncate(m[3]);
        self.engine_rules = m[4];
        self.engine_exceptions = m[5];
    }
}

impl RuleSink for Collector {
    fn block(&mut self, hash: u64, labels: usize) {
        self.block.push(hash, labels);
    }
    fn allow(&mut self, hash: u64, labels: usize) {
        self.allow.push(hash, labels);
    }
    fn unblock(&mut self, hash: u64, labels: usize) {
        self.unblock.push(hash, labels);
    }
    fn engine_rule(&mut self, rule: &str, exception: bool) {
        self.engine_text.push_str(rule);
        self.engine_text.push('\n');
        self.engine_rules += 1;
        self.engine_exceptions += usize::from(exception);
    }
}
