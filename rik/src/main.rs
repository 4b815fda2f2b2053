//! `rik`: the command-line client of the RIK scheduler.
//!
//! Exit status 0 on success; on failure one line `error: …` on stderr and
//! exit status 1.
//!
//! # Layout
//! - `commands/<verb>.rs`: one file per verb (`apply`, `get`, `delete`,
//!   `logs`, `top`, `describe`, `completion`); `commands/mod.rs` holds
//!   the scheduler connection.
//! - `describe.rs`: `rik describe app` and the events table (pure).
//! - `views.rs`: table rows and seed 004's JSON objects built from the
//!   scheduler's messages (pure, unit-tested).
//! - `output.rs`: tables, kubectl-style ages, ordered JSON.

mod client_config;
mod commands;
mod describe;
mod output;
mod views;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client_config::Target;
use crate::commands::Scheduler;

/// Command-line client of the RIK scheduler: deploy apps, list (and
/// watch) apps and nodes, read logs.
#[derive(Debug, Parser)]
#[command(name = "rik", version, propagate_version = true)]
struct Cli {
    /// URL of the scheduler's API [default: the config file's `server`,
    /// else http://127.0.0.1:4995].
    #[arg(long, global = true, env = "RIK_SCHEDULER", value_name = "URL")]
    scheduler: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Apply(commands::apply::Args),
    Get(commands::get::Args),
    Delete(commands::delete::Args),
    /// Show an app in detail: its instances, containers and events.
    Describe(commands::describe::Args),
    Logs(commands::logs::Args),
    /// Show running pods by CPU and memory use.
    Top(commands::top::Args),
    Completion(commands::completion::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", usage_error_line(&e.render().to_string()));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // `apply` validates the manifest before connecting: a bad file is
    // refused even when the scheduler is down.
    let target = &Target::resolve(cli.scheduler.as_deref())?;
    let result = match cli.command {
        Command::Apply(args) => commands::apply::run(args, target, &mut out).await,
        Command::Get(args) => {
            let mut scheduler = Scheduler::connect_to(target).await?;
            commands::get::run(args, &mut scheduler, &mut out).await
        }
        Command::Delete(args) => {
            let mut scheduler = Scheduler::connect_to(target).await?;
            commands::delete::run(args, &mut scheduler, &mut out).await
        }
        Command::Describe(args) => {
            let mut scheduler = Scheduler::connect_to(target).await?;
            commands::describe::run(args, &mut scheduler, &mut out).await
        }
        Command::Logs(args) => {
            let mut scheduler = Scheduler::connect_to(target).await?;
            commands::logs::run(args, &mut scheduler, &mut out).await
        }
        Command::Top(args) => {
            let mut scheduler = Scheduler::connect_to(target).await?;
            commands::top::run(args, &mut scheduler, &mut out).await
        }
        Command::Completion(args) => commands::completion::run(args, Cli::command(), &mut out),
    };
    out.flush()?;
    result
}

/// A message on one line: line breaks become spaces.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// clap's usage error (several lines: message, usage, tip) as one
/// `error: …` line.
fn usage_error_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| {
            !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information")
        })
        .collect();
    let line = one_line(&message.join(" "));
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("error: {line} (see 'rik --help')")
}

/// Writing to a closed pipe (`rik get apps | head -1`) is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `rik completion bash` is a script bash accepts, completing every
    /// subcommand.
    #[test]
    fn bash_completion_parses() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let mut script = Vec::new();
        let super::Command::Completion(args) =
            Cli::parse_from(["rik", "completion", "bash"]).command
        else {
            panic!("`rik completion bash` is not the completion command");
        };
        commands::completion::run(args, Cli::command(), &mut script).unwrap();
        let text = String::from_utf8(script.clone()).unwrap();
        for sub in ["apply", "get", "delete", "logs", "top", "completion"] {
            assert!(text.contains(sub), "{sub} not in the bash script");
        }
        let mut bash = Command::new("bash")
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash, to check the completion script");
        bash.stdin.take().unwrap().write_all(&script).unwrap();
        let out = bash.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Each subcommand's `--help` ends with real examples of it.
    #[test]
    fn every_subcommand_has_examples() {
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            let name = sub.get_name();
            assert!(
                help.starts_with("Examples:") && help.contains(&format!("rik {name}")),
                "rik {name} --help has no examples: {help:?}"
            );
        }
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let e = Cli::try_parse_from(["rik", "apply"]).unwrap_err();
        let line = usage_error_line(&e.render().to_string());
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains("--filename <FILE>"), "{line}");
        assert!(!line.contains('\n'));
        let e = Cli::try_parse_from(["rik", "get", "services"]).unwrap_err();
        let line = usage_error_line(&e.render().to_string());
        assert!(line.contains("unknown resource"), "{line}");
        assert!(!line.contains("For more information"), "{line}");
    }

    #[test]
    fn kubectl_style_arguments_parse() {
        for argv in [
            &["rik", "get", "apps"][..],
            &["rik", "get", "app", "web", "-o", "json"],
            &["rik", "get", "app/web", "-o", "wide"],
            &["rik", "get", "nodes", "-o", "json"],
            &["rik", "get", "apps", "-w"],
            &["rik", "get", "events", "--app", "web", "-w"],
            &["rik", "describe", "app", "web"],
            &["rik", "get", "app", "web", "--watch", "-o", "json"],
            &["rik", "--scheduler", "http://h:1", "delete", "web"],
            &["rik", "delete", "app", "web", "--scheduler", "http://h:1"],
            &["rik", "apply", "-f", "-", "--wait", "--timeout", "90s"],
            &[
                "rik",
                "logs",
                "web",
                "-f",
                "--tail",
                "10",
                "--container",
                "c",
            ],
            &[
                "rik",
                "logs",
                "app/web",
                "-p",
                "--since",
                "5m",
                "--timestamps",
                "--instance",
                "web-7d2kq",
                "--prefix",
            ],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }
}
