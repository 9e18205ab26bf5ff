//! Fine-tunes ImageNet weights on an ImageFolder (`DATA/train/CLASS/*.jpg`, `DATA/val/...`),
//! head first: a new classifier for the folder's classes is trained while the backbone stays
//! as loaded. The run folder holds `best.safetensors`, `last.safetensors` and the metrics;
//! run it again to resume.
//!
//! ```sh
//! cargo run --release --example fine_tune -- flowers/ runs/flowers --weights hf:timm/densenet121.tv_in1k --epochs 3
//! ```
//!
//! Then `densenet-zoo infer --weights runs/flowers/best.safetensors photo.jpg` names its classes.

use std::sync::atomic::AtomicBool;

use densenet_zoo::infer::Pretrained;
use densenet_zoo::train::{saved_config, EpochMetrics, Observer, Start, Trainer};

/// What the run reports: its notes (the frozen levels, a new classifier) and each epoch.
struct Print;

impl Observer for Print {
    fn note(&mut self, message: &str) {
        eprintln!("note: {message}");
    }
    fn epoch_done(&mut self, metrics: &EpochMetrics) {
        println!("{}", metrics.line());
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(data), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: fine_tune DATA OUT [--weights W] [--epochs N] [--image-size S]");
    };
    let (mut weights, mut epochs, mut size) = ("121".to_string(), 3, None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--weights" => weights = value,
            "--epochs" => epochs = value.parse()?,
            "--image-size" => size = Some(value.parse()?),
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }

    let model = Pretrained::open(&weights)?;
    let device = model.device().clone();
    let resuming = std::path::Path::new(&out).join("last.safetensors").exists();
    let (config, start) = match resuming {
        true => (
            saved_config(out.as_ref())?,
            Start {
                resume: true,
                ..Start::default()
            },
        ),
        false => {
            let (mut config, start) = model.fine_tune(&data, Some("features"))?;
            config.recipe.epochs = epochs;
            config.recipe.lr = 0.01;
            config.recipe.batch_size = 32;
            config.image_size = size.unwrap_or(config.image_size);
            (config, start)
        }
    };
    let mut trainer = Trainer::new(&config, out.as_ref(), &start, &device, &mut Print)?;
    trainer.run(&AtomicBool::new(false), &mut Print)?;
    println!("classes: {}", trainer.classes().join(", "));
    Ok(())
}
