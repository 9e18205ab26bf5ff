//! Embeddings for a folder of images, and each image's nearest neighbour by cosine similarity.
//!
//! ```sh
//! cargo run --release --example nearest_neighbours -- weights/examples
//! cargo run --release --example nearest_neighbours -- photos/ --weights hf:timm/densenet121.tv_in1k
//! ```

use std::path::PathBuf;

use candle_core::{Device, Tensor, D};
use densenet_zoo::infer::{batch, eval_transform, load, preprocess_file};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(args.next().unwrap_or_else(|| "weights/examples".into()));
    let mut weights = None;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--weights" => weights = args.next(),
            other => {
                anyhow::bail!("unknown argument {other}; usage: nearest_neighbours FOLDER [--weights W]")
            }
        }
    }
    let device = Device::Cpu;
    let loaded = load(weights.as_deref(), None, &device)?;
    let transform = eval_transform(loaded.model.spec());

    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut names = Vec::new();
    let mut images = Vec::new();
    for path in files {
        match preprocess_file(&path, &transform) {
            Ok(pixels) => {
                names.push(path);
                images.push(pixels);
            }
            Err(e) => eprintln!("skipping {}: {e}", path.display()),
        }
    }
    anyhow::ensure!(
        names.len() >= 2,
        "need at least two images in {}",
        folder.display()
    );

    // (N, F) pooled embeddings, L2-normalised: their Gram matrix holds the cosine similarities.
    let features = loaded
        .model
        .forward_features(&batch(&images, &transform, &device)?, false)?;
    let embeddings = loaded.model.forward_head(&features, true)?;
    let norms = embeddings.sqr()?.sum_keepdim(1)?.sqrt()?;
    let unit = embeddings.broadcast_div(&norms)?;
    let similarity = unit.matmul(&unit.t()?)?;
    let n = names.len();
    let own = (Tensor::eye(n, candle_core::DType::F32, &device)? * 2.0)?;
    let nearest = (similarity.clone() - own)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let similarity = similarity.to_vec2::<f32>()?;
    for (i, &j) in nearest.iter().enumerate() {
        println!(
            "{} -> {} (cosine {:.3})",
            names[i].display(),
            names[j as usize].display(),
            similarity[i][j as usize]
        );
    }
    Ok(())
}
