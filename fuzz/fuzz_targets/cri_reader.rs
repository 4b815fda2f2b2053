//! The CRI log reader (`riklet::logs::read_run`) on a log file of any
//! content (a writer killed mid-record, a file edited by hand) and any
//! `--tail`/`--since`: never a panic, only whole lines sent, and without a
//! selection every complete line exactly once.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use riklet::logs::{Run, Selection, read_run};

fuzz_target!(|data: &[u8]| {
    // Two bytes of selection, the rest is the file.
    let [tail, since, content @ ..] = data else {
        return;
    };
    let selection = Selection {
        tail: (*tail != 0xff).then_some(usize::from(*tail)),
        // Odd: since second `since` of 2026-01-01, the times records have.
        since: (since % 2 == 1).then(|| {
            DateTime::<Utc>::from_timestamp(1_767_225_600 + i64::from(*since / 2), 0)
                .expect("a time in range")
        }),
        previous: false,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("0.log"), content).expect("write the log file");
    let run = Run::open(dir.path(), 0, None).expect("open the run");
    let mut got = Vec::new();
    read_run(&run, &selection, &mut |d| {
        assert!(d.ends_with(b"\n"), "a piece that is not whole records");
        got.extend_from_slice(d);
        true
    })
    .expect("read the run");
    let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if selection.tail.is_none() && selection.since.is_none() {
        assert_eq!(got, &content[..complete], "lines lost or repeated");
    } else {
        assert!(got.len() <= complete, "more than the file holds");
    }
});
