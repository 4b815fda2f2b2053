use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::*;

/// A CRI line whose first bytes differ from every other's.
fn line(i: usize) -> String {
    format!("2026-12-02T19:20:03.{i:09}Z stdout F line {i}\n")
}

fn append(path: &Path, range: std::ops::RangeInclusive<usize>) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in range {
        f.write_all(line(i).as_bytes()).unwrap();
    }
}

fn labels() -> Arc<Labels> {
    Arc::new(labels_of("default_web_web-1", "main", "n1").unwrap())
}

/// Every line number the tail gives until it is idle, and its last place.
fn drain(tail: &mut Tail) -> (Vec<usize>, Option<Position>) {
    let mut seen = Vec::new();
    let mut end = None;
    while let Some(b) = tail.next_batch(3).unwrap() {
        for r in &b.records {
            let text = String::from_utf8(r.message.clone()).unwrap();
            seen.push(text["line ".len()..].parse().unwrap());
        }
        end = Some(b.end);
    }
    assert!(tail.idle());
    (seen, end)
}

/// `0.log.<stamp of now>`, a rotation between two instants apart from
/// the shipper's.
fn rotated(dir: &Path) -> PathBuf {
    std::thread::sleep(Duration::from_millis(2));
    let path = dir.join(layout::rotated_name(0, SystemTime::now()));
    std::thread::sleep(Duration::from_millis(2));
    path
}

fn gzip(path: &Path) {
    let data = fs::read(path).unwrap();
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let mut enc = GzEncoder::new(fs::File::create(&gz).unwrap(), Compression::fast());
    enc.write_all(&data).unwrap();
    enc.finish().unwrap();
    fs::remove_file(path).unwrap();
}

#[test]
fn follows_rotation_by_inode() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("0.log");
    append(&current, 1..=3);
    let mut tail = Tail::new("k".into(), dir.path().into(), labels(), None);
    assert_eq!(drain(&mut tail).0, vec![1, 2, 3]);
    // Written before the rotation, read after it, through the same inode.
    append(&current, 4..=5);
    fs::rename(&current, rotated(dir.path())).unwrap();
    append(&current, 6..=7);
    let (seen, end) = drain(&mut tail);
    assert_eq!(seen, vec![4, 5, 6, 7]);
    // From the checkpoint, nothing again; then what follows.
    let mut again = Tail::new("k".into(), dir.path().into(), labels(), end);
    assert_eq!(drain(&mut again).0, Vec::<usize>::new());
    append(&current, 8..=8);
    assert_eq!(drain(&mut again).0, vec![8]);
    // A restart of the container: the next run's file follows.
    append(&dir.path().join("1.log"), 9..=9);
    assert_eq!(drain(&mut again).0, vec![9]);
}

#[test]
fn resumes_from_the_compressed_copy() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("0.log");
    append(&current, 1..=10);
    let mut tail = Tail::new("k".into(), dir.path().into(), labels(), None);
    let batch = tail.next_batch(4).unwrap().unwrap();
    assert_eq!(batch.records.len(), 4);
    drop(tail);
    // While the riklet was down: rotated, compressed, written on.
    let old = rotated(dir.path());
    fs::rename(&current, &old).unwrap();
    gzip(&old);
    append(&current, 11..=12);
    let mut tail = Tail::new("k".into(), dir.path().into(), labels(), Some(batch.end));
    assert_eq!(drain(&mut tail).0, (5..=12).collect::<Vec<_>>());
}

#[test]
fn reads_rotated_and_compressed_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let oldest = rotated(dir.path());
    append(&oldest, 1..=2);
    gzip(&oldest);
    append(&rotated(dir.path()), 3..=4);
    append(&dir.path().join("0.log"), 5..=5);
    fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
    let mut tail = Tail::new("k".into(), dir.path().into(), labels(), None);
    assert_eq!(drain(&mut tail).0, vec![1, 2, 3, 4, 5]);
}

#[test]
fn reads_on_when_the_directory_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("default_web_web-1").join("main");
    fs::create_dir_all(&dir).unwrap();
    append(&dir.join("0.log"), 1..=5);
    let mut tail = Tail::new("k".into(), dir.clone(), labels(), None);
    assert_eq!(tail.next_batch(2).unwrap().unwrap().records.len(), 2);
    fs::remove_dir_all(root.path().join("default_web_web-1")).unwrap();
    assert_eq!(drain(&mut tail).0, vec![3, 4, 5]);
    assert!(containers(root.path(), "n1").unwrap().is_empty());
}

#[test]
fn container_directories_and_labels() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("default_web_web-1/main")).unwrap();
    fs::create_dir_all(root.path().join("not-a-pod/main")).unwrap();
    let found = containers(root.path(), "n1").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "default_web_web-1/main");
    assert_eq!(
        found[0].2,
        Labels {
            app: "web".into(),
            instance: "web-1".into(),
            container: "main".into(),
            node: "n1".into()
        }
    );
    assert!(
        containers(&root.path().join("missing"), "n1")
            .unwrap()
            .is_empty()
    );
}
