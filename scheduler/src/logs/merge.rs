//! The records of several log streams in time order, with one chunk of
//! each stream in memory: a k-way merge, each stream being in time order
//! already (the records of one container's file).
//!
//! A record's time is its first field, compared as bytes: the riklets
//! write RFC 3339 times in UTC with nine fraction digits (`…​.123456789Z`),
//! whose byte order is their time order. A line in another format sorts
//! with the record before it. A long line's `P` records and the `F` that
//! ends it stay together.

use futures::StreamExt;
use proto::rik::v1::LogChunk;
use tonic::Status;

use super::LogStream;

/// The records of `streams` merged by time, in chunks of consecutive
/// records of one stream. An error of any stream ends the merge.
pub fn by_time(streams: Vec<LogStream>) -> LogStream {
    let merge = Merge {
        sources: streams.into_iter().map(Source::new).collect(),
        failed: false,
    };
    futures::stream::unfold(merge, Merge::next).boxed()
}

struct Merge {
    sources: Vec<Source>,
    failed: bool,
}

/// One stream and its chunk being sent.
struct Source {
    stream: LogStream,
    chunk: LogChunk,
    /// Offset in `chunk.data` of the first record not sent yet.
    at: usize,
    done: bool,
    /// Time of the last record sent (for lines without a time).
    last_time: Vec<u8>,
    /// The last record sent was a `P`: the rest of its line is next.
    in_line: bool,
}

impl Source {
    fn new(stream: LogStream) -> Self {
        Source {
            stream,
            chunk: LogChunk::default(),
            at: 0,
            done: false,
            last_time: Vec::new(),
            in_line: false,
        }
    }

    fn pending(&self) -> bool {
        self.at < self.chunk.data.len()
    }

    /// The next record not sent yet (with its newline).
    fn head(&self) -> &[u8] {
        let rest = &self.chunk.data[self.at..];
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        &rest[..end]
    }

    fn head_time(&self) -> Vec<u8> {
        record_time(self.head()).map_or_else(|| self.last_time.clone(), <[u8]>::to_vec)
    }

    /// Reads chunks until one has records or the stream ends.
    async fn fill(&mut self) -> Result<(), Status> {
        while !self.done && !self.pending() {
            match self.stream.next().await {
                Some(chunk) => {
                    self.chunk = chunk?;
                    self.at = 0;
                }
                None => {
                    self.done = true;
                    self.in_line = false;
                }
            }
        }
        Ok(())
    }

    /// Takes its records up to time `bound` (the whole rest of a started
    /// line, and at least one record).
    fn take(&mut self, bound: Option<&[u8]>) -> LogChunk {
        let start = self.at;
        while self.pending() {
            let time = self.head_time();
            let first = self.at == start;
            if !first && !self.in_line && bound.is_some_and(|b| time.as_slice() > b) {
                break;
            }
            let record_len = self.head().len();
            self.in_line = !ends_line(self.head());
            self.at += record_len;
            self.last_time = time;
        }
        LogChunk {
            instance_id: self.chunk.instance_id.clone(),
            container: self.chunk.container.clone(),
            data: self.chunk.data[start..self.at].to_vec(),
        }
    }
}

impl Merge {
    async fn next(mut self) -> Option<(Result<LogChunk, Status>, Self)> {
        if self.failed {
            return None;
        }
        for source in &mut self.sources {
            if let Err(status) = source.fill().await {
                self.failed = true;
                return Some((Err(status), self));
            }
        }
        let live: Vec<usize> = (0..self.sources.len())
            .filter(|i| self.sources[*i].pending())
            .collect();
        let times: Vec<Vec<u8>> = live.iter().map(|i| self.sources[*i].head_time()).collect();
        // A started line goes on first; otherwise the earliest record.
        let pick = live
            .iter()
            .position(|i| self.sources[*i].in_line)
            .or_else(|| (0..live.len()).min_by(|a, b| times[*a].cmp(&times[*b])))?;
        let bound = (0..live.len())
            .filter(|k| *k != pick)
            .map(|k| times[k].as_slice())
            .min()
            .map(<[u8]>::to_vec);
        let chunk = self.sources[live[pick]].take(bound.as_deref());
        Some((Ok(chunk), self))
    }
}

/// The time field of a CRI record, `None` for a line in another format.
fn record_time(record: &[u8]) -> Option<&[u8]> {
    let field = record.split(|b| *b == b' ').next()?;
    field
        .first()
        .is_some_and(u8::is_ascii_digit)
        .then_some(field)
}

/// Whether a record ends its line: every record but a `P` (partial) one.
fn ends_line(record: &[u8]) -> bool {
    let mut fields = record.splitn(4, |b| *b == b' ').skip(1);
    let (stream, tag) = (fields.next(), fields.next());
    !(matches!(stream, Some(b"stdout" | b"stderr")) && matches!(tag, Some(b"P")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(instance: &str, data: &str) -> Result<LogChunk, Status> {
        Ok(LogChunk {
            instance_id: instance.into(),
            container: "c".into(),
            data: data.as_bytes().to_vec(),
        })
    }

    fn stream(chunks: Vec<Result<LogChunk, Status>>) -> LogStream {
        futures::stream::iter(chunks).boxed()
    }

    async fn merged(streams: Vec<LogStream>) -> Vec<(String, String)> {
        by_time(streams)
            .map(|c| {
                let c = c.unwrap();
                (c.instance_id, String::from_utf8(c.data).unwrap())
            })
            .collect()
            .await
    }

    fn rec(second: u32, tag: &str, text: &str) -> String {
        format!("2026-01-01T00:00:{second:02}.000000000Z stdout {tag} {text}\n")
    }

    #[tokio::test]
    async fn interleaves_by_time_in_runs() {
        let a = stream(vec![
            chunk("a", &(rec(1, "F", "a1") + &rec(2, "F", "a2"))),
            chunk("a", &rec(5, "F", "a5")),
        ]);
        let b = stream(vec![chunk("b", &(rec(3, "F", "b3") + &rec(4, "F", "b4")))]);
        let got = merged(vec![a, b]).await;
        let want = [
            ("a", rec(1, "F", "a1") + &rec(2, "F", "a2")),
            ("b", rec(3, "F", "b3") + &rec(4, "F", "b4")),
            ("a", rec(5, "F", "a5")),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(i, d)| (i.to_string(), d.clone()))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn keeps_a_long_line_together_and_lines_without_time_in_place() {
        let a = stream(vec![
            chunk("a", &rec(1, "P", "x")),
            chunk("a", &(rec(4, "F", "y") + "plain\n")),
        ]);
        let b = stream(vec![chunk("b", &(rec(2, "F", "b2") + &rec(5, "F", "b5")))]);
        let got: Vec<String> = merged(vec![a, b])
            .await
            .into_iter()
            .map(|(i, d)| format!("{i}:{d}"))
            .collect();
        // The line begun at 1 s ends (at 4 s) before b's 2 s line; the
        // plain line sorts at 4 s.
        assert_eq!(
            got,
            [
                format!("a:{}", rec(1, "P", "x")),
                format!("a:{}", rec(4, "F", "y")),
                format!("b:{}", rec(2, "F", "b2")),
                "a:plain\n".to_string(),
                format!("b:{}", rec(5, "F", "b5")),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_ends_the_merge() {
        let a = stream(vec![chunk("a", &rec(1, "F", "a1"))]);
        let b = stream(vec![Err(Status::unavailable("node gone"))]);
        let got: Vec<Result<LogChunk, Status>> = by_time(vec![a, b]).collect().await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}
