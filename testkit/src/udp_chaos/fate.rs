//! What the UDP chaos proxy does to each datagram: seeded, sans-IO decisions.
//!
//! A [`Decider`] turns (time since the proxy started, flow, direction) into a [`Fate`]: dropped,
//! sent once or twice, and after which delay. Every flow and direction draws from its own
//! random stream, derived from the seed and the flow's number (flows are numbered in the order
//! their first datagram arrived), and every datagram draws the same count of numbers whatever
//! the faults are set to. So the `n`-th datagram of a flow in one direction meets the same fate
//! in every run with the same seed and faults, however the two directions and the other flows
//! interleave. Only the time-based faults (blackholes, delay spikes) depend on when a datagram
//! arrives, and their schedule is seeded too.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Which way a datagram travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client to the target (the server).
    ToServer,
    /// From the target back to a client.
    ToClient,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToServer => "c→s",
            Direction::ToClient => "s→c",
        })
    }
}

/// Periods during which every datagram gets an extra delay, as a radio link or a congested
/// queue shows: each starts a random gap after the previous one ended (uniform in
/// `every / 2 ..= every * 3 / 2`), lasts `lasting`, and adds a delay drawn per datagram in
/// `min ..= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spikes {
    /// Mean time between the end of one spike and the start of the next.
    pub every: Duration,
    /// How long one spike lasts.
    pub lasting: Duration,
    /// Least extra delay during a spike.
    pub min: Duration,
    /// Most extra delay during a spike.
    pub max: Duration,
}

/// The faults the proxy injects, the same both ways. The default injects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Probability that a datagram is dropped (0.0–1.0).
    pub loss: f64,
    /// Probability that a datagram is sent twice (the copy right after the original).
    pub duplicate: f64,
    /// Probability that a datagram is held back by [`Faults::reorder_delay`] extra, so that
    /// the ones after it overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back (on top of its other delay).
    pub reorder_delay: Duration,
    /// One-way delay every datagram gets.
    pub delay: Duration,
    /// Extra delay drawn per datagram, uniform in `0..=jitter` (reorders datagrams closer
    /// together than the jitter).
    pub jitter: Duration,
    /// Delay spikes, if any.
    pub spikes: Option<Spikes>,
}

impl Faults {
    /// Checks that every probability is in 0.0–1.0 and that spikes make sense.
    pub fn validate(&self) -> Result<(), &'static str> {
        let p = |x: f64| (0.0..=1.0).contains(&x);
        if !(p(self.loss) && p(self.duplicate) && p(self.reorder)) {
            return Err("loss, duplicate and reorder are probabilities between 0 and 1");
        }
        if let Some(s) = self.spikes
            && (s.every.is_zero() || s.lasting.is_zero() || s.min > s.max)
        {
            return Err("spikes need every > 0, lasting > 0 and min <= max");
        }
        Ok(())
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fate {
    /// Copies sent: 0 (dropped), 1, or 2 (duplicated).
    pub copies: u8,
    /// How long after its arrival the datagram (and its copy) is sent on.
    pub delay: Duration,
    /// Why it was dropped (`Lost` or `Blackholed`), when `copies` is 0.
    pub dropped_by: Option<Injection>,
    /// The extra delay of a spike it met.
    pub spike: Option<Duration>,
    /// The extra delay it was held back by to be overtaken.
    pub reordered: Option<Duration>,
}

impl Fate {
    /// Every fault injected into this datagram (plain delay and jitter are not listed).
    pub fn injections(&self) -> impl Iterator<Item = Injection> + use<> {
        let dup = (self.copies == 2).then_some(Injection::Duplicated);
        self.dropped_by
            .into_iter()
            .chain(self.spike.map(Injection::Spiked))
            .chain(self.reordered.map(Injection::Reordered))
            .chain(dup)
    }
}

/// A fault injected into one datagram (or one flow), as the event log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Dropped by the loss probability.
    Lost,
    /// Dropped because a blackhole was on.
    Blackholed,
    /// Sent twice.
    Duplicated,
    /// Held back so that later datagrams overtake it; the extra delay.
    Reordered(Duration),
    /// Delayed by a spike; the extra delay.
    Spiked(Duration),
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Injection::Lost => f.write_str("lost"),
            Injection::Blackholed => f.write_str("blackholed"),
            Injection::Duplicated => f.write_str("duplicated"),
            Injection::Reordered(d) => write!(f, "reordered (+{d:?})"),
            Injection::Spiked(d) => write!(f, "delay spike (+{d:?})"),
        }
    }
}

/// SplitMix64: small, fast, and fully determined by its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_nanos() as f64;
        lo + Duration::from_nanos((self.unit() * span) as u64)
    }
}

/// The seeded schedule of delay spikes: windows `[start, end)` in time since the start.
#[derive(Debug, Clone)]
struct SpikeClock {
    rng: Rng,
    start: Duration,
    end: Duration,
}

impl SpikeClock {
    fn new(seed: u64, s: &Spikes) -> Self {
        let mut clock =
            Self { rng: Rng(seed ^ 0x5350_494B_4553), start: Duration::ZERO, end: Duration::ZERO };
        clock.advance_from(Duration::ZERO, s);
        clock
    }

    fn advance_from(&mut self, after: Duration, s: &Spikes) {
        self.start = after + self.rng.between(s.every / 2, s.every * 3 / 2);
        self.end = self.start + s.lasting;
    }

    /// Whether `now` falls in a spike (moving the schedule forward past windows that ended).
    fn in_spike(&mut self, now: Duration, s: &Spikes) -> bool {
        while now >= self.end {
            let end = self.end;
            self.advance_from(end, s);
        }
        now >= self.start
    }
}

/// Decides the fate of every datagram. See the module doc.
#[derive(Debug)]
pub struct Decider {
    seed: u64,
    faults: Faults,
    streams: HashMap<(u32, Direction), Rng>,
    spikes: Option<SpikeClock>,
    /// A blackhole's `[from, until)`.
    blackhole: Option<(Duration, Duration)>,
}

impl Decider {
    /// A decider for `seed` injecting `faults` (check them with [`Faults::validate`] first).
    pub fn new(seed: u64, faults: Faults) -> Self {
        let spikes = faults.spikes.as_ref().map(|s| SpikeClock::new(seed, s));
        Self { seed, faults, streams: HashMap::new(), spikes, blackhole: None }
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Injects `faults` from now on (the random streams go on where they were).
    pub fn set_faults(&mut self, faults: Faults) {
        if faults.spikes != self.faults.spikes {
            self.spikes = faults.spikes.as_ref().map(|s| SpikeClock::new(self.seed, s));
        }
        self.faults = faults;
    }

    /// Drops every datagram, both ways, from `now` until `now + length`.
    pub fn blackhole(&mut self, now: Duration, length: Duration) {
        self.blackhole = Some((now, now + length));
    }

    /// Ends a blackhole at once.
    pub fn lift_blackhole(&mut self) {
        self.blackhole = None;
    }

    /// The fate of the next datagram of `flow` travelling `dir`, arriving at `now`.
    pub fn decide(&mut self, now: Duration, flow: u32, dir: Direction) -> Fate {
        let seed = self.seed;
        let rng = self.streams.entry((flow, dir)).or_insert_with(|| {
            let lane = (u64::from(flow) << 1) | u64::from(dir == Direction::ToClient);
            let mut mix = Rng(seed ^ lane.wrapping_mul(0xA076_1D64_78BD_642F));
            Rng(mix.next())
        });
        // Always the same draws per datagram, so one fault's setting never shifts another's.
        let (lost, dup, reorder) = (rng.unit(), rng.unit(), rng.unit());
        let f = &self.faults;
        let jitter = rng.between(Duration::ZERO, f.jitter);
        let spike_extra = f.spikes.map(|s| rng.between(s.min, s.max)).unwrap_or_default();

        if self.blackhole.is_some_and(|(from, until)| from <= now && now < until) {
            return Fate { dropped_by: Some(Injection::Blackholed), ..Fate::default() };
        }
        if lost < f.loss {
            return Fate { dropped_by: Some(Injection::Lost), ..Fate::default() };
        }
        let mut fate = Fate { copies: 1, delay: f.delay + jitter, ..Fate::default() };
        if let (Some(s), Some(clock)) = (f.spikes.as_ref(), self.spikes.as_mut())
            && clock.in_spike(now, s)
        {
            fate.delay += spike_extra;
            fate.spike = Some(spike_extra);
        }
        if reorder < f.reorder {
            fate.delay += f.reorder_delay;
            fate.reordered = Some(f.reorder_delay);
        }
        if dup < f.duplicate {
            fate.copies = 2;
        }
        fate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fates(seed: u64, faults: Faults, flow: u32, n: usize) -> Vec<Fate> {
        let mut d = Decider::new(seed, faults);
        (0..n).map(|i| d.decide(MS * i as u32, flow, Direction::ToServer)).collect()
    }

    fn lossy() -> Faults {
        Faults {
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.05,
            reorder_delay: 20 * MS,
            ..Faults::default()
        }
    }

    #[test]
    fn no_faults_sends_everything_once_at_once() {
        let all = fates(1, Faults::default(), 0, 1000);
        let plain = Fate { copies: 1, ..Fate::default() };
        assert!(all.iter().all(|f| *f == plain && f.injections().count() == 0));
    }

    #[test]
    fn the_same_seed_gives_the_same_fates_and_another_seed_others() {
        assert_eq!(fates(7, lossy(), 3, 2000), fates(7, lossy(), 3, 2000));
        assert_ne!(fates(7, lossy(), 3, 2000), fates(8, lossy(), 3, 2000));
        assert_ne!(fates(7, lossy(), 3, 2000), fates(7, lossy(), 4, 2000), "flows differ");
    }

    #[test]
    fn one_direction_does_not_shift_the_other() {
        let mut alone = Decider::new(5, lossy());
        let a: Vec<_> =
            (0..500).map(|_| alone.decide(Duration::ZERO, 0, Direction::ToServer)).collect();
        let mut mixed = Decider::new(5, lossy());
        let mut b = Vec::new();
        for _ in 0..500 {
            b.push(mixed.decide(Duration::ZERO, 0, Direction::ToServer));
            mixed.decide(Duration::ZERO, 0, Direction::ToClient);
            mixed.decide(Duration::ZERO, 9, Direction::ToServer);
        }
        assert_eq!(a, b);
    }

    #[test]
    fn loss_duplicates_and_reorders_come_at_their_rates() {
        let all = fates(42, lossy(), 0, 20_000);
        let count = |pred: &dyn Fn(&Fate) -> bool| all.iter().filter(|f| pred(f)).count();
        let lost = count(&|f| f.copies == 0);
        let dup = count(&|f| f.copies == 2);
        let reordered = count(&|f| f.delay == 20 * MS);
        // Fixed seed: these counts are exact for it; the bounds say they match the rates.
        assert!((1800..2200).contains(&lost), "{lost}");
        assert!((800..1000).contains(&dup), "{dup}");
        assert!((800..1000).contains(&reordered), "{reordered}");
        let dropped = all.iter().filter(|f| f.copies == 0);
        assert!(dropped.clone().all(|f| f.injections().eq([Injection::Lost])));
        assert!(
            all.iter()
                .filter(|f| f.copies == 2)
                .all(|f| f.injections().any(|i| i == Injection::Duplicated))
        );
    }

    #[test]
    fn changing_one_probability_keeps_the_others_fates() {
        let base = fates(11, lossy(), 0, 5000);
        let more_dups = fates(11, Faults { duplicate: 0.5, ..lossy() }, 0, 5000);
        for (a, b) in base.iter().zip(&more_dups) {
            assert_eq!(a.copies == 0, b.copies == 0, "the same datagrams are lost");
            assert_eq!(a.delay, b.delay);
            if a.copies == 2 {
                assert_eq!(b.copies, 2, "a duplicate stays a duplicate at a higher rate");
            }
        }
    }

    #[test]
    fn jitter_stays_within_its_bound_and_adds_to_the_delay() {
        let f = Faults { delay: 50 * MS, jitter: 10 * MS, ..Faults::default() };
        let all = fates(3, f, 0, 5000);
        assert!(all.iter().all(|x| x.delay >= 50 * MS && x.delay <= 60 * MS && x.copies == 1));
        assert!(all.iter().any(|x| x.delay > 59 * MS) && all.iter().any(|x| x.delay < 51 * MS));
    }

    #[test]
    fn a_blackhole_drops_everything_both_ways_until_it_ends() {
        let mut d = Decider::new(1, Faults::default());
        d.blackhole(100 * MS, 50 * MS);
        assert_eq!(d.decide(99 * MS, 0, Direction::ToServer).copies, 1);
        for t in [100, 120, 149] {
            for dir in [Direction::ToServer, Direction::ToClient] {
                let fate = d.decide(t * MS, 2, dir);
                assert_eq!((fate.copies, fate.dropped_by), (0, Some(Injection::Blackholed)));
            }
        }
        assert_eq!(d.decide(150 * MS, 0, Direction::ToServer).copies, 1);
        d.blackhole(200 * MS, 1000 * MS);
        d.lift_blackhole();
        assert_eq!(d.decide(201 * MS, 0, Direction::ToServer).copies, 1);
    }

    #[test]
    fn spikes_come_on_schedule_and_delay_within_their_range() {
        let s = Spikes { every: 1000 * MS, lasting: 200 * MS, min: 100 * MS, max: 300 * MS };
        let f = Faults { spikes: Some(s), ..Faults::default() };
        let mut d = Decider::new(9, f);
        // Every 1 ms for 20 s: about 20 % of the time inside a spike.
        let mut spiked = 0;
        let mut windows = 0;
        let mut was_in = false;
        for i in 0..20_000u32 {
            let fate = d.decide(MS * i, 0, Direction::ToServer);
            let now_in = fate.spike.is_some();
            if now_in {
                spiked += 1;
                assert!(fate.delay >= 100 * MS && fate.delay <= 300 * MS, "{fate:?}");
            } else {
                assert_eq!(fate.delay, Duration::ZERO);
            }
            windows += usize::from(now_in && !was_in);
            was_in = now_in;
        }
        // Gaps of 0.5–1.5 s plus 0.2 s spikes: 12–28 spikes in 20 s, each 200 datagrams long.
        assert!((12..=28).contains(&windows), "{windows}");
        // Each whole window covers exactly 200 of the 1 ms samples; the last may be cut short.
        assert!(spiked <= windows * 200 && spiked > (windows - 1) * 200, "{spiked} {windows}");
    }

    #[test]
    fn invalid_faults_are_refused() {
        assert!(Faults { loss: 1.5, ..Faults::default() }.validate().is_err());
        assert!(Faults { reorder: -0.1, ..Faults::default() }.validate().is_err());
        let s = Spikes { every: MS, lasting: MS, min: 2 * MS, max: MS };
        assert!(Faults { spikes: Some(s), ..Faults::default() }.validate().is_err());
        assert!(lossy().validate().is_ok());
    }
}
