//! `rik logs NAME [-f] [--tail N] [--since DUR] [--timestamps] [-c C]
//! [-p] [--instance ID] [--prefix] [--raw]`, like `kubectl logs`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use proto::rik::v1::{LogChunk, LogsRequest};

use super::Scheduler;

/// Prints the logs of an app's instances: the containers' output, like
/// `kubectl logs` (`--raw` for the CRI records as the riklets store them).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik logs web --tail 10
  rik logs web -f --tail 0 --timestamps
  rik logs web --since 5m --instance web-7d2kq
  rik logs web --previous -c httpd
  rik logs web --raw")]
pub struct Args {
    /// The app (`NAME` or `app/NAME`).
    name: String,
    /// Keep streaming new lines (across log rotations and container
    /// restarts) until interrupted or the app is deleted.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each container (default: all; 0 with
    /// `-f`: only the lines to come).
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    /// Only the lines written in the last DUR (`30s`, `5m`, `1h`).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Begin each line with the time it was written (RFC 3339, UTC).
    #[arg(long)]
    timestamps: bool,
    /// Only this container.
    #[arg(short, long, value_name = "C")]
    container: Option<String>,
    /// The output of the run before the container's last restart.
    #[arg(short, long)]
    previous: bool,
    /// Only this instance of the app.
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// Prefix each line with `[instance/container]` (the default when the
    /// app has several instances and no `--instance` is given).
    #[arg(long)]
    prefix: bool,
    /// Print the stored CRI records (`<time> <stream> <F|P> <text>`) as
    /// they are.
    #[arg(long)]
    raw: bool,
}

/// Runs `rik logs`: lines go to `out` as they arrive.
pub async fn run(args: Args, scheduler: &mut Scheduler, out: &mut dyn Write) -> anyhow::Result<()> {
    let app = args
        .name
        .strip_prefix("app/")
        .or_else(|| args.name.strip_prefix("apps/"))
        .unwrap_or(&args.name)
        .to_string();
    let several = args.instance.is_none() && scheduler.get_app(&app).await?.instances.len() > 1;
    let request = LogsRequest {
        app,
        tail: args.tail,
        follow: args.follow,
        container: args.container.unwrap_or_default(),
        // A duration under 1 ms still asks for a limit.
        since_ms: args.since.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        }),
        previous: args.previous,
        instance_id: args.instance.unwrap_or_default(),
    };
    let mut printer = Printer {
        raw: args.raw,
        timestamps: args.timestamps,
        prefix: args.prefix || several,
        partial: BTreeMap::new(),
    };
    let mut stream = scheduler.logs(request).await?;
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await? {
        printer.chunk(&chunk, &mut buf);
        out.write_all(&buf)?;
        out.flush()?;
        buf.clear();
    }
    printer.finish(&mut buf);
    out.write_all(&buf)?;
    Ok(())
}

/// Turns CRI records into the lines `rik logs` prints: the time, stream
/// and tag are dropped, the `P` records of a long line are joined with the
/// `F` that ends it (per instance and container, as chunks of several
/// sources interleave). A line that is not in the CRI format is kept as it
/// is.
struct Printer {
    raw: bool,
    timestamps: bool,
    prefix: bool,
    /// Per (instance, container): the time and text so far of a line
    /// begun in `P` records.
    partial: BTreeMap<(String, String), (Vec<u8>, Vec<u8>)>,
}

impl Printer {
    fn chunk(&mut self, chunk: &LogChunk, out: &mut Vec<u8>) {
        let source = (chunk.instance_id.clone(), chunk.container.clone());
        for record in chunk.data.split_inclusive(|b| *b == b'\n') {
            if self.raw {
                self.line(&source, None, record, out);
                continue;
            }
            let body = record.strip_suffix(b"\n").unwrap_or(record);
            let mut fields = body.splitn(4, |b| *b == b' ');
            let (time, stream, tag) = (fields.next(), fields.next(), fields.next());
            let text = fields.next().unwrap_or(b"");
            match (time, stream, tag) {
                (Some(time), Some(b"stdout" | b"stderr"), Some(b"P")) => {
                    let (_, so_far) = self
                        .partial
                        .entry(source.clone())
                        .or_insert_with(|| (time.to_vec(), Vec::new()));
                    so_far.extend_from_slice(text);
                }
                (Some(time), Some(b"stdout" | b"stderr"), Some(b"F")) => {
                    let (time, mut line) = self
                        .partial
                        .remove(&source)
                        .unwrap_or_else(|| (time.to_vec(), Vec::new()));
                    line.extend_from_slice(text);
                    line.push(b'\n');
                    self.line(&source, Some(time.as_slice()), &line, out);
                }
                _ => self.line(&source, None, record, out),
            }
        }
    }

    /// Prints the lines left unfinished when the stream ended.
    fn finish(&mut self, out: &mut Vec<u8>) {
        for (source, (time, mut text)) in std::mem::take(&mut self.partial) {
            text.push(b'\n');
            self.line(&source, Some(time.as_slice()), &text, out);
        }
    }

    /// One line (`text` with its newline), prefixed as asked.
    fn line(&self, source: &(String, String), time: Option<&[u8]>, text: &[u8], out: &mut Vec<u8>) {
        if self.prefix {
            out.extend_from_slice(format!("[{}/{}] ", source.0, source.1).as_bytes());
        }
        if let (true, Some(time)) = (self.timestamps, time) {
            out.extend_from_slice(time);
            out.push(b' ');
        }
        out.extend_from_slice(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printer(raw: bool, timestamps: bool, prefix: bool) -> Printer {
        Printer {
            raw,
            timestamps,
            prefix,
            partial: BTreeMap::new(),
        }
    }

    fn chunk(instance: &str, data: &[u8]) -> LogChunk {
        LogChunk {
            instance_id: instance.into(),
            container: "c".into(),
            data: data.to_vec(),
        }
    }

    fn print(p: &mut Printer, chunks: &[LogChunk]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            p.chunk(c, &mut out);
        }
        p.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decodes_cri_records_and_joins_partials() {
        let data = b"2026-01-01T00:00:00.1Z stdout F hello world\n\
2026-01-01T00:00:00.2Z stderr P abc\n\
2026-01-01T00:00:00.3Z stderr F def\n\
2026-01-01T00:00:00.4Z stdout F \n\
not cri\n";
        let got = print(&mut printer(false, false, false), &[chunk("web-1", data)]);
        assert_eq!(got, "hello world\nabcdef\n\nnot cri\n");
    }

    #[test]
    fn joins_partials_per_source_with_prefix_and_time() {
        let chunks = [
            chunk("web-1", b"2026-01-01T00:00:01Z stdout P ab\n"),
            chunk("web-2", b"2026-01-01T00:00:02Z stdout F other\n"),
            chunk("web-1", b"2026-01-01T00:00:03Z stdout F cd\n"),
            chunk("web-2", b"2026-01-01T00:00:04Z stdout P cut\n"),
        ];
        let got = print(&mut printer(false, true, true), &chunks);
        assert_eq!(
            got,
            "[web-2/c] 2026-01-01T00:00:02Z other\n\
             [web-1/c] 2026-01-01T00:00:01Z abcd\n\
             [web-2/c] 2026-01-01T00:00:04Z cut\n"
        );
    }

    #[test]
    fn raw_keeps_the_records() {
        let data = b"2026-01-01T00:00:01Z stdout P ab\n2026-01-01T00:00:02Z stdout F cd\n";
        let got = print(&mut printer(true, true, true), &[chunk("web-1", data)]);
        assert_eq!(
            got,
            "[web-1/c] 2026-01-01T00:00:01Z stdout P ab\n\
             [web-1/c] 2026-01-01T00:00:02Z stdout F cd\n"
        );
    }
}
