//! `rik apply -f FILE [--wait] [--timeout 60s]`.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use backon::{BackoffBuilder, ExponentialBuilder};
use proto::rik::v1::{App, Instance};
use tokio::time::Instant;

use super::{Scheduler, read_manifest};
use crate::views::{failure_reason, instance_label};

/// `--wait` asks the scheduler after this long first, then twice as long
/// each time up to [`POLL_MAX`]: a bare process is usually RUNNING within
/// tens of milliseconds, an image pull takes seconds.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(200);
const POLL: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(POLL_FIRST)
    .with_max_delay(POLL_MAX)
    .without_max_times();

/// Creates or updates an app from a manifest (RIK workload v1 or a seed 004
/// deployment file, YAML or JSON).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, `-` for stdin. Validated here before anything is sent.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        value_name = "FILE"
    )]
    file: String,
    /// Wait until every instance of the app is RUNNING.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits (e.g. `90s`, `5m`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs `rik apply` against the scheduler at `url`.
pub async fn run(args: Args, url: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let text = read_manifest(&args.file)?;
    // Nothing is sent unless the manifest is valid: the error names the
    // field. Checked before connecting, so it holds with the scheduler down.
    let manifest = proto::manifest::parse(&text)?;
    let mut scheduler = Scheduler::connect(url).await?;
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

async fn wait_running(
    scheduler: &mut Scheduler,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pauses = POLL.build();
    loop {
        let app = scheduler.get_app(name).await?;
        match progress(&app) {
            Progress::Running => return Ok(()),
            Progress::Failed(why) => bail!("app/{name}: {why}"),
            Progress::Waiting(missing) => {
                if Instant::now() >= deadline {
                    return Err(anyhow!(
                        "app/{name} not running after {}: {missing}",
                        humantime::format_duration(timeout)
                    ));
                }
            }
        }
        tokio::time::sleep(pauses.next().unwrap_or(POLL_MAX)).await;
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
