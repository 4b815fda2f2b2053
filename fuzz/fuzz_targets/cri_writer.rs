//! The shim's CRI framing of a container's output
//! (`riklet_shim::cri::CriWriter::copy_from`) on any bytes, read back by
//! the riklet's reader: every byte comes back, in order, in well-formed
//! records (`<time> <stream> <P|F> <text>`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use riklet::logs::{CriWriter, LogSpec, Run, Selection, Stream, read_run};

fuzz_target!(|data: &[u8]| {
    let Some((&which, output)) = data.split_first() else {
        return;
    };
    let (stream, name) = if which % 2 == 0 {
        (Stream::Stdout, &b"stdout"[..])
    } else {
        (Stream::Stderr, &b"stderr"[..])
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = LogSpec {
        dir: dir.path().to_path_buf(),
        ..LogSpec::default()
    };
    let writer = CriWriter::open(&spec).expect("open the writer");
    writer.copy_from(stream, output).expect("copy");
    writer.finish(std::time::Duration::from_secs(5));
    assert_eq!(writer.dropped(), 0, "bytes dropped");

    let run = Run::open(dir.path(), 0, None).expect("open the run");
    let mut log = Vec::new();
    read_run(&run, &Selection::default(), &mut |d| {
        log.extend_from_slice(d);
        true
    })
    .expect("read the run");
    let mut text = Vec::new();
    for record in log.split_inclusive(|b| *b == b'\n') {
        let mut fields = record.splitn(4, |b| *b == b' ');
        let (time, s, tag) = (fields.next(), fields.next(), fields.next());
        let body = fields.next().expect("a record with four fields");
        let time = std::str::from_utf8(time.expect("a time")).expect("an ASCII time");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "bad time {time:?}"
        );
        assert_eq!(s, Some(name), "wrong stream");
        let body = &body[..body.len() - 1];
        match tag {
            Some(b"F") => {
                text.extend_from_slice(body);
                text.push(b'\n');
            }
            Some(b"P") => text.extend_from_slice(body),
            other => panic!("bad tag {other:?}"),
        }
    }
    let mut expected = output.to_vec();
    if !expected.is_empty() && !expected.ends_with(b"\n") {
        expected.push(b'\n');
    }
    assert_eq!(text, expected, "the output did not come back as written");
});
