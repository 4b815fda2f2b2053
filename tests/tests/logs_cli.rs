//! `rik logs` end to end, like `kubectl logs`: `--tail`, `--since`,
//! `--timestamps`, `-c`, `--instance`, `--previous` after a restart, two
//! instances prefixed and sorted by time, and `-f` seeing new lines,
//! following a restart and a rotation, and ending when the app is deleted.

use std::time::Duration;

use riklet_e2e::{Cluster, Mode, wait_for};
use serde_json::Value;

/// Generous bound for a pod to start, a line to show or a follow to end.
const SOON: Duration = Duration::from_secs(40);

/// A manifest of bare-process containers, each `(name, shell script)`,
/// with `extra` lines of the spec (indented by 2).
fn app(name: &str, replicas: u32, extra: &str, containers: &[(&str, &str)]) -> String {
    let mut m = format!(
        "kind: Pod\nname: {name}\nreplicas: {replicas}\nspec:\n  restartPolicy: Always\n{extra}  containers:\n"
    );
    for (c, script) in containers {
        let args = serde_json::to_string(&["sh", "-c", script]).expect("args");
        m.push_str(&format!(
            "    - name: {c}\n      exec: /bin/busybox\n      args: {args}\n"
        ));
    }
    m
}

fn apply(cluster: &Cluster, manifest: &str) {
    let out = cluster.apply(manifest, true);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rik logs ARGS` once it prints something satisfying `pred`.
fn logs_when(cluster: &Cluster, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
    wait_for(SOON, &format!("rik {}", args.join(" ")), || {
        let out = cluster.rik(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && pred(&text)).then_some(text)
    })
}

/// The instance ids of an app (`rik get app -o json`: one object, or an
/// array with several instances).
fn instance_ids(cluster: &Cluster, name: &str) -> Vec<String> {
    let v = cluster.app(name);
    let all = match &v {
        Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    let mut ids: Vec<String> = all
        .iter()
        .map(|a| a["appId"].as_str().expect("appId").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn tail_since_timestamps_container_and_instance() {
    let cluster = Cluster::start(Mode::Standalone);
    apply(
        &cluster,
        &app(
            "talk",
            1,
            "",
            &[
                ("a", "seq 1 5; sleep 6; echo new; exec sleep 3600"),
                ("b", "echo from-b; exec sleep 3600"),
            ],
        ),
    );
    let a = logs_when(&cluster, &["logs", "talk", "-c", "a"], |t| t.contains('5'));
    assert_eq!(a, "1\n2\n3\n4\n5\n");
    assert_eq!(
        cluster.rik_ok(&["logs", "talk", "-c", "a", "--tail", "2"]),
        "4\n5\n"
    );
    assert_eq!(cluster.rik_ok(&["logs", "talk", "-c", "b"]), "from-b\n");
    // Both containers, by time: a's lines were written before b's (a
    // starts first) or after; every line is there once.
    let both = cluster.rik_ok(&["logs", "talk"]);
    let mut lines: Vec<&str> = both.lines().collect();
    lines.sort();
    assert_eq!(lines, ["1", "2", "3", "4", "5", "from-b"], "{both}");

    // --timestamps: the RFC 3339 time the riklet stored, then the text.
    let stamped = cluster.rik_ok(&["logs", "talk", "-c", "a", "--tail", "1", "--timestamps"]);
    let (time, text) = stamped.trim_end().split_once(' ').expect("time and text");
    assert_eq!(text, "5", "{stamped}");
    assert!(
        time.len() > 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "not an RFC 3339 time: {stamped:?}"
    );

    // --since: `new` comes 6 s after the numbers; a 3 s window right after
    // it shows has it and not them.
    logs_when(&cluster, &["logs", "talk", "-c", "a"], |t| {
        t.contains("new")
    });
    assert_eq!(
        cluster.rik_ok(&["logs", "talk", "-c", "a", "--since", "3s"]),
        "new\n"
    );
    assert_eq!(
        cluster.rik_ok(&["logs", "talk", "-c", "a", "--since", "1h"]),
        "1\n2\n3\n4\n5\nnew\n"
    );

    // --instance: the one instance by its id; an unknown one is refused.
    let id = &instance_ids(&cluster, "talk")[0];
    assert_eq!(
        cluster.rik_ok(&["logs", "talk", "-c", "b", "--instance", id]),
        "from-b\n"
    );
    let out = cluster.rik(&["logs", "talk", "--instance", "talk-nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("instance talk-nope not found"),
        "{err}"
    );
    // No previous run yet.
    let out = cluster.rik(&["logs", "talk", "-c", "a", "--previous"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no previous run"),
        "{err}"
    );
    cluster.rik_ok(&["delete", "talk"]);
}

#[test]
fn two_instances_prefixed_and_sorted_by_time() {
    let cluster = Cluster::start(Mode::Standalone);
    let script = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.2; done; exec sleep 3600";
    apply(&cluster, &app("pair", 2, "", &[("c", script)]));
    let ids = instance_ids(&cluster, "pair");
    assert_eq!(ids.len(), 2, "{ids:?}");
    let out = logs_when(&cluster, &["logs", "pair", "--timestamps"], |t| {
        t.matches("tick 6").count() == 2
    });
    let mut times = Vec::new();
    for id in &ids {
        let mine: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("[{id}/c] ")))
            .collect();
        let texts: Vec<&str> = mine.iter().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            texts,
            (1..=6).map(|i| format!("tick {i}")).collect::<Vec<_>>(),
            "{out}"
        );
    }
    for line in out.lines() {
        let rest = line.split_once("] ").expect("prefixed").1;
        times.push(rest.split_once(' ').expect("time").0.to_string());
    }
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "lines not in time order:\n{out}");
    // One instance: not prefixed.
    let one = cluster.rik_ok(&["logs", "pair", "--instance", &ids[1], "--tail", "1"]);
    assert_eq!(one, "tick 6\n");
    cluster.rik_ok(&["delete", "pair"]);
}

#[test]
fn previous_run_and_follow_across_a_restart() {
    let cluster = Cluster::start(Mode::Standalone);
    // The first run exits (restartPolicy Always restarts it); later runs
    // find the marker and stay.
    let marker = format!("/tmp/riklet-e2e-logs-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let script = format!(
        "if [ -e {marker} ]; then echo second run; exec sleep 3600; fi; \
         touch {marker}; echo first run; sleep 3; exit 1"
    );
    apply(&cluster, &app("again", 1, "", &[("c", &script)]));
    let follow = cluster.rik_follow(&["logs", "again", "-f"]);
    assert_eq!(follow.line(SOON, "the first run's line"), "first run");
    assert_eq!(follow.line(SOON, "the second run's line"), "second run");
    assert_eq!(cluster.rik_ok(&["logs", "again"]), "second run\n");
    assert_eq!(
        cluster.rik_ok(&["logs", "again", "--previous"]),
        "first run\n"
    );
    assert_eq!(cluster.rik_ok(&["logs", "again", "-p", "--tail", "0"]), "");
    cluster.rik_ok(&["delete", "again"]);
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn follow_shows_new_lines_and_ends_when_the_app_is_deleted() {
    let cluster = Cluster::start(Mode::Standalone);
    let script = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done";
    apply(&cluster, &app("ticker", 1, "", &[("c", script)]));
    logs_when(&cluster, &["logs", "ticker"], |t| t.contains("tick 2"));
    // --tail 0: only lines to come.
    let mut follow = cluster.rik_follow(&["logs", "ticker", "-f", "--tail", "0"]);
    let first = follow.line(SOON, "a new line");
    let n: u32 = first
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {first:?}"));
    assert!(n > 2, "an old line was shown: {first:?}");
    assert_eq!(
        follow.line(SOON, "the line after"),
        format!("tick {}", n + 1)
    );
    cluster.rik_ok(&["delete", "ticker"]);
    wait_for(SOON, "the follow to end after the delete", || {
        (!follow.running()).then_some(())
    });
    assert_eq!(follow.stderr_text(), "");
}

#[test]
fn follow_across_rotations_loses_and_repeats_nothing() {
    let cluster = Cluster::start(Mode::Standalone);
    // 20,000 numbered lines in batches, about 40 rotations of 64 KiB;
    // the pause first lets the follow start before the first line.
    let script = "sleep 3; for b in $(seq 0 199); do seq $((b*100+1)) $((b*100+100)); \
                  sleep 0.02; done; exec sleep 3600";
    let limits = "  logs: {maxSize: 64Ki, maxFiles: 3}\n";
    apply(&cluster, &app("rotating", 1, limits, &[("c", script)]));
    let follow = cluster.rik_follow(&["logs", "rotating", "-f"]);
    let lines = follow.lines_until(Duration::from_secs(120), "line 20000", |l| l == "20000");
    let numbers: Vec<u32> = lines
        .iter()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
        .collect();
    let expected: Vec<u32> = (1..=20000).collect();
    if numbers != expected {
        let missing = expected.iter().filter(|n| !numbers.contains(n)).count();
        panic!(
            "{} lines, {missing} missing, first ones {:?}",
            numbers.len(),
            &numbers[..numbers.len().min(20)]
        );
    }
    let instance = &instance_ids(&cluster, "rotating")[0];
    let dir = cluster
        .log_dir()
        .join(format!("default_rotating_{instance}/c"));
    let rotated = std::fs::read_dir(&dir)
        .expect("log dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("0.log."))
        .count();
    assert!(rotated >= 1, "no rotated file in {}", dir.display());
    cluster.rik_ok(&["delete", "rotating"]);
}

/// A 1 MiB line and bytes that are not UTF-8 round-trip: stored as 16 KiB
/// `P` records ending with an `F`, the bytes kept as they are, and given
/// back whole by `rik logs` and as stored by `rik logs --raw`.
#[test]
fn a_one_mib_line_and_binary_output_round_trip() {
    const BIG: usize = 1 << 20;
    let cluster = Cluster::start(Mode::Standalone);
    apply(
        &cluster,
        &app(
            "bytes",
            1,
            "",
            &[(
                "main",
                &format!(
                    "printf 'a\\377\\376b\\000c\\n'; printf %0{BIG}d 0; echo; echo end; sleep 3600"
                ),
            )],
        ),
    );
    let binary: &[u8] = b"a\xff\xfeb\x00c\n";
    let big = format!("{}\n", "0".repeat(BIG));
    let expected = [binary, big.as_bytes(), b"end\n"].concat();
    let plain = wait_for(SOON, "rik logs bytes", || {
        let out = cluster.rik(&["logs", "bytes"]);
        (out.status.success() && out.stdout.ends_with(b"end\n")).then_some(out.stdout)
    });
    assert!(
        plain == expected,
        "rik logs changed the output ({} bytes)",
        plain.len()
    );

    let raw = cluster.rik(&["logs", "bytes", "--raw"]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let mut records = raw.stdout.split_inclusive(|b| *b == b'\n');
    let first = records.next().expect("the binary record");
    assert!(first.ends_with(b" stdout F a\xff\xfeb\x00c\n"), "{first:?}");
    let mut joined = Vec::new();
    let mut parts = 0;
    for record in records.by_ref() {
        let fields: Vec<&[u8]> = record.splitn(4, |b| *b == b' ').collect();
        assert_eq!(
            fields.len(),
            4,
            "a broken record {:?}",
            String::from_utf8_lossy(record)
        );
        assert_eq!(fields[1], b"stdout");
        let text = fields[3].strip_suffix(b"\n").expect("a record ends a line");
        joined.extend_from_slice(text);
        if fields[2] == b"F" {
            joined.push(b'\n');
            break;
        }
        assert_eq!(fields[2], b"P");
        assert_eq!(text.len(), 16 << 10, "a P record that is not 16 KiB");
        parts += 1;
    }
    // 64 records of 16 KiB: the last one `F`, or a 65th, empty, `F` when
    // the newline came in a read of its own.
    assert!(
        parts >= BIG / (16 << 10) - 1,
        "{parts} P records for a 1 MiB line"
    );
    assert!(
        joined == big.as_bytes(),
        "the 1 MiB line's records do not join to it"
    );
    let last = records.next().expect("the end record");
    assert!(last.ends_with(b" stdout F end\n"), "{last:?}");
    cluster.rik_ok(&["delete", "bytes"]);
}
