//! A set of sequence numbers kept as sorted, disjoint half-open ranges:
//! the records a read skipped as expired but that are still on disk, so
//! that neither a second read nor the release that passes them counts them
//! again. Reads go forward, so the set is a handful of ranges.

#[derive(Debug, Default)]
pub struct SeqRanges {
    ranges: Vec<(u64, u64)>,
}

impl SeqRanges {
    #[cfg(test)]
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end <= seq);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= seq)
    }

    /// Adds `seq`; false when it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        // The first range that ends at or after seq.
        let i = self.ranges.partition_point(|&(_, end)| end < seq);
        match self.ranges.get(i).copied() {
            Some((start, end)) if start <= seq && seq < end => return false,
            Some((_, end)) if end == seq => {
                self.ranges[i].1 = seq + 1;
                if self
                    .ranges
                    .get(i + 1)
                    .is_some_and(|&(next, _)| next == seq + 1)
                {
                    self.ranges[i].1 = self.ranges[i + 1].1;
                    self.ranges.remove(i + 1);
                }
            }
            Some((start, _)) if start == seq + 1 => self.ranges[i].0 = seq,
            _ => self.ranges.insert(i, (seq, seq + 1)),
        }
        true
    }

    /// Removes every number below `up_to`; returns how many there were.
    pub fn remove_below(&mut self, up_to: u64) -> u64 {
        let mut removed = 0;
        let whole = self.ranges.partition_point(|&(_, end)| end <= up_to);
        for &(start, end) in &self.ranges[..whole] {
            removed += end - start;
        }
        self.ranges.drain(..whole);
        if let Some(first) = self.ranges.first_mut() {
            if first.0 < up_to {
                removed += up_to - first.0;
                first.0 = up_to;
            }
        }
        removed
    }

    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(start, end)| end - start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_merge_into_ranges_and_count_once() {
        let mut r = SeqRanges::default();
        for seq in [5, 6, 7, 10, 9, 3, 8] {
            assert!(r.insert(seq));
        }
        assert!(!r.insert(6));
        assert_eq!(r.ranges, [(3, 4), (5, 11)]);
        assert!(r.insert(4));
        assert_eq!(r.ranges, [(3, 11)]);
        assert!(r.contains(3) && r.contains(10) && !r.contains(11) && !r.contains(2));
        assert_eq!(r.len(), 8);
        assert!(r.insert(20));
        assert_eq!(r.remove_below(6), 3);
        assert_eq!(r.ranges, [(6, 11), (20, 21)]);
        assert_eq!(r.remove_below(30), 6);
        assert_eq!(r.len(), 0);
    }
}
