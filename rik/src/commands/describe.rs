//! `rik describe app NAME`: the app, each instance with its node, IP and
//! containers, and its events, like `kubectl describe pod`.

use std::io::Write;

use anyhow::bail;

use super::Scheduler;
use crate::describe;

/// Shows an app in detail, with its recent events.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik describe app web
  rik describe app/web")]
pub struct Args {
    /// `app` (or `apps`, `pod`), or `app/NAME`.
    #[arg(value_name = "RESOURCE")]
    resource: String,
    /// The app.
    name: Option<String>,
}

/// Runs `rik describe`.
pub async fn run(args: Args, scheduler: &mut Scheduler, out: &mut dyn Write) -> anyhow::Result<()> {
    let (kind, inline) = match args.resource.split_once('/') {
        Some((k, n)) => (k.to_string(), Some(n.to_string())),
        None => (args.resource.clone(), None),
    };
    if !matches!(
        kind.to_ascii_lowercase().as_str(),
        "app" | "apps" | "pod" | "pods" | "po"
    ) {
        bail!("unknown resource {kind:?}, expected app");
    }
    let name = match (inline.filter(|n| !n.is_empty()), args.name) {
        (Some(_), Some(_)) => bail!("give the name either as app/NAME or as NAME, not both"),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => bail!("which app? rik describe app NAME"),
    };
    let app = scheduler.get_app(&name).await?;
    out.write_all(describe::describe_app(&app, now_ms()).as_bytes())?;
    Ok(())
}

/// Current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
