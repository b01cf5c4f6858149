//! FTRL-Proximal logistic regression over hashed sparse features, after
//! McMahan et al., "Ad Click Prediction: a View from the Trenches" (KDD 2013).
//!
//! Weights are not stored: they are derived per coordinate from `z` and `n`
//! when needed, which is what makes the L1 term produce exact zeros (a sparse
//! model) and the per-coordinate learning rate adapt to how often a feature
//! occurs.

use serde::{Deserialize, Serialize};

/// Hyper-parameters. The defaults are the paper's usual starting point,
/// checked on the rails trace (see the README's predictor section).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtrlParams {
    pub alpha: f32,
    pub beta: f32,
    pub l1: f32,
    pub l2: f32,
}

impl Default for FtrlParams {
    fn default() -> Self {
        FtrlParams {
            alpha: 0.2,
            beta: 1.0,
            l1: 0.1,
            l2: 1.0,
        }
    }
}

/// Raw scores are clamped so that a runaway weight cannot produce exactly 0
/// or 1 (whose log loss is infinite).
const LOGIT_MAX: f32 = 12.0;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ftrl {
    pub params: FtrlParams,
    z: Vec<f32>,
    n: Vec<f32>,
}

/// A hashed feature: its coordinate and value.
pub(super) type Feature = (u32, f32);

impl Ftrl {
    /// A model of `2^dim_log2` coordinates, all weights zero: it predicts 0.5
    /// until it has learned something.
    pub fn new(dim_log2: u32, params: FtrlParams) -> Self {
        let dim = 1usize << dim_log2;
        Ftrl {
            params,
            z: vec![0.0; dim],
            n: vec![0.0; dim],
        }
    }

    pub fn dim(&self) -> usize {
        self.z.len()
    }

    fn weight(&self, i: usize) -> f32 {
        let z = self.z[i];
        let p = &self.params;
        if z.abs() <= p.l1 {
            0.0
        } else {
            -(z - z.signum() * p.l1) / ((p.beta + self.n[i].sqrt()) / p.alpha + p.l2)
        }
    }

    fn slot(&self, index: u32) -> usize {
        index as usize & (self.z.len() - 1)
    }

    /// The predicted probability of the positive class.
    pub fn predict(&self, features: &[Feature]) -> f32 {
        let logit: f32 = features
            .iter()
            .map(|&(i, v)| self.weight(self.slot(i)) * v)
            .sum();
        sigmoid(logit.clamp(-LOGIT_MAX, LOGIT_MAX))
    }

    /// One online step on `features` with the label `positive`, from the
    /// prediction `p` made for them.
    pub fn update(&mut self, features: &[Feature], p: f32, positive: bool) {
        let gradient = p - if positive { 1.0 } else { 0.0 };
        for &(index, value) in features {
            let i = self.slot(index);
            let g = gradient * value;
            let w = self.weight(i);
            let n = self.n[i];
            let sigma = ((n + g * g).sqrt() - n.sqrt()) / self.params.alpha;
            self.z[i] += g - sigma * w;
            self.n[i] = n + g * g;
        }
    }

    /// Sets one coordinate's weight as if learned with no gradient history:
    /// how the bias starts at the prior.
    pub fn set_weight(&mut self, index: u32, weight: f32) {
        let i = self.slot(index);
        let p = self.params;
        self.n[i] = 0.0;
        // Inverts `weight()` for n = 0.
        self.z[i] = -weight * (p.beta / p.alpha + p.l2) - weight.signum() * p.l1;
    }

    /// Coordinates with a non-zero weight.
    pub fn nonzero_weights(&self) -> usize {
        (0..self.z.len())
            .filter(|&i| self.z[i].abs() > self.params.l1)
            .count()
    }
}

pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_learns_a_separable_rule_and_stays_sparse() {
        let mut model = Ftrl::new(10, FtrlParams::default());
        assert_eq!(model.predict(&[(1, 1.0)]), 0.5, "knows nothing yet");
        for _ in 0..2_000 {
            for (feature, label) in [(1u32, true), (2u32, false)] {
                let x = [(0, 1.0), (feature, 1.0)];
                let p = model.predict(&x);
                model.update(&x, p, label);
            }
        }
        assert!(model.predict(&[(0, 1.0), (1, 1.0)]) > 0.9);
        assert!(model.predict(&[(0, 1.0), (2, 1.0)]) < 0.1);
        assert!(model.nonzero_weights() <= 3);
    }
}
