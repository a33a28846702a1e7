//! A whole system started in-process for one test: history, moderators,
//! gateways and media nodes, each with its own NATS connection as if it were its own
//! process, and the checks that it left nothing behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bootstrap::config::Secret;
use bootstrap::metrics::Metrics;
use futures_util::StreamExt;
use gateway::config::GatewayConfig;
use history::config::HistoryConfig;
use media::config::MediaConfig;
use moderator::config::ModeratorConfig;
use schemas::event::RoomState;
use schemas::id::{MediaNodeId, RoomId};
use schemas::subject;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::get_json;
use super::link::Link;
use super::nats::Nats;
use super::token::SECRET;

/// How long [`System::finish`] waits for everything to be released.
const LEAK_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of a service binary (`gateway`, `moderator`, `history`) of this
/// workspace, for tests that kill or stop a real process. Cargo builds a
/// package's binaries only for that package's own integration tests, so the
/// first call builds them, with the profile this test was built with.
pub fn service_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // The test binary sits in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("the test binary has a path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary sits in <target>/<profile>/deps")
            .to_owned();
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bins", "--profile", &profile])
            .args(["-p", "gateway", "-p", "moderator", "-p", "history"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the service binaries failed");
        profile_dir
    });
    dir.join(name)
}

/// What to start.
pub struct Options {
    pub gateways: usize,
    pub moderators: usize,
    /// Run NATS as compose does, each service as its own user.
    pub nats_users: bool,
    /// Let the test stop and start NATS again ([`Nats::stop`]).
    pub restartable_nats: bool,
    /// Media nodes, on loopback UDP.
    pub media_nodes: usize,
    pub gateway: GatewayConfig,
    pub moderator: ModeratorConfig,
    pub history: HistoryConfig,
    pub media: MediaConfig,
}

impl Default for Options {
    fn default() -> Self {
        let mut gateway = GatewayConfig::default();
        gateway.auth.hs256_secret = Some(Secret(SECRET.into()));
        // Short, so stopping a system with clients still connected does not
        // wait the default 10 s.
        gateway.drain_timeout = Duration::from_secs(1);
        let media = MediaConfig {
            udp_listen: "127.0.0.1:0".parse().unwrap(),
            ..MediaConfig::default()
        };
        Self {
            gateways: 2,
            moderators: 2,
            nats_users: false,
            restartable_nats: false,
            media_nodes: 0,
            media,
            gateway,
            moderator: ModeratorConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl Options {
    /// One gateway, otherwise the defaults: the common test system.
    pub fn one_gateway() -> Self {
        Self {
            gateways: 1,
            ..Self::default()
        }
    }
}

/// A running system; dropping it stops the services and the container.
pub struct System {
    pub nats: Nats,
    pub gateways: Vec<SocketAddr>,
    /// Stops the gateways, which tell the moderators about closed connections.
    stop_gateways: CancellationToken,
    /// Each gateway's own stop (children of `stop_gateways`).
    gateway_stops: Vec<CancellationToken>,
    /// Each gateway's link to NATS, which [`System::cut_gateway`] cuts.
    gateway_links: Vec<Link>,
    gateway_tasks: Vec<JoinHandle<()>>,
    /// Stops moderators and history, after the gateways.
    stop_backend: CancellationToken,
    /// The moderators' tasks; [`System::kill_moderator`] aborts one.
    moderators: Vec<JoinHandle<()>>,
    moderator_config: ModeratorConfig,
    moderator_user: Option<&'static str>,
    /// History, apart from the other services so a test can stop and
    /// restart it: its own stop (a child of `stop_backend`) and task.
    history: Option<(CancellationToken, JoinHandle<()>)>,
    history_config: HistoryConfig,
    history_user: Option<&'static str>,
    /// Each gateway's metrics, in start order.
    pub gateway_metrics: Vec<Metrics>,
    /// Each moderator's metrics, in start order (killed ones included).
    pub moderator_metrics: Vec<Metrics>,
    /// The running history's metrics.
    pub history_metrics: Metrics,
    /// The media nodes, in start order.
    pub media: Vec<MediaNode>,
}

/// A media node started in-process.
pub struct MediaNode {
    pub id: MediaNodeId,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl System {
    pub async fn start(options: Options) -> System {
        // RUST_LOG=debug shows the services' logs for a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let nats = match (options.nats_users, options.restartable_nats) {
            (true, _) => Nats::start_with_users().await,
            (false, true) => Nats::start_restartable().await,
            (false, false) => Nats::start().await,
        };
        let as_user = |user: &'static str| options.nats_users.then_some(user);
        let (stop_gateways, stop_backend) = (CancellationToken::new(), CancellationToken::new());
        let mut moderators = Vec::new();

        let history_user = as_user("history");
        let (history, history_metrics) =
            Self::spawn_history(&nats, history_user, &options.history, &stop_backend).await;
        let history = Some(history);
        let mut moderator_metrics = Vec::new();
        let moderator_user = as_user("moderator");
        for _ in 0..options.moderators {
            let (moderator, metrics) =
                Self::spawn_moderator(&nats, moderator_user, &options.moderator, &stop_backend)
                    .await;
            moderators.push(moderator);
            moderator_metrics.push(metrics);
        }
        let mut media = Vec::new();
        for _ in 0..options.media_nodes {
            media.push(
                Self::spawn_media(&nats, as_user("media"), &options.media, &stop_backend).await,
            );
        }
        let (mut gateways, mut gateway_tasks, mut gateway_stops, mut gateway_metrics) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut gateway_links = Vec::new();
        for _ in 0..options.gateways {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            gateways.push(listener.local_addr().unwrap());
            let stop = stop_gateways.child_token();
            gateway_stops.push(stop.clone());
            let link = Link::open(nats.addr).await;
            let (client, config) = (
                nats.connect_via(&link, as_user("gateway")).await,
                options.gateway.clone(),
            );
            gateway_links.push(link);
            let metrics = Metrics::new(&client);
            gateway_metrics.push(metrics.clone());
            gateway_tasks.push(tokio::spawn(async move {
                gateway::run(listener, client, config, metrics, stop.cancelled_owned())
                    .await
                    .expect("gateway runs");
            }));
        }
        // A gateway learns of media nodes from their heartbeats: wait until
        // each has heard them all, as a client could not tell it apart
        // from a system without calls otherwise.
        for gateway in &gateways {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while get_json(*gateway, "/health").await["media_nodes"] != media.len() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gateway {gateway} did not hear the media nodes"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        System {
            nats,
            gateways,
            stop_gateways,
            gateway_stops,
            gateway_links,
            gateway_tasks,
            stop_backend,
            moderators,
            moderator_config: options.moderator,
            moderator_user,
            history,
            history_config: options.history,
            history_user,
            gateway_metrics,
            moderator_metrics,
            history_metrics,
            media,
        }
    }

    async fn spawn_media(
        nats: &Nats,
        user: Option<&str>,
        config: &MediaConfig,
        stop_backend: &CancellationToken,
    ) -> MediaNode {
        let client = nats.connect_as(user).await;
        let metrics = Metrics::new(&client);
        let node = media::start(client, config.clone(), &metrics)
            .await
            .expect("media node starts");
        let id = node.id().clone();
        let stop = stop_backend.child_token();
        let task = tokio::spawn(node.run(stop.clone().cancelled_owned()));
        MediaNode {
            id,
            stop,
            task: Some(task),
        }
    }

    /// Kills media node `index`, as a crash would: its calls end, its
    /// heartbeats stop, and nothing is handed over.
    pub async fn kill_media(&mut self, index: usize) {
        if let Some(task) = self.media[index].task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops media node `index` as SIGTERM does: it drains first. Returns
    /// at once.
    pub fn stop_media(&self, index: usize) {
        self.media[index].stop.cancel();
    }

    /// The index of the media node the calls bucket says holds `room`'s
    /// call, if any.
    pub async fn media_node_of(&self, room: &RoomId) -> Option<usize> {
        // With NATS users, read as the media nodes, which own the bucket.
        let user = self.nats.with_users.then_some("media");
        let js = async_nats::jetstream::new(self.nats.connect_as(user).await);
        let calls = js
            .get_key_value(subject::CALLS_BUCKET)
            .await
            .expect("the calls bucket opens");
        let holder = calls
            .get(subject::room_key(room))
            .await
            .expect("the calls bucket reads")?;
        self.media
            .iter()
            .position(|node| node.id.as_str().as_bytes() == holder.as_ref())
    }

    async fn spawn_moderator(
        nats: &Nats,
        user: Option<&str>,
        config: &ModeratorConfig,
        stop_backend: &CancellationToken,
    ) -> (JoinHandle<()>, Metrics) {
        let client = nats.connect_as(user).await;
        let metrics = Metrics::new(&client);
        let moderator = moderator::start(client, config.clone(), &metrics)
            .await
            .expect("moderator starts");
        let task = tokio::spawn(moderator.run(stop_backend.clone().cancelled_owned()));
        (task, metrics)
    }

    /// Starts stopping gateway `index`, as SIGTERM does: it drains, then
    /// closes what is left. Returns at once; [`System::finish`] and
    /// [`System::shutdown`] wait for it.
    pub fn stop_gateway(&self, index: usize) {
        self.gateway_stops[index].cancel();
    }

    /// Cuts gateway `index` off NATS until [`System::restore_gateway`]:
    /// its connection drops and everything published meanwhile misses it.
    pub fn cut_gateway(&self, index: usize) {
        self.gateway_links[index].cut();
    }

    /// Lets gateway `index` reconnect to NATS.
    pub fn restore_gateway(&self, index: usize) {
        self.gateway_links[index].restore();
    }

    /// Starts one more moderator; it answers requests when this returns.
    pub async fn start_moderator(&mut self) {
        let (moderator, metrics) = Self::spawn_moderator(
            &self.nats,
            self.moderator_user,
            &self.moderator_config,
            &self.stop_backend,
        )
        .await;
        self.moderators.push(moderator);
        self.moderator_metrics.push(metrics);
    }

    /// Kills moderator `index` (in start order), as a crash would: nothing
    /// it held is finished or handed over. Returns once NATS has dropped its
    /// subscriptions, as it does at once when a process dies.
    pub async fn kill_moderator(&mut self, index: usize) {
        let before = self.nats.subscribers_of(subject::MODERATE).await;
        let task = self.moderators.remove(index);
        task.abort();
        let _ = task.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.nats.subscribers_of(subject::MODERATE).await >= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the killed moderator still subscribes after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn spawn_history(
        nats: &Nats,
        user: Option<&str>,
        config: &HistoryConfig,
        stop_backend: &CancellationToken,
    ) -> ((CancellationToken, JoinHandle<()>), Metrics) {
        let client = nats.connect_as(user).await;
        let metrics = Metrics::new(&client);
        let history = history::start(client, config.clone(), &metrics)
            .await
            .expect("history starts");
        let stop = stop_backend.child_token();
        let task = tokio::spawn(history.run(stop.clone().cancelled_owned()));
        ((stop, task), metrics)
    }

    /// Stops history alone, as a crash or a redeploy would.
    pub async fn stop_history(&mut self) {
        if let Some((stop, task)) = self.history.take() {
            stop.cancel();
            task.await.expect("history stops cleanly");
        }
    }

    /// Starts history again after [`System::stop_history`].
    pub async fn start_history(&mut self) {
        let (history, metrics) = Self::spawn_history(
            &self.nats,
            self.history_user,
            &self.history_config,
            &self.stop_backend,
        )
        .await;
        self.history = Some(history);
        self.history_metrics = metrics;
    }

    /// A system with one gateway and otherwise default settings.
    pub async fn one_gateway() -> System {
        System::start(Options::one_gateway()).await
    }

    /// Ends a scenario whose clients are closed or dropped: waits until
    /// nothing is left behind, then shuts down. Left behind would be a
    /// connection or room on a gateway (each connection is one task, so
    /// this counts tasks too), a room subscription in NATS, or a member in
    /// the rooms bucket. Fails naming what is left after `LEAK_TIMEOUT`;
    /// departures are asynchronous, hence the wait.
    pub async fn finish(self) {
        let deadline = tokio::time::Instant::now() + LEAK_TIMEOUT;
        let js = async_nats::jetstream::new(self.nats.connect().await);
        loop {
            let leaks = self.leaks(&js).await;
            if leaks.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind after {LEAK_TIMEOUT:?}: {leaks:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shutdown().await;
    }

    /// What is still held, as readable lines; empty when nothing is.
    async fn leaks(&self, js: &async_nats::jetstream::Context) -> Vec<String> {
        let mut leaks = Vec::new();
        let running = self
            .gateways
            .iter()
            .zip(&self.gateway_stops)
            .filter(|(_, stop)| !stop.is_cancelled());
        for (gateway, _) in running {
            let health = get_json(*gateway, "/health").await;
            for what in ["connections", "rooms"] {
                if health[what] != 0 {
                    leaks.push(format!("gateway {gateway}: {what} = {}", health[what]));
                }
            }
        }
        for subject in self.nats.room_subscriptions().await {
            leaks.push(format!("NATS subscription {subject}"));
        }
        // Every system has a moderator, which makes the bucket: failing to
        // open it is a failure of the check, never a pass.
        let rooms = js
            .get_key_value(subject::ROOMS_BUCKET)
            .await
            .expect("the rooms bucket opens");
        // Listed from the stream's info rather than with `keys()`, which
        // makes a consumer: no service's NATS user may, and with users
        // the check runs as the moderator.
        let prefix = format!("$KV.{}.", subject::ROOMS_BUCKET);
        let mut subjects = rooms
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .expect("list room keys");
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.expect("room key");
            let key = subject.trim_start_matches(&prefix).to_owned();
            let Some(entry) = rooms.get(&key).await.expect("read room") else {
                continue;
            };
            let state: RoomState = schemas::event::decode(&entry).expect("room state");
            if !state.members.is_empty() {
                leaks.push(format!("room {key}: {} members", state.members.len()));
            }
        }
        leaks
    }

    /// Stops the gateways, then the other services, and waits for them all.
    pub async fn shutdown(mut self) {
        self.stop_gateways.cancel();
        join_all(&mut self.gateway_tasks).await;
        self.stop_backend.cancel();
        join_all(&mut self.moderators).await;
        if let Some((_, task)) = self.history.take() {
            let _ = task.await;
        }
        for node in &mut self.media {
            if let Some(task) = node.task.take() {
                let _ = task.await;
            }
        }
    }
}

async fn join_all(tasks: &mut Vec<JoinHandle<()>>) {
    for task in tasks.drain(..) {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("service stops in time")
            .expect("service task did not panic");
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop_gateways.cancel();
        self.stop_backend.cancel();
    }
}
