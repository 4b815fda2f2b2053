//! `rik get apps|app [NAME] [-o wide|json] [-w]`, `rik get nodes [NAME] [-o json]`,
//! `rik get events [--app NAME] [-w]`.
//! `watch`: `-w`, the listing then every change; `events`: the events.

use std::io::Write;
use std::str::FromStr;

use anyhow::{anyhow, bail};

use super::Scheduler;
use crate::output::{Json, Table, now_unix};
use crate::views;

mod events;
mod watch;

/// Lists apps or nodes, kubectl style: `rik get apps`, `rik get app NAME`
/// (or `app/NAME`), `rik get nodes`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik get apps -o wide
  rik get app web -o json
  rik get nodes
  rik get apps -w
  rik get events --app web -w")]
pub struct Args {
    /// What to show: `apps` (or `app`), `nodes` (or `node`, `no`) or
    /// `events` (or `ev`), optionally as `app/NAME`.
    #[arg(value_name = "RESOURCE")]
    resource: Resource,
    /// Show only this app or node.
    name: Option<String>,
    /// Output format: `wide` (more columns) or `json`.
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    output: Option<Format>,
    /// After the listing, print each change as it happens (apps only),
    /// until interrupted: one table row, or with `-o json` one JSON object
    /// per line.
    #[arg(short, long)]
    watch: bool,
    /// With `events`: only the events of this app.
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
}

/// Output formats of `rik get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table with more columns.
    Wide,
    /// JSON (seed 004's shapes).
    Json,
}

/// A resource kind, maybe with a name (`app/web`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resource {
    kind: Kind,
    name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Apps,
    Nodes,
    Events,
}

impl FromStr for Resource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) if !n.is_empty() => (k, Some(n.to_string())),
            Some(_) => return Err(format!("{s:?} has no name after '/'")),
            None => (s, None),
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "apps" | "app" | "pods" | "pod" | "po" => Kind::Apps,
            "nodes" | "node" | "no" => Kind::Nodes,
            "events" | "event" | "ev" => Kind::Events,
            _ => {
                return Err(format!(
                    "unknown resource {kind:?}, expected apps, nodes or events"
                ));
            }
        };
        Ok(Resource { kind, name })
    }
}

/// Runs `rik get`.
pub async fn run(args: Args, scheduler: &mut Scheduler, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = match (args.resource.name, args.name) {
        (Some(_), Some(_)) => bail!("give the name either as RESOURCE/NAME or as NAME, not both"),
        (a, b) => a.or(b),
    };
    let kind = args.resource.kind;
    if kind == Kind::Events && (name.is_some() || args.output.is_some()) {
        bail!("events take --app NAME and -w, no name or -o");
    }
    if kind != Kind::Events && args.app.is_some() {
        bail!("--app is for events only");
    }
    if args.watch {
        return match kind {
            Kind::Apps => watch::run(scheduler, name.as_deref(), args.output, out).await,
            Kind::Events => events::watch(scheduler, args.app.as_deref(), out).await,
            Kind::Nodes => bail!("--watch is for apps and events only"),
        };
    }
    let text = match kind {
        Kind::Apps => apps(scheduler, name.as_deref(), args.output).await?,
        Kind::Nodes => nodes(scheduler, name.as_deref(), args.output).await?,
        Kind::Events => events::list(scheduler, args.app.as_deref()).await?,
    };
    if text.is_empty() {
        // kubectl's habit: stdout stays empty for scripts, people get a hint.
        eprintln!("No resources found.");
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}

async fn apps(
    scheduler: &mut Scheduler,
    name: Option<&str>,
    format: Option<Format>,
) -> anyhow::Result<String> {
    let (apps, one) = match name {
        Some(name) => (vec![scheduler.get_app(name).await?], true),
        None => (scheduler.list_apps().await?, false),
    };
    Ok(match format {
        Some(Format::Json) if one => views::app_instances_json(&apps[0]).to_pretty(),
        Some(Format::Json) => Json::Array(apps.iter().map(views::app_json).collect()).to_pretty(),
        _ => {
            let wide = format == Some(Format::Wide);
            if apps.is_empty() {
                return Ok(String::new());
            }
            let now = now_unix();
            let mut table = Table::new(views::app_headers(wide));
            for app in &apps {
                table.push(views::app_row(app, wide, now));
            }
            table.render()
        }
    })
}

async fn nodes(
    scheduler: &mut Scheduler,
    name: Option<&str>,
    format: Option<Format>,
) -> anyhow::Result<String> {
    let mut nodes = scheduler.list_nodes().await?;
    if let Some(name) = name {
        nodes.retain(|n| n.name == name);
        if nodes.is_empty() {
            return Err(anyhow!("node {name:?} not found"));
        }
    }
    Ok(match format {
        Some(Format::Json) if name.is_some() => views::node_json(&nodes[0]).to_pretty(),
        Some(Format::Json) => Json::Array(nodes.iter().map(views::node_json).collect()).to_pretty(),
        _ => {
            let wide = format == Some(Format::Wide);
            if nodes.is_empty() {
                return Ok(String::new());
            }
            let now = now_unix();
            let mut table = Table::new(views::node_headers(wide));
            for node in &nodes {
                table.push(views::node_row(node, wide, now));
            }
            table.render()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_kubectl_style() {
        let r = |s: &str| s.parse::<Resource>();
        assert_eq!(r("apps").unwrap().kind, Kind::Apps);
        assert_eq!(r("app").unwrap().kind, Kind::Apps);
        assert_eq!(r("nodes").unwrap().kind, Kind::Nodes);
        assert_eq!(r("no").unwrap().kind, Kind::Nodes);
        assert_eq!(r("events").unwrap().kind, Kind::Events);
        assert_eq!(r("app/web").unwrap().name.as_deref(), Some("web"));
        assert!(r("app/").is_err());
        assert!(r("services").is_err());
    }
}
