//! From serde's errors to [`ManifestError::Field`], and the few
//! deserializers whose derived errors would say too little.
//!
//! `serde_yaml::from_value` reports no path, so a type mismatch or an
//! unknown variant deep in a manifest would name no field:
//! `serde_path_to_error` tracks the path while deserializing. A plain
//! integer would say "expected i64" and let 0 or 70000 through as a port:
//! [`PortNumber`] and [`Replicas`] say what is expected in the manifest's
//! terms.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};

use super::{ManifestError, field_err};

/// Deserializes the document `value`, naming the field of the first error.
pub(super) fn from_value<T: DeserializeOwned>(
    value: serde_yaml::Value,
) -> Result<T, ManifestError> {
    from_value_at("", value)
}

/// Deserializes `value`, found at `prefix` in the document (empty for the
/// document itself), naming the field of the first error.
pub(super) fn from_value_at<T: DeserializeOwned>(
    prefix: &str,
    value: serde_yaml::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = match (prefix, e.path().to_string()) {
            (_, p) if p == "." => prefix.to_string(),
            ("", p) => p,
            (_, p) if p.starts_with('[') => format!("{prefix}{p}"),
            (_, p) => format!("{prefix}.{p}"),
        };
        field_error(&path, &e.into_inner().to_string())
    })
}

/// serde's `message` about the value at `path` (empty for the document) as
/// a field error. The path of an unknown field ends with it; a missing
/// field is named in the path too, as the parser's own checks do.
fn field_error(path: &str, message: &str) -> ManifestError {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match (path, missing) {
        ("", Some(field)) => field_err(field, "missing"),
        (_, Some(field)) => field_err(format!("{path}.{field}"), "missing"),
        ("", None) => field_err("(document)", message),
        (_, None) => field_err(path, message),
    }
}

/// A TCP/UDP/SCTP port number, 1-65535.
#[derive(Debug, Clone, Copy)]
pub(super) struct PortNumber(pub u16);

impl<'de> Deserialize<'de> for PortNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = d.deserialize_any(WholeNumber {
            expected: "a port number (1-65535)",
            min: 1,
            max: u16::MAX.into(),
        })?;
        Ok(Self(n as u16))
    }
}

/// A number of replicas; its bounds are checked with the manifest
/// (`validate`), which says which one is broken.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replicas(pub u32);

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = d.deserialize_any(WholeNumber {
            expected: "a number of replicas (a whole number, e.g. 2)",
            min: 0,
            max: u32::MAX.into(),
        })?;
        Ok(Self(n as u32))
    }
}

/// An integer within `min..=max`, anything else refused with `expected`.
struct WholeNumber {
    expected: &'static str,
    min: u64,
    max: u64,
}

impl<'de> Visitor<'de> for WholeNumber {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&n) {
            Ok(n)
        } else {
            Err(E::invalid_value(Unexpected::Unsigned(n), &self))
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
        }
    }
}
