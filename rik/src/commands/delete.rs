//! `rik delete NAME` (also `rik delete app NAME`, `rik delete app/NAME`).

use std::io::Write;

use anyhow::bail;

use super::Scheduler;

/// Deletes an app and every instance of it.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik delete web
  rik delete app/web")]
pub struct Args {
    /// The app: `NAME`, `app/NAME` or `app NAME`.
    #[arg(required = true, num_args = 1..=2, value_name = "NAME")]
    words: Vec<String>,
}

/// The app name out of `NAME`, `app/NAME` or `app NAME`.
fn app_name(words: &[String]) -> anyhow::Result<&str> {
    let is_kind = |k: &str| matches!(k, "app" | "apps");
    match words {
        [one] => Ok(one
            .split_once('/')
            .filter(|(k, n)| is_kind(k) && !n.is_empty())
            .map_or(one.as_str(), |(_, n)| n)),
        [kind, name] if is_kind(kind) => Ok(name),
        [kind, _] => {
            bail!("unknown resource {kind:?}: use `rik delete NAME` or `rik delete app NAME`")
        }
        _ => bail!("expected one app name"),
    }
}

/// `NAME deleted on NODE[, NODE…]`, or `NAME deleted` when nothing ran.
fn deleted_line(name: &str, nodes: &[String]) -> String {
    let nodes: Vec<&str> = nodes
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    if nodes.is_empty() {
        format!("{name} deleted")
    } else {
        format!("{name} deleted on {}", nodes.join(", "))
    }
}

/// Runs `rik delete`.
pub async fn run(args: Args, scheduler: &mut Scheduler, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = app_name(&args.words)?;
    let response = scheduler.delete_app(name).await?;
    let shown = if response.name.is_empty() {
        name
    } else {
        &response.name
    };
    writeln!(out, "{}", deleted_line(shown, &response.nodes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names() {
        assert_eq!(app_name(&words(&["web"])).unwrap(), "web");
        assert_eq!(app_name(&words(&["app/web"])).unwrap(), "web");
        assert_eq!(app_name(&words(&["app", "web"])).unwrap(), "web");
        assert_eq!(app_name(&words(&["app"])).unwrap(), "app");
        assert!(app_name(&words(&["node", "web"])).is_err());
    }

    #[test]
    fn lines() {
        assert_eq!(deleted_line("web", &[]), "web deleted");
        assert_eq!(
            deleted_line("web", &["node-a".into(), "node-b".into()]),
            "web deleted on node-a, node-b"
        );
    }
}
