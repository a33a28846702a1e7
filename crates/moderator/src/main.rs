//! The `moderator` binary: runs [`moderator::run`] until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use moderator::config::Config;

/// cavlo moderator: checks, rate-limits and sanitizes client events and stores chat.
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
        "cavlo-moderator",
        |client, config: Config, shutdown| moderator::run(client, config.moderator, shutdown),
    )
    .await
}
