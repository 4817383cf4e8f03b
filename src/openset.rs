//! Open-set rejection, measured: how well a calibrated distance threshold keeps known
//! classes and answers "unknown" for classes that were never added.

use serde::{Deserialize, Serialize};

use crate::classifier::PrototypeStore;
use crate::data::ImageSet;
use crate::error::Result;

/// The result of [`evaluate_open_set`]: how well a calibrated rejection threshold keeps
/// known classes and turns away classes that were never added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSetReport {
    /// Known classes per trial (added to the classifier).
    pub known_way: usize,
    /// Support images per known class.
    pub shot: usize,
    /// Unknown classes per trial (never added; all their images are queries).
    pub unknown_way: usize,
    /// Trials (independent draws of classes and support images).
    pub trials: usize,
    /// The calibration quantile of the leave-one-out support distances.
    pub quantile: f32,
    /// Share of queries of known classes that were accepted (not "unknown").
    pub known_accepted: f64,
    /// Share of queries of known classes that were accepted with the right class.
    pub known_correct: f64,
    /// Share of queries of known classes classified correctly with rejection off.
    pub known_accuracy_closed: f64,
    /// Share of queries of unknown classes answered "unknown".
    pub unknown_rejected: f64,
}

impl std::fmt::Display for OpenSetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-way {}-shot + {} unknown classes, quantile {:.2}, {} trials: known accepted {:.1}% (correct {:.1}%, {:.1}% without rejection), unknown rejected {:.1}%",
            self.known_way,
            self.shot,
            self.unknown_way,
            self.quantile,
            self.trials,
            100.0 * self.known_accepted,
            100.0 * self.known_correct,
            100.0 * self.known_accuracy_closed,
            100.0 * self.unknown_rejected
        )
    }
}

/// Measures open-set rejection on a set of embeddings (as made by
/// [`crate::embed::Embedder::embed_set`]): each
/// trial draws `known_way` known and `unknown_way` unknown classes, builds a
/// [`crate::PrototypeStore`] from `shot` random images of each known class, calibrates
/// its threshold at `quantile`, and classifies the other images of the known classes
/// and every image of the unknown ones.
///
/// ```
/// use protonet::data::ImageSet;
/// let mut set = ImageSet::new(2, 1, 1);
/// for c in 0..6 {
///     let centre = [10.0 * c as f32, 0.0];
///     set.push_class(format!("{c}"), (0..6).map(|i| vec![centre[0] + 0.1 * i as f32, centre[1] - 0.1 * i as f32]).collect())?;
/// }
/// let r = protonet::openset::evaluate_open_set(&set, 3, 3, 3, 5, 1.0, 0)?;
/// assert!(r.unknown_rejected > 0.9);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn evaluate_open_set(
    embedded: &ImageSet,
    known_way: usize,
    shot: usize,
    unknown_way: usize,
    trials: usize,
    quantile: f32,
    seed: u64,
) -> Result<OpenSetReport> {
    use rand::seq::{IndexedRandom, SliceRandom};
    use rand::SeedableRng;
    if known_way == 0 || shot < 2 || unknown_way == 0 || trials == 0 {
        return Err(crate::error::Error::param("open-set", "needs known_way >= 1, shot >= 2 (for calibration), unknown_way >= 1 and trials >= 1"));
    }
    if known_way + unknown_way > embedded.num_classes() {
        return Err(crate::error::Error::NotEnoughClasses { way: known_way + unknown_way, available: embedded.num_classes() });
    }
    if let Some(c) = (0..embedded.num_classes()).find(|&c| embedded.class_len(c) <= shot) {
        return Err(crate::error::Error::NotEnoughImages { class: embedded.class_name(c).into(), have: embedded.class_len(c), shot, query: 1, need: shot + 1 });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let all: Vec<usize> = (0..embedded.num_classes()).collect();
    let (mut known_n, mut accepted, mut correct, mut closed, mut unknown_n, mut rejected) = (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    for _ in 0..trials {
        let classes: Vec<usize> = all.choose_multiple(&mut rng, known_way + unknown_way).copied().collect();
        let mut store = PrototypeStore::new(embedded.image_len());
        let mut queries = Vec::new();
        for &c in &classes[..known_way] {
            let mut idx: Vec<usize> = (0..embedded.class_len(c)).collect();
            idx.shuffle(&mut rng);
            store.add(embedded.class_name(c), idx[..shot].iter().map(|&i| embedded.image(c, i).to_vec()).collect())?;
            queries.extend(idx[shot..].iter().map(|&i| (c, i)));
        }
        store.calibrate_threshold(quantile)?;
        let known: Vec<Vec<f32>> = queries.iter().map(|&(c, i)| embedded.image(c, i).to_vec()).collect();
        for ((c, _), p) in queries.iter().zip(store.predict(&known)?) {
            known_n += 1;
            let right = p.ranked[0].class == embedded.class_name(*c);
            closed += right as usize;
            if p.class.is_some() {
                accepted += 1;
                correct += right as usize;
            }
        }
        let unknown: Vec<Vec<f32>> =
            classes[known_way..].iter().flat_map(|&c| (0..embedded.class_len(c)).map(move |i| embedded.image(c, i).to_vec())).collect();
        for p in store.predict(&unknown)? {
            unknown_n += 1;
            rejected += p.class.is_none() as usize;
        }
    }
    let share = |a: usize, n: usize| a as f64 / n.max(1) as f64;
    Ok(OpenSetReport {
        known_way,
        shot,
        unknown_way,
        trials,
        quantile,
        known_accepted: share(accepted, known_n),
        known_correct: share(correct, known_n),
        known_accuracy_closed: share(closed, known_n),
        unknown_rejected: share(rejected, unknown_n),
    })
}
