//! The list engine: ABP and hosts lists, allow/deny overrides, atomic swap on reload.
//! (Being built: see the filter work item.)

use std::sync::Arc;

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

/// A compiled set of rules.
#[derive(Default)]
pub struct FilterSet {}

impl FilterSet {
    /// Compiles lists plus config `block` / `allow` names.
    pub fn build(
        _lists: &[ListSource],
        _block: &[String],
        _allow: &[String],
    ) -> (FilterSet, Vec<ListError>) {
        (FilterSet {}, vec![])
    }

    /// Checks a lower-case name without trailing dot.
    pub fn check(&self, _name: &str) -> Verdict {
        Verdict::Pass
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        0
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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
    /// Replaces the set in force.
    pub fn store(&self, set: FilterSet) {
        self.current.store(Arc::new(set));
    }
}

/// The bundled default list (used when `blocklists/default.txt` is not on disk).
pub const DEFAULT_LIST_TEXT: &str = "";

/// Reads list files, keeping the last good copy of each.
#[derive(Default)]
pub struct ListLoader {}

impl ListLoader {
    /// Reads `paths`.
    pub fn load(&mut self, paths: &[std::path::PathBuf]) -> (Vec<ListSource>, Vec<ListError>) {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for p in paths {
            match std::fs::read_to_string(p) {
                Ok(text) => out.push(ListSource {
                    origin: p.display().to_string(),
                    text,
                }),
                Err(e) => errs.push(ListError {
                    origin: p.display().to_string(),
                    line: 0,
                    message: e.to_string(),
                }),
            }
        }
        (out, errs)
    }
}
