//! `rik completion SHELL`: the shell's completion script for `rik`,
//! generated from the command definitions by `clap_complete`.

use std::io::Write;

use clap_complete::Shell;

/// Prints the completion script of `rik` for a shell.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik completion bash > /etc/bash_completion.d/rik
  rik completion zsh > \"${fpath[1]}/_rik\"
  rik completion fish > ~/.config/fish/completions/rik.fish")]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes the script of `args.shell` for `command` (the whole `rik` CLI).
pub fn run(args: Args, mut command: clap::Command, out: &mut impl Write) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut command, "rik", out);
    Ok(())
}
