//! `mxguard completions SHELL` and `mxguard man`: generated from the clap definition itself, so
//! they cannot fall behind the commands.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;

/// Writes `bytes` to stdout; a closed pipe or a full disk is an error, not a panic.
fn emit(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxguard: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "mxguard", &mut buf);
    emit(&buf)
}

/// The manual page (roff) on stdout, its SUBCOMMANDS section naming each subcommand's page;
/// with `out_dir`, that page and every subcommand's (`mxguard-serve.1` …) written there.
pub fn man(out_dir: Option<&Path>) -> ExitCode {
    if let Some(dir) = out_dir {
        return match clap_mangen::generate_to(Cli::command(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "mxguard: cannot write the manual pages to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let mut buf = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut buf) {
        Ok(()) => emit(&buf),
        Err(e) => {
            eprintln!("mxguard: cannot render the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}
