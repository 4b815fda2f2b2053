//! `ResourceStatus` names as shown by `rik` and stored by the scheduler.

use crate::common::ResourceStatus;

/// The upper-case name used in tables and JSON (`RUNNING`, `FAILED`, …).
pub fn name(status: ResourceStatus) -> &'static str {
    status.as_str_name()
}

/// Parses a name produced by [`name`]; unknown names map to `UNKNOWN`.
pub fn from_name(name: &str) -> ResourceStatus {
    ResourceStatus::from_str_name(name).unwrap_or(ResourceStatus::Unknown)
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
