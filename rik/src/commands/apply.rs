//! `rik apply -f FILE [--wait] [--timeout 60s]`.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use proto::rik::v1::watch_event::Type;
use proto::rik::v1::{App, Instance};
use tokio::time::Instant;

use super::app_watch::{AppWatch, Update};
use super::{Scheduler, read_manifest};
use crate::client_config::Target;
use crate::views::{failure_reason, instance_label};

/// Creates or updates an app from a manifest (RIK workload v1 or a seed 004
/// deployment file, YAML or JSON).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik apply -f assets/examples/hello-http.yaml --wait
  rik apply -f app.json --wait --timeout 5m
  cat app.yaml | rik apply -f -")]
pub struct Args {
    /// Manifest file, `-` for stdin. Validated here before anything is sent.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        value_name = "FILE"
    )]
    file: String,
    /// Wait until every instance of the app is RUNNING (told by the
    /// scheduler's watch the moment it is).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits (e.g. `90s`, `5m`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs `rik apply` against the scheduler `target`.
pub async fn run(args: Args, target: &Target, out: &mut dyn Write) -> anyhow::Result<()> {
    let text = read_manifest(&args.file)?;
    // Nothing is sent unless the manifest is valid: the error names the
    // field. Checked before connecting, so it holds with the scheduler down.
    let manifest = proto::manifest::parse(&text)?;
    let mut scheduler = Scheduler::connect_to(target).await?;
    let scheduler = &mut scheduler;
    let response = scheduler.apply(text).await?;
    let name = if response.name.is_empty() {
        manifest.name
    } else {
        response.name
    };
    writeln!(out, "app/{name} {}", response.result)?;
    out.flush()?;
    if args.wait {
        wait_running(scheduler, &name, args.timeout).await?;
        writeln!(out, "app/{name} running")?;
    }
    Ok(())
}

/// Where an app stands on its way to RUNNING.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Every instance wanted runs.
    Running,
    /// An instance failed, with why.
    Failed(String),
    /// Not yet: what is still missing.
    Waiting(String),
}

/// Instances on their way out (an update replaces them) do not count.
fn is_leaving(inst: &Instance) -> bool {
    matches!(inst.status.as_str(), "TERMINATED" | "DESTROYING")
}

fn progress(app: &App) -> Progress {
    let live: Vec<&Instance> = app.instances.iter().filter(|i| !is_leaving(i)).collect();
    if let Some(failed) = live.iter().find(|i| i.status == "FAILED") {
        let why = failure_reason(failed).unwrap_or_else(|| "no reason reported".to_string());
        return Progress::Failed(format!("instance {} failed: {why}", instance_label(failed)));
    }
    let waiting: Vec<String> = live
        .iter()
        .filter(|i| i.status != "RUNNING")
        .map(|i| format!("{} is {}", instance_label(i), status_or_unknown(&i.status)))
        .collect();
    let wanted = app.replicas.max(1) as usize;
    if waiting.is_empty() && live.len() >= wanted {
        return Progress::Running;
    }
    let mut missing = waiting;
    if live.len() < wanted {
        missing.push(format!("{} of {wanted} instances scheduled", live.len()));
    }
    Progress::Waiting(missing.join(", "))
}

fn status_or_unknown(status: &str) -> &str {
    if status.is_empty() { "UNKNOWN" } else { status }
}

/// Waits for the app to run, from the scheduler's watch of it: its state
/// right after the apply is the first check, each change the next one. A
/// broken stream is resumed from the last revision read (see
/// [`AppWatch`]), so a scheduler restart does not end the wait.
async fn wait_running(
    scheduler: &mut Scheduler,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut watch = AppWatch::new(scheduler, Some(name));
    let mut missing = "no answer from the scheduler yet".to_string();
    loop {
        let Ok(update) = tokio::time::timeout_at(deadline, watch.next()).await else {
            let unreachable = watch
                .unreachable()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default();
            return Err(anyhow!(
                "app/{name} not running after {}: {missing}{unreachable}",
                humantime::format_duration(timeout)
            ));
        };
        let app = match update? {
            Update::Listed { apps, .. } => apps.into_iter().find(|a| a.name == name),
            Update::Changed(e) if e.r#type() == Type::Deleted => None,
            Update::Changed(e) => e.app,
        };
        let Some(app) = app else {
            bail!("app/{name} was deleted while waiting for it to run");
        };
        match progress(&app) {
            Progress::Running => return Ok(()),
            Progress::Failed(why) => bail!("app/{name}: {why}"),
            Progress::Waiting(now) => missing = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, status: &str, metrics: &str) -> Instance {
        Instance {
            instance_id: id.into(),
            node: "n1".into(),
            status: status.into(),
            metrics: metrics.into(),
            updated_at: 0,
        }
    }

    fn app(replicas: u32, instances: Vec<Instance>) -> App {
        App {
            name: "web".into(),
            replicas,
            instances,
            ..App::default()
        }
    }

    #[test]
    fn progress_of_an_app() {
        assert_eq!(
            progress(&app(1, vec![inst("a", "RUNNING", "")])),
            Progress::Running
        );
        assert_eq!(
            progress(&app(
                2,
                vec![inst("a", "RUNNING", ""), inst("b", "CREATING", "")]
            )),
            Progress::Waiting("b on n1 is CREATING".into())
        );
        assert_eq!(
            progress(&app(2, vec![inst("a", "RUNNING", "")])),
            Progress::Waiting("1 of 2 instances scheduled".into())
        );
        // An update: the old instance goes away, the new one runs.
        assert_eq!(
            progress(&app(
                1,
                vec![inst("old", "DESTROYING", ""), inst("new", "RUNNING", "")]
            )),
            Progress::Running
        );
        assert_eq!(
            progress(&app(
                1,
                vec![inst("a", "FAILED", r#"{"message":"exit status 1"}"#)]
            )),
            Progress::Failed("instance a on n1 failed: exit status 1".into())
        );
    }
}
