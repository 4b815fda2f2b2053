//! The image-reference grammar of the distribution project
//! (`[registry[:port]/]path[:tag][@digest]`, docker's `reference.Parse`).
//!
//! Its one home: `rik apply`, the scheduler and the riklet's manifest
//! validation check references with it, and the riklet's image store holds
//! every reference it pulls to it, so that a reference no registry could
//! serve is refused at `rik apply` rather than failing on a node.

/// Longest image name (registry and repository) the distribution spec
/// allows.
pub const MAX_IMAGE_NAME: usize = 255;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceError {
    #[error("empty")]
    Empty,
    /// The digest part has no `algorithm:` prefix.
    #[error("digest {0:?}: expected algorithm:hex")]
    DigestForm(String),
    /// The algorithm is not lower-case words joined by `+ . _ -`.
    #[error("digest {0:?}: bad algorithm")]
    DigestAlgorithm(String),
    /// A registered algorithm with the wrong number of hex digits.
    #[error("digest {digest:?}: {algorithm} needs {hex_digits} lower-case hex digits")]
    DigestLength {
        digest: String,
        algorithm: String,
        hex_digits: usize,
    },
    /// Another algorithm with too few hex digits (or not hex).
    #[error("digest {0:?}: at least 32 lower-case hex digits")]
    DigestHex(String),
    #[error("tag {0:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
    #[error("no repository")]
    NoRepository,
    /// The name (registry and repository) is longer than [`MAX_IMAGE_NAME`].
    #[error("the name is {0} characters, at most {MAX_IMAGE_NAME} allowed")]
    NameTooLong(usize),
    #[error("registry {0:?} is not a host name or host:port")]
    Registry(String),
    #[error(
        "repository part {0:?} must be lower-case letters and digits, separated by '.', '_', '__' or dashes"
    )]
    PathComponent(String),
}

/// Checks an image reference against the grammar; says why it is not one.
pub fn check_image_reference(image: &str) -> Result<(), ImageReferenceError> {
    if image.is_empty() {
        return Err(ImageReferenceError::Empty);
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (name, tag) = split_tag(rest);
    if let Some(t) = tag {
        check_tag(t)?;
    }
    if name.is_empty() {
        return Err(ImageReferenceError::NoRepository);
    }
    if name.len() > MAX_IMAGE_NAME {
        return Err(ImageReferenceError::NameTooLong(name.len()));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            check_domain(first)?;
            components.remove(0);
        }
    }
    match components.into_iter().find(|c| !path_component(c)) {
        Some(c) => Err(ImageReferenceError::PathComponent(c.to_string())),
        None => Ok(()),
    }
}

/// Splits `name[:tag]` (no digest): the tag is what follows the last ':'
/// after the last '/' (a ':' before it is a registry port).
pub(super) fn split_tag(reference: &str) -> (&str, Option<&str>) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            Some(&reference[last_slash + i + 1..]),
        ),
        None => (reference, None),
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), ImageReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ImageReferenceError::Tag(tag.to_string()))
    }
}

/// `host[:port]`: DNS labels of letters, digits and inner '-', or an
/// IPv6 address in brackets.
fn check_domain(domain: &str) -> Result<(), ImageReferenceError> {
    let bad = || ImageReferenceError::Registry(domain.to_string());
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut sep = String::new();
    for &b in bytes {
        if alnum(b) {
            let ok = sep.is_empty()
                || sep == "."
                || sep == "_"
                || sep == "__"
                || sep.bytes().all(|s| s == b'-');
            if !ok {
                return false;
            }
            sep.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            sep.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// `algorithm:hex`; the registered algorithms are checked for their length.
fn check_digest(d: &str) -> Result<(), ImageReferenceError> {
    let (algo, hex) = d
        .split_once(':')
        .ok_or_else(|| ImageReferenceError::DigestForm(d.to_string()))?;
    let algo_ok = !algo.is_empty()
        && algo.split(['+', '.', '_', '-']).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if !algo_ok {
        return Err(ImageReferenceError::DigestAlgorithm(d.to_string()));
    }
    let want = match algo {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match want {
        Some(n) if hex.len() == n && hex_ok => Ok(()),
        Some(n) => Err(ImageReferenceError::DigestLength {
            digest: d.to_string(),
            algorithm: algo.to_string(),
            hex_digits: n,
        }),
        None if hex.len() >= 32 && hex_ok => Ok(()),
        None => Err(ImageReferenceError::DigestHex(d.to_string())),
    }
}
