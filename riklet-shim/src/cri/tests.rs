use std::fs;
use std::io::Read;
use std::path::Path;

use super::*;

fn spec(dir: &Path, restart_count: u32, max_size: u64, max_files: u32) -> LogSpec {
    LogSpec {
        dir: dir.join("default_app_app-x1/c"),
        restart_count,
        rotation: Rotation {
            max_size,
            max_files,
        },
    }
}

/// A file's content, gunzipped if it is compressed.
fn content(f: &layout::LogFile) -> Vec<u8> {
    let raw = fs::read(&f.path).unwrap();
    if !f.compressed {
        return raw;
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The text of each record (after `<time> <stream> <tag> `), with its tag.
fn records(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut fields = l.splitn(4, |&b| b == b' ');
            let ts = std::str::from_utf8(fields.next().unwrap()).unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
            let stream = fields.next().unwrap();
            assert!(stream == b"stdout" || stream == b"stderr");
            let tag = String::from_utf8(fields.next().unwrap().to_vec()).unwrap();
            (tag, fields.next().unwrap_or_default().to_vec())
        })
        .collect()
}

#[test]
fn writes_cri_records_and_splits_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 0, 10 << 20, 5);
    let w = CriWriter::open(&spec).unwrap();
    let long = vec![b'a'; MAX_RECORD + 10];
    let mut input = b"hello\nworld\n".to_vec();
    input.extend_from_slice(&long);
    input.extend_from_slice(b"\nno newline");
    w.copy_from(Stream::Stdout, &input[..]).unwrap();
    w.copy_from(Stream::Stderr, &b"oops\n"[..]).unwrap();
    let text = fs::read_to_string(spec.current_file()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.splitn(4, ' ').collect()).collect();
    assert!(chrono::DateTime::parse_from_rfc3339(fields[0][0]).is_ok());
    assert_eq!(&fields[0][1..], ["stdout", "F", "hello"]);
    assert_eq!(fields[2][2], "P");
    assert_eq!(fields[2][3].len(), MAX_RECORD);
    assert_eq!(&fields[3][2..], ["F", "aaaaaaaaaa"]);
    assert_eq!(&fields[4][1..], ["stdout", "F", "no newline"]);
    assert_eq!(&fields[5][1..], ["stderr", "F", "oops"]);
}

#[test]
fn a_mebibyte_line_and_binary_bytes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 0, 10 << 20, 5);
    let w = CriWriter::open(&spec).unwrap();
    let line: Vec<u8> = (0..(1 << 20) + 5)
        .map(|i: u32| match (i % 251) as u8 {
            b'\n' => 0xff,
            b => b,
        })
        .collect();
    let mut input = line.clone();
    input.push(b'\n');
    input.extend_from_slice(b"\xc3\x28 not utf-8\n");
    w.copy_from(Stream::Stdout, &input[..]).unwrap();
    let recs = records(&fs::read(spec.current_file()).unwrap());
    // 64 partial records of 16 KiB, the 5 last bytes in a full one.
    assert_eq!(recs.len(), 66);
    assert!(recs[..64].iter().all(|(tag, _)| tag == "P"));
    assert_eq!(recs[64].0, "F");
    let joined: Vec<u8> = recs[..65].iter().flat_map(|(_, t)| t.clone()).collect();
    assert_eq!(joined, line);
    assert_eq!(recs[65], ("F".into(), b"\xc3\x28 not utf-8".to_vec()));
}

/// Numbered lines `line-<n>` for `n` in `range`, `pad` bytes of padding.
fn numbered(range: std::ops::Range<u32>, pad: usize) -> Vec<u8> {
    range
        .flat_map(|n| format!("line-{n:07} {}\n", "x".repeat(pad)).into_bytes())
        .collect()
}

/// The line numbers in the files, oldest file first.
fn numbers(files: &[layout::LogFile]) -> Vec<u32> {
    files
        .iter()
        .flat_map(|f| records(&content(f)))
        .map(|(_, text)| {
            let text = String::from_utf8(text).unwrap();
            text[5..12].parse().unwrap()
        })
        .collect()
}

#[test]
fn rotates_at_the_size_limit_keeps_the_count_and_compresses_older_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 0, 64 << 10, 3);
    let w = CriWriter::open(&spec).unwrap();
    // Several copies, so that rotations fall inside and between batches.
    for start in (0..20_000).step_by(1_500) {
        let input = numbered(start..(start + 1_500).min(20_000), 40);
        w.copy_from(Stream::Stdout, &input[..]).unwrap();
    }
    w.finish(Duration::from_secs(10));
    let files = layout::list(&spec.dir).unwrap();
    assert_eq!(files.len(), 3, "{files:#?}");
    assert!(files[0].compressed && files[0].rotated.is_some());
    assert!(!files[1].compressed && files[1].rotated.is_some());
    assert_eq!(files[2].rotated, None);
    assert_eq!(files[2].path, spec.current_file());
    for f in &files {
        assert!(content(f).len() as u64 <= 64 << 10, "{}", f.path.display());
        assert!(content(f).ends_with(b"\n"));
    }
    // Contiguous from the oldest kept line to the last one written.
    let kept = numbers(&files);
    let first = kept[0];
    assert!(first > 0, "the oldest files were removed");
    assert_eq!(kept, (first..20_000).collect::<Vec<_>>());
    assert_eq!(w.dropped(), 0);
    // No temporary file left behind.
    let names = fs::read_dir(&spec.dir).unwrap().count();
    assert_eq!(names, 4, "3 log files and {DROPPED_FILE}");
}

#[test]
fn rotations_within_one_second_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 2, 64 << 10, 1000);
    let w = CriWriter::open(&spec).unwrap();
    w.copy_from(Stream::Stdout, &numbered(0..30_000, 100)[..])
        .unwrap();
    w.finish(Duration::from_secs(10));
    let files = layout::list(&spec.dir).unwrap();
    assert!(files.len() > 40, "{}", files.len());
    assert!(files.iter().all(|f| f.restart_count == 2));
    assert_eq!(numbers(&files), (0..30_000).collect::<Vec<_>>());
}

#[test]
fn one_file_only_is_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 0, 64 << 10, 1);
    let w = CriWriter::open(&spec).unwrap();
    w.copy_from(Stream::Stdout, &numbered(0..5_000, 40)[..])
        .unwrap();
    let files = layout::list(&spec.dir).unwrap();
    assert_eq!(files.len(), 1, "{files:#?}");
    let kept = numbers(&files);
    assert_eq!(kept, (kept[0]..5_000).collect::<Vec<_>>());
}

#[test]
fn a_new_run_removes_the_runs_before_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..3 {
        let spec = spec(dir.path(), run, 64 << 10, 3);
        let w = CriWriter::open(&spec).unwrap();
        w.copy_from(Stream::Stdout, &numbered(0..2_000, 40)[..])
            .unwrap();
        w.finish(Duration::from_secs(10));
    }
    let files = layout::list(&spec(dir.path(), 0, 0, 0).dir).unwrap();
    let runs: std::collections::BTreeSet<u32> = files.iter().map(|f| f.restart_count).collect();
    assert_eq!(runs, [1, 2].into());
    // Each run counts its own files.
    assert_eq!(files.iter().filter(|f| f.restart_count == 1).count(), 3);
}

#[test]
fn a_removed_directory_is_made_anew() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 0, 10 << 20, 5);
    let w = CriWriter::open(&spec).unwrap();
    w.copy_from(Stream::Stdout, &b"before\n"[..]).unwrap();
    fs::remove_dir_all(dir.path().join("default_app_app-x1")).unwrap();
    w.copy_from(Stream::Stdout, &b"after\n"[..]).unwrap();
    let recs = records(&fs::read(spec.current_file()).unwrap());
    assert_eq!(recs, [("F".into(), b"after".to_vec())]);
    assert_eq!(w.dropped(), 0);
}

#[test]
fn failed_writes_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 0, 64 << 10, 3);
    fs::create_dir_all(&spec.dir).unwrap();
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", spec.current_file()).unwrap();
    let w = CriWriter::open(&spec).unwrap();
    w.copy_from(Stream::Stdout, &numbered(0..1_000, 40)[..])
        .unwrap();
    let dropped = w.dropped();
    // Every byte of every record: its text and the CRI prefix.
    assert!(dropped > 1_000 * 53, "{dropped}");
    assert_eq!(read_dropped(&spec.dir), dropped);
    // The count goes on across runs of the container.
    fs::remove_file(spec.current_file()).unwrap();
    let w = CriWriter::open(&spec).unwrap();
    assert_eq!(w.dropped(), dropped);
}
