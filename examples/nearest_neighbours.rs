//! Embeddings for a folder of images, and each image's nearest neighbour by cosine similarity.
//!
//! ```sh
//! cargo run --release --example nearest_neighbours -- weights/examples
//! cargo run --release --example nearest_neighbours -- photos/ --weights hf:timm/densenet121.tv_in1k
//! ```

use std::path::PathBuf;

use candle_core::{Tensor, D};
use densenet_zoo::data::images_under;
use densenet_zoo::infer::{Pretrained, Source};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(args.next().unwrap_or_else(|| "weights/examples".into()));
    let mut source = Source::Embedded;
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--weights", Some(w)) => source = Source::parse(&w),
            _ => anyhow::bail!("usage: nearest_neighbours FOLDER [--weights W]"),
        }
    }
    let model = Pretrained::open_with(source, Default::default())?;
    let names = images_under(&folder)?;
    anyhow::ensure!(
        names.len() >= 2,
        "need at least two images in {}",
        folder.display()
    );

    // (N, F) pooled embeddings, L2-normalised: their Gram matrix holds the cosine similarities.
    let embeddings = model.embed(&names)?;
    let norms = embeddings.sqr()?.sum_keepdim(1)?.sqrt()?;
    let unit = embeddings.broadcast_div(&norms)?;
    let similarity = unit.matmul(&unit.t()?)?;
    let n = names.len();
    let own = (Tensor::eye(n, candle_core::DType::F32, model.device())? * 2.0)?;
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
