//! `.cedar` files → policies with stable ids and file:line locations.
//!
//! Each file is split into its policies (at top-level `;`, outside strings and comments) so
//! every policy knows where it starts, and every parse or validation problem can be reported
//! as `file:line: message`.

use cedar_policy::{Policy, PolicyId};
use miette::Diagnostic;
use std::fmt;

/// A policy file's name (as it should appear in messages) and its text.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

/// A problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// One policy with where it came from.
#[derive(Debug, Clone)]
pub struct SourcedPolicy {
    pub policy: Policy,
    pub file: String,
    /// Line of the policy's first line of code (annotations included) in its file.
    pub line: usize,
    /// Line where `text` starts (comments before the policy included).
    base_line: usize,
    /// The policy's own text (offsets in Cedar diagnostics are relative to it).
    pub text: String,
}

impl SourcedPolicy {
    /// The line of a byte offset into this policy's text.
    pub fn line_at(&self, offset: usize) -> usize {
        self.base_line
            + self.text[..offset.min(self.text.len())]
                .matches('\n')
                .count()
    }
}

/// Byte ranges of the policies in a Cedar file: split at `;` outside strings and comments.
pub fn split_policies(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b';' => {
                out.push((start, i + 1));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if !text[start.min(text.len())..].trim().is_empty() && has_code(&text[start..]) {
        out.push((start, text.len()));
    }
    out
}

/// Whether a fragment has anything besides whitespace and comments.
fn has_code(s: &str) -> bool {
    s.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with("//")
    })
}

/// The line (1-based) of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    1 + text[..offset.min(text.len())].matches('\n').count()
}

/// First label offset of a Cedar diagnostic, if any.
pub fn diagnostic_offset(d: &dyn Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

/// Renders a diagnostic with its help text, on one line.
pub fn diagnostic_message(d: &(dyn Diagnostic + '_)) -> String {
    let mut msg = d.to_string();
    if let Some(help) = d.help() {
        msg.push_str(&format!(" ({help})"));
    }
    msg
}

/// Parses every policy in `files`. Ids come from `@id("...")` or are `file:line`.
pub fn parse_files(files: &[PolicyFile]) -> Result<Vec<SourcedPolicy>, Vec<PolicyError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen_ids = std::collections::HashMap::<String, String>::new();
    for f in files {
        for (start, end) in split_policies(&f.text) {
            let snippet = &f.text[start..end];
            let lead = snippet.len() - snippet.trim_start().len();
            let snippet = snippet.trim();
            let line = line_of(&f.text, start + lead);
            // Comments before the policy were trimmed only of whitespace; find the first code line.
            let policy = match Policy::parse(None, snippet) {
                Ok(p) => p,
                Err(e) => {
                    let mut reported = false;
                    for err in e.iter() {
                        let off = diagnostic_offset(err).unwrap_or(0);
                        errors.push(PolicyError {
                            file: f.name.clone(),
                            line: line + snippet[..off.min(snippet.len())].matches('\n').count(),
                            message: diagnostic_message(err),
                        });
                        reported = true;
                    }
                    if !reported {
                        errors.push(PolicyError {
                            file: f.name.clone(),
                            line,
                            message: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            let code_line = line
                + snippet
                    .lines()
                    .take_while(|l| {
                        let t = l.trim();
                        t.is_empty() || t.starts_with("//")
                    })
                    .count();
            let id = policy
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}:{}", f.name, code_line));
            let here = format!("{}:{}", f.name, code_line);
            if let Some(prev) = seen_ids.insert(id.clone(), here.clone()) {
                errors.push(PolicyError {
                    file: f.name.clone(),
                    line: code_line,
                    message: format!("policy id {id:?} is already used at {prev}"),
                });
                continue;
            }
            out.push(SourcedPolicy {
                policy: policy.new_id(PolicyId::new(id)),
                file: f.name.clone(),
                line: code_line,
                base_line: line,
                text: snippet.to_string(),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_strings_and_comments() {
        let text = "// a; comment\npermit(principal, action, resource) when { \"x;y\" == \"x;y\" };\n\nforbid(principal, action, resource);\n// trailing;\n";
        let parts = split_policies(text);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(text[parts[0].0..parts[0].1].contains("permit"));
        assert!(text[parts[1].0..parts[1].1].contains("forbid"));
    }

    #[test]
    fn ids_and_lines() {
        let files = vec![PolicyFile {
            name: "p.cedar".into(),
            text: "\n// note\npermit(principal, action, resource);\n@id(\"named\")\nforbid(principal, action, resource);\n".into(),
        }];
        let ps = parse_files(&files).unwrap();
        assert_eq!(ps[0].policy.id().to_string(), "p.cedar:3");
        assert_eq!(ps[1].policy.id().to_string(), "named");
        let bad = vec![PolicyFile {
            name: "b.cedar".into(),
            text: "permit(principal, action, resource);\n\npermit(principal, actoin, resource);"
                .into(),
        }];
        let errs = parse_files(&bad).unwrap_err();
        assert_eq!(errs[0].file, "b.cedar");
        assert_eq!(errs[0].line, 3);
    }
}
