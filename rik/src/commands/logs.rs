//! `rik logs NAME [-f] [--tail N] [--container C]`.

use std::io::Write;

use proto::rik::v1::{LogChunk, LogsRequest};

use super::Scheduler;

/// Prints the logs of an app's instances (CRI log lines, as the riklets
/// store them).
#[derive(Debug, clap::Args)]
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
    while let Some(chunk) = stream.next().await? {
        if args.prefix {
            out.write_all(&prefixed(&chunk))?;
        } else {
            out.write_all(&chunk.data)?;
        }
        out.flush()?;
    }
    Ok(())
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
}
