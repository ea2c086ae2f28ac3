//! The data set and how it is dealt out: the UCI handwritten digits (1797 8×8 images,
//! ten classes) embedded in the `smartcore` crate, so a run needs no download. A seeded
//! shuffle holds out a test set and deals the rest into one shard per node, of unequal
//! sizes (node `k` gets a share proportional to `k`), so that weighting by shard size
//! matters. Every process derives the same split from the seed; a participant only ever
//! trains on its own shard, and its examples never leave it.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Pixels per image (8×8).
pub const FEATURES: usize = 64;
/// Digits 0-9.
pub const CLASSES: usize = 10;
/// The largest pixel value in the data set; features are scaled by it into `[0, 1]`.
const MAX_PIXEL: f32 = 16.0;

/// Why the data set cannot be dealt out as asked.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The embedded data set is not what this module expects.
    #[error("the embedded digits data set is malformed: {0}")]
    Malformed(String),
    /// The split asked for cannot be made.
    #[error("cannot split {samples} examples into a {test_fraction} test share and {nodes} non-empty shards")]
    Split {
        /// Examples in the data set.
        samples: usize,
        /// The requested test share.
        test_fraction: f64,
        /// The requested number of shards.
        nodes: u32,
    },
}

/// Labelled examples, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Examples {
    /// `len() * FEATURES` pixel values in `[0, 1]`.
    pub features: Vec<f32>,
    /// One digit per example.
    pub labels: Vec<u32>,
}

impl Examples {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn push(&mut self, features: &[f32], label: u32) {
        self.features.extend_from_slice(features);
        self.labels.push(label);
    }

    /// All examples of `parts` together (the centralized baseline trains on this).
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Examples>) -> Examples {
        let mut all = Examples::default();
        for p in parts {
            all.features.extend_from_slice(&p.features);
            all.labels.extend_from_slice(&p.labels);
        }
        all
    }
}

/// The held-out test set and the training shards, shard `k - 1` belonging to node `k`.
#[derive(Clone, Debug)]
pub struct Split {
    /// Never trained on; every model is scored on it.
    pub test: Examples,
    /// One per node.
    pub shards: Vec<Examples>,
}

/// Loads the embedded digits, scaled into `[0, 1]`, checking their shape.
pub fn digits() -> Result<Examples, DataError> {
    let ds = smartcore::dataset::digits::load_dataset();
    if ds.num_features != FEATURES
        || ds.data.len() != ds.num_samples * FEATURES
        || ds.target.len() != ds.num_samples
    {
        return Err(DataError::Malformed(format!(
            "{} samples of {} features, {} values, {} labels",
            ds.num_samples,
            ds.num_features,
            ds.data.len(),
            ds.target.len()
        )));
    }
    let mut out = Examples::default();
    for (row, &t) in ds.data.chunks_exact(FEATURES).zip(&ds.target) {
        if t.fract() != 0.0 || !(0.0..CLASSES as f32).contains(&t) {
            return Err(DataError::Malformed(format!("label {t}")));
        }
        let scaled: Vec<f32> = row.iter().map(|p| p / MAX_PIXEL).collect();
        out.push(&scaled, t as u32);
    }
    Ok(out)
}

/// Shuffles `all` with `seed`, holds out `test_fraction` of it, and deals the rest into
/// `nodes` shards, node `k`'s share proportional to `k`.
pub fn split(
    all: &Examples,
    seed: u64,
    nodes: u32,
    test_fraction: f64,
) -> Result<Split, DataError> {
    let n = all.len();
    let test_len = (n as f64 * test_fraction).round() as usize;
    let train_len = n.saturating_sub(test_len);
    let weight_sum = u64::from(nodes) * (u64::from(nodes) + 1) / 2;
    let bad = || DataError::Split {
        samples: n,
        test_fraction,
        nodes,
    };
    if !(0.0..1.0).contains(&test_fraction) || test_len == 0 || nodes == 0 {
        return Err(bad());
    }
    // Shard boundaries: cumulative shares of the training examples.
    let bounds: Vec<usize> = (0..=u64::from(nodes))
        .map(|k| (train_len as u64 * (k * (k + 1) / 2) / weight_sum) as usize)
        .collect();
    if bounds.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let take = |idx: &[usize]| {
        let mut e = Examples::default();
        for &i in idx {
            e.push(
                &all.features[i * FEATURES..(i + 1) * FEATURES],
                all.labels[i],
            );
        }
        e
    };
    let (test_idx, train_idx) = order.split_at(test_len);
    Ok(Split {
        test: take(test_idx),
        shards: bounds
            .windows(2)
            .map(|w| take(&train_idx[w[0]..w[1]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_all_there_and_scaled() {
        let d = digits().unwrap();
        assert_eq!(d.len(), 1797);
        assert!(d.features.iter().all(|p| (0.0..=1.0).contains(p)));
        for c in 0..CLASSES as u32 {
            let count = d.labels.iter().filter(|&&l| l == c).count();
            assert!((170..=190).contains(&count), "digit {c}: {count}");
        }
    }

    #[test]
    fn split_is_a_seeded_partition_with_growing_shards() {
        let d = digits().unwrap();
        let s = split(&d, 7, 3, 0.2).unwrap();
        assert_eq!(s.test.len(), 359);
        let sizes: Vec<usize> = s.shards.iter().map(Examples::len).collect();
        assert_eq!(sizes.iter().sum::<usize>() + s.test.len(), d.len());
        assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
        // Same seed, same split; another seed, another one.
        assert_eq!(split(&d, 7, 3, 0.2).unwrap().shards[1], s.shards[1]);
        assert_ne!(split(&d, 8, 3, 0.2).unwrap().shards[1], s.shards[1]);
        assert!(split(&d, 7, 0, 0.2).is_err());
        assert!(split(&d, 7, 3, 1.5).is_err());
        assert!(split(&d, 7, 2000, 0.2).is_err());
    }
}
