//! From CRI lines to log records: a line's `P` (partial) parts are joined
//! with the `F` that ends them, so that a long line is shipped as one
//! record up to [`MAX_MESSAGE`] bytes; a longer one is cut there, the rest
//! going on in the next record, and the cut is counted. So is a line whose
//! parts a rotation split between two files (the writer rotates between
//! records): the parts in each file are a record.

/// Longest message of one record: a 1 MiB line is shipped whole.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One record: a line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The CRI timestamp of the line's first part, as the writer wrote it
    /// (RFC 3339 with nanoseconds); empty for a line that is not CRI.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line without its newline; bytes as the program wrote them.
    pub message: Vec<u8>,
}

/// What [`assemble`] made of a chunk of a log file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    pub records: Vec<Record>,
    /// Bytes of the chunk that the records cover (whole lines); the rest
    /// is read again with what follows.
    pub consumed: usize,
    /// Records cut at [`MAX_MESSAGE`].
    pub cut: u64,
}

/// One CRI line, split into its fields.
struct CriLine<'a> {
    time: &'a [u8],
    stream: &'static str,
    partial: bool,
    content: &'a [u8],
}

/// `<time> stdout|stderr P|F <content>`; a line of another shape is taken
/// as a whole stdout line without a time.
fn parse_line(line: &[u8]) -> CriLine<'_> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let (time, stream, tag) = (fields.next(), fields.next(), fields.next());
    let stream = match stream {
        Some(b"stdout") => Some("stdout"),
        Some(b"stderr") => Some("stderr"),
        _ => None,
    };
    match (time, stream, tag) {
        (Some(time), Some(stream), Some(tag @ (b"P" | b"F"))) => CriLine {
            time,
            stream,
            partial: tag == b"P",
            content: fields.next().unwrap_or_default(),
        },
        _ => CriLine {
            time: b"",
            stream: "stdout",
            partial: false,
            content: line,
        },
    }
}

/// Records of the complete lines of `chunk`, at most `max_records`.
/// Parts of a line not yet ended by its `F` are left unconsumed, unless
/// `file_done` (the file was rotated away: its last line will never be
/// completed) or the chunk is `full` of them without a newline.
pub fn assemble(chunk: &[u8], max_records: usize, file_done: bool, full: bool) -> Assembled {
    let mut out = Assembled::default();
    let mut pending: Option<Record> = None;
    let mut start = 0;
    while out.records.len() < max_records {
        let Some(nl) = chunk[start..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = parse_line(&chunk[start..start + nl]);
        start += nl + 1;
        let joined = pending.as_ref().is_some_and(|p| p.stream == line.stream);
        if let Some(p) =
            pending.take_if(|p| !joined || p.message.len() + line.content.len() > MAX_MESSAGE)
        {
            out.cut += 1;
            out.records.push(p);
            out.consumed = start - nl - 1;
        }
        let rec = pending.get_or_insert_with(|| Record {
            time: String::from_utf8_lossy(line.time).into_owned(),
            stream: line.stream,
            message: Vec::new(),
        });
        rec.message.extend_from_slice(line.content);
        if !line.partial {
            out.records.extend(pending.take());
            out.consumed = start;
        }
    }
    let unended = file_done || (full && out.records.is_empty());
    if unended && out.records.len() < max_records {
        // The parts of a line that a rotation (or the writer's end) left
        // without their F: a record of their own, counted as cut.
        if let Some(p) = pending.take() {
            out.cut += 1;
            out.records.push(p);
            out.consumed = start;
        }
        if file_done && start < chunk.len() {
            // A last line without a newline: the writer died mid-line.
            out.cut += 1;
            out.records.push(Record {
                time: String::new(),
                stream: "stdout",
                message: chunk[start..].to_vec(),
            });
            out.consumed = chunk.len();
        } else if full && out.records.is_empty() {
            out.cut += 1;
            out.records.push(Record {
                time: String::new(),
                stream: "stdout",
                message: chunk.to_vec(),
            });
            out.consumed = chunk.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(a: &Assembled) -> Vec<(&str, &str, String)> {
        a.records
            .iter()
            .map(|r| {
                (
                    r.time.as_str(),
                    r.stream,
                    String::from_utf8_lossy(&r.message).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn joins_parts_and_keeps_unended_lines() {
        let chunk =
            b"t1 stdout F one\nt2 stderr P tw\nt3 stderr F o\nt4 stdout F \nt5 stdout P thr";
        let a = assemble(chunk, 100, false, false);
        assert_eq!(
            messages(&a),
            vec![
                ("t1", "stdout", "one".to_string()),
                ("t2", "stderr", "two".to_string()),
                ("t4", "stdout", String::new()),
            ]
        );
        assert_eq!(a.consumed, chunk.len() - b"t5 stdout P thr".len());
        // Parts without their F stay unconsumed until the file is done.
        let rest = b"t5 stdout P thr\n";
        assert_eq!(assemble(rest, 100, false, false).consumed, 0);
        let done = assemble(rest, 100, true, false);
        assert_eq!(messages(&done), vec![("t5", "stdout", "thr".to_string())]);
        assert_eq!((done.consumed, done.cut), (rest.len(), 1));
        // At most max_records, consumed up to the last one.
        let two = assemble(chunk, 1, false, false);
        assert_eq!(two.records.len(), 1);
        assert_eq!(two.consumed, b"t1 stdout F one\n".len());
    }

    #[test]
    fn long_lines_are_cut_at_the_limit_and_counted() {
        let part = "x".repeat(16 * 1024);
        let mut chunk = String::new();
        // 1 MiB exactly: one record.
        for _ in 0..63 {
            chunk.push_str(&format!("t stdout P {part}\n"));
        }
        chunk.push_str(&format!("t stdout F {part}\n"));
        let a = assemble(chunk.as_bytes(), 100, false, false);
        assert_eq!((a.records.len(), a.cut), (1, 0));
        assert_eq!(a.records[0].message.len(), MAX_MESSAGE);
        // One part more: cut once, nothing lost.
        let longer = format!("t stdout P {part}\n{chunk}");
        let a = assemble(longer.as_bytes(), 100, false, false);
        assert_eq!((a.records.len(), a.cut), (2, 1));
        assert_eq!(a.records[0].message.len(), MAX_MESSAGE);
        assert_eq!(a.records[1].message.len(), 16 * 1024);
        assert_eq!(a.consumed, longer.len());
    }

    #[test]
    fn other_shapes_and_binary_bytes() {
        let chunk = b"not a cri line\nt stdout F \xff\xfe bin\n";
        let a = assemble(chunk, 100, false, false);
        assert_eq!(a.records[0].message, b"not a cri line");
        assert_eq!(a.records[0].time, "");
        assert_eq!(a.records[1].message, b"\xff\xfe bin");
        // A full chunk without any newline is shipped as it is.
        let a = assemble(b"abc", 100, false, true);
        assert_eq!(
            (a.records[0].message.as_slice(), a.consumed, a.cut),
            (&b"abc"[..], 3, 1)
        );
    }
}
