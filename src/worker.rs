//! Which worker the current code runs on, and state kept once per worker.
//!
//! The gateway serves each connection on one worker thread from accept to close. State that
//! every request writes (counters, the upstream connection pools, round-robin positions) is
//! kept once per worker in [`PerWorker`], so that two cores never write the same cache line on
//! the hot path; readers that need the whole picture (`/metrics`, `/readyz`) sum the shards.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running this code: `0..workers` on a worker thread, `0` anywhere
/// else (tests, the admin listener, background tasks).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the calling thread as worker `index` for the rest of its life.
pub fn enter(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

/// One cache line per shard: two workers' shards never share a line.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A `T` for each worker. [`PerWorker::local`] is the current worker's; workers beyond the
/// number of shards (never the case in the gateway) share shards by index modulo.
pub struct PerWorker<T> {
    shards: Box<[Padded<T>]>,
}

impl<T> PerWorker<T> {
    /// `workers` shards (at least one), each made by `make`.
    pub fn new(workers: usize, mut make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker {
            shards: (0..workers.max(1)).map(|_| Padded(make())).collect(),
        }
    }

    /// This worker's shard.
    pub fn local(&self) -> &T {
        // `shards` is never empty.
        &self.shards[current() % self.shards.len()].0
    }

    /// Every shard, for summing.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|shard| &shard.0)
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<T: Default> Default for PerWorker<T> {
    /// One shard per core the process may use.
    fn default() -> PerWorker<T> {
        PerWorker::new(available_cores(), T::default)
    }
}

/// The cores this process may run on (its CPU affinity), at least one.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn each_worker_thread_writes_its_own_shard_and_the_sum_sees_all() {
        let counters = std::sync::Arc::new(PerWorker::new(3, AtomicU64::default));
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    enter(i);
                    for _ in 0..=i {
                        counters.local().fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let each: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(each, [1, 2, 3]);
        assert_eq!(current(), 0, "a thread that never entered is worker 0");
    }

    #[test]
    fn shards_do_not_share_a_cache_line() {
        let counters = PerWorker::new(2, AtomicU64::default);
        let mut shards = counters.iter();
        let (a, b) = (shards.next().unwrap(), shards.next().unwrap());
        let distance = (b as *const AtomicU64 as usize) - (a as *const AtomicU64 as usize);
        assert!(distance >= 128, "{distance}");
    }
}
