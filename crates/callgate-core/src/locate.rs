//! Where in a config file's text a checked value sits, and the declared name nearest to a
//! misspelled one: so a configuration error says `file:line` and how to fix it.
//!
//! The YAML parser reports lines for syntax errors only; the checks that run on the parsed
//! config (an unknown upstream, an invalid key hash, a missing policy path) name what they
//! refused by its config path. [`line_of`] finds that place in the text: the entry that
//! declares it (`- name: billing.reset`, `upstream-name:`), then the key under it.

/// What an error is about: a config path, as the checks name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// A function's entry (`functions: - name: NAME`), at `field` when given.
    Function(&'a str, Option<&'a str>),
    /// An entry keyed by `name` in the `section` mapping (`upstreams:`, `profiles:`), at
    /// `field` when given.
    Keyed(&'a str, &'a str, Option<&'a str>),
    /// An item of a list holding `key: value` (an API key's `id: ci`), at `field`.
    Item(&'a str, &'a str, Option<&'a str>),
    /// A line under top-level `section` that holds `text`.
    Under(&'a str, &'a str),
}

/// The 1-based line of `place` in `text`, if it can be found.
pub fn line_of(text: &str, place: Place<'_>) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let bare = |l: &str| -> String {
        let l = l.split(" #").next().unwrap_or(l).trim();
        l.trim_start_matches("- ").trim().to_string()
    };
    let value_is = |l: &str, key: &str, value: &str| {
        let b = bare(l);
        b.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == value)
            .unwrap_or(false)
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    // From an entry's line, the line of `field` inside it (before the entry ends).
    let has_key = |l: &str, field: &str| {
        let b = bare(l);
        b.starts_with(&format!("{field}:"))
            || [
                format!("{{{field}:"),
                format!("{{ {field}:"),
                format!(", {field}:"),
            ]
            .iter()
            .any(|k| b.contains(k.as_str()))
    };
    let field_in = |start: usize, field: Option<&str>| -> Option<usize> {
        let Some(field) = field else {
            return Some(start + 1);
        };
        let own = indent(lines[start]);
        let item = lines[start].trim_start().starts_with("- ");
        for (i, l) in lines.iter().enumerate().skip(start) {
            if i > start && !l.trim().is_empty() && !l.trim_start().starts_with('#') {
                let ind = indent(l);
                if ind < own || (ind == own && (l.trim_start().starts_with("- ") || !item)) {
                    break;
                }
            }
            if has_key(l, field) {
                return Some(i + 1);
            }
        }
        Some(start + 1)
    };
    let section = |name: &str| {
        lines
            .iter()
            .position(|l| indent(l) == 0 && bare(l).starts_with(&format!("{name}:")))
    };
    match place {
        Place::Function(name, field) => {
            let start = lines.iter().position(|l| value_is(l, "name", name))?;
            field_in(start, field)
        }
        Place::Keyed(sec, key, field) => {
            let from = section(sec).unwrap_or(0);
            let start = lines.iter().enumerate().skip(from).find_map(|(i, l)| {
                let b = bare(l);
                let k = b
                    .split(':')
                    .next()?
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'');
                (k == key && b.contains(':')).then_some(i)
            })?;
            field_in(start, field)
        }
        Place::Item(key, value, field) => {
            let start = lines.iter().position(|l| {
                value_is(l, key, value)
                    || bare(l).contains(&format!("{key}: {value}"))
                    || bare(l).contains(&format!("{key}: \"{value}\""))
            })?;
            field_in(start, field)
        }
        Place::Under(sec, needle) => {
            let from = section(sec)?;
            lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle))
                .map(|(i, _)| i + 1)
        }
    }
}

/// The candidate nearest to `name` by edit distance, if it is near enough to be a typo.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(2, 3);
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// ` (did you mean "x"?)` for the nearest candidate, or nothing.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(name, candidates)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j]))
                .min(row[j] + 1)
                .min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen: 127.0.0.1:8080
upstreams:
  inventory:
    url: http://inv
identity:
  api_keys:
    - {id: ci, hash: \"sha256:00\", subject: ci}
policies:
  - policys
functions:
  - name: inventory.get
    upstream: inventry
    route: GET /items/{id}
  - name: inventory.put
    upstream: inventory
    mask: piii
";

    #[test]
    fn places_are_found_by_their_config_path() {
        assert_eq!(
            line_of(TEXT, Place::Function("inventory.get", Some("upstream"))),
            Some(12)
        );
        assert_eq!(
            line_of(TEXT, Place::Function("inventory.put", Some("mask"))),
            Some(16)
        );
        assert_eq!(
            line_of(TEXT, Place::Function("inventory.put", None)),
            Some(14)
        );
        assert_eq!(
            line_of(TEXT, Place::Keyed("upstreams", "inventory", Some("url"))),
            Some(4)
        );
        assert_eq!(
            line_of(TEXT, Place::Item("id", "ci", Some("hash"))),
            Some(7)
        );
        assert_eq!(line_of(TEXT, Place::Under("policies", "policys")), Some(9));
        assert_eq!(line_of(TEXT, Place::Function("nope", None)), None);
    }

    #[test]
    fn the_nearest_name_of_the_right_kind_is_suggested() {
        assert_eq!(
            nearest("inventry", ["inventory", "billing"]),
            Some("inventory")
        );
        assert_eq!(
            nearest("inventory.gett", ["mcp", "call", "inventory.get"]),
            Some("inventory.get")
        );
        assert_eq!(nearest("zzz", ["inventory", "mcp"]), None);
        assert_eq!(
            did_you_mean("hihg", ["low", "medium", "high"]),
            " (did you mean \"high\"?)"
        );
    }
}
