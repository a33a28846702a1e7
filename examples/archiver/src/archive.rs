//! The archive on disk: one append-only file per room, one JSON line per
//! chat message, in the room's seq order.
//!
//! Each line is written once. JetStream may deliver a message again (an
//! ack lost in a crash or a reconnect), so every file remembers the last
//! seq it holds and anything at or below it is skipped; after a crash the
//! last seq is read back from the file's tail, and a line cut short by the
//! crash (never acknowledged, so JetStream sends it again) is dropped.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use lru::LruCache;
use schemas::client::ChatMessage;
use schemas::id::{RoomId, Seq};
use schemas::subject;

/// The longest file name (less `.jsonl`) used as it is: file systems allow
/// 255 bytes.
const MAX_PLAIN_NAME: usize = 200;

/// What [`Archive::append`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written; it follows the room's last archived message, or is the
    /// room's first.
    Written,
    /// Written, but the messages from the room's last archived one up to
    /// `previous` were never archived: they had left the stream's bounded
    /// backlog before the archiver read them (it started late, or was down
    /// longer than the backlog lasts).
    AfterGap {
        /// The seq stored right before this message, the last one missing.
        previous: Seq,
    },
    /// Already archived (a redelivery); not written again.
    Duplicate,
}

/// The archive could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A room's last line is not an archived message.
    #[error("{path}: the last line is not an archived message: {source}")]
    Corrupt {
        /// The room's file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// A room's file, open for appending, and the last seq in it.
struct RoomFile {
    path: PathBuf,
    file: File,
    last: Seq,
}

/// The archive directory. Keeps at most `max_open_files` rooms' files open
/// (least recently used first out); a room whose file was closed is opened
/// again, and its last seq read back, when its next message comes.
pub struct Archive {
    dir: PathBuf,
    open: LruCache<RoomId, RoomFile>,
    /// Rooms written since the last [`Archive::sync`].
    unsynced: HashSet<RoomId>,
}

impl Archive {
    /// Opens the archive in `dir`, creating the directory if needed.
    pub fn open(dir: &Path, max_open_files: NonZeroUsize) -> Result<Self, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(|source| ArchiveError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            open: LruCache::new(max_open_files),
            unsynced: HashSet::new(),
        })
    }

    /// The file that holds `room`'s messages: the room's name when it is
    /// made of `[A-Za-z0-9_-]`, else its hex form behind `=` (as in the
    /// rooms bucket), so no room name can reach outside the directory. A
    /// form longer than file names may be (room names go up to 128 bytes,
    /// twice that in hex) is replaced by its SHA-256 behind `~`.
    pub fn path_of(dir: &Path, room: &RoomId) -> PathBuf {
        let key = subject::room_key(room);
        let name = if key.len() <= MAX_PLAIN_NAME {
            key
        } else {
            let digest = ring::digest::digest(&ring::digest::SHA256, room.as_str().as_bytes());
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("~{hex}")
        };
        dir.join(format!("{name}.jsonl"))
    }

    /// Appends `message` to its room's file unless it is already there.
    /// `previous` is the seq the moderator stored right before it in the room
    /// (its [`subject::PREV_SEQ_HEADER`]; `Seq(0)` when the room had no
    /// retained message), which tells a gap from a room whose seqs do not
    /// start at 1. The line is in the file (not necessarily on disk) when
    /// this returns; [`Archive::sync`] makes it durable.
    pub fn append(
        &mut self,
        message: &ChatMessage,
        previous: Seq,
    ) -> Result<Appended, ArchiveError> {
        let room = self.room(&message.room)?;
        if message.seq <= room.last {
            return Ok(Appended::Duplicate);
        }
        let gap = previous != Seq(0) && previous != room.last;
        let mut line = serde_json::to_vec(message).expect("a chat message serializes");
        line.push(b'\n');
        room.file
            .write_all(&line)
            .map_err(|source| ArchiveError::Io {
                path: room.path.clone(),
                source,
            })?;
        room.last = message.seq;
        self.unsynced.insert(message.room.clone());
        Ok(if gap {
            Appended::AfterGap { previous }
        } else {
            Appended::Written
        })
    }

    /// Flushes every file written since the last call to disk, so that
    /// acknowledging what they hold cannot lose it.
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        // Each room leaves the set only once synced: after a failure, the
        // next call tries the rest again.
        for room in self.unsynced.clone() {
            // Not open any more: closing it wrote it, sync it by path.
            let synced = match self.open.peek(&room) {
                Some(open) => open.file.sync_data().map_err(|e| (open.path.clone(), e)),
                None => {
                    let path = Self::path_of(&self.dir, &room);
                    File::open(&path)
                        .and_then(|file| file.sync_data())
                        .map_err(|e| (path, e))
                }
            };
            synced.map_err(|(path, source)| ArchiveError::Io { path, source })?;
            self.unsynced.remove(&room);
        }
        Ok(())
    }

    /// The open file of `room`, opening it (and reading its last seq) if
    /// it is not.
    fn room(&mut self, room: &RoomId) -> Result<&mut RoomFile, ArchiveError> {
        if !self.open.contains(room) {
            let path = Self::path_of(&self.dir, room);
            let new = !path.exists();
            let opened = open_room(&path)?;
            if new {
                // A new file's name is durable only once its directory is.
                File::open(&self.dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|source| ArchiveError::Io {
                        path: self.dir.clone(),
                        source,
                    })?;
            }
            self.open.put(room.clone(), opened);
        }
        Ok(self.open.get_mut(room).expect("just opened"))
    }
}

/// Opens a room's file for appending: drops a last line a crash cut short,
/// and reads the seq of the last whole line (0 for a new file).
fn open_room(path: &Path) -> Result<RoomFile, ArchiveError> {
    let io_error = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    // Everything after the last newline is a line cut short.
    let whole = last_newline(&file, len)
        .map_err(io_error)?
        .map_or(0, |at| at + 1);
    if whole < len {
        tracing::warn!(path = %path.display(), bytes = len - whole, "dropping a line cut short");
        file.set_len(whole).map_err(io_error)?;
    }
    let last = if whole == 0 {
        Seq(0)
    } else {
        let start = last_newline(&file, whole - 1)
            .map_err(io_error)?
            .map_or(0, |at| at + 1);
        let mut line = vec![0; (whole - 1 - start) as usize];
        file.read_exact_at(&mut line, start).map_err(io_error)?;
        let message: ChatMessage =
            serde_json::from_slice(&line).map_err(|source| ArchiveError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        message.seq
    };
    Ok(RoomFile {
        path: path.to_owned(),
        file,
        last,
    })
}

/// The offset of the last `\n` in the file's first `end` bytes, if any,
/// read backwards a block at a time.
fn last_newline(file: &File, end: u64) -> io::Result<Option<u64>> {
    const BLOCK: u64 = 8192;
    let mut buffer = vec![0; BLOCK as usize];
    let mut end = end;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buffer[..(end - start) as usize];
        file.read_exact_at(block, start)?;
        if let Some(at) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + at as u64));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use schemas::client::{Member, User};
    use schemas::id::{ClientMsgId, ConnId, UserId};

    use super::*;

    /// Appends message `seq` of `room`, stored right after `seq - 1`.
    fn append(archive: &mut Archive, room: &str, seq: u64, text: &str) -> Appended {
        archive
            .append(&message(room, seq, text), Seq(seq - 1))
            .unwrap()
    }

    fn message(room: &str, seq: u64, text: &str) -> ChatMessage {
        ChatMessage {
            room: RoomId::from(room),
            seq: Seq(seq),
            id: ClientMsgId(format!("m{seq}")),
            from: Member {
                conn_id: ConnId::from("c1"),
                user: User {
                    id: UserId::from("ann"),
                    name: "Ann".into(),
                },
            },
            text: text.into(),
            ts: 1,
        }
    }

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("cavlo-archive-{}", nuid::next()))
    }

    fn seqs(dir: &Path, room: &str) -> Vec<u64> {
        std::fs::read_to_string(Archive::path_of(dir, &RoomId::from(room)))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<ChatMessage>(line).unwrap().seq.0)
            .collect()
    }

    fn one_file() -> NonZeroUsize {
        NonZeroUsize::new(1).unwrap()
    }

    #[test]
    fn writes_each_seq_once_across_reopening() {
        let dir = dir();
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        assert_eq!(append(&mut archive, "r", 1, "a"), Appended::Written);
        assert_eq!(append(&mut archive, "r", 2, "b"), Appended::Written);
        assert_eq!(append(&mut archive, "r", 2, "b"), Appended::Duplicate);
        // Another room pushes r's file out of the cache of one; r's last
        // seq comes back from its file.
        assert_eq!(append(&mut archive, "s", 1, "x"), Appended::Written);
        assert_eq!(append(&mut archive, "r", 1, "a"), Appended::Duplicate);
        archive.sync().unwrap();
        drop(archive);
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        assert_eq!(append(&mut archive, "r", 2, "b"), Appended::Duplicate);
        assert_eq!(append(&mut archive, "r", 3, "c"), Appended::Written);
        archive.sync().unwrap();
        assert_eq!(seqs(&dir, "r"), [1, 2, 3]);
        assert_eq!(seqs(&dir, "s"), [1]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_line_cut_short_is_dropped_and_written_again() {
        let dir = dir();
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        append(&mut archive, "r", 1, "a");
        archive.sync().unwrap();
        drop(archive);
        let path = Archive::path_of(&dir, &RoomId::from("r"));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"room":"r","seq":2,"id":"m2","fr"#)
            .unwrap();
        drop(file);
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        assert_eq!(append(&mut archive, "r", 2, "b"), Appended::Written);
        archive.sync().unwrap();
        assert_eq!(seqs(&dir, "r"), [1, 2]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_last_line_longer_than_a_block_is_read_back() {
        let dir = dir();
        let long = "é".repeat(10_000);
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        append(&mut archive, "r", 1, &long);
        append(&mut archive, "r", 2, &long);
        archive.sync().unwrap();
        drop(archive);
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        assert_eq!(append(&mut archive, "r", 2, "b"), Appended::Duplicate);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_gap_is_told_from_a_room_that_starts_late() {
        let dir = dir();
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        // A room's seqs start past the stream's end, not at 1.
        let first = message("r", 40, "a");
        assert_eq!(archive.append(&first, Seq(0)).unwrap(), Appended::Written);
        assert_eq!(append(&mut archive, "r", 41, "b"), Appended::Written);
        // 42 and 43 left the backlog unread.
        assert_eq!(
            archive.append(&message("r", 44, "e"), Seq(43)).unwrap(),
            Appended::AfterGap { previous: Seq(43) }
        );
        // Read first after its backlog was trimmed.
        assert_eq!(
            archive.append(&message("s", 7, "x"), Seq(6)).unwrap(),
            Appended::AfterGap { previous: Seq(6) }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn room_names_stay_inside_the_directory() {
        let dir = Path::new("/archive");
        assert_eq!(
            Archive::path_of(dir, &RoomId::from("../etc/passwd")),
            Path::new("/archive/=2e2e2f6574632f706173737764.jsonl")
        );
        assert_eq!(
            Archive::path_of(dir, &RoomId::from("lobby-1")),
            Path::new("/archive/lobby-1.jsonl")
        );
    }

    /// Found in review: a 128-byte room name with one character outside
    /// `[A-Za-z0-9_-]` made a 257-byte file name, which no file system
    /// takes; the archiver exited on it, and again after every restart.
    #[test]
    fn the_longest_room_names_get_a_file() {
        let dir = dir();
        let mut archive = Archive::open(&dir, one_file()).unwrap();
        let long = format!("{}:", "x".repeat(127));
        assert_eq!(append(&mut archive, &long, 1, "a"), Appended::Written);
        archive.sync().unwrap();
        let other = format!("{};", "x".repeat(127));
        assert_ne!(
            Archive::path_of(&dir, &RoomId::from(long.as_str())),
            Archive::path_of(&dir, &RoomId::from(other.as_str()))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
