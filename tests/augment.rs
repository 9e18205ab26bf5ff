//! The training transforms against torchvision on the same draws, the loss against torch, and
//! the loader's independence from how its work is split.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use common::{fixtures_dir, relative_error};
use densenet_zoo::data::augment::CropBox;
use densenet_zoo::data::{
    self, resized_crop, Augment, Dataset, Loader, LoaderOptions, Samples, Shard, Split, Transform,
};
use densenet_zoo::train::cross_entropy;
use image::DynamicImage;

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures_dir().join("augment.safetensors"), &Device::Cpu).unwrap()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

/// Largest and mean |a − b| over two 8-bit images of the same size.
fn differences(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let d: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
    let mean = d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64;
    (*d.iter().max().unwrap(), mean)
}

/// Our crop and resize against torchvision's on the boxes its `get_params` drew: every value
/// within one level of 255, and at most a quarter of a level on average (both round in 8-bit
/// fixed point, with coefficients of their own precision): measured here, at most 1 level and
/// 0.16 on average.
#[test]
fn resized_crops_match_torchvision_on_its_own_boxes() {
    let want = fixture();
    for name in ["chelsea", "coffee"] {
        let photo = image::open(fixtures_dir().join(format!("images/{name}.png"))).unwrap();
        let rgb = DynamicImage::ImageRgb8(photo.to_rgb8());
        // PIL's convert("L"), as the 1-channel transforms convert.
        let gray = Transform {
            size: 1,
            resize: 1,
            channels: 1,
            mean: vec![0.0],
            std: vec![1.0],
            augment: Augment::None,
        };
        let luma = gray.to_channels(&photo);
        for k in 0..6 {
            let b = want[&format!("{name}.box{k}")].to_vec1::<i64>().unwrap();
            let b = CropBox {
                top: b[0] as u32,
                left: b[1] as u32,
                height: b[2] as u32,
                width: b[3] as u32,
            };
            let torch_rgb = &want[&format!("{name}.rgb{k}")];
            let size = torch_rgb.dim(0).unwrap() as u32;
            let ours = resized_crop(&rgb, b, size).unwrap().to_rgb8().into_raw();
            let (max, mean) = differences(&ours, &bytes(torch_rgb));
            assert!(
                max <= 1 && mean < 0.25,
                "{name} box {k} rgb: max {max}, mean {mean}"
            );
            let ours = resized_crop(&luma, b, size).unwrap().to_luma8().into_raw();
            let (max_g, mean_g) = differences(&ours, &bytes(&want[&format!("{name}.gray{k}")]));
            assert!(
                max_g <= 1 && mean_g < 0.25,
                "{name} box {k} gray: max {max_g}, mean {mean_g}"
            );
        }
    }
}

#[test]
fn label_smoothing_matches_torch_loss_and_gradient() {
    let f = fixture();
    let labels = f["smoothing.labels"].to_dtype(DType::U32).unwrap();
    for e in [0u32, 10, 25] {
        let logits = Var::from_tensor(&f["smoothing.logits"]).unwrap();
        let loss = cross_entropy(logits.as_tensor(), &labels, e as f64 / 100.0).unwrap();
        let want = f[&format!("smoothing.loss{e}")].to_scalar::<f64>().unwrap();
        let got = loss.to_scalar::<f64>().unwrap();
        assert!(
            (got - want).abs() < 1e-12 * want.abs().max(1.0),
            "ε {e}%: {got} vs {want}"
        );
        let grad = loss.backward().unwrap().get(logits.as_tensor()).unwrap().clone();
        let diff = relative_error(&grad, &f[&format!("smoothing.grad{e}")]);
        assert!(diff < 1e-12, "ε {e}%: gradient off by {diff:e} relative");
    }
}

/// 10 gray 20×12 images in memory, image i filled with a gradient offset by 10·i.
fn in_memory() -> Arc<Dataset> {
    let (h, w) = (12, 20);
    let pixels: Vec<u8> = (0..10)
        .flat_map(|i| (0..h * w).map(move |p| (10 * i + p % 97) as u8))
        .collect();
    Arc::new(Dataset {
        samples: Samples::InMemory {
            pixels,
            channels: 1,
            height: h,
            width: w,
        },
        labels: (0..10).collect(),
        classes: (0..10).map(|i| i.to_string()).collect(),
    })
}

fn all_images(
    dataset: Arc<Dataset>,
    batch: usize,
    augment: Augment,
    workers: usize,
    first: usize,
) -> Vec<f32> {
    let t = Transform {
        size: 16,
        resize: 16,
        channels: 1,
        mean: vec![0.5],
        std: vec![0.25],
        augment,
    };
    let options = LoaderOptions {
        epoch_seed: 42,
        first_batch: first,
        workers,
        ..LoaderOptions::default()
    };
    let order = vec![3, 1, 4, 0, 5, 9, 2, 6, 8, 7];
    Loader::start(dataset, order, batch, t, options)
        .flat_map(|b| b.unwrap().images)
        .collect()
}

#[test]
fn the_pixels_do_not_depend_on_workers_or_batch_size() {
    for augment in [Augment::CropFlip, Augment::Imagenet, Augment::Fb] {
        let reference = all_images(in_memory(), 4, augment, 1, 0);
        assert_eq!(reference.len(), 10 * 16 * 16);
        for (batch, workers) in [(4, 3), (1, 2), (3, 5), (10, 2)] {
            assert_eq!(
                all_images(in_memory(), batch, augment, workers, 0),
                reference,
                "{augment:?}: batch {batch}, {workers} workers"
            );
        }
        // From batch 2 of 3 on (a resume mid-epoch): the same last samples.
        let tail = all_images(in_memory(), 3, augment, 2, 2);
        assert_eq!(tail, reference[6 * 256..], "{augment:?} resumed");
        // And the draws do make a difference.
        assert_ne!(reference, all_images(in_memory(), 4, Augment::None, 1, 0));
    }
}

#[test]
fn the_ranks_shards_together_are_the_one_process_batches() {
    let t = Transform {
        size: 16,
        resize: 16,
        channels: 1,
        mean: vec![0.5],
        std: vec![0.25],
        augment: Augment::Imagenet,
    };
    let order = vec![3, 1, 4, 0, 5, 9, 2, 6, 8, 7];
    let batches = |shard: Shard, first_batch: usize| -> Vec<(Vec<f32>, Vec<u32>)> {
        let options = LoaderOptions {
            epoch_seed: 42,
            first_batch,
            workers: 2,
            shard,
            ..LoaderOptions::default()
        };
        Loader::start(in_memory(), order.clone(), 4, t.clone(), options)
            .map(|b| {
                let b = b.unwrap();
                (b.images, b.labels)
            })
            .collect()
    };
    for first_batch in [0, 1] {
        let whole = batches(Shard::default(), first_batch);
        for world_size in [2, 3, 5] {
            let parts: Vec<_> = (0..world_size)
                .map(|rank| batches(Shard { rank, world_size }, first_batch))
                .collect();
            for (b, (images, labels)) in whole.iter().enumerate() {
                // Every rank yields every batch, some of them empty (5 ranks, batches of 4 or 2).
                let joined_images: Vec<f32> = parts.iter().flat_map(|p| p[b].0.clone()).collect();
                let joined_labels: Vec<u32> = parts.iter().flat_map(|p| p[b].1.clone()).collect();
                assert_eq!(&joined_labels, labels, "{world_size} ranks, batch {b}");
                assert_eq!(&joined_images, images, "{world_size} ranks, batch {b}");
            }
            assert!(parts.iter().all(|p| p.len() == whole.len()));
        }
    }
}

#[test]
fn a_bad_file_stops_the_epoch_or_is_skipped_with_its_name() {
    let dir = std::env::temp_dir().join(format!("zoo-augment-skip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for class in ["a", "b"] {
        for split in ["train", "val"] {
            std::fs::create_dir_all(dir.join(split).join(class)).unwrap();
            for i in 0..3 {
                let img = image::RgbImage::from_pixel(50, 40, image::Rgb([i * 60, 90, 30]));
                img.save(dir.join(split).join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    std::fs::write(dir.join("train/b/1.png"), b"<html>not a png</html>").unwrap();
    let train = Arc::new(data::open(&dir, Split::Train).unwrap());
    let t = Transform {
        size: 24,
        resize: 24,
        channels: 3,
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
        augment: Augment::Imagenet,
    };
    let run = |skip: bool| -> Vec<_> {
        let options = LoaderOptions {
            skip_bad_images: skip,
            workers: 2,
            ..LoaderOptions::default()
        };
        Loader::start(train.clone(), (0..6).collect(), 4, t.clone(), options).collect()
    };
    let stopped = run(false);
    assert_eq!(stopped.len(), 2, "the epoch ends at the bad batch");
    assert_eq!(stopped[0].as_ref().unwrap().labels, [0, 0, 0, 1]);
    let err = stopped[1].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("train/b/1.png") && err.contains("not an image"),
        "{err}"
    );
    let skipped: Vec<_> = run(true).into_iter().map(Result::unwrap).collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped[0].skipped.is_empty());
    assert_eq!(skipped[1].labels, [1]);
    assert_eq!(skipped[1].skipped.len(), 1);
    assert!(skipped[1].skipped[0].0.ends_with("train/b/1.png"));
    assert!(skipped[1].skipped[0].1.contains("not an image"));
    assert_eq!(skipped[1].images.len(), 3 * 24 * 24);
}
