//! Simulcast: which of a publisher's video layers each subscriber gets.
//!
//! A browser may send its camera as several layers (VP8 simulcast, each
//! layer a `rid`), smallest first as the SDK offers them. The node forwards
//! one layer per subscriber: the largest that fits the subscriber's share of
//! its estimated bandwidth (TWCC), unless the subscriber asked for the small
//! one (a small tile) or for none (a tile it does not show). A switch waits
//! for a keyframe of the new layer, which the node asks the publisher for,
//! so the subscriber's decoder never gets a frame it cannot decode.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use str0m::media::Rid;

/// What a subscriber asked for of one participant's video.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The largest layer its bandwidth allows (the default).
    #[default]
    High,
    /// The smallest layer: for a small tile.
    Low,
    /// Nothing: a tile it does not show.
    Paused,
}

/// One layer of a publisher's video, and how fast it arrives.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Its id in the publisher's offer.
    pub rid: Rid,
    meter: Meter,
    /// When a keyframe of it was last asked for.
    pub keyframe_asked: Option<Instant>,
}

/// A layer that sent nothing for this long is off (the browser stopped it,
/// for lack of CPU or bandwidth).
const SILENT: Duration = Duration::from_secs(1);

/// The window a layer's bitrate is measured over.
const WINDOW: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
struct Meter {
    since: Instant,
    bytes: u64,
    bits_per_second: f64,
    last: Option<Instant>,
}

impl Layer {
    /// Layer `rid`, not heard yet.
    pub fn new(rid: Rid, now: Instant) -> Self {
        Self {
            rid,
            meter: Meter {
                since: now,
                bytes: 0,
                bits_per_second: 0.0,
                last: None,
            },
            keyframe_asked: None,
        }
    }

    /// Counts a frame of `bytes` of this layer.
    pub fn heard(&mut self, bytes: usize, now: Instant) {
        let meter = &mut self.meter;
        meter.bytes += bytes as u64;
        meter.last = Some(now);
        let elapsed = now.duration_since(meter.since);
        if elapsed >= WINDOW {
            meter.bits_per_second = meter.bytes as f64 * 8.0 / elapsed.as_secs_f64();
            meter.bytes = 0;
            meter.since = now;
        }
    }

    /// Its bitrate, bits per second, over the last window.
    pub fn bits_per_second(&self) -> f64 {
        self.meter.bits_per_second
    }

    /// Whether frames of it arrive.
    pub fn active(&self, now: Instant) -> bool {
        self.meter
            .last
            .is_some_and(|last| now.duration_since(last) < SILENT)
    }
}

/// The layer to forward for `quality`, of `layers` (smallest first), given
/// `budget` bits per second for this track (`None`: unknown, no limit).
/// Only layers that arrive count; `None` when nothing is to be forwarded.
pub fn choose(
    quality: Quality,
    layers: &[Layer],
    budget: Option<f64>,
    now: Instant,
) -> Option<Rid> {
    let mut active = layers.iter().filter(|layer| layer.active(now));
    match quality {
        Quality::Paused => None,
        Quality::Low => active.next().map(|layer| layer.rid),
        Quality::High => {
            let active: Vec<&Layer> = active.collect();
            let fits =
                |layer: &&&Layer| budget.is_none_or(|budget| layer.bits_per_second() <= budget);
            active
                .iter()
                .rev()
                .find(fits)
                .or(active.first())
                .map(|layer| layer.rid)
        }
    }
}

/// Which layer one subscription forwards, and the switch it waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switch {
    /// The layer being forwarded.
    pub current: Option<Rid>,
}

/// What to do with one frame of a simulcast track, for one subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Forward it.
    Forward,
    /// Drop it.
    Skip,
    /// Drop it, and ask the publisher for a keyframe of this layer: the
    /// subscription waits to switch to it.
    AskKeyframe(Rid),
}

impl Switch {
    /// Whether a frame of layer `rid` (a keyframe or not) is forwarded, when
    /// `target` is the layer this subscription should get.
    pub fn admit(&mut self, rid: Rid, keyframe: bool, target: Option<Rid>) -> Admit {
        let Some(target) = target else {
            self.current = None;
            return Admit::Skip;
        };
        if self.current == Some(target) {
            return if rid == target {
                Admit::Forward
            } else {
                Admit::Skip
            };
        }
        // Switching (or starting): the target's keyframe begins it; until
        // then the current layer goes on.
        if rid == target && keyframe {
            self.current = Some(target);
            return Admit::Forward;
        }
        if Some(rid) == self.current {
            return Admit::Forward;
        }
        if rid == target {
            return Admit::AskKeyframe(target);
        }
        Admit::Skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(rates: &[(&str, f64)], now: Instant) -> Vec<Layer> {
        rates
            .iter()
            .map(|(rid, bps)| {
                let mut layer = Layer::new(Rid::from(*rid), now - WINDOW);
                layer.meter.bits_per_second = *bps;
                layer.meter.last = (*bps > 0.0).then_some(now);
                layer
            })
            .collect()
    }

    #[test]
    fn high_takes_the_largest_layer_that_fits_and_low_the_smallest() {
        let now = Instant::now();
        let three = layers(&[("l", 150e3), ("m", 500e3), ("h", 1500e3)], now);
        assert_eq!(choose(Quality::High, &three, None, now), Some("h".into()));
        assert_eq!(
            choose(Quality::High, &three, Some(800e3), now),
            Some("m".into())
        );
        assert_eq!(
            choose(Quality::High, &three, Some(10e3), now),
            Some("l".into()),
            "the smallest when none fits"
        );
        assert_eq!(choose(Quality::Low, &three, None, now), Some("l".into()));
        assert_eq!(choose(Quality::Paused, &three, None, now), None);
    }

    #[test]
    fn layers_that_stopped_do_not_count() {
        let now = Instant::now();
        let browser_dropped_the_top = layers(&[("l", 150e3), ("m", 500e3), ("h", 0.0)], now);
        assert_eq!(
            choose(Quality::High, &browser_dropped_the_top, None, now),
            Some("m".into())
        );
        assert_eq!(choose(Quality::High, &[], None, now), None);
    }

    #[test]
    fn a_switch_waits_for_the_new_layers_keyframe() {
        let (l, h) = (Rid::from("l"), Rid::from("h"));
        let mut switch = Switch::default();
        assert_eq!(
            switch.admit(h, false, Some(h)),
            Admit::AskKeyframe(h),
            "no keyframe yet"
        );
        assert_eq!(switch.admit(h, true, Some(h)), Admit::Forward);
        assert_eq!(switch.admit(l, false, Some(h)), Admit::Skip);
        // Asked for the small layer: the large one goes on until its keyframe.
        assert_eq!(switch.admit(h, false, Some(l)), Admit::Forward);
        assert_eq!(switch.admit(l, false, Some(l)), Admit::AskKeyframe(l));
        assert_eq!(switch.admit(l, true, Some(l)), Admit::Forward);
        assert_eq!(switch.admit(h, false, Some(l)), Admit::Skip);
        assert_eq!(switch.current, Some(l));
        // Paused: nothing, and a resumed track starts on a keyframe again.
        assert_eq!(switch.admit(l, false, None), Admit::Skip);
        assert_eq!(switch.admit(l, false, Some(l)), Admit::AskKeyframe(l));
    }
}
