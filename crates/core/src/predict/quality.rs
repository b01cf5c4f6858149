//! How good the predictions are: progressive (score first, then learn) AUC,
//! log loss, Brier score and a 10-bin calibration table, over all time and over
//! a recent window.
//!
//! All-time AUC comes from two score histograms on a logit scale (bounded
//! memory, exact up to ties inside a bin); the window keeps its pairs and is
//! exact.

use serde::Serialize;
use std::collections::VecDeque;

/// Histogram bins for the all-time AUC: fine enough that ties inside one bin
/// move the AUC by far less than a thousandth on real traces.
const AUC_BINS: usize = 4_096;
const AUC_LOGIT_SPAN: f64 = 14.0;
pub const CALIBRATION_BINS: usize = 10;
/// Probabilities are clipped to this distance from 0 and 1 for the log loss.
const LOG_LOSS_EPSILON: f64 = 1e-7;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
    pub mean_predicted: Option<f64>,
    pub observed_rate: Option<f64>,
}

/// One summary of (prediction, outcome) pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QualityReport {
    pub count: u64,
    pub positives: u64,
    /// `None` until both classes have been seen.
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub expected_calibration_error: Option<f64>,
    pub calibration: Vec<CalibrationBin>,
}

#[derive(Clone, Debug, Default)]
struct Sums {
    count: u64,
    positives: u64,
    log_loss: f64,
    brier: f64,
    bin_count: [u64; CALIBRATION_BINS],
    bin_predicted: [f64; CALIBRATION_BINS],
    bin_positives: [u64; CALIBRATION_BINS],
}

impl Sums {
    fn add(&mut self, p: f64, positive: bool, sign: f64) {
        let y = if positive { 1.0 } else { 0.0 };
        let clipped = p.clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON);
        let loss = -(y * clipped.ln() + (1.0 - y) * (1.0 - clipped).ln());
        let bin = calibration_bin(p);
        if sign > 0.0 {
            self.count += 1;
            self.positives += u64::from(positive);
            self.bin_count[bin] += 1;
            self.bin_positives[bin] += u64::from(positive);
        } else {
            self.count -= 1;
            self.positives -= u64::from(positive);
            self.bin_count[bin] -= 1;
            self.bin_positives[bin] -= u64::from(positive);
        }
        self.log_loss += sign * loss;
        self.brier += sign * (p - y) * (p - y);
        self.bin_predicted[bin] += sign * p;
    }

    fn report(&self, auc: Option<f64>) -> QualityReport {
        let n = self.count as f64;
        let mut ece = 0.0;
        let calibration = (0..CALIBRATION_BINS)
            .map(|b| {
                let count = self.bin_count[b];
                let (mean_predicted, observed_rate) = if count == 0 {
                    (None, None)
                } else {
                    let mean = self.bin_predicted[b] / count as f64;
                    let rate = self.bin_positives[b] as f64 / count as f64;
                    ece += (mean - rate).abs() * count as f64;
                    (Some(mean), Some(rate))
                };
                CalibrationBin {
                    lower: b as f64 / CALIBRATION_BINS as f64,
                    upper: (b + 1) as f64 / CALIBRATION_BINS as f64,
                    count,
                    mean_predicted,
                    observed_rate,
                }
            })
            .collect();
        let some = |v: f64| (self.count > 0).then_some(v);
        QualityReport {
            count: self.count,
            positives: self.positives,
            auc,
            log_loss: some(self.log_loss / n),
            brier: some(self.brier / n),
            expected_calibration_error: some(ece / n),
            calibration,
        }
    }
}

fn calibration_bin(p: f64) -> usize {
    ((p * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1)
}

/// Running quality over all time and over the last `window` pairs.
#[derive(Clone, Debug)]
pub struct Quality {
    all: Sums,
    positive_hist: Vec<u64>,
    negative_hist: Vec<u64>,
    window: usize,
    recent: VecDeque<(f64, bool)>,
    recent_sums: Sums,
}

impl Quality {
    pub fn new(window: usize) -> Self {
        Quality {
            all: Sums::default(),
            positive_hist: vec![0; AUC_BINS],
            negative_hist: vec![0; AUC_BINS],
            window: window.max(1),
            recent: VecDeque::new(),
            recent_sums: Sums::default(),
        }
    }

    pub fn observe(&mut self, p: f64, positive: bool) {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.all.add(p, positive, 1.0);
        let bin = auc_bin(p);
        if positive {
            self.positive_hist[bin] += 1;
        } else {
            self.negative_hist[bin] += 1;
        }
        self.recent.push_back((p, positive));
        self.recent_sums.add(p, positive, 1.0);
        if self.recent.len() > self.window
            && let Some((old_p, old_y)) = self.recent.pop_front()
        {
            self.recent_sums.add(old_p, old_y, -1.0);
        }
    }

    pub fn all_time(&self) -> QualityReport {
        self.all
            .report(histogram_auc(&self.positive_hist, &self.negative_hist))
    }

    pub fn recent(&self) -> QualityReport {
        let pairs: Vec<(f64, bool)> = self.recent.iter().copied().collect();
        self.recent_sums.report(exact_auc(&pairs))
    }
}

fn auc_bin(p: f64) -> usize {
    let clipped = p.clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON);
    let logit = (clipped / (1.0 - clipped)).ln();
    let unit = (logit + AUC_LOGIT_SPAN) / (2.0 * AUC_LOGIT_SPAN);
    ((unit * AUC_BINS as f64) as usize).min(AUC_BINS - 1)
}

fn histogram_auc(positive: &[u64], negative: &[u64]) -> Option<f64> {
    let (p_total, n_total): (u64, u64) = (positive.iter().sum(), negative.iter().sum());
    if p_total == 0 || n_total == 0 {
        return None;
    }
    // For each positive, count negatives scored below it, ties counting half.
    let mut negatives_below = 0u64;
    let mut wins = 0.0;
    for (p, n) in positive.iter().zip(negative) {
        wins += *p as f64 * (negatives_below as f64 + *n as f64 / 2.0);
        negatives_below += n;
    }
    Some(wins / (p_total as f64 * n_total as f64))
}

/// The exact AUC (the Mann–Whitney statistic, ties counting half).
pub fn exact_auc(pairs: &[(f64, bool)]) -> Option<f64> {
    let mut sorted: Vec<(f64, bool)> = pairs
        .iter()
        .copied()
        .filter(|(p, _)| p.is_finite())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = sorted.iter().filter(|(_, y)| *y).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut wins = 0.0;
    let mut negatives_below = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0.0, 0.0);
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            if sorted[j].1 {
                pos += 1.0
            } else {
                neg += 1.0
            }
            j += 1;
        }
        wins += pos * (negatives_below + neg / 2.0);
        negatives_below += neg;
        i = j;
    }
    Some(wins / (positives * negatives))
}

/// Quality of a finished list of pairs (what `sluice replay` reports).
pub fn summarize(pairs: &[(f64, bool)]) -> QualityReport {
    let mut sums = Sums::default();
    for &(p, y) in pairs {
        sums.add(p.clamp(0.0, 1.0), y, 1.0);
    }
    sums.report(exact_auc(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_orderings() {
        assert_eq!(exact_auc(&[(0.1, false), (0.9, true)]), Some(1.0));
        assert_eq!(exact_auc(&[(0.9, false), (0.1, true)]), Some(0.0));
        assert_eq!(exact_auc(&[(0.5, false), (0.5, true)]), Some(0.5));
        assert_eq!(
            exact_auc(&[(0.2, true), (0.1, false), (0.3, false), (0.4, true)]),
            Some(0.75)
        );
        assert_eq!(exact_auc(&[(0.2, true)]), None);
    }

    #[test]
    fn running_figures_match_a_batch_summary() {
        let pairs: Vec<(f64, bool)> = (0..1_000)
            .map(|i| ((i % 97) as f64 / 97.0, i % 7 == 0 || i % 97 > 80))
            .collect();
        let mut q = Quality::new(100);
        for &(p, y) in &pairs {
            q.observe(p, y);
        }
        let batch = summarize(&pairs);
        let all = q.all_time();
        assert_eq!((all.count, all.positives), (batch.count, batch.positives));
        assert!((all.auc.unwrap_or(0.0) - batch.auc.unwrap_or(1.0)).abs() < 0.01);
        assert!((all.log_loss.unwrap_or(0.0) - batch.log_loss.unwrap_or(1.0)).abs() < 1e-9);
        assert_eq!(all.calibration, batch.calibration);
        let recent = q.recent();
        assert_eq!(recent.count, 100);
        assert_eq!(recent.auc, summarize(&pairs[900..]).auc);
        assert!(
            (recent.brier.unwrap_or(0.0) - summarize(&pairs[900..]).brier.unwrap_or(1.0)).abs()
                < 1e-9
        );
    }

    #[test]
    fn a_perfectly_calibrated_predictor_has_no_calibration_error() {
        let mut pairs = Vec::new();
        for (p, n) in [(0.05, 100), (0.55, 100)] {
            for i in 0..n {
                pairs.push((p, i < (p * n as f64).round() as i32));
            }
        }
        let ece = summarize(&pairs).expected_calibration_error.unwrap_or(1.0);
        assert!(ece < 1e-9, "{ece}");
    }
}
