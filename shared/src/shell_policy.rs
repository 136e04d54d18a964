//! Which programs the `shell` pipeline tool may run on a worker (`WORKER_SHELL_ALLOW`).
//!
//! An API token can write any pipeline, so the worker host decides what may run there: nothing unless
//! `WORKER_SHELL_ENABLED=true`, and then only programs whose absolute path matches one of the comma-separated
//! patterns of `WORKER_SHELL_ALLOW`. A pattern is an absolute path, optionally with globs: `*` matches any
//! characters except `/`, `**` any characters including `/`, `?` one character except `/`. So
//! `/usr/bin/*` allows `/usr/bin/env` but not `/usr/bin/x/y`, `/opt/jobs/**` allows everything under
//! `/opt/jobs`. `shell: true` runs `/bin/sh`, which must then be allowed explicitly.

/// The parsed allow list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellPolicy {
    patterns: Vec<String>,
}

impl ShellPolicy {
    /// Parses `WORKER_SHELL_ALLOW`: comma-separated absolute paths or globs; blanks are ignored.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !item.starts_with('/') {
                return Err(format!(
                    "{item:?} is not an absolute path or glob (patterns start with /)"
                ));
            }
            if item.split('/').any(|segment| segment == "..") {
                return Err(format!("{item:?} must not contain .. segments"));
            }
            patterns.push(item.to_string());
        }
        Ok(Self { patterns })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `path` (absolute) matches one of the patterns.
    pub fn allows(&self, path: &str) -> bool {
        path.starts_with('/')
            && self
                .patterns
                .iter()
                .any(|p| glob_match(p.as_bytes(), path.as_bytes()))
    }
}

/// `*` = any run of non-`/` bytes, `**` = any run of bytes, `?` = one non-`/` byte, everything else literal.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            if let Some(rest) = rest.strip_prefix(b"*") {
                (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
            } else {
                let mut i = 0;
                loop {
                    if glob_match(rest, &text[i..]) {
                        return true;
                    }
                    if i == text.len() || text[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
        }
        Some((b'?', rest)) => !text.is_empty() && text[0] != b'/' && glob_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_paths_and_globs_match_as_documented() {
        let p = ShellPolicy::parse(" /bin/sh, /usr/bin/*,/opt/jobs/**, /srv/job-?.py ,").unwrap();
        assert!(p.allows("/bin/sh"));
        assert!(!p.allows("/bin/bash"));
        assert!(p.allows("/usr/bin/env"));
        assert!(!p.allows("/usr/bin/x/y"));
        assert!(!p.allows("/usr/bin"));
        assert!(p.allows("/opt/jobs/a/b/c"));
        assert!(p.allows("/srv/job-1.py"));
        assert!(!p.allows("/srv/job-12.py"));
        assert!(!p.allows("sh"));
    }

    #[test]
    fn an_empty_list_allows_nothing_and_relative_patterns_are_refused() {
        assert!(!ShellPolicy::parse("").unwrap().allows("/bin/sh"));
        assert!(ShellPolicy::parse("bin/sh").is_err());
        assert!(ShellPolicy::parse("/opt/../bin/sh").is_err());
    }
}
