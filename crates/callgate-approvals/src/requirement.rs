//! Approval requirements and their one-line syntax.
//!
//! The same text is written in a Cedar annotation on a permit policy and as a function's
//! default in the config:
//!
//! ```text
//! @approval("finance-approvers")
//! @approval("2 of finance-approvers, 1 of security; ttl=30m; reason")
//! ```
//!
//! The first clause lists reviewer groups, separated by commas; each needs `N of` distinct
//! approvers (default 1), and every group must be satisfied (AND). Options follow, separated by
//! semicolons:
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `ttl=DURATION` | how long the request may wait for reviews | `1h` |
//! | `approved_ttl=DURATION` | how long an approved call may wait to be executed | `15m` |
//! | `reason` | the caller must give a reason (`Callgate-Reason` or `reason`) | not required |
//!
//! Durations are a whole number with `s`, `m`, `h` or `d`, at most 30 days. When several
//! obligations apply to one call they are [merged](Requirement::merge): every group is required
//! with the highest count, the shortest times win, and a reason is required if any asks for one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Default time a request may stay pending: one hour.
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// Default time an approved call may wait for execution: fifteen minutes.
pub const DEFAULT_APPROVED_TTL_SECS: u64 = 900;
const MAX_SECS: u64 = 30 * 86_400;
const MAX_APPROVERS: u32 = 100;

/// What a held call needs before it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Reviewer group → distinct approvers needed from it. All groups must be satisfied.
    pub groups: BTreeMap<String, u32>,
    /// Seconds a request may stay pending.
    pub ttl_secs: u64,
    /// Seconds an approved call may wait to be executed.
    pub approved_ttl_secs: u64,
    /// Whether the caller must give a reason.
    pub reason_required: bool,
}

/// Why a requirement's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval requirement {text:?}: {message}")]
pub struct RequirementError {
    pub text: String,
    pub message: String,
}

/// Whether `s` is a usable group name: what identity providers put in a groups claim.
fn valid_group(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/".contains(&b))
}

/// Parses `90s`, `30m`, `1h`, `2d` into seconds (1 s to 30 days).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 30m, 1h or 2d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{s:?} is not a duration such as 90s, 30m, 1h or 2d"
            ));
        }
    };
    let secs = n.saturating_mul(mult);
    if secs == 0 || secs > MAX_SECS {
        return Err(format!("{s:?} must be between 1s and 30d"));
    }
    Ok(secs)
}

fn format_duration(secs: u64) -> String {
    for (unit, m) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(m) {
            return format!("{}{unit}", secs / m);
        }
    }
    format!("{secs}s")
}

impl Requirement {
    /// Parses the one-line syntax described in the module docs.
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        let err = |message: String| RequirementError {
            text: text.to_string(),
            message,
        };
        let mut clauses = text.split(';');
        let groups_clause = clauses.next().unwrap_or_default();
        let mut groups = BTreeMap::new();
        for item in groups_clause.split(',') {
            let words: Vec<&str> = item.split_whitespace().collect();
            let (n, group) = match words.as_slice() {
                [g] => (1, *g),
                [n, "of", g] => {
                    let n: u32 = n
                        .parse()
                        .map_err(|_| err(format!("{n:?} is not a number of approvers")))?;
                    if n == 0 || n > MAX_APPROVERS {
                        return Err(err(format!(
                            "the number of approvers must be 1 to {MAX_APPROVERS}"
                        )));
                    }
                    (n, *g)
                }
                [] => return Err(err("name at least one reviewer group".into())),
                _ => {
                    return Err(err(format!(
                        "{:?} is not `GROUP` or `N of GROUP`",
                        item.trim()
                    )));
                }
            };
            if !valid_group(group) {
                return Err(err(format!("{group:?} is not a valid group name")));
            }
            if groups.insert(group.to_string(), n).is_some() {
                return Err(err(format!("group {group:?} is named twice")));
            }
        }
        let mut req = Requirement {
            groups,
            ttl_secs: DEFAULT_TTL_SECS,
            approved_ttl_secs: DEFAULT_APPROVED_TTL_SECS,
            reason_required: false,
        };
        let mut seen = Vec::new();
        for opt in clauses {
            let opt = opt.trim();
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (opt, None),
            };
            if seen.contains(&key) {
                return Err(err(format!("option {key:?} is given twice")));
            }
            seen.push(key);
            match (key, value) {
                ("ttl", Some(v)) => req.ttl_secs = parse_duration(v).map_err(err)?,
                ("approved_ttl", Some(v)) => {
                    req.approved_ttl_secs = parse_duration(v).map_err(err)?
                }
                ("reason", None) => req.reason_required = true,
                _ => {
                    return Err(err(format!(
                        "unknown option {opt:?} (known: ttl=DURATION, approved_ttl=DURATION, reason)"
                    )));
                }
            }
        }
        Ok(req)
    }

    /// The strictest combination of two requirements.
    pub fn merge(mut self, other: &Requirement) -> Requirement {
        for (g, n) in &other.groups {
            let cur = self.groups.entry(g.clone()).or_insert(0);
            *cur = (*cur).max(*n);
        }
        self.ttl_secs = self.ttl_secs.min(other.ttl_secs);
        self.approved_ttl_secs = self.approved_ttl_secs.min(other.approved_ttl_secs);
        self.reason_required |= other.reason_required;
        self
    }

    /// Merges any number of requirements; `None` when there are none.
    pub fn merge_all<'a>(reqs: impl IntoIterator<Item = &'a Requirement>) -> Option<Requirement> {
        reqs.into_iter().fold(None, |acc, r| match acc {
            None => Some(r.clone()),
            Some(a) => Some(a.merge(r)),
        })
    }

    /// Total distinct approvers needed.
    pub fn approvers_needed(&self) -> u32 {
        self.groups.values().sum()
    }
}

impl fmt::Display for Requirement {
    /// The canonical text, which [`Requirement::parse`] reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|(g, n)| format!("{n} of {g}"))
            .collect();
        write!(f, "{}", groups.join(", "))?;
        if self.ttl_secs != DEFAULT_TTL_SECS {
            write!(f, "; ttl={}", format_duration(self.ttl_secs))?;
        }
        if self.approved_ttl_secs != DEFAULT_APPROVED_TTL_SECS {
            write!(
                f,
                "; approved_ttl={}",
                format_duration(self.approved_ttl_secs)
            )?;
        }
        if self.reason_required {
            f.write_str("; reason")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let r = Requirement::parse("finance-approvers").unwrap();
        assert_eq!(r.groups, BTreeMap::from([("finance-approvers".into(), 1)]));
        assert_eq!(r.ttl_secs, 3600);
        assert!(!r.reason_required);
        let r =
            Requirement::parse("2 of finance-approvers, 1 of security; ttl=30m; reason").unwrap();
        assert_eq!(
            r.groups,
            BTreeMap::from([("finance-approvers".into(), 2), ("security".into(), 1)])
        );
        assert_eq!(r.ttl_secs, 1800);
        assert!(r.reason_required);
        let r = Requirement::parse("ops; approved_ttl=90s").unwrap();
        assert_eq!(r.approved_ttl_secs, 90);
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "",
            " ; ttl=1h",
            "0 of ops",
            "101 of ops",
            "two of ops",
            "2 ops",
            "ops, ops",
            "ops; ttl=0s",
            "ops; ttl=31d",
            "ops; ttl=1y",
            "ops; ttl",
            "ops; reason=yes",
            "ops; ttl=1h; ttl=2h",
            "ops; wait=1h",
            "o\"ps",
            "ops,",
        ] {
            assert!(Requirement::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "1 of a",
            "2 of a, 3 of b; ttl=2h; approved_ttl=5m; reason",
            "1 of x; ttl=90s",
        ] {
            let r = Requirement::parse(text).unwrap();
            assert_eq!(r.to_string(), text);
            assert_eq!(Requirement::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn merge_takes_the_strictest() {
        let a = Requirement::parse("1 of a, 2 of b; ttl=2h").unwrap();
        let b = Requirement::parse("3 of a, 1 of c; ttl=30m; reason").unwrap();
        let m = Requirement::merge_all([&a, &b]).unwrap();
        assert_eq!(m.to_string(), "3 of a, 2 of b, 1 of c; ttl=30m; reason");
        assert_eq!(m.approvers_needed(), 6);
        assert_eq!(Requirement::merge_all([]), None);
    }
}
