//! What is wrong with a config file, said so that the user can fix it in one go: each issue
//! names the file, the YAML path and the line, and what to write instead.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{}", render(file, issues))]
    Invalid {
        file: String,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The individual problems (empty for an unreadable file).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Unreadable { .. } => &[],
            ConfigError::Invalid { issues, .. } => issues,
        }
    }
}

/// One problem at one place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// YAML path such as `routes[3].threshold`; empty for the whole document.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    pub message: String,
    /// What to write instead.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n    fix: {hint}")?;
        }
        Ok(())
    }
}

fn render(file: &str, issues: &[ConfigIssue]) -> String {
    let mut out = match issues.len() {
        1 => format!("invalid config {file}:"),
        n => format!("invalid config {file} ({n} problems):"),
    };
    for issue in issues {
        match issue.line {
            Some(line) => out.push_str(&format!("\n  {file}:{line}: {issue}")),
            None => out.push_str(&format!("\n  {file}: {issue}")),
        }
    }
    out
}
