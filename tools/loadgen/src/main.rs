//! `loadgen`: speaks the cavlo protocol over real WebSockets against running
//! gateways, through `cavlo_client`. Bounded in time and count, and meant
//! for loopback only.
//!
//! * `smoke`: an end-to-end check through each gateway ([`smoke`]).
//! * `fanout`: rooms of clients sending chat; throughput, latency and
//!   correctness ([`fanout`], accounting in [`ledger`] and [`latency`]).
//! * `connections`: many idle connections; what they cost ([`connections`]).
//! * `media`: calls through the media service; frames forwarded, their
//!   delay and loss ([`media`]).
//! * `token`: a development token, signed as loadgen signs its users'.
//! * `shares` and `archive`: the fault suite's other verdicts, on what it
//!   collected from the system ([`judge`]).
//!
//! [`connect`] is how each of them connects, and to what.

mod connect;
mod connections;
mod fanout;
mod judge;
mod latency;
mod ledger;
mod media;
mod smoke;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Drive a running cavlo system over real WebSockets (loopback only).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// HS256 secret the gateways accept, to sign test users' tokens.
    /// Required; given before or after the command.
    #[arg(
        long,
        env = "CAVLO_GATEWAY__AUTH__HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    secret: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check chat, presence, signaling and history through every gateway.
    Smoke {
        /// Gateway WebSocket URLs, e.g. ws://127.0.0.1:8080/ws (repeat for each).
        #[arg(long = "gateway", required = true)]
        gateways: Vec<String>,
        /// NATS URL; with the gateway user's password, also checks that NATS
        /// refuses a gateway publishing to a room directly.
        #[arg(long)]
        nats_url: Option<String>,
        /// The gateways' NATS user.
        #[arg(long, default_value = "gateway")]
        nats_user: String,
        /// The gateways' NATS password.
        #[arg(long, env = "CAVLO_NATS_GATEWAY_PASSWORD", hide_env_values = true)]
        nats_password: Option<String>,
    },
    /// Rooms of clients all sending chat; fails if anything is lost,
    /// duplicated or reordered.
    Fanout(FanoutArgs),
    /// Many idle authenticated connections to one gateway.
    Connections(ConnectionsArgs),
    /// Calls through the media service: synthetic participants sending
    /// timestamped audio frames; fails if any frame is lost or duplicated.
    Media(MediaArgs),
    /// Print an HS256 token for user NAME (also its display name), valid
    /// for an hour, signed with --secret: for development and scripts.
    Token {
        /// The user's id and display name.
        name: String,
    },
    /// Judge how instances of a service shared work between two samples
    /// (files of `name value` lines, one per instance): fails if one took
    /// less than a quarter of an even share.
    Shares {
        /// What the samples count, for the printed line.
        #[arg(long)]
        what: String,
        /// The sample before.
        before: std::path::PathBuf,
        /// The sample after.
        after: std::path::PathBuf,
    },
    /// Judge an archive directory (one JSON-lines file per room): fails
    /// unless it holds every stored message once, each room in sequence,
    /// and the archiver counted no gap.
    Archive {
        /// The directory.
        dir: std::path::PathBuf,
        /// Messages the chat stream holds.
        #[arg(long)]
        stored: u64,
        /// Gaps the archiver counted.
        #[arg(long)]
        gaps: u64,
    },
}

#[derive(Args)]
struct FanoutArgs {
    /// Gateway WebSocket URLs; clients are spread over them.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<String>,
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Total chat messages per second; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds of sending (at most 600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// Seconds to keep receiving after sending stops, at most.
    #[arg(long, default_value_t = 2)]
    drain: u64,
    /// End the drain once the run has settled for this many seconds:
    /// every message sent was acked and every member has each of the
    /// others' acked messages. A run that lost anything drains in full.
    /// 0 (the default) always drains in full.
    #[arg(long, default_value_t = 0)]
    settle: u64,
    /// Ride out faults as a real client does: reconnect to the next
    /// gateway, rejoin with `since`, resend what was not acked, retry
    /// `unavailable`.
    #[arg(long)]
    resume: bool,
    /// The share of sent messages that must be acked for the run to
    /// pass. Without `--resume` a refused message is not resent, so a
    /// run meant to overload cavlo can lower this.
    #[arg(long, default_value_t = 1.0)]
    min_acked: f64,
    /// Rooms with a slow consumer: their first client stops reading for
    /// `--slow-pause` seconds, 5 s into sending, with a small receive
    /// buffer. The run fails unless the gateway closes each with 4100
    /// and no other connection (needs `--resume`).
    #[arg(long, default_value_t = 0, requires = "resume")]
    slow: usize,
    /// Seconds a slow consumer stops reading: long enough for the
    /// gateway's write timeout (10 s by default) to pass after its
    /// socket buffers filled, short enough to read the close frame
    /// within the same timeout after that.
    #[arg(long, default_value_t = 20)]
    slow_pause: u64,
    /// Where slow consumers connect first instead: a gateway container's
    /// own address on a private Docker network (ws://172.x.y.z:8080/ws),
    /// since Docker's port proxy buffers what they do not read. Later
    /// reconnects use the `--gateway`s.
    #[arg(long, requires = "slow")]
    slow_gateway: Option<String>,
    /// With `--resume`, seconds a message may go unanswered before the
    /// client takes its connection for dead and reconnects, as the SDK
    /// does. 0 never does: the gateway must close a connection it cannot
    /// serve, and a client's own timer would hide one that fails to.
    #[arg(long, default_value_t = 8)]
    silence_timeout: u64,
    /// Fail unless clients reconnected at least this often: for a fault
    /// that must move every client of a gateway (killed or cut off).
    #[arg(long, default_value_t = 0, requires = "resume")]
    expect_reconnects: u64,
    /// Fail unless gateways closed connections with this code (4104: a
    /// gateway that resumed past its timeout), `--expect-closes` of them.
    #[arg(long)]
    expect_close: Option<u16>,
    /// How many `--expect-close` closes at least.
    #[arg(long, default_value_t = 1, requires = "expect_close")]
    expect_closes: u64,
    /// Fail if any rejoin was told `truncated`: for runs whose backlog
    /// outlasts the fault, where a truncated rejoin is a loss.
    #[arg(long, requires = "resume")]
    no_truncation: bool,
}

#[derive(Args)]
struct MediaArgs {
    /// Gateway WebSocket URLs; participants are spread over them.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<String>,
    /// Number of calls (rooms).
    #[arg(long, default_value_t = 2)]
    rooms: usize,
    /// Participants per call (at most the room's capacity).
    #[arg(long, default_value_t = 5)]
    participants: usize,
    /// Frames each participant sends per second (one RTP packet each).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Bytes per frame.
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Seconds frames are counted (at most 600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
}

#[derive(Args)]
struct ConnectionsArgs {
    /// The gateway's WebSocket URL.
    #[arg(long)]
    gateway: String,
    /// Connections to open (at most 200 000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    count: u64,
    /// Connections opened per second at most.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Source addresses 127.0.0.1..=127.0.0.N, each with its own ephemeral ports.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Seconds to hold the connections open (at most 600).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    hold: u64,
    /// The gateway's process id, to report its memory per connection.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // These judge files, and need no secret.
    match &cli.command {
        Command::Shares {
            what,
            before,
            after,
        } => return shares(what, before, after),
        Command::Archive { dir, stored, gaps } => return archive(dir, *stored, *gaps),
        _ => {}
    }
    // Clap cannot require a global option itself.
    let Some(secret) = cli.secret else {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the following required arguments were not provided:\n  --secret <SECRET>",
            )
            .exit()
    };
    let secret = secret.into_bytes();
    match cli.command {
        Command::Smoke {
            gateways,
            nats_url,
            nats_user,
            nats_password,
        } => smoke(&secret, &gateways, nats_url, nats_user, nats_password).await,
        Command::Fanout(args) => fanout(&secret, cli.json, args).await,
        Command::Connections(args) => connections(&secret, cli.json, args).await,
        Command::Media(args) => media(&secret, cli.json, args).await,
        Command::Token { name } => {
            println!("{}", connect::token(&secret, &name));
            ExitCode::SUCCESS
        }
        Command::Shares { .. } | Command::Archive { .. } => unreachable!("judged above"),
    }
}

fn shares(what: &str, before: &std::path::Path, after: &std::path::Path) -> ExitCode {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))
    };
    let shares = match read(before).and_then(|b| judge::Shares::between(&b, &read(after)?)) {
        Ok(shares) => shares,
        Err(err) => {
            eprintln!("shares: {what}: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("  {what}: {shares}");
    verdict_exit("shares", shares.verdict())
}

fn archive(dir: &std::path::Path, stored: u64, gaps: u64) -> ExitCode {
    let archive = match judge::Archive::read(dir) {
        Ok(archive) => archive,
        Err(err) => {
            eprintln!("archive: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("  archive: {archive} (the stream holds {stored}); gaps {gaps}");
    verdict_exit("archive", archive.verdict(stored, gaps))
}

/// Exits as `verdict` says, printing why it failed.
fn verdict_exit(what: &str, verdict: Result<(), String>) -> ExitCode {
    match verdict {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{what}: failed: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn smoke(
    secret: &[u8],
    gateways: &[String],
    nats_url: Option<String>,
    nats_user: String,
    nats_password: Option<String>,
) -> ExitCode {
    // Asked for and impossible is a failure, not a check skipped.
    let nats = match (nats_url, nats_password) {
        (Some(url), Some(password)) => Some(smoke::GatewayNats {
            url,
            user: nats_user,
            password,
        }),
        (Some(_), None) => {
            eprintln!(
                "smoke: FAILED: --nats-url needs the gateway user's password \
                 (--nats-password or CAVLO_NATS_GATEWAY_PASSWORD)"
            );
            return ExitCode::FAILURE;
        }
        (None, _) => None,
    };
    match smoke::run(gateways, secret, nats).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("smoke: FAILED at {err}");
            ExitCode::FAILURE
        }
    }
}

async fn fanout(secret: &[u8], json: bool, args: FanoutArgs) -> ExitCode {
    let plan = fanout::Plan {
        gateways: args.gateways,
        rooms: args.rooms,
        clients_per_room: args.clients,
        rate: args.rate,
        size: args.size,
        duration: Duration::from_secs(args.duration),
        drain: Duration::from_secs(args.drain),
        settle: (args.settle > 0).then(|| Duration::from_secs(args.settle)),
        resume: args.resume,
        slow: args.slow.min(args.rooms),
        slow_pause: Duration::from_secs(args.slow_pause),
        slow_gateway: args.slow_gateway,
        silence_timeout: (args.silence_timeout > 0)
            .then(|| Duration::from_secs(args.silence_timeout)),
        expect: fanout::Expect {
            reconnects: args.expect_reconnects,
            close: args.expect_close.map(|code| (code, args.expect_closes)),
            untruncated: args.no_truncation,
        },
    };
    let progress = Arc::new(fanout::Progress::default());
    let ticker = tokio::spawn(show_progress(progress.clone(), |p: &fanout::Progress| {
        format!(
            "sent {} acked {} delivered {}",
            p.sent.load(Ordering::Relaxed),
            p.acked.load(Ordering::Relaxed),
            p.delivered.load(Ordering::Relaxed)
        )
    }));
    // SIGUSR1: stop sending now and drain (the fault suite sends it once
    // its fault healed, so no run sends longer than it must).
    // Registered here, before anything runs: unhandled, SIGUSR1 would
    // end the process.
    let stop_sending = CancellationToken::new();
    let told = stop_sending.clone();
    let usr1 = signal(SignalKind::user_defined1());
    let listener = tokio::spawn(async move {
        if let Ok(mut usr1) = usr1 {
            usr1.recv().await;
            told.cancel();
        }
    });
    let result = fanout::run(&plan, secret, progress, stop_sending).await;
    listener.abort();
    ticker.abort();
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("fanout: {err}");
            return ExitCode::FAILURE;
        }
    };
    print_report(json, &report);
    verdict_exit("fanout", report.verdict(&plan, args.min_acked))
}

async fn media(secret: &[u8], json: bool, args: MediaArgs) -> ExitCode {
    let plan = media::Plan {
        gateways: args.gateways,
        rooms: args.rooms,
        participants: args.participants,
        rate: args.rate,
        frame_bytes: args.size,
        duration: Duration::from_secs(args.duration),
    };
    let report = match media::run(&plan, secret).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("media: {err}");
            return ExitCode::FAILURE;
        }
    };
    print_report(json, &report);
    verdict_exit("media", report.verdict())
}

async fn connections(secret: &[u8], json: bool, args: ConnectionsArgs) -> ExitCode {
    let plan = connections::Plan {
        gateway: args.gateway,
        count: args.count as usize,
        ramp: args.ramp,
        sources: args.sources,
        hold: Duration::from_secs(args.hold),
        gateway_pid: args.gateway_pid,
    };
    let progress = Arc::new(connections::Progress::default());
    let ticker = tokio::spawn(show_progress(
        progress.clone(),
        |p: &connections::Progress| {
            format!(
                "opened {} failed {}",
                p.opened.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed)
            )
        },
    ));
    let report = connections::run(&plan, secret, progress).await;
    ticker.abort();
    print_report(json, &report);
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a progress line to stderr every second.
async fn show_progress<P>(progress: Arc<P>, line: impl Fn(&P) -> String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        eprint!("\r{}   ", line(&progress));
    }
}

/// Ends the progress line, then prints the report to stdout: as JSON, or
/// as text.
fn print_report<R: serde::Serialize + std::fmt::Display>(json: bool, report: &R) {
    eprintln!();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        );
    } else {
        println!("{report}");
    }
}
