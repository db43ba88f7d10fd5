//! The `tether` binary.
//!
//! Subcommands: `serve` runs the keep-alive + WebSocket server; `bench`
//! generates load against any server; `trace` follows one connection's
//! lifecycle; `compare` measures the guide's comparisons (keep-alive
//! against a new connection per request; polling, long-polling, SSE and
//! WebSocket push). Errors are reported with context on stderr and a
//! non-zero exit status.

#![forbid(unsafe_code)]

mod bench;
mod compare;
mod config;
mod demo;
mod serve;
mod trace;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

/// A bad value that came from an environment variable (not the command
/// line) is reported under the variable's name, not the flag's: the user
/// never typed the flag.
fn name_the_variable(e: clap::Error) -> clap::Error {
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let flag = arg.split_whitespace().next().unwrap_or_default().to_owned();
    let typed = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let command = Cli::command();
    let env = command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long().is_some_and(|l| flag == format!("--{l}")))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    match env {
        Some(var) if !typed && std::env::var_os(&var).is_some() => {
            let value = std::env::var(&var).unwrap_or_default();
            let why = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            Cli::command().error(
                ErrorKind::ValueValidation,
                format!("invalid value {value:?} in the environment variable {var} (the setting of {flag}){why}"),
            )
        }
        _ => e,
    }
}

/// tether: HTTP/1.1 keep-alive and WebSockets on one port, measured.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (`GET /healthz`, `/echo`, `GET /`, static files with --root).
    Serve(Box<config::ServeArgs>),
    /// Load generator: `http`, `ws-echo`, `idle` and `fanout` modes against any server.
    Bench(bench::BenchArgs),
    /// The guide's comparisons, measured: keep-alive against a new connection per request, and 100 chat messages by polling, long-polling, SSE and WebSocket.
    Compare(Box<compare::CompareArgs>),
    /// Follow one keep-alive connection (or WebSocket) and print its lifecycle: requests, counts, closes and why.
    Trace(trace::TraceArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| name_the_variable(e).exit());
    let result = match cli.command {
        Command::Serve(args) => config::load(*args).and_then(serve::run),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(*args),
        Command::Trace(args) => trace::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
