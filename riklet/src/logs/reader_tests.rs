//! The reader on log directories written here by hand, following the
//! layout contract (`layout`), without a writer.

use std::fs;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;

use super::*;

/// Record `n`: written at second `n` of 2026, text `line<n>`.
fn rec(n: u32) -> String {
    format!(
        "2026-01-01T00:{:02}:{:02}.000000000Z stdout F line{n}\n",
        n / 60,
        n % 60
    )
}

fn recs(range: std::ops::Range<u32>) -> String {
    range.map(rec).collect()
}

fn time(n: u32) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rec(n).split(' ').next().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn write_gz(path: &Path, text: &str) {
    let mut gz = GzEncoder::new(fs::File::create(path).unwrap(), Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

/// Run 0 in three files: lines 0..10 compressed, 10..20 rotated plain,
/// 20..25 current.
fn three_files(dir: &Path) {
    write_gz(&dir.join("0.log.20260101-000010.000000.gz"), &recs(0..10));
    fs::write(dir.join("0.log.20260101-000020.000000"), recs(10..20)).unwrap();
    fs::write(dir.join("0.log"), recs(20..25)).unwrap();
}

fn read(dir: &Path, selection: &Selection) -> (String, u64) {
    let n = pick_run(dir, selection.previous).unwrap();
    let run = Run::open(dir, n, None).unwrap();
    let mut got = Vec::new();
    let offset = read_run(&run, selection, &mut |d| {
        got.extend_from_slice(d);
        true
    })
    .unwrap();
    (String::from_utf8(got).unwrap(), offset)
}

#[test]
fn reads_rotated_compressed_and_current_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    three_files(dir.path());
    let (all, offset) = read(dir.path(), &Selection::default());
    assert_eq!(all, recs(0..25));
    assert_eq!(offset, recs(20..25).len() as u64);
}

#[test]
fn tail_counts_lines_across_files() {
    let dir = tempfile::tempdir().unwrap();
    three_files(dir.path());
    let tail = |n| {
        let s = Selection {
            tail: Some(n),
            ..Selection::default()
        };
        read(dir.path(), &s).0
    };
    assert_eq!(tail(3), recs(22..25));
    assert_eq!(tail(5), recs(20..25));
    assert_eq!(tail(8), recs(17..25));
    assert_eq!(tail(18), recs(7..25));
    assert_eq!(tail(100), recs(0..25));
    assert_eq!(tail(0), "");
}

#[test]
fn since_and_tail_together() {
    let dir = tempfile::tempdir().unwrap();
    three_files(dir.path());
    let since = Selection {
        since: Some(time(8)),
        ..Selection::default()
    };
    assert_eq!(read(dir.path(), &since).0, recs(8..25));
    let both = Selection {
        tail: Some(30),
        since: Some(time(12)),
        ..Selection::default()
    };
    assert_eq!(read(dir.path(), &both).0, recs(12..25));
    let late = Selection {
        since: Some(time(99)),
        ..Selection::default()
    };
    assert_eq!(read(dir.path(), &late).0, "");
}

#[test]
fn a_long_line_counts_once_and_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let long = "2026-01-01T00:00:05.0Z stdout P aaa\n\
                2026-01-01T00:00:06.0Z stdout P bbb\n\
                2026-01-01T00:00:07.0Z stdout F ccc\n";
    fs::write(
        dir.path().join("0.log"),
        format!("{}{long}{}", rec(1), rec(8)),
    )
    .unwrap();
    let tail = Selection {
        tail: Some(2),
        ..Selection::default()
    };
    assert_eq!(read(dir.path(), &tail).0, format!("{long}{}", rec(8)));
    // Its first record is before the time, so the whole line is left out.
    let since = Selection {
        since: Some(time(6)),
        ..Selection::default()
    };
    assert_eq!(read(dir.path(), &since).0, rec(8));
}

#[test]
fn previous_reads_the_run_before_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("0.log"), recs(0..3)).unwrap();
    let previous = Selection {
        previous: true,
        ..Selection::default()
    };
    assert!(matches!(
        pick_run(d, true),
        Err(LogError::NoPrevious { .. })
    ));
    fs::write(d.join("1.log.20260101-000010.000000"), recs(3..5)).unwrap();
    fs::write(d.join("1.log"), recs(5..7)).unwrap();
    assert_eq!(read(d, &previous).0, recs(0..3));
    assert_eq!(read(d, &Selection::default()).0, recs(3..7));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        pick_run(empty.path(), false),
        Err(LogError::NoLogs { .. })
    ));
}

/// A follower of `dir` after reading all of its current run.
fn follower(dir: &Path) -> (Follower, String) {
    let run = Run::open(dir, pick_run(dir, false).unwrap(), None).unwrap();
    let mut got = Vec::new();
    let offset = read_run(&run, &Selection::default(), &mut |d| {
        got.extend_from_slice(d);
        true
    })
    .unwrap();
    (
        Follower::after(dir, run, offset),
        String::from_utf8(got).unwrap(),
    )
}

fn poll(f: &mut Follower) -> (String, Progress) {
    let mut got = Vec::new();
    let progress = f
        .poll(&mut |d| {
            got.extend_from_slice(d);
            true
        })
        .unwrap();
    (String::from_utf8(got).unwrap(), progress)
}

fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn follows_new_lines_and_waits_for_a_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("0.log"), recs(0..2)).unwrap();
    let (mut f, first) = follower(d);
    assert_eq!(first, recs(0..2));
    assert_eq!(poll(&mut f), (String::new(), Progress::Going));
    let two = rec(2);
    append(&d.join("0.log"), &two[..10]);
    assert_eq!(poll(&mut f).0, "");
    append(&d.join("0.log"), &two[10..]);
    assert_eq!(poll(&mut f).0, two);
}

#[test]
fn follows_across_a_rotation_without_loss_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("0.log"), recs(0..2)).unwrap();
    let (mut f, _) = follower(d);
    // Lines written before the rename, then a new current file.
    append(&d.join("0.log"), &recs(2..4));
    fs::rename(d.join("0.log"), d.join("0.log.20260101-000004.000000")).unwrap();
    fs::write(d.join("0.log"), recs(4..6)).unwrap();
    assert_eq!(poll(&mut f).0, recs(2..6));
    assert_eq!(poll(&mut f).0, "");
    append(&d.join("0.log"), &recs(6..7));
    assert_eq!(poll(&mut f).0, recs(6..7));
}

#[test]
fn follows_across_two_rotations_between_polls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("0.log"), recs(0..2)).unwrap();
    let (mut f, _) = follower(d);
    append(&d.join("0.log"), &recs(2..3));
    // First rotation, then a second one that compresses the first file.
    let first = d.join("0.log.20260101-000003.000000");
    fs::rename(d.join("0.log"), &first).unwrap();
    fs::write(d.join("0.log"), recs(3..6)).unwrap();
    fs::rename(d.join("0.log"), d.join("0.log.20260101-000006.000000")).unwrap();
    write_gz(
        &d.join("0.log.20260101-000003.000000.gz"),
        &fs::read_to_string(&first).unwrap(),
    );
    fs::remove_file(&first).unwrap();
    fs::write(d.join("0.log"), recs(6..8)).unwrap();
    assert_eq!(poll(&mut f).0, recs(2..8));
    append(&d.join("0.log"), &recs(8..9));
    assert_eq!(poll(&mut f).0, recs(8..9));
}

#[test]
fn follows_across_a_restart_and_ends_when_the_directory_goes() {
    let pod = tempfile::tempdir().unwrap();
    let d = pod.path().join("main");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("0.log"), recs(0..2)).unwrap();
    let (mut f, _) = follower(&d);
    append(&d.join("0.log"), &recs(2..3));
    fs::write(d.join("1.log"), recs(3..5)).unwrap();
    assert_eq!(poll(&mut f).0, recs(2..5));
    append(&d.join("1.log"), &recs(5..6));
    assert_eq!(poll(&mut f).0, recs(5..6));
    fs::remove_dir_all(&d).unwrap();
    assert_eq!(poll(&mut f), (String::new(), Progress::Gone));
}
