//! Tracepoint record layouts, read from tracefs at load time.
//!
//! The tracepoint programs read their fields at offsets the loader passes
//! in as globals, so that the object does not depend on the record layout
//! of the kernel it was built against. `events/<category>/<event>/format`
//! lists each field as
//! `field:pid_t prev_pid;<TAB>offset:24;<TAB>size:4;<TAB>signed:1;`.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use nix::mount::{MsFlags, mount};
use riklet_common::{
    oom::MARK_VICTIM_PID_OFFSET,
    sched::{
        SWITCH_NEXT_PID_OFFSET, SWITCH_PREV_PID_OFFSET, SWITCH_PREV_STATE_OFFSET,
        WAKEUP_NEW_PID_OFFSET, WAKEUP_PID_OFFSET,
    },
    tcp::{RETRANSMIT_ERR_OFFSET, RETRANSMIT_SADDR_V6_OFFSET},
};
use tracing::debug;

use super::{ProbeError, Result, error::io_error};

/// Where tracefs is mounted nowadays, and where it used to be (below
/// debugfs). The first one is where a missing tracefs gets mounted.
const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracepoint fields the programs read, with the globals that receive
/// their offsets. `prev_state` is a `long`; the program reads its low byte.
const FIELDS: [Field; 8] = [
    Field {
        category: "sched",
        event: "sched_switch",
        field: "prev_pid",
        sizes: &[4],
        global: SWITCH_PREV_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_switch",
        field: "prev_state",
        sizes: &[4, 8],
        global: SWITCH_PREV_STATE_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_switch",
        field: "next_pid",
        sizes: &[4],
        global: SWITCH_NEXT_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_wakeup",
        field: "pid",
        sizes: &[4],
        global: WAKEUP_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_wakeup_new",
        field: "pid",
        sizes: &[4],
        global: WAKEUP_NEW_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "oom",
        event: "mark_victim",
        field: "pid",
        sizes: &[4],
        global: MARK_VICTIM_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "tcp",
        event: "tcp_retransmit_skb",
        field: "saddr_v6",
        sizes: &[16],
        global: RETRANSMIT_SADDR_V6_OFFSET,
        optional: false,
    },
    Field {
        category: "tcp",
        event: "tcp_retransmit_skb",
        field: "err",
        sizes: &[4],
        global: RETRANSMIT_ERR_OFFSET,
        optional: true,
    },
];

/// One tracepoint field a program reads.
#[derive(Clone, Copy, Debug)]
struct Field {
    /// Event category (`sched`).
    category: &'static str,
    /// Event name (`sched_switch`).
    event: &'static str,
    /// Field name (`prev_pid`).
    field: &'static str,
    /// Sizes in bytes the program can read the field with.
    sizes: &'static [u32],
    /// The eBPF global receiving the offset.
    global: &'static str,
    /// Whether the program copes without it (offset 0, which no event's
    /// own field has: `common_type` is there), for fields that only newer
    /// kernels have.
    optional: bool,
}

/// The tracefs mount point holding `events/`; mounts tracefs at
/// `/sys/kernel/tracing` if neither usual place has it.
pub(super) fn tracefs() -> Result<PathBuf> {
    // Two loads racing here (tests do) would mount twice.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _serialised = MOUNTING.lock().unwrap_or_else(PoisonError::into_inner);

    if let Some(found) = find() {
        return Ok(found);
    }
    let mount_point = Path::new(TRACEFS_MOUNTS[0]);
    let mounted = mount(
        Some("tracefs"),
        mount_point,
        Some("tracefs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    match (mounted, find()) {
        (_, Some(found)) => {
            debug!(path = %found.display(), "mounted tracefs");
            Ok(found)
        }
        (Err(source), None) => Err(ProbeError::Tracefs {
            source: Some(source),
        }),
        (Ok(()), None) => Err(ProbeError::Tracefs { source: None }),
    }
}

fn find() -> Option<PathBuf> {
    TRACEFS_MOUNTS
        .iter()
        .map(Path::new)
        .find(|mount| mount.join("events").is_dir())
        .map(Path::to_owned)
}

/// The globals that receive the offsets of [`FIELDS`], with the offsets
/// the tracefs mounted at `tracefs` gives.
pub(super) fn globals(tracefs: &Path) -> Result<Vec<(&'static str, u32)>> {
    FIELDS
        .iter()
        .map(|field| Ok((field.global, offset(tracefs, field)?)))
        .collect()
}

/// The byte offset of `field` in its event's records, checked against the
/// sizes the program can read; 0 for a missing optional field.
fn offset(tracefs: &Path, field: &Field) -> Result<u32> {
    let path = tracefs
        .join("events")
        .join(field.category)
        .join(field.event)
        .join("format");
    let format = fs::read_to_string(&path).map_err(io_error("reading tracepoint format", &path))?;
    let Some((offset, size)) = parse_field(&format, field.field) else {
        if field.optional {
            debug!(
                event = field.event,
                field = field.field,
                "optional tracepoint field absent"
            );
            return Ok(0);
        }
        return Err(ProbeError::TracepointField {
            path,
            field: field.field,
        });
    };
    if !field.sizes.contains(&size) {
        return Err(ProbeError::TracepointFieldSize {
            path,
            field: field.field,
            size,
            expected: field.sizes,
        });
    }
    Ok(offset)
}

/// `(offset, size)` of a field in the text of a `format` file.
fn parse_field(format: &str, name: &str) -> Option<(u32, u32)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        // "pid_t prev_pid", "char prev_comm[16]", "__data_loc char[] comm".
        let declared = declaration.split_whitespace().next_back()?;
        let declared = declared.split_once('[').map_or(declared, |(n, _)| n);
        if declared != name {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                size = value.parse().ok();
            }
        }
        Some((offset?, size?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 335
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d\", REC->prev_comm, REC->prev_pid
";

    #[test]
    fn parses_fields_of_a_format_file() {
        assert_eq!(parse_field(SCHED_SWITCH, "prev_pid"), Some((24, 4)));
        assert_eq!(parse_field(SCHED_SWITCH, "prev_state"), Some((32, 8)));
        assert_eq!(parse_field(SCHED_SWITCH, "next_pid"), Some((56, 4)));
        assert_eq!(parse_field(SCHED_SWITCH, "prev_comm"), Some((8, 16)));
        assert_eq!(parse_field(SCHED_SWITCH, "pid"), None);
        assert_eq!(parse_field(SCHED_SWITCH, "next_prio"), None);
        assert_eq!(
            parse_field(
                "\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;",
                "comm"
            ),
            Some((12, 4))
        );
    }
}
