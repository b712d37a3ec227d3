//! Acknowledgement bookkeeping: which offset of each partition may be stored (docs/reliability.md, contract items 1, 2
//! and 5).
//!
//! Jobs of one partition finish in any order (batches, retries, two inputs vs one), but Kafka keeps one position
//! per partition. So the tracker stores only the contiguous watermark: the lowest offset still in flight, or, when
//! nothing is, one past the last offset taken. An offset is therefore stored only when that job and every earlier
//! job of its partition have finished, which is what makes a crash at any instant lose nothing.
//!
//! Offsets may be sparse (compaction, transaction markers): only offsets actually taken are tracked, a gap is
//! never waited for.
//!
//! Assignments are fenced by a generation number: every [`OffsetTracker::assign`] draws a fresh one, every
//! [`AckToken`] carries the generation it was taken under, and a completion whose generation is not the
//! partition's current one is ignored ([`Ack::Stale`]). A job that was in flight when its partition was revoked
//! (and perhaps reassigned to us) therefore cannot move the new assignment's watermark.
//!
//! The tracker is plain state with no locks or I/O of its own, which lets the property tests drive it
//! exhaustively; the Kafka source shares it between its consumer thread and the pipeline's acks behind one mutex,
//! held only for a map update.
//!
//! Watermarks follow Kafka's commit convention: the value is the *next* offset to read. Store it with
//! `store_offsets` (a list carrying this value) or `store_offset(tp, watermark - 1)`: rust-rdkafka's
//! `store_offset` adds one itself.
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// A Kafka offset (librdkafka's `int64_t`).
pub type Offset = i64;

/// Default for [`AckConfig::max_in_flight_per_partition`]. It bounds redelivery: after a crash at most this many
/// jobs per partition are processed twice (G2 in docs/reliability.md budgets reprocessing as in-flight cap × kills).
pub const DEFAULT_MAX_IN_FLIGHT_PER_PARTITION: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// One assignment of one partition. Drawn from a counter that never repeats within a tracker, so a token from
/// any earlier assignment, of this partition or another, never matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(u64);

/// Proof that a job was taken: travels with the job and comes back to [`OffsetTracker::complete`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AckToken {
    pub tp: TopicPartition,
    pub offset: Offset,
    pub generation: Generation,
}

/// Limits of the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckConfig {
    /// Jobs of one partition taken but not finished before [`OffsetTracker::at_capacity`] says so. The consumer
    /// then pauses the partition (and keeps polling); registering beyond it still works, because messages
    /// already fetched must not be dropped, so this is a soft cap the consumer enforces.
    pub max_in_flight_per_partition: usize,
}

impl Default for AckConfig {
    fn default() -> Self {
        AckConfig { max_in_flight_per_partition: DEFAULT_MAX_IN_FLIGHT_PER_PARTITION }
    }
}

/// Why an offset could not be registered: each means the consumer's view and ours disagree, which is a bug or
/// a seek that the caller must handle by reassigning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("{0} is not assigned")]
    NotAssigned(TopicPartition),
    #[error("{tp}: offset {offset} is negative")]
    Negative { tp: TopicPartition, offset: Offset },
    /// Kafka hands a partition's messages over in offset order; a repeat or step back within one assignment
    /// would let the watermark skip or regress.
    #[error("{tp}: offset {offset} is not after the last offset taken ({last})")]
    NotIncreasing { tp: TopicPartition, offset: Offset, last: Offset },
}

/// What a completion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Recorded; the watermark may have moved.
    Accepted,
    /// From an assignment that is over (revoked, lost, or replaced): ignored.
    Stale,
    /// Already completed (or never taken) under the current assignment: ignored.
    Duplicate,
}

/// What [`OffsetTracker::revoke`] leaves to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The watermark to commit synchronously before giving the partition up (`None`: nothing finished).
    pub commit: Option<Offset>,
    /// Offsets still in flight; the next owner reprocesses them.
    pub abandoned: Vec<Offset>,
}

#[derive(Debug)]
struct PartitionState {
    generation: Generation,
    /// Taken, not yet completed. Its first element is the watermark.
    in_flight: BTreeSet<Offset>,
    /// First offset taken in this assignment: a watermark at or below it says nothing new.
    first: Option<Offset>,
    /// Last offset taken in this assignment.
    last: Option<Offset>,
    /// Highest watermark handed out by [`OffsetTracker::take_advanced`].
    reported: Option<Offset>,
}

impl PartitionState {
    fn watermark(&self) -> Option<Offset> {
        let first = self.first?;
        let w = match self.in_flight.first() {
            Some(&lowest) => lowest,
            None => self.last? + 1,
        };
        // Nothing finished yet in this assignment: storing `first` would not move anything.
        (w > first).then_some(w)
    }
}

/// Per-partition completion tracking; see the module docs.
#[derive(Debug)]
pub struct OffsetTracker {
    config: AckConfig,
    partitions: HashMap<TopicPartition, PartitionState>,
    next_generation: u64,
}

impl Default for OffsetTracker {
    fn default() -> Self {
        OffsetTracker::new(AckConfig::default())
    }
}

impl OffsetTracker {
    pub fn new(config: AckConfig) -> Self {
        OffsetTracker { config, partitions: HashMap::new(), next_generation: 1 }
    }

    pub fn config(&self) -> &AckConfig {
        &self.config
    }

    /// Starts an assignment of `tp` under a fresh generation. If `tp` was already assigned (an assignment without
    /// a revoke, e.g. after a lost session), the old state is dropped and its tokens become stale.
    pub fn assign(&mut self, tp: TopicPartition) -> Generation {
        let generation = Generation(self.next_generation);
        self.next_generation += 1;
        let state = PartitionState { generation, in_flight: BTreeSet::new(), first: None, last: None, reported: None };
        self.partitions.insert(tp, state);
        generation
    }

    /// Ends the assignment of `tp` cleanly: returns the watermark to commit before the partition is given up, and
    /// the offsets abandoned in flight. Late completions for this assignment are ignored from now on. `None` if
    /// `tp` was not assigned.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<Revoked> {
        let state = self.partitions.remove(tp)?;
        Some(Revoked { commit: state.watermark(), abandoned: state.in_flight.into_iter().collect() })
    }

    /// Ends the assignment of `tp` when it was lost (session timeout, fenced): nothing may be committed for it,
    /// since another member may own it already. Returns how many jobs were abandoned in flight.
    pub fn lose(&mut self, tp: &TopicPartition) -> Option<usize> {
        self.partitions.remove(tp).map(|s| s.in_flight.len())
    }

    /// Takes the message at `offset`, following a seek back: when the consumer delivers an offset at or below the
    /// last one taken in this assignment (librdkafka went back after log truncation or an out-of-range reset, within
    /// the same assignment), the partition's tracking restarts there under a fresh generation, so the jobs from that
    /// offset on are taken again and the tokens taken before become stale. Skipping them instead would let the
    /// watermark pass offsets that were never processed. Returns the token and whether the tracking restarted.
    pub fn take(&mut self, tp: &TopicPartition, offset: Offset) -> Result<(AckToken, bool), RegisterError> {
        match self.register(tp, offset) {
            Err(RegisterError::NotIncreasing { .. }) => {
                self.assign(tp.clone());
                Ok((self.register(tp, offset)?, true))
            }
            other => other.map(|token| (token, false)),
        }
    }

    /// Records that the job at `offset` was taken. Offsets of one assignment must strictly increase (gaps are
    /// fine); [`Self::take`] handles a seek back.
    pub fn register(&mut self, tp: &TopicPartition, offset: Offset) -> Result<AckToken, RegisterError> {
        let state = self.partitions.get_mut(tp).ok_or_else(|| RegisterError::NotAssigned(tp.clone()))?;
        if offset < 0 {
            return Err(RegisterError::Negative { tp: tp.clone(), offset });
        }
        if let Some(last) = state.last {
            if offset <= last {
                return Err(RegisterError::NotIncreasing { tp: tp.clone(), offset, last });
            }
        }
        state.first.get_or_insert(offset);
        state.last = Some(offset);
        state.in_flight.insert(offset);
        Ok(AckToken { tp: tp.clone(), offset, generation: state.generation })
    }

    /// Records that the job of `token` has finished (outputs durable and reported, or dead-lettered), in any
    /// order.
    pub fn complete(&mut self, token: &AckToken) -> Ack {
        match self.partitions.get_mut(&token.tp) {
            Some(state) if state.generation == token.generation => {
                if state.in_flight.remove(&token.offset) {
                    Ack::Accepted
                } else {
                    Ack::Duplicate
                }
            }
            _ => Ack::Stale,
        }
    }

    /// The offset to store for `tp` now: the lowest offset in flight, or one past the last taken when nothing is.
    /// `None` when `tp` is not assigned or nothing has finished in this assignment. Within an assignment it never
    /// decreases and never passes an unfinished offset.
    pub fn committable(&self, tp: &TopicPartition) -> Option<Offset> {
        self.partitions.get(tp)?.watermark()
    }

    /// Watermarks that moved since the last call, for `store_offsets`. Sorted by partition, so the store order
    /// (and logs) are deterministic.
    pub fn take_advanced(&mut self) -> Vec<(TopicPartition, Offset)> {
        let mut out = Vec::new();
        for (tp, state) in &mut self.partitions {
            if let Some(w) = state.watermark() {
                if state.reported.is_none_or(|r| w > r) {
                    state.reported = Some(w);
                    out.push((tp.clone(), w));
                }
            }
        }
        out.sort();
        out
    }

    /// Jobs of `tp` taken and not finished (0 when not assigned).
    pub fn in_flight(&self, tp: &TopicPartition) -> usize {
        self.partitions.get(tp).map_or(0, |s| s.in_flight.len())
    }

    /// Jobs taken and not finished over all assigned partitions.
    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Whether `tp` has reached [`AckConfig::max_in_flight_per_partition`]. The property tests' consumer pauses on
    /// it; the Kafka source compares [`Self::in_flight`] with the same cap, as it also resumes at half of it.
    pub fn at_capacity(&self, tp: &TopicPartition) -> bool {
        self.in_flight(tp) >= self.config.max_in_flight_per_partition
    }

    /// The current generation of `tp`, if assigned.
    pub fn generation(&self, tp: &TopicPartition) -> Option<Generation> {
        self.partitions.get(tp).map(|s| s.generation)
    }

    /// Assigned partitions, sorted.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completion_waits_for_the_lowest() {
        let tp = TopicPartition::new("jobs", 0);
        let mut t = OffsetTracker::default();
        t.assign(tp.clone());
        let tokens: Vec<AckToken> = [5, 6, 9].iter().map(|&o| t.register(&tp, o).unwrap()).collect();
        assert_eq!(t.committable(&tp), None);
        assert_eq!(t.complete(&tokens[2]), Ack::Accepted);
        assert_eq!(t.committable(&tp), None, "5 is unfinished");
        assert_eq!(t.complete(&tokens[0]), Ack::Accepted);
        assert_eq!(t.committable(&tp), Some(6));
        assert_eq!(t.complete(&tokens[1]), Ack::Accepted);
        assert_eq!(t.committable(&tp), Some(10), "the gap 7..9 is not waited for");
        assert_eq!(t.complete(&tokens[1]), Ack::Duplicate);
        assert_eq!(t.take_advanced(), vec![(tp.clone(), 10)]);
        assert_eq!(t.take_advanced(), vec![]);
    }

    #[test]
    fn a_seek_back_takes_the_offsets_again_and_the_watermark_follows_them() {
        let tp = TopicPartition::new("jobs", 0);
        let mut t = OffsetTracker::default();
        t.assign(tp.clone());
        let old: Vec<AckToken> = (0..6).map(|o| t.take(&tp, o).unwrap().0).collect();
        for token in &old[..4] {
            assert_eq!(t.complete(token), Ack::Accepted);
        }
        assert_eq!(t.take_advanced(), vec![(tp.clone(), 4)]);
        // librdkafka goes back to 2 (a truncated log, an out-of-range reset): 2 and what follows are taken again.
        let (two, restarted) = t.take(&tp, 2).unwrap();
        assert!(restarted);
        let (three, restarted) = t.take(&tp, 3).unwrap();
        assert!(!restarted);
        assert_eq!(t.complete(&old[4]), Ack::Stale, "a job of before the seek cannot move the new watermark");
        assert_eq!(t.committable(&tp), None, "2 is not finished again yet");
        assert_eq!(t.complete(&two), Ack::Accepted);
        assert_eq!(t.complete(&three), Ack::Accepted);
        assert_eq!(t.take_advanced(), vec![(tp.clone(), 4)], "the watermark follows the offsets taken again");
        let (four, _) = t.take(&tp, 4).unwrap();
        t.complete(&four);
        assert_eq!(t.take_advanced(), vec![(tp.clone(), 5)]);
    }

    #[test]
    fn registration_must_increase() {
        let tp = TopicPartition::new("jobs", 0);
        let mut t = OffsetTracker::default();
        assert!(matches!(t.register(&tp, 0), Err(RegisterError::NotAssigned(_))));
        t.assign(tp.clone());
        t.register(&tp, 3).unwrap();
        assert!(matches!(t.register(&tp, 3), Err(RegisterError::NotIncreasing { .. })));
        assert!(matches!(t.register(&tp, 2), Err(RegisterError::NotIncreasing { .. })));
        assert!(matches!(t.register(&tp, -1), Err(RegisterError::Negative { .. })));
    }

    #[test]
    fn capacity_is_reported_per_partition() {
        let (a, b) = (TopicPartition::new("jobs", 0), TopicPartition::new("jobs", 1));
        let mut t = OffsetTracker::new(AckConfig { max_in_flight_per_partition: 2 });
        t.assign(a.clone());
        t.assign(b.clone());
        let first = t.register(&a, 0).unwrap();
        t.register(&a, 1).unwrap();
        t.register(&b, 0).unwrap();
        assert!(t.at_capacity(&a) && !t.at_capacity(&b));
        assert_eq!((t.in_flight(&a), t.in_flight(&b), t.total_in_flight()), (2, 1, 3));
        t.complete(&first);
        assert!(!t.at_capacity(&a));
    }
}
