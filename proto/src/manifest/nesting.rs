//! A bound on the flow nesting (`[` and `{`) of a YAML document, checked
//! before the YAML parser sees it: libyaml's time grows with the square of
//! that depth (20,000 levels, 40 KB, take 2 s; a 1 MiB document would take
//! minutes), and serde_yaml refuses more than 128 levels only after the
//! whole document is parsed. JSON documents do not need it (serde_json
//! reads them).

/// Deepest flow nesting accepted; a manifest needs 4 or 5.
pub(super) const MAX_FLOW_NESTING: usize = 64;

/// An upper bound of the flow nesting of `text`. Every opening bracket
/// counts, even in a string or a comment; a closing one counts only
/// outside quotes and comments, and never below zero. Inside a flow
/// collection an unquoted closing bracket always closes, so the bound is
/// never below the real depth; it can only be above it, for brackets in
/// strings, which real manifests do not nest 64 deep.
pub(super) fn flow_nesting_bound(text: &str) -> usize {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        Comment,
    }
    let mut state = In::Plain;
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut previous = b'\n';
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match (&state, b) {
            (_, b'[' | b'{') if state != In::Comment => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (In::Plain, b']' | b'}') => depth = depth.saturating_sub(1),
            (In::Plain, b'\'') => state = In::Single,
            (In::Plain, b'"') => state = In::Double,
            (In::Plain, b'#') if previous.is_ascii_whitespace() => state = In::Comment,
            (In::Single, b'\'') | (In::Double, b'"') => state = In::Plain,
            (In::Double, b'\\') => {
                bytes.next();
            }
            (In::Comment, b'\n') => state = In::Plain,
            _ => {}
        }
        previous = b;
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_the_flow_nesting() {
        let cases = [
            ("a: b\n", 0),
            ("a: [1, {b: [2]}]\n", 3),
            ("a: [[[[\n", 4),
            // Closers in strings and comments do not lower the bound...
            ("a: [\"]]]\", ']]', [x]] # ]]]\nb: [[", 2),
            ("a: [\"\\\"]\", [1]]", 2),
            // ...openers there raise it (an upper bound), closers
            // outside any collection do not make it negative.
            ("a: \"[[\"\n", 2),
            ("a: x]]]]\nb: [[1]]", 2),
            // A '#' inside a word is not a comment.
            ("a: [x#]]]\n", 1),
        ];
        for (text, bound) in cases {
            assert_eq!(flow_nesting_bound(text), bound, "{text:?}");
        }
    }
}
