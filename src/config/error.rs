//! What `check-config` prints: each problem with the key path it concerns and, where known, its
//! line in the file, so an administrator can go straight to it.

/// One problem in the configuration, at a key path such as `routes[1].upstream`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location(.path, .line))]
pub struct ConfigError {
    /// Key path, e.g. `upstreams.exchange.servers[0]`; empty when the problem is the whole file.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    pub fn with_line(mut self, line: Option<usize>) -> ConfigError {
        self.line = line;
        self
    }
}

/// What goes before the message: `path (line N): `, `path: `, `line N: ` or nothing.
fn location(path: &str, line: &Option<usize>) -> String {
    match (path.is_empty(), line) {
        (false, Some(line)) => format!("{path} (line {line}): "),
        (false, None) => format!("{path}: "),
        (true, Some(line)) => format!("line {line}: "),
        (true, None) => String::new(),
    }
}

/// Every problem found in a configuration; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_per_line(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn one_per_line(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The 1-based line of any byte offset in a text, after one pass over it: a file with an error
/// on every line (a binary, or the wrong file given to `check-config`) is reported in linear
/// time, not by counting newlines from the start once per error.
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn new(text: &str) -> Lines {
        Lines(memchr::memchr_iter(b'\n', text.as_bytes()).collect())
    }

    /// The line of byte `offset`: one more than the newlines before it.
    pub(crate) fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_key_path_and_line() {
        let error = ConfigError::new(
            "routes[1].upstream",
            "no upstream named \"exchnage\"; known upstreams: exchange",
        )
        .with_line(Some(23));
        assert_eq!(
            error.to_string(),
            "routes[1].upstream (line 23): no upstream named \"exchnage\"; known upstreams: exchange"
        );
        let errors = ConfigErrors(vec![
            ConfigError::new("a", "one"),
            ConfigError::new("", "two"),
        ]);
        assert_eq!(errors.to_string(), "a: one\ntwo");
    }

    #[test]
    fn error_about_the_whole_file_names_only_its_line() {
        let error = ConfigError::new("", "expected `=`").with_line(Some(2));
        assert_eq!(error.to_string(), "line 2: expected `=`");
    }
}

#[cfg(test)]
mod line_tests {
    use super::Lines;

    #[test]
    fn lines_are_counted_from_one_and_a_newline_belongs_to_its_line() {
        let lines = Lines::new("a = 1\nb = 2\n\nc");
        assert_eq!(lines.at(0), 1);
        assert_eq!(lines.at(5), 1, "the newline ending line 1");
        assert_eq!(lines.at(6), 2);
        assert_eq!(lines.at(12), 3);
        assert_eq!(lines.at(13), 4);
        assert_eq!(lines.at(10_000), 4, "past the end: the last line");
        assert_eq!(Lines::new("").at(3), 1);
    }
}
