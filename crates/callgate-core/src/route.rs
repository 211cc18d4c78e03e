//! Paths: one normalization for every request path, and route templates matched against it.
//!
//! A request path is normalized exactly once, before matching: `;parameters` are dropped from
//! each segment, empty segments (repeated slashes) collapse, `.` and `..` are resolved as in
//! RFC 3986 §5.2.4, and each segment is percent-decoded. Anything that would make Callgate and
//! an upstream disagree about where the request goes is refused instead: encoded `/` or `\`,
//! a raw `\`, encoded dot segments, NUL or other control characters, and invalid UTF-8.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Characters escaped when a path parameter is written back into a path (RFC 3986 unreserved
/// characters stay as they are).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Splits and normalizes a raw request path into decoded segments.
pub fn normalize_path(raw: &str) -> Result<Vec<String>, String> {
    if !raw.starts_with('/') {
        return Err("the path must start with '/'".into());
    }
    let mut out: Vec<String> = Vec::new();
    for seg in raw.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        if seg.contains('\\') {
            return Err("a backslash in the path is not allowed".into());
        }
        let lower = seg.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err("an encoded slash or backslash in the path is not allowed".into());
        }
        match seg {
            "" | "." => continue,
            ".." => {
                out.pop();
                continue;
            }
            _ => {}
        }
        let decoded = percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| "the path is not valid UTF-8 once percent-decoded".to_string())?;
        if decoded == "." || decoded == ".." {
            return Err("an encoded dot segment in the path is not allowed".into());
        }
        if decoded.chars().any(char::is_control) {
            return Err("control characters in the path are not allowed".into());
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// How the requests two routes match relate ([`Route::overlap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// No request matches both.
    None,
    /// The same requests: one route shadows the other.
    Same,
    /// One route's requests are a subset of the other's (it has literals where the other has
    /// parameters, and nothing else differs); the narrower one is tried first.
    Nested,
    /// Some requests match both and neither route is narrower, e.g. `/{org}/settings` and
    /// `/admin/{page}`; holds a path that matches both.
    Crossing(String),
}

/// A route: an HTTP method and a path template such as `/users/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: http::Method,
    segments: Vec<Segment>,
    template: String,
}

impl Route {
    /// Parses `"GET /users/{id}"`.
    pub fn parse(spec: &str) -> Result<Route, String> {
        let (method, path) = spec
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("route {spec:?} must be \"METHOD /path\""))?;
        let method: http::Method = method
            .parse()
            .map_err(|_| format!("route {spec:?}: invalid method {method:?}"))?;
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(format!("route {spec:?}: the path must start with '/'"));
        }
        let mut segments = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for seg in path.split('/').skip(1) {
            if seg.is_empty() {
                continue;
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("route {spec:?}: bad parameter name {name:?}"));
                }
                if !seen.insert(name.to_string()) {
                    return Err(format!("route {spec:?}: parameter {name:?} appears twice"));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if seg.contains(['{', '}', '?', '#', '%', ';', '\\'])
                || seg == "."
                || seg == ".."
            {
                return Err(format!("route {spec:?}: invalid segment {seg:?}"));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(Route {
            method,
            segments,
            template: path.to_string(),
        })
    }

    /// The path template as written.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Names of the path parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Number of literal segments: more literals is a more specific route.
    pub fn specificity(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// How this route's requests relate to `other`'s (same method assumed).
    pub fn overlap(&self, other: &Route) -> Overlap {
        if self.segments.len() != other.segments.len() {
            return Overlap::None;
        }
        let (mut mine_narrower, mut theirs_narrower) = (false, false);
        let mut example = String::new();
        for (a, b) in self.segments.iter().zip(&other.segments) {
            example.push('/');
            match (a, b) {
                (Segment::Literal(x), Segment::Literal(y)) if x != y => return Overlap::None,
                (Segment::Literal(x), Segment::Literal(_)) => example.push_str(x),
                (Segment::Literal(x), Segment::Param(_)) => {
                    mine_narrower = true;
                    example.push_str(x);
                }
                (Segment::Param(_), Segment::Literal(y)) => {
                    theirs_narrower = true;
                    example.push_str(y);
                }
                (Segment::Param(n), Segment::Param(_)) => {
                    example.push('{');
                    example.push_str(n);
                    example.push('}');
                }
            }
        }
        match (mine_narrower, theirs_narrower) {
            (false, false) => Overlap::Same,
            (true, true) => Overlap::Crossing(if example.is_empty() {
                "/".into()
            } else {
                example
            }),
            _ => Overlap::Nested,
        }
    }

    /// Matches normalized segments; returns the path parameters on success.
    pub fn match_segments(&self, segs: &[String]) -> Option<Vec<(String, String)>> {
        if segs.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (tpl, seg) in self.segments.iter().zip(segs) {
            match tpl {
                Segment::Literal(l) if l == seg => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), seg.clone())),
            }
        }
        Some(params)
    }

    /// Writes the path with each parameter's value percent-encoded as one segment. A value
    /// with a slash or backslash is refused rather than encoded: an upstream that decodes
    /// `%2F` before routing would read another path than the one policy allowed (the proxy
    /// ingress refuses the same thing in a request path). The error names the parameter.
    pub fn render(
        &self,
        value_of: impl Fn(&str) -> Option<String>,
    ) -> Result<String, (String, String)> {
        let mut out = String::new();
        for seg in &self.segments {
            out.push('/');
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(name) => {
                    let v = value_of(name)
                        .ok_or_else(|| (name.clone(), format!("missing path parameter {name}")))?;
                    if v.is_empty() || v == "." || v == ".." {
                        return Err((
                            name.clone(),
                            format!("path parameter {name} cannot be {v:?}"),
                        ));
                    }
                    if v.contains(['/', '\\']) {
                        return Err((
                            name.clone(),
                            format!("path parameter {name} cannot contain a slash or backslash"),
                        ));
                    }
                    out.extend(utf8_percent_encode(&v, SEGMENT));
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<Vec<String>, String> {
        normalize_path(p)
    }

    #[test]
    fn normalization_table() {
        let ok: &[(&str, &[&str])] = &[
            ("/users/u_1", &["users", "u_1"]),
            ("//users///u_1/", &["users", "u_1"]),
            ("/users/./u_1", &["users", "u_1"]),
            ("/a/../users/u_1", &["users", "u_1"]),
            ("/../../users/u_1", &["users", "u_1"]),
            ("/users;jsessionid=1/u_1;x", &["users", "u_1"]),
            ("/users/u%5F1", &["users", "u_1"]),
            ("/users/%C3%A9", &["users", "é"]),
        ];
        for (raw, want) in ok {
            assert_eq!(n(raw).unwrap(), want.to_vec(), "{raw}");
        }
        for bad in [
            "/users/a%2Fb",
            "/users/a%2fb",
            "/users/a%5cb",
            "/users/a\\b",
            "/users/%2e%2e/admin",
            "/users/%2E",
            "/users/%ff",
            "/users/%00",
            "users",
        ] {
            assert!(n(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn routes_match_and_render() {
        let r = Route::parse("GET /users/{id}").unwrap();
        assert_eq!(r.method, http::Method::GET);
        let segs = n("/users/u%201").unwrap();
        let p = r.match_segments(&segs).unwrap();
        assert_eq!(p, vec![("id".into(), "u 1".into())]);
        assert!(r.match_segments(&n("/users").unwrap()).is_none());
        assert_eq!(
            r.render(|_| Some("a b?#%".into())).unwrap(),
            "/users/a%20b%3F%23%25"
        );
        for bad in ["..", ".", "", "a/b", "../admin", "a\\b"] {
            assert_eq!(
                r.render(|_| Some(bad.into())).unwrap_err().0,
                "id",
                "{bad:?} refused"
            );
        }
        for bad in [
            "GET users",
            "GET /a/{}",
            "/x",
            "GET /a/{x}/{x}",
            "GET /a/%2e",
        ] {
            assert!(Route::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Normalizing an already-normalized path is the identity, and no output segment is
        /// ever a dot segment or contains a slash: what policy sees is what the upstream gets.
        #[test]
        fn normalization_is_idempotent(raw in "(/[a-z.%2Ef;]{0,6}){0,6}") {
            if let Ok(segs) = normalize_path(&raw) {
                for s in &segs {
                    prop_assert!(s != "." && s != ".." && !s.contains('/') && !s.is_empty());
                }
                let rendered: String = segs.iter()
                    .map(|s| format!("/{}", utf8_percent_encode(s, SEGMENT)))
                    .collect();
                let again = normalize_path(if rendered.is_empty() { "/" } else { &rendered }).unwrap();
                prop_assert_eq!(again, segs);
            }
        }
    }
}

#[cfg(test)]
mod overlap {
    use super::*;

    #[test]
    fn overlap_table() {
        let r = |t: &str| Route::parse(&format!("GET {t}")).unwrap();
        let crossing = |p: &str| Overlap::Crossing(p.to_string());
        for (a, b, want) in [
            ("/users/{id}", "/users/{name}", Overlap::Same),
            ("/", "/", Overlap::Same),
            ("/users/me", "/users/{id}", Overlap::Nested),
            ("/users/{id}", "/users/me", Overlap::Nested),
            ("/users/me", "/users/you", Overlap::None),
            ("/users/{id}", "/users/{id}/x", Overlap::None),
            (
                "/{org}/settings",
                "/admin/{page}",
                crossing("/admin/settings"),
            ),
            ("/a/{x}/{y}", "/{z}/b/{w}", crossing("/a/b/{y}")),
            ("/{a}/{b}", "/x/y", Overlap::Nested),
        ] {
            assert_eq!(r(a).overlap(&r(b)), want, "{a} vs {b}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary path text never panics, and an accepted path never yields a segment that
        /// could change routing downstream.
        #[test]
        fn arbitrary_paths(raw in "/[ -~]{0,40}") {
            if let Ok(segs) = normalize_path(&raw) {
                for s in segs {
                    prop_assert!(!s.contains('/') && !s.contains('\\') && s != "." && s != "..");
                }
            }
        }
    }
}
