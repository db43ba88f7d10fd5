//! The `tether` binary.
//!
//! Subcommands: `serve` runs the keep-alive + WebSocket server. Errors are
//! reported with context on stderr and a non-zero exit status.

#![forbid(unsafe_code)]

mod bench;
mod config;
mod serve;

use clap::{Parser, Subcommand};

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
    /// Load generator: `http`, `ws-echo` and `idle` modes against any server.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => config::load(*args).and_then(serve::run),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
