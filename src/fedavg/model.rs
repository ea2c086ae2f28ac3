//! The model every participant trains: a one-hidden-layer network (or, with no hidden
//! units, softmax regression) on candle, the tensor library commit-learn uses. Parameters
//! travel as one flat `f32` vector (the layout is fixed by [`Architecture`]), which is what
//! FedAvg averages and what the store holds; training loads them into candle variables,
//! runs minibatch SGD with a seeded shuffle, and reads them back, so a run replays exactly.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{loss::cross_entropy, Optimizer, SGD};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::data::{Examples, CLASSES, FEATURES};

/// Why training or scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The tensor library failed.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A parameter vector does not fit the architecture.
    #[error("{got} parameters for a network that has {want}")]
    Shape {
        /// Parameters given.
        got: usize,
        /// Parameters the architecture has.
        want: usize,
    },
    /// The schedule cannot be run.
    #[error("bad training schedule: {0}")]
    Schedule(String),
}

/// The shape of the network: 64 inputs, `hidden` ReLU units, 10 outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// Hidden units (0: no hidden layer, softmax regression).
    pub hidden: usize,
}

/// How a participant trains in one round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Passes over the shard.
    pub epochs: usize,
    /// Examples per SGD step.
    pub batch: usize,
    /// SGD learning rate.
    pub lr: f64,
}

impl Architecture {
    /// `(rows, cols)` of each weight matrix, each followed by its bias.
    fn layers(&self) -> Vec<(usize, usize)> {
        if self.hidden == 0 {
            vec![(FEATURES, CLASSES)]
        } else {
            vec![(FEATURES, self.hidden), (self.hidden, CLASSES)]
        }
    }

    /// Length of the flat parameter vector.
    pub fn param_count(&self) -> usize {
        self.layers().iter().map(|(r, c)| r * c + c).sum()
    }

    /// Seeded initial parameters: weights uniform in `±1/sqrt(fan_in)`, biases zero.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.param_count());
        for (rows, cols) in self.layers() {
            let bound = 1.0 / (rows as f32).sqrt();
            out.extend((0..rows * cols).map(|_| rng.gen_range(-bound..bound)));
            out.extend(std::iter::repeat_n(0.0, cols));
        }
        out
    }

    /// The flat vector as candle variables (weight, bias, weight, bias...).
    fn vars(&self, params: &[f32]) -> Result<Vec<Var>, ModelError> {
        let want = self.param_count();
        if params.len() != want {
            return Err(ModelError::Shape {
                got: params.len(),
                want,
            });
        }
        let mut vars = Vec::new();
        let mut at = 0;
        for (rows, cols) in self.layers() {
            vars.push(Var::from_slice(
                &params[at..at + rows * cols],
                (rows, cols),
                &Device::Cpu,
            )?);
            at += rows * cols;
            vars.push(Var::from_slice(&params[at..at + cols], cols, &Device::Cpu)?);
            at += cols;
        }
        Ok(vars)
    }

    /// Logits of a batch `x` (rows of [`FEATURES`]).
    fn forward(vars: &[Var], x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in vars.chunks_exact(2).enumerate() {
            if i > 0 {
                h = h.relu()?;
            }
            h = h
                .matmul(layer[0].as_tensor())?
                .broadcast_add(layer[1].as_tensor())?;
        }
        Ok(h)
    }

    /// Trains `params` on `data` for `schedule`, shuffling with `seed`; the new parameters.
    pub fn train(
        &self,
        params: &[f32],
        data: &Examples,
        schedule: &Schedule,
        seed: u64,
    ) -> Result<Vec<f32>, ModelError> {
        if schedule.batch == 0 || !(schedule.lr.is_finite() && schedule.lr > 0.0) {
            return Err(ModelError::Schedule(format!(
                "batch {} and learning rate {} (both must be positive)",
                schedule.batch, schedule.lr
            )));
        }
        let vars = self.vars(params)?;
        let x = Tensor::from_slice(&data.features, (data.len(), FEATURES), &Device::Cpu)?;
        let y = Tensor::from_slice(&data.labels, data.len(), &Device::Cpu)?;
        let mut sgd = SGD::new(vars.clone(), schedule.lr)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<u32> = (0..data.len() as u32).collect();
        for _ in 0..schedule.epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(schedule.batch) {
                let idx = Tensor::from_slice(batch, batch.len(), &Device::Cpu)?;
                let logits = Self::forward(&vars, &x.index_select(&idx, 0)?)?;
                sgd.backward_step(&cross_entropy(&logits, &y.index_select(&idx, 0)?)?)?;
            }
        }
        flatten(&vars)
    }

    /// The share of `data` that `params` classifies right.
    pub fn accuracy(&self, params: &[f32], data: &Examples) -> Result<f64, ModelError> {
        if data.is_empty() {
            return Ok(0.0);
        }
        let vars = self.vars(params)?;
        let x = Tensor::from_slice(&data.features, (data.len(), FEATURES), &Device::Cpu)?;
        let predicted = Self::forward(&vars, &x)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        let right = predicted
            .iter()
            .zip(&data.labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok(right as f64 / data.len() as f64)
    }
}

fn flatten(vars: &[Var]) -> Result<Vec<f32>, ModelError> {
    let mut out = Vec::new();
    for v in vars {
        out.extend(v.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Federated averaging: the mean of the parameter vectors weighted by the examples each
/// was trained on (summed in `f64`, in the order given, so the result replays exactly).
/// `None` if there is nothing to average, the weights are all zero, or the vectors differ
/// in length.
pub fn fedavg<'a>(updates: impl IntoIterator<Item = (u64, &'a [f32])>) -> Option<Vec<f32>> {
    let mut sum: Option<Vec<f64>> = None;
    let mut total = 0u64;
    for (weight, params) in updates {
        let sum = sum.get_or_insert_with(|| vec![0.0; params.len()]);
        if params.len() != sum.len() {
            return None;
        }
        for (s, p) in sum.iter_mut().zip(params) {
            *s += weight as f64 * f64::from(*p);
        }
        total += weight;
    }
    let sum = sum?;
    (total > 0).then(|| sum.iter().map(|s| (s / total as f64) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedavg::data::{digits, split};

    #[test]
    fn parameters_round_trip_through_candle() {
        let arch = Architecture { hidden: 8 };
        assert_eq!(arch.param_count(), 64 * 8 + 8 + 8 * 10 + 10);
        assert_eq!(Architecture { hidden: 0 }.param_count(), 650);
        let p = arch.init(3);
        assert_eq!(flatten(&arch.vars(&p).unwrap()).unwrap(), p);
        assert!(matches!(
            arch.vars(&p[1..]),
            Err(ModelError::Shape {
                got: 609,
                want: 610
            })
        ));
    }

    #[test]
    fn training_learns_and_replays() {
        let d = digits().unwrap();
        let s = split(&d, 1, 1, 0.2).unwrap();
        let arch = Architecture { hidden: 16 };
        let p0 = arch.init(1);
        let schedule = Schedule {
            epochs: 3,
            batch: 16,
            lr: 0.1,
        };
        let before = arch.accuracy(&p0, &s.test).unwrap();
        let p1 = arch.train(&p0, &s.shards[0], &schedule, 5).unwrap();
        let after = arch.accuracy(&p1, &s.test).unwrap();
        assert!(after > 0.8 && after > before + 0.5, "{before} -> {after}");
        assert_eq!(arch.train(&p0, &s.shards[0], &schedule, 5).unwrap(), p1);
        let bad = Schedule {
            batch: 0,
            ..schedule
        };
        assert!(arch.train(&p0, &s.shards[0], &bad, 5).is_err());
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let a = [1.0f32, 0.0];
        let b = [4.0f32, 3.0];
        assert_eq!(fedavg([(2, &a[..]), (1, &b[..])]), Some(vec![2.0, 1.0]));
        assert_eq!(fedavg([(5, &a[..])]), Some(a.to_vec()));
        assert_eq!(fedavg(std::iter::empty()), None);
        assert_eq!(fedavg([(1, &a[..]), (1, &b[..1])]), None);
        assert_eq!(fedavg([(0, &a[..])]), None);
    }
}
