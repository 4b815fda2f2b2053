//! `rik logs NAME [-f] [--tail N] [--container C]`.

use std::io::Write;

use proto::rik::v1::{LogChunk, LogsRequest};

use super::Scheduler;

/// Prints the logs of an app's instances: the containers' output, like
/// `kubectl logs` (`--raw` for the CRI lines as the riklets store them).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik logs web --tail 10
  rik logs web -f --container httpd --prefix
  rik logs web --raw")]
pub struct Args {
    /// The app (`NAME` or `app/NAME`).
    name: String,
    /// Keep streaming new lines until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each container (default: all).
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    /// Only this container.
    #[arg(short, long, value_name = "C")]
    container: Option<String>,
    /// Prefix each line with `[instance/container]`.
    #[arg(long)]
    prefix: bool,
    /// Print the stored CRI lines (`<time> <stream> <F|P> <text>`) as they are.
    #[arg(long)]
    raw: bool,
}

/// Runs `rik logs`: chunks go to `out` as they arrive.
pub async fn run(args: Args, scheduler: &mut Scheduler, out: &mut dyn Write) -> anyhow::Result<()> {
    let app = args
        .name
        .strip_prefix("app/")
        .or_else(|| args.name.strip_prefix("apps/"))
        .unwrap_or(&args.name)
        .to_string();
    let request = LogsRequest {
        app,
        tail: args.tail.unwrap_or(0),
        follow: args.follow,
        container: args.container.unwrap_or_default(),
    };
    let mut stream = scheduler.logs(request).await?;
    while let Some(mut chunk) = stream.next().await? {
        if !args.raw {
            chunk.data = decode_cri(&chunk.data);
        }
        if args.prefix {
            out.write_all(&prefixed(&chunk))?;
        } else {
            out.write_all(&chunk.data)?;
        }
        out.flush()?;
    }
    Ok(())
}

/// The text of CRI log lines: the time, stream and tag are dropped, and a
/// record tagged `P` (a long line cut in parts) is joined with the next.
/// A line that is not in the CRI format is kept as it is.
fn decode_cri(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for line in data.split_inclusive(|b| *b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let mut fields = body.splitn(4, |b| *b == b' ');
        let (_time, stream, tag) = (fields.next(), fields.next(), fields.next());
        let text = fields.next().unwrap_or(b"");
        match (stream, tag) {
            (Some(b"stdout" | b"stderr"), Some(b"P")) => out.extend_from_slice(text),
            (Some(b"stdout" | b"stderr"), Some(b"F")) => {
                out.extend_from_slice(text);
                out.push(b'\n');
            }
            _ => out.extend_from_slice(line),
        }
    }
    out
}

/// The chunk's lines, each prefixed with `[instance/container] `.
fn prefixed(chunk: &LogChunk) -> Vec<u8> {
    let tag = format!("[{}/{}] ", chunk.instance_id, chunk.container);
    let mut buf = Vec::with_capacity(chunk.data.len() + tag.len());
    for line in chunk.data.split_inclusive(|b| *b == b'\n') {
        buf.extend_from_slice(tag.as_bytes());
        buf.extend_from_slice(line);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_every_line() {
        let chunk = LogChunk {
            instance_id: "web-1".into(),
            container: "c".into(),
            data: b"a\nb\n".to_vec(),
        };
        assert_eq!(prefixed(&chunk), b"[web-1/c] a\n[web-1/c] b\n");
    }

    #[test]
    fn decodes_cri_lines_and_joins_partials() {
        let data = b"2026-01-01T00:00:00.1Z stdout F hello world\n\
2026-01-01T00:00:00.2Z stderr P abc\n\
2026-01-01T00:00:00.3Z stderr F def\n\
2026-01-01T00:00:00.4Z stdout F \n\
not cri\n";
        assert_eq!(decode_cri(data), b"hello world\nabcdef\n\nnot cri\n");
    }
}
