//! [`ListLoader`]: reads list files and keeps the last good copy of each.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use super::parse::check_list;
use super::{ListError, ListSource};

/// Files larger than this are not read (a list of 1,000,000 hosts lines is about 30 MB).
pub const DEFAULT_MAX_LIST_BYTES: u64 = 128 * 1024 * 1024;

/// Reads list files with "last good copy" semantics: a file that cannot be read or is not a list
/// is reported, and its previous good text (from an earlier [`ListLoader::load`]) stands in for it.
///
/// The loader keeps one copy of each good list's text in memory (about 25-30 MB for a million
/// names), and forgets lists that are no longer asked for.
#[derive(Debug)]
pub struct ListLoader {
    good: HashMap<String, ListSource>,
    max_bytes: u64,
}

impl Default for ListLoader {
    fn default() -> Self {
        ListLoader::new()
    }
}

impl ListLoader {
    /// A loader with no previous copies and the default size limit.
    pub fn new() -> ListLoader {
        ListLoader {
            good: HashMap::new(),
            max_bytes: DEFAULT_MAX_LIST_BYTES,
        }
    }

    /// Sets the largest file accepted, in bytes.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> ListLoader {
        self.max_bytes = max_bytes;
        self
    }

    /// Reads every path, in order. Returns the sources to build from (fresh, or the previous good
    /// copy of a file that failed) and one line-0 error per file that failed. Line-level errors
    /// are not returned here: [`super::FilterSet::build`] reports them.
    pub fn load(&mut self, paths: &[PathBuf]) -> (Vec<ListSource>, Vec<ListError>) {
        let mut sources = Vec::with_capacity(paths.len());
        let mut errors = Vec::new();
        for path in paths {
            let origin = path.display().to_string();
            match self.read(path, &origin) {
                Ok(source) => {
                    self.good.insert(origin, source.clone());
                    sources.push(source);
                }
                Err(mut e) => {
                    if let Some(previous) = self.good.get(&origin) {
                        e.message.push_str("; using the previous good copy");
                        sources.push(previous.clone());
                    }
                    tracing::warn!(error = %e, "filter list not loaded");
                    errors.push(e);
                }
            }
        }
        let wanted: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        self.good.retain(|origin, _| wanted.contains(origin));
        (sources, errors)
    }

    /// The last good copy of the list from `origin` (a path as given to [`ListLoader::load`]).
    pub fn last_good(&self, origin: &str) -> Option<&ListSource> {
        self.good.get(origin)
    }

    fn read(&self, path: &std::path::Path, origin: &str) -> Result<ListSource, ListError> {
        let whole = |message: String| ListError {
            origin: origin.to_string(),
            line: 0,
            message,
        };
        let file = File::open(path).map_err(|e| whole(format!("cannot open: {e}")))?;
        let mut bytes = Vec::new();
        file.take(self.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| whole(format!("cannot read: {e}")))?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(whole(format!(
                "larger than the limit of {} bytes",
                self.max_bytes
            )));
        }
        if bytes.contains(&0) {
            return Err(whole(
                "contains binary data (NUL bytes); not a filter list".into(),
            ));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            whole(format!(
                "not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let source = ListSource {
            origin: origin.to_string(),
            text,
        };
        check_list(&source)?;
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{FilterSet, Verdict};
    use std::fs;

    fn build(sources: &[ListSource]) -> FilterSet {
        FilterSet::build(sources, &[], &[]).0
    }

    #[test]
    fn good_files_load_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        fs::write(&path, "||ads.tracker.net^\n0.0.0.0 pixel.spy.org\n").unwrap();
        let mut loader = ListLoader::new();
        let (sources, errors) = loader.load(&[path]);
        assert!(errors.is_empty());
        let set = build(&sources);
        assert_eq!(set.check("x.ads.tracker.net"), Verdict::Block);
        assert_eq!(set.check("pixel.spy.org"), Verdict::Block);
    }

    #[test]
    fn binary_list_is_rejected_and_previous_copy_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        fs::write(&path, "||ads.tracker.net^\n").unwrap();
        let mut loader = ListLoader::new();
        loader.load(std::slice::from_ref(&path));
        fs::write(&path, b"\x7fELF\x02\x01\x00\x00\x00binary").unwrap();

        let (sources, errors) = loader.load(std::slice::from_ref(&path));

        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 0);
        assert!(errors[0].message.contains("previous good copy"));
        assert_eq!(build(&sources).check("ads.tracker.net"), Verdict::Block);
    }

    #[test]
    fn missing_file_uses_previous_copy_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        fs::write(&path, "ads.tracker.net\n").unwrap();
        let mut loader = ListLoader::new();
        loader.load(std::slice::from_ref(&path));
        fs::remove_file(&path).unwrap();

        let (sources, errors) = loader.load(std::slice::from_ref(&path));

        assert_eq!(errors.len(), 1);
        assert!(errors[0]
            .to_string()
            .starts_with(&path.display().to_string()));
        assert_eq!(build(&sources).check("ads.tracker.net"), Verdict::Block);
    }

    #[test]
    fn invalid_utf8_html_and_oversized_files_are_rejected_without_previous_copy() {
        let dir = tempfile::tempdir().unwrap();
        let bad_utf8 = dir.path().join("u.txt");
        fs::write(&bad_utf8, b"ads.tracker.net\n\xff\xfe\n").unwrap();
        let html = dir.path().join("h.txt");
        fs::write(&html, "<html><body>Not Found</body></html>\n").unwrap();
        let big = dir.path().join("b.txt");
        fs::write(&big, "ads.tracker.net\n".repeat(10)).unwrap();
        let mut loader = ListLoader::new().with_max_bytes(100);

        let (sources, errors) = loader.load(&[bad_utf8, html, big]);

        assert!(sources.is_empty());
        assert_eq!(errors.len(), 3);
        assert!(errors.iter().all(|e| e.line == 0));
    }

    #[test]
    fn lists_no_longer_configured_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        fs::write(&path, "ads.tracker.net\n").unwrap();
        let mut loader = ListLoader::new();
        loader.load(std::slice::from_ref(&path));
        assert!(loader.last_good(&path.display().to_string()).is_some());

        loader.load(&[]);

        assert!(loader.last_good(&path.display().to_string()).is_none());
    }
}
