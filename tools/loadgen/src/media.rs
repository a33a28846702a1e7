//! `loadgen media`: calls through the media service, measured. Rooms of
//! synthetic participants ([`call_peer`]) on loopback each send timestamped
//! audio frames at a fixed rate; every participant receives every other's
//! through the media node. The report says how many frames the node
//! forwarded per second, how late they arrived and how many never did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use call_peer::{Options, Participant, Record};
use cavlo_client::Connection;
use hdrhistogram::Histogram;
use schemas::client::{ClientFrame, ServerFrame};
use serde::Serialize;

use crate::connect::{self, ClientError};

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Gateway URLs; participants are spread over them.
    pub gateways: Vec<String>,
    /// Calls (rooms).
    pub rooms: usize,
    /// Participants per call.
    pub participants: usize,
    /// Frames each participant sends per second.
    pub rate: u32,
    /// Bytes per frame.
    pub frame_bytes: usize,
    /// How long frames are counted.
    pub duration: Duration,
}

/// What the run measured, over the counted window.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Participants in all.
    pub participants: usize,
    /// Frames sent in the window, all participants.
    pub sent: u64,
    /// Frames the node should have forwarded in the window: each sent
    /// frame once per other participant of its call.
    pub expected: u64,
    /// Frames forwarded and received in the window.
    pub received: u64,
    /// Expected frames that never arrived.
    pub lost: u64,
    /// Frames that arrived more than once.
    pub duplicated: u64,
    /// Received frames per second: what the node forwarded.
    pub forwarded_per_second: f64,
    /// Payload megabits per second the node forwarded.
    pub forwarded_mbit_per_second: f64,
    /// From a frame's sending to its arrival, through the node, µs: p50.
    pub delay_p50_us: u64,
    /// p99.
    pub delay_p99_us: u64,
    /// The largest.
    pub delay_max_us: u64,
}

impl Report {
    /// Ok when nothing was lost or duplicated.
    pub fn verdict(&self) -> Result<(), String> {
        if self.lost > 0 || self.duplicated > 0 {
            return Err(format!(
                "{} of {} frames lost, {} duplicated",
                self.lost, self.expected, self.duplicated
            ));
        }
        if self.received == 0 {
            return Err("nothing was forwarded".into());
        }
        Ok(())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "participants {}  sent {}  forwarded {} of {} expected  lost {}  duplicated {}\n\
             forwarded {:.0} frames/s, {:.2} Mbit/s  delay p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.participants,
            self.sent,
            self.received,
            self.expected,
            self.lost,
            self.duplicated,
            self.forwarded_per_second,
            self.forwarded_mbit_per_second,
            self.delay_p50_us as f64 / 1000.0,
            self.delay_p99_us as f64 / 1000.0,
            self.delay_max_us as f64 / 1000.0,
        )
    }
}

/// One participant: its connection (read on its own task, so the gateway's
/// pings are answered) and its media session.
struct Member {
    conn_id: String,
    room: usize,
    participant: Participant,
    _reader: tokio::task::JoinHandle<()>,
}

/// How long every participant may take to hear every other before the
/// window opens.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Time after the window for the last frames to arrive.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs the plan.
pub async fn run(plan: &Plan, secret: &[u8]) -> Result<Report, ClientError> {
    let epoch = Instant::now();
    let options = Options {
        publish: true,
        frame_interval: Duration::from_secs(1) / plan.rate.max(1),
        frame_bytes: plan.frame_bytes,
        epoch,
    };
    let tag = nuid::next().to_string();
    let mut members = Vec::new();
    for room in 0..plan.rooms {
        for index in 0..plan.participants {
            let url = &plan.gateways[(room * plan.participants + index) % plan.gateways.len()];
            let name = format!("media-{tag}-{room}-{index}");
            let room_name = format!("media-{tag}-{room}");
            members.push(join(url, secret, &name, &room_name, room, options).await?);
        }
    }
    // Every participant hears every other of its call before counting.
    let setup = Instant::now();
    loop {
        let deaf = members.iter().any(|m| {
            members
                .iter()
                .filter(|o| o.room == m.room && o.conn_id != m.conn_id)
                .any(|o| m.participant.frames_from(&o.conn_id) == 0)
        });
        if !deaf {
            break;
        }
        if setup.elapsed() > SETUP_TIMEOUT {
            return Err(ClientError::Unexpected(
                "not every participant heard every other within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let from = epoch.elapsed().as_micros() as u64 + 500_000;
    tokio::time::sleep(Duration::from_millis(500) + plan.duration).await;
    let until = epoch.elapsed().as_micros() as u64;
    tokio::time::sleep(DRAIN).await;
    let records: Vec<Record> = members.iter().map(|m| m.participant.record()).collect();
    Ok(measure(plan, &members, &records, from..until))
}

/// Joins a room and its call as user `name`.
async fn join(
    url: &str,
    secret: &[u8],
    name: &str,
    room_name: &str,
    room: usize,
    options: Options,
) -> Result<Member, ClientError> {
    let (mut connection, welcome) = connect::connect(url, &connect::token(secret, name)).await?;
    connection
        .send(&ClientFrame::Join {
            room: room_name.into(),
            since: None,
            replaces: None,
        })
        .await?;
    connect::expect(&mut connection, |frame| match frame {
        ServerFrame::Joined { .. } => Some(()),
        _ => None,
    })
    .await?;
    let mut participant = Participant::with(options).await;
    connection
        .send(&ClientFrame::CallJoin {
            room: room_name.into(),
            sdp: participant.offer.clone(),
        })
        .await?;
    let answer = connect::expect(&mut connection, |frame| match frame {
        ServerFrame::CallAnswer { sdp, .. } => Some(Ok(sdp)),
        ServerFrame::Error(error) => Some(Err(error)),
        _ => None,
    })
    .await?
    .map_err(|error| ClientError::Unexpected(format!("call_join refused: {error:?}")))?;
    participant.answered(answer);
    Ok(Member {
        conn_id: welcome.conn_id.to_string(),
        room,
        participant,
        _reader: tokio::spawn(read_all(connection)),
    })
}

/// Reads and drops frames until the connection ends.
async fn read_all(mut connection: Connection) {
    while connection.recv().await.is_ok() {}
}

fn measure(
    plan: &Plan,
    members: &[Member],
    records: &[Record],
    window: std::ops::Range<u64>,
) -> Report {
    let mut delays = Histogram::<u64>::new(3).expect("a histogram");
    let (mut sent, mut expected, mut received, mut duplicated, mut bytes) = (0, 0, 0, 0, 0);
    let sent_in_window: BTreeMap<&str, Vec<u32>> = members
        .iter()
        .zip(records)
        .map(|(m, r)| {
            let numbers = r
                .sent
                .iter()
                .enumerate()
                .filter(|(_, at)| window.contains(at))
                .map(|(n, _)| n as u32)
                .collect();
            (m.conn_id.as_str(), numbers)
        })
        .collect();
    for numbers in sent_in_window.values() {
        sent += numbers.len() as u64;
    }
    for (member, record) in members.iter().zip(records) {
        for other in members
            .iter()
            .filter(|o| o.room == member.room && o.conn_id != member.conn_id)
        {
            let numbers = &sent_in_window[other.conn_id.as_str()];
            expected += numbers.len() as u64;
            let Some(from) = record.received.get(&other.conn_id) else {
                continue;
            };
            duplicated += from.duplicates;
            for arrival in numbers.iter().filter_map(|n| from.frames.get(n)) {
                received += 1;
                bytes += plan.frame_bytes as u64;
                delays.saturating_record(arrival.delay);
            }
        }
    }
    let seconds = (window.end - window.start) as f64 / 1e6;
    Report {
        participants: members.len(),
        sent,
        expected,
        received,
        lost: expected - received,
        duplicated,
        forwarded_per_second: received as f64 / seconds,
        forwarded_mbit_per_second: bytes as f64 * 8.0 / seconds / 1e6,
        delay_p50_us: delays.value_at_quantile(0.5),
        delay_p99_us: delays.value_at_quantile(0.99),
        delay_max_us: delays.max(),
    }
}
