//! The impairment model: a pure, clock-free decision per datagram, one [`Model`] per direction.
//!
//! A [`Model`] is told when each datagram arrives ([`Model::handle_datagram`], milliseconds on
//! the caller's clock) and answers what happens to it: dropped (and why), or delivered at a time
//! on the same clock, once or twice. It holds no clock and does no IO; the relay in the parent
//! module feeds it real arrival times and carries out its answers with timers.
//!
//! Every knob draws from a generator of its own, each seeded from [`Impairment::seed`] and the
//! model's stream (one per direction), and every knob draws the same number of values for every
//! datagram whatever the others decide. So the same seed and the same arrival times give the
//! same decisions, and turning one knob on leaves the pattern of the others as it was: adding
//! duplication to 10 % loss drops the very same datagrams.

/// A small seeded generator (splitmix64): every seed, zero included, gives a full-period stream.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1), with 53 bits.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..=max.
    fn up_to(&mut self, max: u64) -> u64 {
        let n = u128::from(max) + 1;
        ((u128::from(self.next_u64()) * n) >> 64) as u64
    }
}

/// splitmix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A probability as given, made usable: NaN counts as 0, and the value is held in 0..=1.
fn probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

/// Bursty loss: a two-state Markov chain (Gilbert–Elliott) stepped once per datagram.
///
/// Each datagram is first lost or not with the loss of the state the chain is in, then the chain
/// moves: from good to bad with probability `p`, from bad to good with probability `r`. In the
/// long run the chain is bad `p / (p + r)` of the time, and a stay in the bad state lasts
/// `1 / r` datagrams on average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// The probability, per datagram, of moving from the good state to the bad one.
    pub p: f64,
    /// The probability, per datagram, of moving from the bad state back to the good one.
    pub r: f64,
    /// The share of datagrams lost in the bad state (1 in Gilbert's model).
    pub loss_bad: f64,
    /// The share of datagrams lost in the good state (0 in Gilbert's model).
    pub loss_good: f64,
}

impl GilbertElliott {
    /// A chain with the given transition probabilities and losses per state, each held in 0..=1
    /// (NaN counts as 0).
    pub fn new(p: f64, r: f64, loss_bad: f64, loss_good: f64) -> GilbertElliott {
        GilbertElliott { p: probability(p), r: probability(r), loss_bad: probability(loss_bad), loss_good: probability(loss_good) }
    }

    /// Gilbert's model (every datagram lost in the bad state, none in the good one) with a mean
    /// loss rate of `loss` and losses coming in bursts of `mean_burst` datagrams on average.
    ///
    /// `r = 1 / mean_burst` and `p = loss · r / (1 − loss)`. `mean_burst` is held at 1 or more
    /// and `loss` in 0..=0.99; when the two ask for `p` above 1 (a high loss in short bursts,
    /// say 60 % in bursts of 1), `p` is held at 1 and the loss rate is lower than asked:
    /// [`GilbertElliott::mean_loss`] says what it is.
    pub fn from_mean(loss: f64, mean_burst: f64) -> GilbertElliott {
        let loss = probability(loss).min(0.99);
        let burst = if mean_burst.is_nan() { 1.0 } else { mean_burst.max(1.0) };
        let r = 1.0 / burst;
        GilbertElliott::new(loss * r / (1.0 - loss), r, 1.0, 0.0)
    }

    /// The long-run share of datagrams lost.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r <= 0.0 {
            // The chain never moves; it starts good.
            return self.loss_good;
        }
        let bad = self.p / (self.p + self.r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// The mean length of a stay in the bad state, in datagrams (infinite when `r` is 0): in
    /// Gilbert's model, the mean length of a burst of losses.
    pub fn mean_burst(&self) -> f64 {
        1.0 / self.r
    }
}

/// A time during which every datagram arriving is dropped: `start_ms..start_ms + len_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blackout {
    /// When it begins, on the model's clock (for the relay: milliseconds since the impairment was
    /// set).
    pub start_ms: u64,
    /// How long it lasts, in milliseconds.
    pub len_ms: u64,
}

impl Blackout {
    /// Whether a datagram arriving at `ms` falls in it.
    pub fn is_during(&self, ms: u64) -> bool {
        ms >= self.start_ms && ms - self.start_ms < self.len_ms
    }
}

/// What the network does to the datagrams of one direction; the default does nothing.
///
/// Build one with the `with_*` methods (the struct is `#[non_exhaustive]`, so other crates
/// cannot write it as a literal), for example 10 % random loss and 0–30 ms of jitter:
/// `Impairment::default().with_loss(0.1).with_delay(0, 30)`. Probabilities outside 0..=1 are
/// held in it and NaN counts as 0.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Impairment {
    /// The share of datagrams dropped at random, each on its own, 0 to 1.
    pub loss: f64,
    /// The seed of every random choice; the same seed and the same arrival times give the same
    /// decisions.
    pub seed: u64,
    /// Bursty loss on top of [`Impairment::loss`], if any.
    pub bursts: Option<GilbertElliott>,
    /// A fixed delay added to every datagram, in milliseconds.
    pub delay_ms: u32,
    /// A further delay drawn for each datagram, uniform in `0..=jitter_ms` milliseconds.
    pub jitter_ms: u32,
    /// When set, jitter never lets a datagram overtake one that arrived before it: a datagram
    /// whose drawn time is earlier than the one before it waits for it (the link's order is kept
    /// and the delay piles up, as in a queue). Datagrams held back by [`Impairment::reorder`]
    /// are still overtaken.
    pub keep_order: bool,
    /// The share of datagrams held back by [`Impairment::reorder_ms`] on top of their delay, so
    /// the ones after them overtake them, 0 to 1.
    pub reorder: f64,
    /// How long a datagram picked by [`Impairment::reorder`] is held back, in milliseconds.
    pub reorder_ms: u32,
    /// The share of datagrams delivered twice (the copy right after the original), 0 to 1.
    pub duplicate: f64,
    /// Times in which everything arriving is dropped.
    pub blackouts: Vec<Blackout>,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            loss: 0.0,
            seed: 1,
            bursts: None,
            delay_ms: 0,
            jitter_ms: 0,
            keep_order: false,
            reorder: 0.0,
            reorder_ms: 0,
            duplicate: 0.0,
            blackouts: Vec::new(),
        }
    }
}

impl Impairment {
    /// This impairment with `share` of datagrams dropped at random.
    pub fn with_loss(mut self, share: f64) -> Self {
        self.loss = share;
        self
    }

    /// This impairment with `seed` for its random choices.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// This impairment with bursty loss by `chain` as well.
    pub fn with_bursts(mut self, chain: GilbertElliott) -> Self {
        self.bursts = Some(chain);
        self
    }

    /// This impairment with a fixed delay of `delay_ms` plus a jitter uniform in `0..=jitter_ms`.
    pub fn with_delay(mut self, delay_ms: u32, jitter_ms: u32) -> Self {
        self.delay_ms = delay_ms;
        self.jitter_ms = jitter_ms;
        self
    }

    /// This impairment with the order of arrival kept through jitter
    /// ([`Impairment::keep_order`]).
    pub fn keeping_order(mut self) -> Self {
        self.keep_order = true;
        self
    }

    /// This impairment with `share` of datagrams held back by `hold_ms`.
    pub fn with_reorder(mut self, share: f64, hold_ms: u32) -> Self {
        self.reorder = share;
        self.reorder_ms = hold_ms;
        self
    }

    /// This impairment with `share` of datagrams delivered twice.
    pub fn with_duplicates(mut self, share: f64) -> Self {
        self.duplicate = share;
        self
    }

    /// This impairment with a blackout of `len_ms` from `start_ms`.
    pub fn with_blackout(mut self, start_ms: u64, len_ms: u64) -> Self {
        self.blackouts.push(Blackout { start_ms, len_ms });
        self
    }

    /// Whether it may deliver a datagram later than it arrived.
    pub fn is_delaying(&self) -> bool {
        self.delay_ms > 0 || self.jitter_ms > 0 || (self.reorder > 0.0 && self.reorder_ms > 0)
    }

    /// The same impairment with every probability held in 0..=1.
    fn sanitized(mut self) -> Self {
        self.loss = probability(self.loss);
        self.reorder = probability(self.reorder);
        self.duplicate = probability(self.duplicate);
        self.bursts = self.bursts.map(|b| GilbertElliott::new(b.p, b.r, b.loss_bad, b.loss_good));
        self
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// Random loss ([`Impairment::loss`]).
    Loss,
    /// Bursty loss ([`Impairment::bursts`]).
    Burst,
    /// It arrived during a blackout.
    Blackout,
}

/// How a datagram that is not dropped is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// When it is delivered, on the clock of its arrival time; never earlier than its arrival.
    /// Datagrams with the same time are delivered in the order they arrived.
    pub at_ms: u64,
    /// Whether a copy is delivered right after it.
    pub duplicate: bool,
    /// Whether [`Impairment::reorder`] held it back.
    pub held_back: bool,
    /// How many datagrams that arrived before it, and are not yet counted so, it is delivered
    /// before. Summed over a stream this is the number of datagrams delivered out of order (each
    /// counted once, whoever overtook it).
    pub overtakes: u32,
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It is dropped.
    Drop(DropCause),
    /// It is delivered.
    Deliver(Delivery),
}

/// The most datagrams a model follows in flight to count reordering; beyond it the earliest are
/// forgotten (and can no longer be counted as overtaken).
const MAX_IN_FLIGHT: usize = 4096;

/// One direction of an impaired link: each datagram's fate from its arrival time alone.
#[derive(Debug, Clone)]
pub struct Model {
    impairment: Impairment,
    loss: Rng,
    burst: Rng,
    jitter: Rng,
    reorder: Rng,
    duplicate: Rng,
    bad: bool,
    last_arrival_ms: u64,
    last_in_order_ms: u64,
    /// Delivery times of earlier datagrams not yet overtaken that a later one still could.
    in_flight: Vec<u64>,
}

impl Model {
    /// A model of `impairment`, stream 0.
    pub fn new(impairment: Impairment) -> Model {
        Model::with_stream(impairment, 0)
    }

    /// A model of `impairment` whose random choices are stream `stream` of its seed: two
    /// directions of one link given the same impairment and different streams decide
    /// independently.
    pub fn with_stream(impairment: Impairment, stream: u64) -> Model {
        let impairment = impairment.sanitized();
        let base = mix(impairment.seed ^ mix(stream.wrapping_add(0x5EED)));
        let knob = |k: u64| Rng::new(mix(base.wrapping_add(k.wrapping_mul(0xD1B5_4A32_D192_ED03))));
        Model {
            impairment,
            loss: knob(1),
            burst: knob(2),
            jitter: knob(3),
            reorder: knob(4),
            duplicate: knob(5),
            bad: false,
            last_arrival_ms: 0,
            last_in_order_ms: 0,
            in_flight: Vec::new(),
        }
    }

    /// The impairment modelled (with its probabilities held in 0..=1).
    pub fn impairment(&self) -> &Impairment {
        &self.impairment
    }

    /// Adds a blackout of `len_ms` from `start_ms` (on the clock of the arrival times).
    pub fn blackout(&mut self, start_ms: u64, len_ms: u64) {
        // Blackouts over before the latest arrival can never drop anything again.
        let now = self.last_arrival_ms;
        self.impairment.blackouts.retain(|b| b.start_ms.saturating_add(b.len_ms) > now);
        self.impairment.blackouts.push(Blackout { start_ms, len_ms });
    }

    /// Decides the fate of a datagram arriving at `arrival_ms`. Arrival times are expected in
    /// order; one earlier than the one before counts as arriving with it.
    pub fn handle_datagram(&mut self, arrival_ms: u64) -> Decision {
        let arrival = arrival_ms.max(self.last_arrival_ms);
        self.last_arrival_ms = arrival;
        let imp = &self.impairment;

        // Every knob draws, every time, so each one's pattern is independent of the others.
        let u_loss = self.loss.next_unit();
        let (u_burst_loss, u_burst_move) = (self.burst.next_unit(), self.burst.next_unit());
        let jitter = self.jitter.up_to(u64::from(imp.jitter_ms));
        let u_reorder = self.reorder.next_unit();
        let u_duplicate = self.duplicate.next_unit();

        let burst_lost = match imp.bursts {
            Some(chain) => {
                let lost = u_burst_loss < if self.bad { chain.loss_bad } else { chain.loss_good };
                self.bad = if self.bad { u_burst_move >= chain.r } else { u_burst_move < chain.p };
                lost
            }
            None => false,
        };
        if imp.blackouts.iter().any(|b| b.is_during(arrival)) {
            return Decision::Drop(DropCause::Blackout);
        }
        if burst_lost {
            return Decision::Drop(DropCause::Burst);
        }
        if u_loss < imp.loss {
            return Decision::Drop(DropCause::Loss);
        }

        let mut at = arrival.saturating_add(u64::from(imp.delay_ms)).saturating_add(jitter);
        if imp.keep_order {
            at = at.max(self.last_in_order_ms);
        }
        let held_back = u_reorder < imp.reorder;
        if held_back {
            at = at.saturating_add(u64::from(imp.reorder_ms));
        } else {
            self.last_in_order_ms = self.last_in_order_ms.max(at);
        }
        let duplicate = u_duplicate < imp.duplicate;

        // Datagrams due by now cannot be overtaken by this one or any later one.
        self.in_flight.retain(|&t| t > arrival);
        let before = self.in_flight.len();
        self.in_flight.retain(|&t| t <= at);
        let overtakes = (before - self.in_flight.len()) as u32;
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((i, _)) = self.in_flight.iter().enumerate().min_by_key(|(_, t)| **t) {
                self.in_flight.swap_remove(i);
            }
        }
        if at > arrival {
            self.in_flight.push(at);
        }
        Decision::Deliver(Delivery { at_ms: at, duplicate, held_back, overtakes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decisions for datagrams arriving every `every_ms` from 0, `n` of them.
    fn run(imp: Impairment, n: u64, every_ms: u64) -> Vec<Decision> {
        let mut m = Model::new(imp);
        (0..n).map(|i| m.handle_datagram(i * every_ms)).collect()
    }

    fn share(decisions: &[Decision], f: impl Fn(&Decision) -> bool) -> f64 {
        decisions.iter().filter(|d| f(d)).count() as f64 / decisions.len() as f64
    }

    fn deliveries(decisions: &[Decision]) -> impl Iterator<Item = &Delivery> {
        decisions.iter().filter_map(|d| match d {
            Decision::Deliver(d) => Some(d),
            Decision::Drop(_) => None,
        })
    }

    #[test]
    fn no_impairment_delivers_every_datagram_once_when_it_arrives() {
        let mut m = Model::new(Impairment::default());
        for t in [0, 0, 5, 20, 1000, 1000, 70_000] {
            assert_eq!(m.handle_datagram(t), Decision::Deliver(Delivery { at_ms: t, duplicate: false, held_back: false, overtakes: 0 }));
        }
        assert!(!Impairment::default().is_delaying());
    }

    #[test]
    fn random_loss_drops_the_set_share_over_100k_datagrams() {
        for loss in [0.01, 0.1, 0.3] {
            let d = run(Impairment::default().with_loss(loss).with_seed(11), 100_000, 20);
            let lost = share(&d, |d| *d == Decision::Drop(DropCause::Loss));
            // Five standard deviations of a binomial share at 100k draws.
            let tolerance = 5.0 * (loss * (1.0 - loss) / 100_000.0f64).sqrt();
            assert!((lost - loss).abs() < tolerance, "{lost} lost at {loss}");
        }
    }

    #[test]
    fn the_same_seed_and_times_give_the_same_decisions_and_another_seed_others() {
        let imp = |seed| {
            Impairment::default()
                .with_seed(seed)
                .with_loss(0.1)
                .with_bursts(GilbertElliott::from_mean(0.05, 3.0))
                .with_delay(10, 30)
                .with_reorder(0.05, 40)
                .with_duplicates(0.05)
                .with_blackout(3000, 500)
        };
        let times: Vec<u64> = (0..5000u64).map(|i| i * 20 + (i * 7919) % 13).collect();
        let go = |seed| {
            let mut m = Model::new(imp(seed));
            times.iter().map(|&t| m.handle_datagram(t)).collect::<Vec<_>>()
        };
        assert_eq!(go(7), go(7));
        assert_ne!(go(7), go(8));
        let mut a = Model::with_stream(imp(7), 0);
        let mut b = Model::with_stream(imp(7), 1);
        let (da, db): (Vec<_>, Vec<_>) = times.iter().map(|&t| (a.handle_datagram(t), b.handle_datagram(t))).unzip();
        assert_ne!(da, db, "two streams of one seed decide independently");
    }

    #[test]
    fn one_knob_leaves_the_pattern_of_the_others_as_it_was() {
        let lossy = Impairment::default().with_loss(0.1).with_seed(3);
        let lost = |d: &[Decision]| d.iter().map(|d| matches!(d, Decision::Drop(_))).collect::<Vec<_>>();
        let plain = run(lossy.clone(), 2000, 20);
        let more = run(lossy.with_duplicates(0.3).with_delay(5, 20), 2000, 20);
        assert_eq!(lost(&plain), lost(&more));
    }

    #[test]
    fn gilbert_elliott_from_mean_gives_its_loss_rate_and_burst_length() {
        for (loss, burst) in [(0.05, 4.0), (0.1, 2.0), (0.02, 10.0)] {
            let chain = GilbertElliott::from_mean(loss, burst);
            assert!((chain.mean_loss() - loss).abs() < 1e-12 && (chain.mean_burst() - burst).abs() < 1e-12, "{chain:?}");
            let d = run(Impairment::default().with_bursts(chain).with_seed(5), 1_000_000, 20);
            let lost: Vec<bool> = d.iter().map(|d| *d == Decision::Drop(DropCause::Burst)).collect();
            let rate = lost.iter().filter(|l| **l).count() as f64 / lost.len() as f64;
            let mut bursts = Vec::new();
            let mut run_len = 0u32;
            for l in lost.iter().chain([&false]) {
                if *l {
                    run_len += 1;
                } else if run_len > 0 {
                    bursts.push(run_len);
                    run_len = 0;
                }
            }
            let mean = f64::from(bursts.iter().sum::<u32>()) / bursts.len() as f64;
            // Bursts are geometric: standard deviation sqrt(1 - r) / r each; four of the mean's.
            let r = 1.0 / burst;
            let tolerance = 4.0 * (1.0 - r).sqrt() / r / (bursts.len() as f64).sqrt();
            assert!((mean - burst).abs() < tolerance, "mean burst {mean} at {burst} over {} bursts", bursts.len());
            assert!((rate - loss).abs() < loss * 0.15, "loss {rate} at {loss}");
        }
    }

    #[test]
    fn gilbert_elliott_with_loss_in_both_states_matches_its_mean_loss() {
        let chain = GilbertElliott::new(0.02, 0.25, 0.5, 0.01);
        let d = run(Impairment::default().with_bursts(chain), 200_000, 20);
        let rate = share(&d, |d| *d == Decision::Drop(DropCause::Burst));
        assert!((rate - chain.mean_loss()).abs() < 0.005, "{rate} against {}", chain.mean_loss());
    }

    #[test]
    fn gilbert_elliott_from_mean_holds_bad_parameters_in_range() {
        let c = GilbertElliott::from_mean(0.6, 1.0);
        assert_eq!(c.p, 1.0);
        assert!(c.mean_loss() < 0.6);
        let c = GilbertElliott::from_mean(f64::NAN, f64::NAN);
        assert_eq!((c.p, c.r), (0.0, 1.0));
        let c = GilbertElliott::from_mean(2.0, 0.1);
        assert!(c.p <= 1.0 && c.r == 1.0);
        assert_eq!(GilbertElliott::new(0.0, 0.0, 1.0, 0.25).mean_loss(), 0.25);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_covers_them() {
        let d = run(Impairment::default().with_delay(20, 30), 20_000, 20);
        let delays: Vec<u64> = deliveries(&d).enumerate().map(|(i, d)| d.at_ms - i as u64 * 20).collect();
        assert_eq!(delays.len(), 20_000);
        assert!(delays.iter().all(|d| (20..=50).contains(d)), "{:?}", delays.iter().max());
        assert!(delays.contains(&20) && delays.contains(&50));
        let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
        assert!((mean - 35.0).abs() < 0.5, "mean delay {mean}");
    }

    #[test]
    fn jitter_larger_than_the_spacing_reorders_unless_order_is_kept() {
        let free = run(Impairment::default().with_delay(0, 30), 10_000, 20);
        let reordered: u32 = deliveries(&free).map(|d| d.overtakes).sum();
        // Two draws 20 ms apart swap when the second's jitter is 20 ms or more below the first's.
        // 55 of the 961 pairs of draws differ by more than 20: about 570 in 10k.
        assert!((400..750).contains(&reordered), "{reordered} reordered");
        assert_eq!(reordered as usize, count_out_of_order(&free));

        let kept = run(Impairment::default().with_delay(0, 30).keeping_order(), 10_000, 20);
        let times: Vec<u64> = deliveries(&kept).map(|d| d.at_ms).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "order is kept");
        assert_eq!(deliveries(&kept).map(|d| d.overtakes).sum::<u32>(), 0);
        assert!(times.iter().enumerate().all(|(i, t)| (i as u64 * 20..=i as u64 * 20 + 30).contains(t)));
    }

    /// Datagrams delivered after one that arrived after them, counted from the delivery times
    /// (ties go in arrival order).
    fn count_out_of_order(decisions: &[Decision]) -> usize {
        let times: Vec<u64> = deliveries(decisions).map(|d| d.at_ms).collect();
        let mut later_min = u64::MAX;
        let mut n = 0;
        for &t in times.iter().rev() {
            if later_min < t {
                n += 1;
            }
            later_min = later_min.min(t);
        }
        n
    }

    #[test]
    fn reordering_holds_back_about_the_set_share() {
        let d = run(Impairment::default().with_reorder(0.05, 50), 100_000, 20);
        let held = share(&d, |d| matches!(d, Decision::Deliver(Delivery { held_back: true, .. })));
        assert!((held - 0.05).abs() < 0.004, "{held} held back");
        let reordered: u32 = deliveries(&d).map(|d| d.overtakes).sum();
        assert_eq!(reordered as usize, count_out_of_order(&d));
        // A held datagram is overtaken by one of the next two, unless both are held as well.
        let rate = f64::from(reordered) / 100_000.0;
        assert!((rate - 0.05 * (1.0 - 0.05 * 0.05)).abs() < 0.004, "{rate} delivered out of order");
        assert!(deliveries(&d).all(|x| x.at_ms % 20 == if x.held_back { 10 } else { 0 }));
    }

    #[test]
    fn duplication_copies_about_the_set_share() {
        let d = run(Impairment::default().with_duplicates(0.02), 100_000, 20);
        let copied = share(&d, |d| matches!(d, Decision::Deliver(Delivery { duplicate: true, .. })));
        assert!((copied - 0.02).abs() < 0.0025, "{copied} duplicated");
    }

    #[test]
    fn blackouts_drop_exactly_what_arrives_during_them() {
        let mut m = Model::new(Impairment::default().with_blackout(1000, 500).with_loss(0.0));
        for t in 0..3000 {
            let d = m.handle_datagram(t);
            let dark = (1000..1500).contains(&t);
            assert_eq!(d == Decision::Drop(DropCause::Blackout), dark, "at {t}: {d:?}");
        }
        // One added while running, from the time given.
        m.blackout(3100, 1);
        assert!(matches!(m.handle_datagram(3099), Decision::Deliver(_)));
        assert_eq!(m.handle_datagram(3100), Decision::Drop(DropCause::Blackout));
        assert!(matches!(m.handle_datagram(3101), Decision::Deliver(_)));
        assert!(!Blackout { start_ms: 5, len_ms: 0 }.is_during(5));
        assert_eq!(m.impairment().blackouts.len(), 1, "the past blackout is forgotten");
    }

    #[test]
    fn bad_values_neither_panic_nor_escape_their_range() {
        let imp = Impairment::default()
            .with_loss(f64::NAN)
            .with_duplicates(7.0)
            .with_reorder(-1.0, u32::MAX)
            .with_delay(u32::MAX, u32::MAX)
            .with_bursts(GilbertElliott { p: f64::INFINITY, r: -3.0, loss_bad: f64::NAN, loss_good: 2.0 })
            .with_blackout(u64::MAX, u64::MAX);
        let mut m = Model::new(imp);
        assert_eq!(m.impairment().loss, 0.0);
        assert_eq!(m.impairment().duplicate, 1.0);
        for t in [u64::MAX - 1, 5, u64::MAX, 0] {
            let _ = m.handle_datagram(t);
        }
    }

    #[test]
    fn the_generator_is_uniform_enough() {
        let mut r = Rng::new(0);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[r.up_to(9) as usize] += 1;
        }
        assert!(buckets.iter().all(|b| (9_500..10_500).contains(b)), "{buckets:?}");
        assert!((0..1000).all(|_| r.up_to(0) == 0));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.next_unit())));
    }
}
