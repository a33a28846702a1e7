//! Verdicts on what the fault suite collects beside a load's own report:
//! how evenly scaled-out instances shared the work, and whether the
//! archive holds every stored message once, in order. The suite's script
//! only collects (metrics samples, the archive's files); the judging is
//! here, once, with tests, like the load's own verdict.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// What each instance of a service did between two samples.
#[derive(Debug, PartialEq)]
pub struct Shares {
    grew: BTreeMap<String, f64>,
}

/// An instance took less than a quarter of an even share: work that
/// should spread over every instance left one out.
pub const LEAST_SHARE: f64 = 0.25;

impl Shares {
    /// Growth per instance from `before` to `after`, each a sample file's
    /// text: one `name value` line per instance. An instance missing from
    /// `before` started from 0 (it was added in between).
    pub fn between(before: &str, after: &str) -> Result<Self, String> {
        let (before, after) = (samples(before)?, samples(after)?);
        if let Some(gone) = before.keys().find(|name| !after.contains_key(*name)) {
            return Err(format!("{gone} was sampled before and not after"));
        }
        let grew = after
            .into_iter()
            .map(|(name, value)| {
                let start = before.get(&name).copied().unwrap_or(0.0);
                (name, value - start)
            })
            .collect();
        Ok(Self { grew })
    }

    /// Passes when every instance took at least [`LEAST_SHARE`] of an
    /// even share; the error names those that did not.
    pub fn verdict(&self) -> Result<(), String> {
        if self.grew.is_empty() {
            return Err("no instance was sampled".into());
        }
        let even = 1.0 / self.grew.len() as f64;
        let short: Vec<&str> = self
            .grew
            .iter()
            .filter(|(name, _)| self.share(name) < even * LEAST_SHARE)
            .map(|(name, _)| name.as_str())
            .collect();
        if short.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "less than a quarter of an even share ({:.0}%): {}",
                even * 100.0,
                short.join(", ")
            ))
        }
    }

    fn share(&self, name: &str) -> f64 {
        let total: f64 = self.grew.values().sum();
        if total <= 0.0 {
            return 0.0;
        }
        self.grew.get(name).copied().unwrap_or(0.0) / total
    }
}

impl fmt::Display for Shares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .grew
            .iter()
            .map(|(name, grew)| format!("{name} {grew:.0} ({:.0}%)", self.share(name) * 100.0))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// `name value` lines.
fn samples(text: &str) -> Result<BTreeMap<String, f64>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            match (
                words.next(),
                words.next().map(str::parse::<f64>),
                words.next(),
            ) {
                (Some(name), Some(Ok(value)), None) => Ok((name.to_owned(), value)),
                _ => Err(format!("not a `name value` sample: {line:?}")),
            }
        })
        .collect()
}

/// What an archive directory holds: one file per room, a JSON chat
/// message per line.
#[derive(Debug, Default, PartialEq)]
pub struct Archive {
    /// Messages in all files.
    pub messages: u64,
    /// Files (rooms).
    pub rooms: usize,
    /// Rooms whose seqs do not each follow the one before.
    pub out_of_sequence: usize,
}

impl Archive {
    /// Reads every file in `dir`.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let mut archive = Self::default();
        let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|err| err.to_string())?.path();
            let text = std::fs::read_to_string(&path)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            archive
                .add_room(&text)
                .map_err(|err| format!("{}: {err}", path.display()))?;
        }
        Ok(archive)
    }

    /// Adds one room's file.
    fn add_room(&mut self, text: &str) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Line {
            seq: u64,
        }
        let seqs = text
            .lines()
            .map(|line| serde_json::from_str::<Line>(line).map(|l| l.seq))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|err| format!("a line that is not a chat message: {err}"))?;
        self.rooms += 1;
        self.messages += seqs.len() as u64;
        if seqs.windows(2).any(|pair| pair[1] != pair[0] + 1) {
            self.out_of_sequence += 1;
        }
        Ok(())
    }

    /// Passes when the archive holds as many messages as the stream
    /// (`stored`), every room in sequence, and the archiver counted no gap.
    pub fn verdict(&self, stored: u64, gaps: u64) -> Result<(), String> {
        if self.messages == stored && self.out_of_sequence == 0 && gaps == 0 {
            Ok(())
        } else {
            Err(format!(
                "{} messages archived of {stored} stored, {} rooms out of sequence, {gaps} gaps",
                self.messages, self.out_of_sequence
            ))
        }
    }
}

impl fmt::Display for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages in {} rooms; rooms out of sequence {}",
            self.messages, self.rooms, self.out_of_sequence
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_growth_and_new_instances_from_zero() {
        let shares = Shares::between("a 10\nb 20\n", "a 40\nb 50\nc 30\n").unwrap();
        assert_eq!(shares.to_string(), "a 30 (33%), b 30 (33%), c 30 (33%)");
        assert_eq!(shares.verdict(), Ok(()));
    }

    #[test]
    fn an_instance_left_out_fails() {
        // An even share of three is 33 %; a quarter of it is 8.3 %.
        let shares = Shares::between("", "a 100\nb 100\nc 10\n").unwrap();
        assert!(shares.verdict().unwrap_err().ends_with(": c"), "{shares}");
        let shares = Shares::between("", "a 100\nb 100\nc 20\n").unwrap();
        assert_eq!(shares.verdict(), Ok(()), "c took 9 %");
        let idle = Shares::between("a 5\nb 5\n", "a 5\nb 5\n").unwrap();
        assert!(idle.verdict().is_err(), "nothing grew");
        assert!(Shares::between("", "").unwrap().verdict().is_err());
    }

    #[test]
    fn a_sample_that_is_not_name_and_value_is_an_error() {
        for bad in ["a", "a b", "a 1 2"] {
            assert!(Shares::between("", bad).is_err(), "{bad}");
        }
        assert!(
            Shares::between("a 1\nb 1\n", "a 2\n").is_err(),
            "b vanished"
        );
    }

    fn room(seqs: &[u64]) -> String {
        seqs.iter()
            .map(|seq| format!("{{\"room\":\"r\",\"seq\":{seq},\"text\":\"x\"}}\n"))
            .collect()
    }

    #[test]
    fn an_archive_passes_only_whole_and_in_sequence() {
        let mut archive = Archive::default();
        archive.add_room(&room(&[1, 2, 3])).unwrap();
        archive.add_room(&room(&[4, 5])).unwrap();
        assert_eq!(archive.verdict(5, 0), Ok(()), "{archive}");
        assert!(archive.verdict(6, 0).is_err(), "one stored message missing");
        assert!(archive.verdict(5, 1).is_err(), "the archiver counted a gap");

        let mut skipped = Archive::default();
        skipped.add_room(&room(&[1, 3])).unwrap();
        assert_eq!(skipped.out_of_sequence, 1);
        assert!(skipped.verdict(2, 0).is_err());

        let mut doubled = Archive::default();
        doubled.add_room(&room(&[1, 2, 2])).unwrap();
        assert!(doubled.verdict(3, 0).is_err(), "a message twice");
    }

    #[test]
    fn a_line_that_is_not_a_chat_message_is_an_error() {
        assert!(Archive::default().add_room("{\"seq\":\n").is_err());
    }
}
