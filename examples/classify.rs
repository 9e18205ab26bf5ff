//! The five most probable ImageNet classes of each image, with a pretrained DenseNet.
//!
//! ```sh
//! cargo run --release --example classify -- --weights hf:timm/densenet121.tv_in1k cat.jpg dog.png
//! ```
//!
//! `--weights` takes a variant's name (`121`, `densenet169`), a checkpoint file or an `hf:` repo.

use densenet_zoo::infer::Pretrained;

fn main() -> anyhow::Result<()> {
    let mut images: Vec<String> = std::env::args().skip(1).collect();
    let weights = match images.iter().position(|a| a == "--weights") {
        Some(i) if i + 1 < images.len() => images.drain(i..i + 2).nth(1).unwrap(),
        Some(_) => anyhow::bail!("--weights needs a value: a variant, a file or hf:OWNER/REPO"),
        None => "121".to_string(),
    };
    anyhow::ensure!(!images.is_empty(), "usage: classify [--weights W] IMAGE...");

    let model = Pretrained::open(&weights)?;
    for (image, top5) in images.iter().zip(model.classify(&images, 5)?) {
        println!("{image}");
        for p in top5 {
            println!("  {:.6}  {}", p.prob, p.label);
        }
    }
    Ok(())
}
