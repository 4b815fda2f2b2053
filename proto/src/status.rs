//! The status contract: the JSON objects a riklet puts in the `metrics`
//! strings of the RIK protocol, typed once for the riklet that writes them
//! and for `rik` that reads them back (the scheduler stores them as text).
//!
//! # Layout
//! - [`app`]: an instance's status (`InstanceMetric.metrics`): seed 004's
//!   realtime app object ([`RealtimeApp`]) extended by the riklet
//!   ([`AppStatus`]), and the short forms sent without a pod record
//!   ([`ShortStatus`]).
//! - [`usage`]: what the riklet measured of a pod and its containers.
//! - [`lifecycle`]: container state reasons, the pod's events, and the
//!   STATUS kubectl would print for a pod.
//! - [`node`]: a node's heartbeat (`WorkerMetric.metrics`): RIK's keys and
//!   seed 004's node resources and realtime node objects.
//! - here: `ResourceStatus` names, and the rules shared by every object.
//!
//! # Writing
//! [`AppStatus::to_json`] and the other `to_json` methods give the keys in
//! alphabetical order (a `serde_json::Map`), the bytes riklets have always
//! sent. Absent figures are `null`, never 0.
//!
//! # Reading
//! Readers get reports from other producers too (RIK's riklet, older or
//! newer riklets), so `from_json` never fails: unknown keys are ignored,
//! and a key that is missing, `null` or of another shape reads as its
//! default (`None` for an optional one), without hiding the other keys.

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::common::ResourceStatus;

/// `from_json`, `to_json` and `to_value` for an object that travels alone
/// in a `metrics` string.
macro_rules! metrics_object {
    ($object:ty) => {
        impl $object {
            /// Reads a report leniently (see the [module](crate::status) doc).
            pub fn from_json(text: &str) -> Self {
                crate::status::from_json(text)
            }

            /// The wire form, keys in alphabetical order.
            pub fn to_json(&self) -> String {
                crate::status::to_json(self)
            }

            /// As a JSON value.
            pub fn to_value(&self) -> serde_json::Value {
                crate::status::to_value(self)
            }
        }
    };
}

pub mod app;
pub mod lifecycle;
pub mod node;
mod sorted;
pub mod usage;

pub use app::{AppStatus, ContainerState, ContainerStatus, LastExit, RealtimeApp, ShortStatus};
pub use lifecycle::{EventType, LifecycleEvent, display_status, most_telling};
pub use node::{
    Disk, NodeCpu, NodeMemory, NodeMetrics, NodeNetwork, NodeNetworking, NodeResources, OsVersion,
    RealtimeNode, RikCpu, RikMemory,
};
pub use usage::{
    ContainerMemory, ContainerUsage, CpuTimes, MemoryUsage, NetworkUsage, PodCpu, PodEvent,
    PodEventKind, PodUsage, RunQueue,
};

/// The upper-case name used in tables and JSON (`RUNNING`, `FAILED`, …).
pub fn name(status: ResourceStatus) -> &'static str {
    status.as_str_name()
}

/// Parses a name produced by [`name`]; unknown names map to `UNKNOWN`.
pub fn from_name(name: &str) -> ResourceStatus {
    ResourceStatus::from_str_name(name).unwrap_or(ResourceStatus::Unknown)
}

/// An object as JSON text, keys in alphabetical order: the text of its
/// [`to_value`], written without building the value.
fn to_json<T: Serialize>(object: &T) -> String {
    sorted::to_string(object).expect("status objects serialize: every map key is a string")
}

/// An object as a JSON value.
fn to_value<T: Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("status objects serialize: every map key is a string")
}

/// Reads an object leniently (see the module doc): text that is not a JSON
/// object at all reads as the default object.
fn from_json<T: DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_default()
}

/// `deserialize_with` for a key another producer may have written
/// differently: `null` or a value of another shape reads as the default,
/// so that it does not make the whole object unreadable.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).unwrap_or_default())
}

/// `serialize_with` for a `ResourceStatus`: its [`name`].
fn serialize_state<S: Serializer>(
    status: &ResourceStatus,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name(*status))
}

/// `deserialize_with` for a `ResourceStatus` name; anything else reads as
/// `UNKNOWN`.
fn deserialize_state<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ResourceStatus, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => from_name(&s),
        _ => ResourceStatus::Unknown,
    })
}

/// Test support: an object read from `fixture` and written again, as a
/// value, next to the fixture's own value.
#[cfg(test)]
fn round_trip<T: DeserializeOwned + Serialize>(fixture: &str) -> (Value, Value) {
    let typed: T = serde_json::from_str(fixture).expect("fixture reads");
    let want: Value = serde_json::from_str(fixture).expect("fixture is JSON");
    (to_value(&typed), want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            ResourceStatus::Pending,
            ResourceStatus::Running,
            ResourceStatus::Failed,
            ResourceStatus::Terminated,
            ResourceStatus::Creating,
            ResourceStatus::Destroying,
        ] {
            assert_eq!(from_name(name(s)), s);
        }
        assert_eq!(from_name("bogus"), ResourceStatus::Unknown);
    }
}
