//! The episode sampler: shapes, disjointness, reproducibility and its errors.

use std::collections::HashSet;

use candle_core::Device;
use protonet::data::ImageSet;
use protonet::{EpisodeSampler, EpisodeSpec, Error};

/// Classes of `sizes[c]` 1x1 images whose single value encodes (class, index).
fn coded_set(sizes: &[usize]) -> ImageSet {
    let mut set = ImageSet::new(1, 1, 1);
    for (c, &n) in sizes.iter().enumerate() {
        set.push_class(format!("class{c}"), (0..n).map(|i| vec![(c * 1000 + i) as f32]).collect()).unwrap();
    }
    set
}

#[test]
fn episodes_have_the_right_shape_and_disjoint_support_and_query() {
    let set = coded_set(&[20; 30]);
    for (way, shot, query) in [(5, 1, 15), (20, 5, 15), (2, 1, 1), (30, 10, 10)] {
        let spec = EpisodeSpec::new(way, shot, query).unwrap();
        let mut sampler = EpisodeSampler::new(&set, spec, 1).unwrap();
        for _ in 0..20 {
            let ep = sampler.sample();
            assert_eq!(ep.classes.len(), way);
            assert_eq!(ep.classes.iter().collect::<HashSet<_>>().len(), way, "classes without replacement");
            assert_eq!(ep.support.len(), way * shot);
            assert_eq!(ep.query.len(), way * query);
            let s: HashSet<_> = ep.support.iter().collect();
            let q: HashSet<_> = ep.query.iter().collect();
            assert_eq!(s.len(), way * shot, "support images distinct");
            assert_eq!(q.len(), way * query, "query images distinct");
            assert!(s.is_disjoint(&q), "support and query disjoint");
            // Class-major order: block i belongs to episode class i.
            for (i, &c) in ep.classes.iter().enumerate() {
                assert!(ep.support[i * shot..(i + 1) * shot].iter().all(|&(k, _)| k == c));
                assert!(ep.query[i * query..(i + 1) * query].iter().all(|&(k, _)| k == c));
            }
            let labels = ep.query_labels();
            assert_eq!(labels.len(), way * query);
            assert!(labels.iter().enumerate().all(|(j, &l)| l as usize == j / query));
        }
    }
}

#[test]
fn episode_tensors_hold_the_sampled_images_in_order() {
    let set = coded_set(&[8; 6]);
    let spec = EpisodeSpec::new(3, 2, 1).unwrap();
    let ep = EpisodeSampler::new(&set, spec, 9).unwrap().sample();
    let (images, labels) = ep.tensors(&set, &Device::Cpu).unwrap();
    assert_eq!(images.dims(), &[9, 1, 1, 1]);
    let values = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expected: Vec<f32> = ep.support.iter().chain(&ep.query).map(|&(c, i)| (c * 1000 + i) as f32).collect();
    assert_eq!(values, expected);
    assert_eq!(labels.to_vec1::<u32>().unwrap(), vec![0, 1, 2]);
}

#[test]
fn same_seed_same_episodes_other_seed_other_episodes() {
    let set = coded_set(&[20; 50]);
    let spec = EpisodeSpec::new(5, 5, 5).unwrap();
    let run = |seed| {
        let mut s = EpisodeSampler::new(&set, spec, seed).unwrap();
        (0..10).map(|_| s.sample()).collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // A sampler restored from its serialised state continues identically.
    let mut a = EpisodeSampler::new(&set, spec, 7).unwrap();
    a.sample();
    let mut b: EpisodeSampler = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(a.sample(), b.sample());
}

#[test]
fn too_few_images_names_the_class_and_the_numbers() {
    let set = coded_set(&[20, 20, 7, 20]);
    let err = EpisodeSampler::new(&set, EpisodeSpec::new(3, 5, 5).unwrap(), 0).unwrap_err();
    match &err {
        Error::NotEnoughImages { class, have, need, .. } => {
            assert_eq!((class.as_str(), *have, *need), ("class2", 7, 10));
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("class2") && msg.contains('7') && msg.contains("10"), "{msg}");
}

#[test]
fn too_many_ways_and_zero_shots_are_errors() {
    let set = coded_set(&[20; 4]);
    let err = EpisodeSampler::new(&set, EpisodeSpec { way: 5, shot: 1, query: 1 }, 0).unwrap_err();
    assert!(matches!(err, Error::NotEnoughClasses { way: 5, available: 4 }), "{err}");
    assert!(err.to_string().contains("only 4"));
    for (spec, name) in [((4, 0, 1), "shot"), ((4, 1, 0), "query"), ((1, 1, 1), "way")] {
        let err = EpisodeSpec::new(spec.0, spec.1, spec.2).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}
