//! The `media` binary: starts a media node, reports ready, and runs it
//! until SIGTERM, then drains.

use std::process::ExitCode;

use media::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "media",
        "cavlo media: forwards the audio and video of rooms' calls",
        media::readiness,
        |client, config: Config, shutdown, started, metrics| async move {
            let node = media::start(client, config.media, &metrics).await?;
            started.set();
            node.run(shutdown).await;
            Ok::<_, media::RunError>(())
        },
    )
    .await
}
