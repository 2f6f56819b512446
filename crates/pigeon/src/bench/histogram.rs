//! A log-linear histogram of latencies in nanoseconds.
//!
//! Each power of two is split into 32 linear sub-buckets, so a reported percentile is within 1/32
//! (about 3 %) of the true value. The bucket array has a fixed size, so recording never allocates
//! and histograms of many connections merge by adding counts index by index.

/// Linear sub-buckets per power of two, as a number of bits.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values below `SUB` each get a bucket; every higher power of two up to 2^63 gets `SUB`.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }

    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0-1.0): the middle of the bucket holding that rank, or `None`
    /// when nothing was recorded.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let low = lower_bound(i);
                let width = if i + 1 < BUCKETS {
                    lower_bound(i + 1) - low
                } else {
                    0
                };
                return Some(low + width / 2);
            }
        }
        None
    }
}

fn index(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) as usize - SUB;
    SUB + shift as usize * SUB + sub
}

fn lower_bound(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = (index - SUB) / SUB;
    let sub = (index - SUB) % SUB;
    ((SUB + sub) as u64) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_lower_bound_agree() {
        for v in [
            0,
            1,
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            123_456_789,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(lower_bound(i) <= v, "{v}");
            if i + 1 < BUCKETS {
                assert!(v < lower_bound(i + 1), "{v}");
            }
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_bucket_precision() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q).expect("values recorded") as f64;
            assert!(
                (got - want).abs() / want < 1.0 / 32.0,
                "q={q} got={got} want={want}"
            );
        }
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.total, 3);
        assert_eq!(a.quantile(0.0), Some(10));
        assert!(a.quantile(1.0).expect("values recorded") >= 1_000_000 - 1_000_000 / 32);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
