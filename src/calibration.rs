//! How well confidences match accuracy: the expected calibration error and the
//! reliability diagram's bins (Guo et al. 2017), from (confidence, right or wrong) pairs.

use serde::{Deserialize, Serialize};

/// One bin of confidences `[lo, hi)` (the last one includes 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Answers whose confidence fell in the bin.
    pub count: usize,
    /// Their mean confidence (0 when empty).
    pub confidence: f64,
    /// The share of them that were right (0 when empty).
    pub accuracy: f64,
}

/// Calibration of a set of answers.
///
/// ```
/// use protonet::calibration::Calibration;
/// // Four answers at 0.9 of which two are right: overconfident by 0.4.
/// let c = Calibration::from_answers(&[(0.9, true), (0.9, true), (0.9, false), (0.9, false)], 10);
/// assert!((c.ece - 0.4).abs() < 1e-6 && (c.mean_confidence - 0.9).abs() < 1e-6 && c.accuracy == 0.5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Answers counted.
    pub count: usize,
    /// Their mean confidence.
    pub mean_confidence: f64,
    /// The share that were right.
    pub accuracy: f64,
    /// Expected calibration error: the mean over bins, weighted by their counts, of the
    /// gap between a bin's accuracy and its mean confidence.
    pub ece: f64,
    /// The reliability diagram's bins, of equal width.
    pub bins: Vec<CalibrationBin>,
}

/// The number of bins of [`Calibration`] in reports (Guo et al. use 15).
pub const CALIBRATION_BINS: usize = 15;

impl Calibration {
    /// Calibration of `answers` (confidence in [0, 1], whether the answer was right) in
    /// `bins` equal-width bins (at least 1).
    pub fn from_answers(answers: &[(f32, bool)], bins: usize) -> Self {
        let bins = bins.max(1);
        let mut sums = vec![(0usize, 0f64, 0usize); bins];
        for &(c, right) in answers {
            let c = (c as f64).clamp(0.0, 1.0);
            let b = ((c * bins as f64) as usize).min(bins - 1);
            sums[b].0 += 1;
            sums[b].1 += c;
            sums[b].2 += right as usize;
        }
        let bins: Vec<CalibrationBin> = sums
            .iter()
            .enumerate()
            .map(|(i, &(count, conf, right))| {
                let k = count.max(1) as f64;
                CalibrationBin { lo: i as f64 / bins as f64, hi: (i + 1) as f64 / bins as f64, count, confidence: conf / k, accuracy: right as f64 / k }
            })
            .collect();
        Self::from_bins(bins)
    }

    /// The calibration of the answers of all `parts` together (made with the same bins).
    ///
    /// ```
    /// use protonet::calibration::Calibration;
    /// let (a, b) = ([(0.9f32, true), (0.6, false)], [(0.9f32, false)]);
    /// let both = Calibration::merge(&[Calibration::from_answers(&a, 10), Calibration::from_answers(&b, 10)])?;
    /// let all = Calibration::from_answers(&[a[0], a[1], b[0]], 10);
    /// assert_eq!((both.count, all.count), (3, 3));
    /// assert!((both.ece - all.ece).abs() < 1e-12 && (both.mean_confidence - all.mean_confidence).abs() < 1e-12);
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn merge(parts: &[Calibration]) -> crate::Result<Self> {
        let Some(first) = parts.first() else {
            return Err(crate::Error::param("calibration", "nothing to merge"));
        };
        let mut bins = first.bins.clone();
        for part in &parts[1..] {
            if part.bins.len() != bins.len() {
                return Err(crate::Error::param("calibration", format!("{} bins against {}", part.bins.len(), bins.len())));
            }
            for (b, p) in bins.iter_mut().zip(&part.bins) {
                let total = (b.count + p.count).max(1) as f64;
                b.confidence = (b.confidence * b.count as f64 + p.confidence * p.count as f64) / total;
                b.accuracy = (b.accuracy * b.count as f64 + p.accuracy * p.count as f64) / total;
                b.count += p.count;
            }
        }
        Ok(Self::from_bins(bins))
    }

    fn from_bins(bins: Vec<CalibrationBin>) -> Self {
        let count: usize = bins.iter().map(|b| b.count).sum();
        let n = count.max(1) as f64;
        let weighted = |f: fn(&CalibrationBin) -> f64| bins.iter().map(|b| b.count as f64 * f(b)).sum::<f64>() / n;
        let ece = weighted(|b| (b.accuracy - b.confidence).abs());
        let (mean_confidence, accuracy) = (weighted(|b| b.confidence), weighted(|b| b.accuracy));
        Self { count, mean_confidence, accuracy, ece, bins }
    }
}

#[cfg(test)]
mod tests {
    use super::Calibration;

    /// Answers right exactly as often as their confidence say have no calibration error;
    /// bins split at their edges; 1.0 falls in the last bin.
    #[test]
    fn calibrated_answers_have_no_error_and_bins_split_at_edges() {
        let mut answers = Vec::new();
        for (conf, right, wrong) in [(0.25f32, 1, 3), (0.75, 3, 1), (1.0, 4, 0)] {
            answers.extend(std::iter::repeat_n((conf, true), right));
            answers.extend(std::iter::repeat_n((conf, false), wrong));
        }
        let c = Calibration::from_answers(&answers, 4);
        assert!(c.ece.abs() < 1e-12, "{c:?}");
        assert_eq!(c.bins.iter().map(|b| b.count).collect::<Vec<_>>(), vec![0, 4, 0, 8]);
        assert_eq!(c.count, 12);
        let over = Calibration::from_answers(&[(1.0, false)], 15);
        assert_eq!(over.ece, 1.0);
        assert!(Calibration::from_answers(&[], 15).ece == 0.0);
    }
}
