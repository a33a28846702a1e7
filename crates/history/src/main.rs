//! The `history` binary: runs [`history::run`] until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use history::config::Config;

/// cavlo history: owns the chat stream and answers backlog queries.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: bootstrap::Cli,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    bootstrap::service::main(
        cli.common.config.as_deref(),
        "cavlo-history",
        |client, config: Config, shutdown| history::run(client, config.history, shutdown),
    )
    .await
}
